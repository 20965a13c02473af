// kvstash-bench: the load-test client of kvstashd. Reference: docs/bench.md.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "bench.h"
#include "cuda_ipc_transport.h"
#include "cli_util.h"
#include "json.h"
#include "security_flags.h"
#include "transport.h"

namespace kvstash::bench {
namespace {

constexpr char kFooter[] = R"(Exit codes:
  0  ok: every operation succeeded (and, with --verify, matched)
  1  some operations failed or mismatched (the report says which), or another error
  2  usage error or invalid argument (also an unimplemented --transport)
  4  the daemon is unavailable
  5  resource exhausted while pre-populating
  6  the daemon refused the token (UNAUTHENTICATED, PERMISSION_DENIED)
Token: --token-file FILE, $KVSTASH_TOKEN_FILE or $KVSTASH_TOKEN (no --token flag).
See docs/bench.md for workloads, the report fields and examples.)";

int Fail(bool json, const absl::Status& status) {
  std::cerr << "kvstash-bench: " << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << "\n";
  if (json) {
    std::cout << cli::JsonObject()
                     .Add("ok", false)
                     .Add("code", absl::StatusCodeToString(status.code()))
                     .Add("message", std::string_view(status.message().data(),
                                                      status.message().size()))
                     .str()
              << "\n";
  }
  if (status.code() == absl::StatusCode::kUnimplemented) return cli::kExitUsage;
  return cli::ExitCodeFor(status.code());
}

int Main(int argc, char** argv) {
  CLI::App app{"kvstash-bench: load-test a kvstash daemon (put, get, mixed, lookup workloads)"};
  app.footer(kFooter);
  BenchOptions o;
  std::string addr = "127.0.0.1:7450", transport = "grpc", workload = "put";
  std::string model = "llama-3-8b", codec = "xquant", dtype = "fp16", ratio, baseline;
  uint32_t layers = 0, heads = 0, head_dim = 0, tokens = 0;
  double timeout_s = 60;
  int max_message_bytes = 256 << 20;
  bool json = false, progress = false, keep = false;
  int cuda_device = 0;
  cli::SecurityFlags security;

  app.add_option("--addr", addr,
                 "daemon address host:port or unix:/path (redis: the Redis server's host:port)")
      ->capture_default_str();
  app.add_option("--transport", transport,
                 "grpc | shm (same host: payloads through a registered /dev/shm region) | "
                 "cuda-ipc (same node: payloads and outputs in this process's GPU memory, "
                 "shared by CUDA IPC handles) | redis (the peer: raw chunks in a Redis "
                 "server, SET/GET)")
      ->capture_default_str();
  app.add_option("-w,--workload", workload, "put | get | mixed | lookup")->capture_default_str();
  app.add_option("-m,--model", model,
                 "geometry: llama-3-8b, mistral-7b (L32 H8 D128), qwen2.5-7b (L28 H4 D128)")
      ->capture_default_str();
  auto* o_layers = app.add_option("--layers", layers, "override L");
  auto* o_heads = app.add_option("--heads", heads, "override H (KV heads)");
  auto* o_head_dim = app.add_option("--head-dim", head_dim, "override D");
  auto* o_tokens = app.add_option("--tokens", tokens, "tokens per chunk T (default 256)");
  app.add_option("--dtype", dtype, "fp16 | bf16")->capture_default_str();
  app.add_option("--codec", codec, "preset: fp16, kivi-2, asymkv-1.5, xquant")
      ->capture_default_str();
  app.add_option("-n,--namespace", o.ns, "namespace of the bench keys")->capture_default_str();
  app.add_option("-c,--connections", o.connections, "connections (TCP sockets)")
      ->capture_default_str();
  app.add_option("-i,--inflight", o.inflight, "requests in flight per connection (threads)")
      ->capture_default_str();
  auto* o_duration = app.add_option("-d,--duration", o.duration_s, "measured seconds")
                         ->capture_default_str();
  app.add_option("--count", o.count, "measured operations instead of --duration")
      ->excludes(o_duration);
  app.add_option("--warmup", o.warmup_s, "seconds of unmeasured load first")->capture_default_str();
  app.add_option("--keys", o.keys, "distinct keys of put/get/mixed")->capture_default_str();
  app.add_option("--payloads", o.payloads, "distinct generated payloads")->capture_default_str();
  auto* o_ratio = app.add_option("--ratio", ratio, "mixed: PUTS:GETS, e.g. 1:3 (default 1:1)");
  app.add_option("--put-fraction", o.put_fraction, "mixed: fraction of puts in [0,1]")
      ->excludes(o_ratio);
  app.add_option("--chains", o.chains, "lookup: chains")->capture_default_str();
  app.add_option("--chain-length", o.chain_length, "lookup: keys per chain")->capture_default_str();
  app.add_option("--hit-rate", o.hit_rate, "lookup: stored leading fraction of each chain")
      ->capture_default_str();
  app.add_option("--cuda-device", cuda_device,
                 "cuda-ipc: CUDA device of the payloads and outputs (the daemon must use it)")
      ->capture_default_str();
  app.add_flag("--verify", o.verify, "check every Get byte for byte against the codec's output");
  app.add_flag("--keep", keep, "do not delete the bench keys at the end");
  app.add_option("--seed", o.seed, "payload and key seed")->capture_default_str();
  app.add_option("--baseline", baseline, "tcp: also measure loopback TCP with the same payload");
  app.add_option("--baseline-duration", o.baseline_duration_s,
                 "seconds per direction of the baseline (with --count: --count transfers)")
      ->capture_default_str();
  app.add_option("--timeout", timeout_s, "per-call deadline, seconds")->capture_default_str();
  app.add_option("--max-message-bytes", max_message_bytes, "client message limit")
      ->capture_default_str();
  app.add_flag("--progress", progress, "progress line on stderr even when it is not a TTY");
  app.add_flag("--json", json, "print the report as one JSON object");
  cli::AddSecurityFlags(app, &security);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? cli::kExitOk : cli::kExitUsage;
  }

  absl::StatusOr<Workload> w = ParseWorkload(workload);
  if (!w.ok()) return Fail(json, w.status());
  o.workload = *w;
  absl::StatusOr<kernels::ChunkShape> shape = cli::ModelGeometry(model);
  if (!shape.ok()) return Fail(json, shape.status());
  o.shape = *shape;
  o.model = model;
  if (o_layers->count()) o.shape.num_layers = layers;
  if (o_heads->count()) o.shape.num_heads = heads;
  if (o_head_dim->count()) o.shape.head_dim = head_dim;
  if (o_tokens->count()) o.shape.num_tokens = tokens;
  if (o_layers->count() + o_heads->count() + o_head_dim->count()) o.model = "custom";
  absl::StatusOr<kernels::DType> dt = kernels::ParseDType(dtype);
  if (!dt.ok()) return Fail(json, dt.status());
  o.shape.dtype = *dt;
  absl::StatusOr<kernels::Preset> preset = kernels::ParsePreset(codec);
  if (!preset.ok()) return Fail(json, preset.status());
  o.preset = *preset;
  if (!ratio.empty()) {
    absl::StatusOr<double> f = ParseRatio(ratio);
    if (!f.ok()) return Fail(json, f.status());
    o.put_fraction = *f;
  }
  if (!baseline.empty() && baseline != "tcp") {
    return Fail(json, absl::InvalidArgumentError(
                          absl::StrCat("--baseline: unknown '", baseline, "'; known: tcp")));
  }
  o.tcp_baseline = baseline == "tcp";
  o.cleanup = !keep;
  o.progress = progress || ::isatty(STDERR_FILENO) == 1;
  if (!(timeout_s > 0)) return Fail(json, absl::InvalidArgumentError("--timeout: must be positive"));
  if (absl::Status st = ValidateOptions(o); !st.ok()) return Fail(json, st);

  absl::StatusOr<TransportKind> kind = ParseTransport(transport);
  if (!kind.ok()) return Fail(json, kind.status());
  TransportOptions t;
  t.target = addr;
  if (*kind == TransportKind::kRedis) {
    // Redis is the peer: the kvstash token is not sent to it, and a TLS flag is refused
    // rather than measuring plaintext Redis against a TLS kvstash unawares.
    if (cli::AnyTlsFlag(security)) {
      return Fail(json, absl::InvalidArgumentError("--tls*: do not apply to --transport redis"));
    }
  } else {
    client::ClientOptions co;
    if (absl::Status st = cli::ApplySecurityFlags(security, &co); !st.ok()) {
      return Fail(json, st);
    }
    t.token = co.token;
    t.tls = co.tls;
  }
  t.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000 + 0.5));
  t.max_message_bytes = max_message_bytes;
  t.connect_timeout = std::min(t.connect_timeout, t.timeout);
  t.ns = o.ns;
  t.shm_slot_bytes = o.shape.payload_bytes();
  t.shm_slots = o.inflight;
  t.redis_connections = o.inflight;  // a Redis socket serves one request at a time
  o.raw_store = *kind == TransportKind::kRedis;
  // shm runs at memory speed: report it against memcpy of the same bytes, same threads.
  o.memcpy_baseline = *kind == TransportKind::kShm;
  auto open = [&](uint32_t) { return OpenTransport(*kind, t); };

  t.cuda_device = cuda_device;
  t.fetch_device_results = o.verify;

  absl::StatusOr<BenchReport> report =
      RunBench(o, open, std::string(TransportName(*kind)), addr);
  if (!report.ok()) return Fail(json, report.status());
  std::string out = json ? report->Json() : report->Text();
  if (*kind == TransportKind::kCudaIpc) {
    // The device's physical limits for the same bytes, measured in this run.
    absl::StatusOr<DeviceBaselines> b =
        MeasureDeviceBaselines(cuda_device, o.shape.payload_bytes());
    if (!b.ok()) return Fail(json, b.status());
    if (json) {
      out.pop_back();  // the closing brace of the report object
      out += absl::StrCat(",\"device_baselines\":{\"d2d_gbps\":", b->d2d_gbps,
                          ",\"h2d_pinned_gbps\":", b->h2d_pinned_gbps, "}}");
    } else {
      out += absl::StrCat("device baselines (same ", o.shape.payload_bytes(),
                          " bytes): device-to-device copy ", b->d2d_gbps,
                          " GB/s, pinned host-to-device copy ", b->h2d_pinned_gbps, " GB/s\n");
    }
  }
  std::cout << out << (json ? "\n" : "");
  return report->error_count() == 0 ? cli::kExitOk : cli::kExitError;
}

}  // namespace
}  // namespace kvstash::bench

int main(int argc, char** argv) { return kvstash::bench::Main(argc, argv); }
