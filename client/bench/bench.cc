#include "bench.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli_util.h"
#include "json.h"
#include "kvstash/kernels/codec.h"

namespace kvstash::bench {
namespace {

using Clock = std::chrono::steady_clock;
using cli::Av;
using cli::JsonObject;

constexpr std::string_view kVerifyMismatch = "VERIFY_MISMATCH";

double Ms(uint64_t ns) { return static_cast<double>(ns) / 1e6; }

std::string CodeName(absl::StatusCode code) {
  return absl::StatusCodeToString(code);  // "NOT_FOUND", "UNAVAILABLE", ...
}

// What one worker thread measured.
struct ThreadStats {
  struct PerOp {
    uint64_t ops = 0, logical = 0, stored = 0;
    std::vector<uint64_t> lat;
    std::map<std::string, uint64_t> errors;
  };
  std::array<PerOp, kNumOps> op;
  uint64_t verify_checked = 0, verify_mismatches = 0;
  uint64_t lookup_keys = 0, lookup_present = 0;
};

// Counters the progress line reads while workers run.
struct Live {
  std::array<std::atomic<uint64_t>, kNumOps> ops{};
  std::array<std::atomic<uint64_t>, kNumOps> bytes{};
  std::atomic<uint64_t> errors{0};
};

// Runs `fn` on n threads, each with its index; joins them.
template <typename Fn>
void Parallel(uint32_t n, Fn fn) {
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (uint32_t i = 0; i < n; ++i) threads.emplace_back(fn, i);
  for (std::thread& t : threads) t.join();
}

class Runner {
 public:
  explicit Runner(const BenchOptions& o) : o_(o), put_keys_(o.keys) {}

  absl::Status Open(const TransportFactory& open) {
    for (uint32_t c = 0; c < o_.connections; ++c) {
      absl::StatusOr<std::unique_ptr<Transport>> t = open(c);
      if (!t.ok()) return t.status();
      conns_.push_back(std::move(*t));
    }
    return absl::OkStatus();
  }

  // Payloads and, with verify, the bytes a Get must return for each.
  absl::Status Generate() {
    uint32_t n = o_.payloads;
    if (o_.workload == Workload::kLookup) {
      n = std::min<uint32_t>(n, std::max<uint32_t>(1, StoredPrefix(o_.hit_rate, o_.chain_length) *
                                                          o_.chains));
    } else {
      n = std::min(n, o_.keys);
    }
    payloads_.resize(n);
    const bool expect_decode = o_.verify && !o_.raw_store;  // raw: a Get returns the payload
    expected_.resize(expect_decode ? n : 0);
    std::vector<absl::Status> errors(n);
    const kernels::CodecConfig config = kernels::PresetConfig(o_.preset, o_.shape.num_layers);
    Parallel(n, [&](uint32_t p) {
      payloads_[p] = cli::GeneratePayload(o_.shape, o_.seed * 1000003 + p);
      if (!expect_decode) return;
      absl::StatusOr<std::vector<uint8_t>> enc =
          kernels::EncodeChunk(o_.shape, config, payloads_[p]);
      if (!enc.ok()) {
        errors[p] = enc.status();
        return;
      }
      errors[p] = kernels::Decode(enc->data(), enc->size(), kernels::Slice{}, o_.shape.dtype,
                                  &expected_[p]);
    });
    for (const absl::Status& st : errors) {
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  }

  absl::Status Populate() {
    std::vector<std::pair<client::ChunkKey, uint32_t>> todo;  // key, payload index
    if (o_.workload == Workload::kGet || o_.workload == Workload::kMixed) {
      for (uint32_t k = 0; k < o_.keys; ++k) todo.emplace_back(BenchKey(o_.seed, k), k % payloads_.size());
    } else if (o_.workload == Workload::kLookup) {
      const uint32_t prefix = StoredPrefix(o_.hit_rate, o_.chain_length);
      for (uint32_t c = 0; c < o_.chains; ++c) {
        std::vector<int32_t> tokens(static_cast<size_t>(o_.chain_length) * o_.shape.num_tokens);
        for (size_t j = 0; j < tokens.size(); ++j) {
          tokens[j] = static_cast<int32_t>((o_.seed * 7919 + c * 1000003ull + j) & 0x7fffffff);
        }
        chains_.push_back(client::ChainKeys(tokens, o_.shape.num_tokens, o_.ns));
        // Keys left by an earlier run with --keep would change the present prefix.
        if (absl::Status st = conns_[0]->Delete(o_.ns, chains_.back()); !st.ok()) return st;
        for (uint32_t j = 0; j < prefix; ++j) {
          todo.emplace_back(chains_.back()[j], (c * o_.chain_length + j) % payloads_.size());
        }
      }
    }
    std::atomic<size_t> next{0};
    std::vector<absl::Status> errors(workers());
    Parallel(workers(), [&](uint32_t w) {
      for (size_t i; (i = next.fetch_add(1)) < todo.size();) {
        absl::StatusOr<uint64_t> r = conns_[w / o_.inflight]->Put(o_.ns, MakePut(todo[i].first, todo[i].second));
        if (!r.ok()) {
          errors[w] = absl::Status(r.status().code(),
                                   absl::StrCat("pre-populating: ", r.status().message()));
          return;
        }
      }
    });
    for (const absl::Status& st : errors) {
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  }

  // One phase: all workers until `seconds` pass or `count` operations are issued.
  std::vector<ThreadStats> Phase(double seconds, uint64_t count, bool measured, double* elapsed) {
    std::vector<ThreadStats> stats(workers());
    Live live;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> done{false};
    const Clock::time_point start = Clock::now();
    const Clock::time_point deadline =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    std::thread progress;
    if (o_.progress) {
      progress = std::thread([&] { Progress(live, done, start, measured); });
    }
    Parallel(workers(), [&](uint32_t w) {
      Transport& t = *conns_[w / o_.inflight];
      ThreadStats& s = stats[w];
      for (;;) {
        const uint64_t i = next.fetch_add(1);
        if (count > 0 ? i >= count : Clock::now() >= deadline) break;
        RunOne(t, i, s, live);
      }
    });
    *elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    done = true;
    if (progress.joinable()) progress.join();
    return stats;
  }

  void Cleanup() {
    if (!o_.cleanup || conns_.empty()) return;
    std::vector<client::ChunkKey> keys;
    if (o_.workload == Workload::kLookup) {
      for (const auto& chain : chains_) keys.insert(keys.end(), chain.begin(), chain.end());
    } else {
      for (uint32_t k = 0; k < o_.keys; ++k) keys.push_back(BenchKey(o_.seed, k));
    }
    for (size_t b = 0; b < keys.size(); b += 1024) {
      const size_t n = std::min<size_t>(1024, keys.size() - b);
      (void)conns_[0]->Delete(o_.ns, std::span<const client::ChunkKey>(keys.data() + b, n));
    }
  }

  uint32_t workers() const { return o_.connections * o_.inflight; }

  absl::StatusOr<uint64_t> ServerMemory() { return conns_[0]->ServerMemoryBytes(); }

  // Distinct keys the server holds now: every pre-populated key, or for put the keys
  // that a Put has stored so far.
  uint64_t KeysStored() const {
    switch (o_.workload) {
      case Workload::kGet:
      case Workload::kMixed: return o_.keys;
      case Workload::kLookup: return uint64_t{StoredPrefix(o_.hit_rate, o_.chain_length)} * chains_.size();
      case Workload::kPut: break;
    }
    uint64_t n = 0;
    for (const std::atomic<bool>& k : put_keys_) n += k.load(std::memory_order_relaxed) ? 1 : 0;
    return n;
  }

 private:
  PutOp MakePut(const client::ChunkKey& key, size_t payload) const {
    const std::vector<uint16_t>& p = payloads_[payload];
    return PutOp{key, o_.shape, o_.preset,
                 std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(p.data()),
                                          p.size() * 2)};
  }

  void RunOne(Transport& t, uint64_t i, ThreadStats& s, Live& live) {
    Op op = Op::kPut;
    switch (o_.workload) {
      case Workload::kPut: op = Op::kPut; break;
      case Workload::kGet: op = Op::kGet; break;
      case Workload::kMixed: op = MixedIsPut(i, o_.put_fraction) ? Op::kPut : Op::kGet; break;
      case Workload::kLookup: op = Op::kLookup; break;
    }
    ThreadStats::PerOp& st = s.op[static_cast<int>(op)];
    const uint64_t key_index = i % o_.keys;
    const size_t payload = key_index % payloads_.size();
    const Clock::time_point t0 = Clock::now();
    absl::Status status;
    uint64_t stored = 0, logical = 0;
    GetReply got;
    uint32_t present = 0;
    const std::vector<client::ChunkKey>* chain = nullptr;
    if (op == Op::kPut) {
      absl::StatusOr<uint64_t> r = t.Put(o_.ns, MakePut(BenchKey(o_.seed, key_index), payload));
      status = r.status();
      if (r.ok()) {
        stored = *r, logical = o_.shape.payload_bytes();
        put_keys_[key_index].store(true, std::memory_order_relaxed);
      }
    } else if (op == Op::kGet) {
      absl::StatusOr<GetReply> r = t.Get(o_.ns, BenchKey(o_.seed, key_index));
      status = r.status();
      if (r.ok()) {
        stored = r->stored_bytes;
        logical = r->logical_bytes != 0 ? r->logical_bytes : r->bytes().size();
        got = std::move(*r);
      }
    } else {
      chain = &chains_[i % chains_.size()];
      absl::StatusOr<uint32_t> r = t.Lookup(o_.ns, *chain);
      status = r.status();
      if (r.ok()) present = *r;
    }
    const uint64_t ns = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    if (!status.ok()) {
      ++st.errors[CodeName(status.code())];
      ++live.errors;
      return;
    }
    if (o_.verify && op == Op::kGet) {
      ++s.verify_checked;
      const std::vector<uint16_t>& want = o_.raw_store ? payloads_[payload] : expected_[payload];
      const std::span<const uint8_t> bytes = got.bytes();
      if (bytes.size() != want.size() * 2 ||
          std::memcmp(bytes.data(), want.data(), bytes.size()) != 0) {
        ++s.verify_mismatches;
        ++st.errors[std::string(kVerifyMismatch)];
        ++live.errors;
        return;
      }
    }
    if (op == Op::kLookup) {
      s.lookup_keys += chain->size();
      s.lookup_present += present;
      if (o_.verify) {
        ++s.verify_checked;
        if (present != StoredPrefix(o_.hit_rate, o_.chain_length)) {
          ++s.verify_mismatches;
          ++st.errors[std::string(kVerifyMismatch)];
          ++live.errors;
          return;
        }
      }
    }
    ++st.ops;
    st.logical += logical;
    st.stored += stored;
    st.lat.push_back(ns);
    live.ops[static_cast<int>(op)].fetch_add(1, std::memory_order_relaxed);
    live.bytes[static_cast<int>(op)].fetch_add(logical, std::memory_order_relaxed);
  }

  void Progress(const Live& live, const std::atomic<bool>& done, Clock::time_point start,
                bool measured) const {
    std::array<uint64_t, kNumOps> last_ops{}, last_bytes{};
    Clock::time_point last = start;
    while (!done) {
      for (int k = 0; k < 10 && !done; ++k) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const Clock::time_point now = Clock::now();
      const double dt = std::chrono::duration<double>(now - last).count();
      if (dt <= 0) continue;
      std::string line = absl::StrFormat(
          "\r%s %6.1fs", measured ? "run   " : "warmup",
          std::chrono::duration<double>(now - start).count());
      for (int op = 0; op < kNumOps; ++op) {
        const uint64_t ops = live.ops[op].load(), bytes = live.bytes[op].load();
        if (ops == 0) continue;
        absl::StrAppendFormat(&line, "  %s %.1f op/s %.2f GB/s", OpName(static_cast<Op>(op)),
                              (ops - last_ops[op]) / dt, (bytes - last_bytes[op]) / dt / 1e9);
        last_ops[op] = ops;
        last_bytes[op] = bytes;
      }
      absl::StrAppendFormat(&line, "  errors %d   ", live.errors.load());
      std::cerr << line << std::flush;
      last = now;
    }
    std::cerr << "\n";
  }

  const BenchOptions& o_;
  std::vector<std::unique_ptr<Transport>> conns_;
  std::vector<std::vector<uint16_t>> payloads_;
  std::vector<std::vector<uint16_t>> expected_;
  std::vector<std::vector<client::ChunkKey>> chains_;
  std::vector<std::atomic<bool>> put_keys_;  // by key index: a Put of it succeeded
};

std::string LatencyJson(const OpReport& r) {
  return JsonObject()
      .Add("p50", Ms(Percentile(r.latency_ns, 0.50)))
      .Add("p90", Ms(Percentile(r.latency_ns, 0.90)))
      .Add("p99", Ms(Percentile(r.latency_ns, 0.99)))
      .Add("max", Ms(r.latency_ns.empty() ? 0 : r.latency_ns.back()))
      .str();
}

std::string ErrorsJson(const std::map<std::string, uint64_t>& errors) {
  JsonObject o;
  for (const auto& [code, n] : errors) o.Add(code, n);
  return o.str();
}

std::string TcpJson(const TcpDirection& d, uint64_t payload_bytes) {
  std::vector<uint64_t> lat = d.latency_ns;
  std::sort(lat.begin(), lat.end());
  return JsonObject()
      .Add("ops", d.ops)
      .Add("seconds", d.seconds)
      .Add("ops_per_s", d.seconds > 0 ? d.ops / d.seconds : 0.0)
      .Add("gbps", d.gbps(payload_bytes))
      .AddRaw("latency_ms", JsonObject()
                                .Add("p50", Ms(Percentile(lat, 0.50)))
                                .Add("p99", Ms(Percentile(lat, 0.99)))
                                .Add("max", Ms(lat.empty() ? 0 : lat.back()))
                                .str())
      .str();
}

double Rate(uint64_t n, double seconds) { return seconds > 0 ? n / seconds : 0.0; }

std::string_view CodecName(const BenchOptions& o) {
  return o.raw_store ? std::string_view("none") : kernels::PresetName(o.preset);
}

}  // namespace

MemcpyResult RunMemcpyBaseline(uint64_t bytes, uint32_t threads, double seconds, uint64_t count) {
  std::vector<std::vector<uint8_t>> src(threads), dst(threads);
  for (uint32_t t = 0; t < threads; ++t) {
    src[t].assign(bytes, static_cast<uint8_t>(t + 1));  // touched: no page faults measured
    dst[t].assign(bytes, 0);
  }
  std::atomic<uint64_t> next{0};
  std::vector<std::vector<uint64_t>> lat(threads);
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  Parallel(threads, [&](uint32_t t) {
    for (;;) {
      const uint64_t i = next.fetch_add(1);
      if (count > 0 ? i >= count : Clock::now() >= deadline) break;
      const Clock::time_point t0 = Clock::now();
      std::memcpy(dst[t].data(), src[t].data(), bytes);
      lat[t].push_back(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()));
    }
  });
  MemcpyResult r;
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (const auto& l : lat) r.latency_ns.insert(r.latency_ns.end(), l.begin(), l.end());
  r.copies = r.latency_ns.size();
  std::sort(r.latency_ns.begin(), r.latency_ns.end());
  return r;
}

absl::StatusOr<Workload> ParseWorkload(std::string_view name) {
  if (name == "put") return Workload::kPut;
  if (name == "get") return Workload::kGet;
  if (name == "mixed") return Workload::kMixed;
  if (name == "lookup") return Workload::kLookup;
  return absl::InvalidArgumentError(
      absl::StrCat("--workload: unknown '", Av(name), "'; known: put, get, mixed, lookup"));
}

std::string_view WorkloadName(Workload w) {
  switch (w) {
    case Workload::kPut: return "put";
    case Workload::kGet: return "get";
    case Workload::kMixed: return "mixed";
    case Workload::kLookup: return "lookup";
  }
  return "unknown";
}

std::string_view OpName(Op op) {
  switch (op) {
    case Op::kPut: return "put";
    case Op::kGet: return "get";
    case Op::kLookup: return "lookup";
  }
  return "unknown";
}

absl::Status ValidateOptions(const BenchOptions& o) {
  if (absl::Status st = kernels::ValidateShape(o.shape); !st.ok()) return st;
  if (o.preset == kernels::Preset::kCustom) {
    return absl::InvalidArgumentError("--codec: give a preset (fp16, kivi-2, asymkv-1.5, xquant)");
  }
  if (o.ns.empty() || o.ns.size() > 256) {
    return absl::InvalidArgumentError("--namespace: must be 1 to 256 bytes");
  }
  if (o.connections == 0) return absl::InvalidArgumentError("--connections: must be positive");
  if (o.inflight == 0) return absl::InvalidArgumentError("--inflight: must be positive");
  if (o.connections * uint64_t{o.inflight} > 4096) {
    return absl::InvalidArgumentError("--connections x --inflight: at most 4096 threads");
  }
  if (o.count == 0 && !(o.duration_s > 0)) {
    return absl::InvalidArgumentError("--duration: must be positive (or give --count)");
  }
  if (!(o.warmup_s >= 0)) return absl::InvalidArgumentError("--warmup: must be >= 0");
  if (o.keys == 0) return absl::InvalidArgumentError("--keys: must be positive");
  if (o.payloads == 0) return absl::InvalidArgumentError("--payloads: must be positive");
  if (!(o.put_fraction >= 0 && o.put_fraction <= 1)) {
    return absl::InvalidArgumentError("--put-fraction: must be in [0, 1]");
  }
  if (o.chains == 0) return absl::InvalidArgumentError("--chains: must be positive");
  if (o.chain_length == 0) return absl::InvalidArgumentError("--chain-length: must be positive");
  if (!(o.hit_rate >= 0 && o.hit_rate <= 1)) {
    return absl::InvalidArgumentError("--hit-rate: must be in [0, 1]");
  }
  if (o.tcp_baseline && o.count == 0 && !(o.baseline_duration_s > 0)) {
    return absl::InvalidArgumentError("--baseline-duration: must be positive");
  }
  return absl::OkStatus();
}

absl::StatusOr<double> ParseRatio(std::string_view text) {
  const size_t colon = text.find(':');
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("--ratio: '", Av(text), "' is not PUTS:GETS, e.g. 1:3"));
  };
  if (colon == std::string_view::npos) return bad();
  double v[2];
  const std::string_view parts[2] = {text.substr(0, colon), text.substr(colon + 1)};
  for (int i = 0; i < 2; ++i) {
    const std::string s(parts[i]);
    char* end = nullptr;
    if (s.empty()) return bad();
    v[i] = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size() || !(v[i] >= 0) || !std::isfinite(v[i])) return bad();
  }
  if (v[0] + v[1] <= 0) return bad();
  return v[0] / (v[0] + v[1]);
}

bool MixedIsPut(uint64_t i, double put_fraction) {
  // Operation i is a put when the count of puts in [0, i] rises: floor((i+1)·f) > floor(i·f).
  return std::floor((i + 1) * put_fraction) > std::floor(i * put_fraction);
}

client::ChunkKey BenchKey(uint64_t seed, uint64_t i) {
  return client::ChunkKey{0x6b76737462656e63ull ^ (seed * 0x9e3779b97f4a7c15ull), i};
}

uint32_t StoredPrefix(double hit_rate, uint32_t chain_length) {
  return static_cast<uint32_t>(std::lround(hit_rate * chain_length));
}

uint64_t Percentile(std::span<const uint64_t> sorted, double q) {
  if (sorted.empty()) return 0;
  const double rank = std::ceil(q * sorted.size());
  const size_t idx = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return sorted[std::min(idx, sorted.size() - 1)];
}

uint64_t OpReport::error_count() const {
  uint64_t n = 0;
  for (const auto& [code, k] : errors) n += k;
  return n;
}

uint64_t BenchReport::error_count() const {
  uint64_t n = 0;
  for (const OpReport& r : ops) n += r.error_count();
  return n;
}

double BenchReport::memory_per_token() const {
  const uint64_t tokens = keys_stored * options.shape.num_tokens;
  if (!server_memory_after || tokens == 0) return 0;
  return static_cast<double>(*server_memory_after) / tokens;
}

std::string BenchReport::Text() const {
  const BenchOptions& o = options;
  std::string out;
  absl::StrAppendFormat(&out, "kvstash-bench  workload=%s  transport=%s  target=%s\n",
                        WorkloadName(o.workload), transport, target);
  absl::StrAppendFormat(&out, "chunk     %s L=%u T=%u H=%u D=%u %s, %s logical, codec %s\n",
                        o.model, o.shape.num_layers, o.shape.num_tokens, o.shape.num_heads,
                        o.shape.head_dim, kernels::DTypeName(o.shape.dtype),
                        cli::HumanBytes(o.shape.payload_bytes()), CodecName(o));
  absl::StrAppendFormat(&out, "load      %u connections x %u inflight, %.2f s measured%s\n",
                        o.connections, o.inflight, seconds,
                        o.warmup_s > 0 ? absl::StrFormat(" after %.1f s warmup", o.warmup_s)
                                       : std::string());
  absl::StrAppendFormat(&out, "\n%-7s %9s %10s %12s %11s %9s %9s %9s %9s %7s\n", "op", "ops",
                        "ops/s", "logical GB/s", "stored GB/s", "p50 ms", "p90 ms", "p99 ms",
                        "max ms", "errors");
  for (int k = 0; k < kNumOps; ++k) {
    const OpReport& r = ops[k];
    if (r.ops == 0 && r.errors.empty()) continue;
    absl::StrAppendFormat(&out, "%-7s %9d %10.1f %12.3f %11.3f %9.3f %9.3f %9.3f %9.3f %7d\n",
                          OpName(static_cast<Op>(k)), r.ops, Rate(r.ops, seconds),
                          Rate(r.logical_bytes, seconds) / 1e9,
                          Rate(r.stored_bytes, seconds) / 1e9,
                          Ms(Percentile(r.latency_ns, 0.5)), Ms(Percentile(r.latency_ns, 0.9)),
                          Ms(Percentile(r.latency_ns, 0.99)),
                          Ms(r.latency_ns.empty() ? 0 : r.latency_ns.back()), r.error_count());
  }
  if (lookup_keys > 0) {
    absl::StrAppendFormat(&out, "lookup hit rate: %.3f (%d of %d keys in the present prefix)\n",
                          static_cast<double>(lookup_present) / lookup_keys, lookup_present,
                          lookup_keys);
  }
  for (int k = 0; k < kNumOps; ++k) {
    for (const auto& [code, n] : ops[k].errors) {
      absl::StrAppendFormat(&out, "errors    %s %s: %d\n", OpName(static_cast<Op>(k)), code, n);
    }
  }
  if (o.verify) {
    absl::StrAppendFormat(&out, "verify    %d checked, %d mismatches\n", verify_checked,
                          verify_mismatches);
  }
  if (server_memory_after) {
    absl::StrAppendFormat(&out, "memory    server %s after the run (%s before), %d chunks x %u tokens stored",
                          cli::HumanBytes(*server_memory_after),
                          server_memory_before ? cli::HumanBytes(*server_memory_before) : "?",
                          keys_stored, o.shape.num_tokens);
    if (memory_per_token() > 0) {
      absl::StrAppendFormat(&out, ": %.0f B per cached token (raw 16-bit: %d B)",
                            memory_per_token(), o.shape.payload_bytes() / o.shape.num_tokens);
    }
    out += "\n";
  }
  if (memcpy_baseline) {
    const uint64_t bytes = o.shape.payload_bytes();
    const MemcpyResult& m = *memcpy_baseline;
    absl::StrAppendFormat(&out, "\nmemcpy baseline (%s per copy, %u threads)\n",
                          cli::HumanBytes(bytes), o.connections * o.inflight);
    absl::StrAppendFormat(&out, "memcpy    %10.1f ops/s %8.3f GB/s  p50 %.3f ms  p99 %.3f ms",
                          Rate(m.copies, m.seconds), m.gbps(bytes),
                          Ms(Percentile(m.latency_ns, 0.5)), Ms(Percentile(m.latency_ns, 0.99)));
    const double put_gbps = Rate(ops[0].logical_bytes, seconds) / 1e9;
    const double get_gbps = Rate(ops[1].logical_bytes, seconds) / 1e9;
    if (m.gbps(bytes) > 0) {
      if (put_gbps > 0)
        absl::StrAppendFormat(&out, "  (%s put = %.1f%% of it)", transport, 100 * put_gbps / m.gbps(bytes));
      if (get_gbps > 0)
        absl::StrAppendFormat(&out, "  (%s get = %.1f%% of it)", transport, 100 * get_gbps / m.gbps(bytes));
    }
    out += "\n";
  }
  if (baseline) {
    const uint64_t bytes = o.shape.payload_bytes();
    absl::StrAppendFormat(&out, "\nloopback TCP baseline (127.0.0.1, %s per transfer, %u streams)\n",
                          cli::HumanBytes(bytes), o.connections * o.inflight);
    const double put_gbps = Rate(ops[0].logical_bytes, seconds) / 1e9;
    const double get_gbps = Rate(ops[1].logical_bytes, seconds) / 1e9;
    for (int dir = 0; dir < 2; ++dir) {
      const TcpDirection& d = dir == 0 ? baseline->upload : baseline->download;
      std::vector<uint64_t> lat = d.latency_ns;
      std::sort(lat.begin(), lat.end());
      const double grpc = dir == 0 ? put_gbps : get_gbps;
      const double tcp = d.gbps(bytes);
      absl::StrAppendFormat(&out, "%-9s %10.1f ops/s %8.3f GB/s  p50 %.3f ms  p99 %.3f ms",
                            dir == 0 ? "upload" : "download", Rate(d.ops, d.seconds), tcp,
                            Ms(Percentile(lat, 0.5)), Ms(Percentile(lat, 0.99)));
      if (grpc > 0 && tcp > 0) {
        absl::StrAppendFormat(&out, "  (%s %s = %.1f%% of it)", transport,
                              dir == 0 ? "put" : "get", 100 * grpc / tcp);
      }
      out += "\n";
    }
  }
  return out;
}

std::string BenchReport::Json() const {
  const BenchOptions& o = options;
  JsonObject chunk;
  chunk.Add("model", o.model)
      .Add("num_layers", o.shape.num_layers)
      .Add("num_tokens", o.shape.num_tokens)
      .Add("num_heads", o.shape.num_heads)
      .Add("head_dim", o.shape.head_dim)
      .Add("dtype", kernels::DTypeName(o.shape.dtype))
      .Add("logical_bytes", o.shape.payload_bytes())
      .Add("codec", CodecName(o));
  JsonObject ops_json;
  uint64_t total_ops = 0;
  for (int k = 0; k < kNumOps; ++k) {
    const OpReport& r = ops[k];
    total_ops += r.ops;
    if (r.ops == 0 && r.errors.empty()) continue;
    ops_json.AddRaw(OpName(static_cast<Op>(k)),
                    JsonObject()
                        .Add("ops", r.ops)
                        .Add("ops_per_s", Rate(r.ops, seconds))
                        .Add("logical_bytes", r.logical_bytes)
                        .Add("stored_bytes", r.stored_bytes)
                        .Add("logical_gbps", Rate(r.logical_bytes, seconds) / 1e9)
                        .Add("stored_gbps", Rate(r.stored_bytes, seconds) / 1e9)
                        .AddRaw("latency_ms", LatencyJson(r))
                        .Add("error_count", r.error_count())
                        .AddRaw("errors", ErrorsJson(r.errors))
                        .str());
  }
  JsonObject out;
  out.Add("ok", error_count() == 0)
      .Add("workload", WorkloadName(o.workload))
      .Add("transport", transport)
      .Add("target", target)
      .AddRaw("chunk", chunk.str())
      .Add("connections", o.connections)
      .Add("inflight", o.inflight)
      .Add("warmup_s", o.warmup_s)
      .Add("seconds", seconds)
      .Add("total_ops", total_ops)
      .Add("error_count", error_count())
      .AddRaw("ops", ops_json.str());
  if (o.workload == Workload::kLookup) {
    out.AddRaw("lookup", JsonObject()
                             .Add("chains", o.chains)
                             .Add("chain_length", o.chain_length)
                             .Add("hit_rate_target", o.hit_rate)
                             .Add("hit_rate", lookup_keys ? static_cast<double>(lookup_present) /
                                                                lookup_keys
                                                          : 0.0)
                             .str());
  }
  out.AddRaw("verify", JsonObject()
                           .Add("enabled", o.verify)
                           .Add("checked", verify_checked)
                           .Add("mismatches", verify_mismatches)
                           .str());
  if (server_memory_after) {
    JsonObject m;
    if (server_memory_before) m.Add("before_bytes", *server_memory_before);
    out.AddRaw("server_memory",
               m.Add("after_bytes", *server_memory_after)
                   .Add("keys_stored", keys_stored)
                   .Add("tokens_stored", keys_stored * o.shape.num_tokens)
                   .Add("bytes_per_token", memory_per_token())
                   .Add("raw_bytes_per_token", o.shape.payload_bytes() / o.shape.num_tokens)
                   .str());
  }
  if (baseline) {
    const uint64_t bytes = o.shape.payload_bytes();
    const double up = baseline->upload.gbps(bytes), down = baseline->download.gbps(bytes);
    const double put_gbps = Rate(ops[0].logical_bytes, seconds) / 1e9;
    const double get_gbps = Rate(ops[1].logical_bytes, seconds) / 1e9;
    out.AddRaw("baseline",
               JsonObject()
                   .Add("kind", "tcp")
                   .Add("payload_bytes", bytes)
                   .Add("streams", o.connections * o.inflight)
                   .AddRaw("upload", TcpJson(baseline->upload, bytes))
                   .AddRaw("download", TcpJson(baseline->download, bytes))
                   .AddRaw("grpc_fraction", JsonObject()
                                                .Add("put", up > 0 ? put_gbps / up : 0.0)
                                                .Add("get", down > 0 ? get_gbps / down : 0.0)
                                                .str())
                   .str());
  }
  if (memcpy_baseline) {
    const uint64_t bytes = o.shape.payload_bytes();
    const MemcpyResult& m = *memcpy_baseline;
    const double put_gbps = Rate(ops[0].logical_bytes, seconds) / 1e9;
    const double get_gbps = Rate(ops[1].logical_bytes, seconds) / 1e9;
    const double g = m.gbps(bytes);
    out.AddRaw("memcpy_baseline",
               JsonObject()
                   .Add("payload_bytes", bytes)
                   .Add("threads", o.connections * o.inflight)
                   .Add("copies", m.copies)
                   .Add("seconds", m.seconds)
                   .Add("gbps", g)
                   .AddRaw("latency_ms", JsonObject()
                                             .Add("p50", Ms(Percentile(m.latency_ns, 0.50)))
                                             .Add("p99", Ms(Percentile(m.latency_ns, 0.99)))
                                             .str())
                   .AddRaw("fraction", JsonObject()
                                           .Add("put", g > 0 ? put_gbps / g : 0.0)
                                           .Add("get", g > 0 ? get_gbps / g : 0.0)
                                           .str())
                   .str());
  }
  return out.str();
}

absl::StatusOr<BenchReport> RunBench(const BenchOptions& options, const TransportFactory& open,
                                     std::string transport_name, std::string target) {
  if (absl::Status st = ValidateOptions(options); !st.ok()) return st;
  Runner runner(options);
  if (absl::Status st = runner.Open(open); !st.ok()) return st;
  if (absl::Status st = runner.Generate(); !st.ok()) return st;
  // Server memory is optional in the report: a transport that cannot tell leaves it out.
  absl::StatusOr<uint64_t> memory_before = runner.ServerMemory();
  if (absl::Status st = runner.Populate(); !st.ok()) {
    runner.Cleanup();
    return st;
  }
  double elapsed = 0;
  if (options.warmup_s > 0) runner.Phase(options.warmup_s, 0, /*measured=*/false, &elapsed);
  std::vector<ThreadStats> stats =
      runner.Phase(options.duration_s, options.count, /*measured=*/true, &elapsed);

  BenchReport report;
  report.options = options;
  report.transport = std::move(transport_name);
  report.target = std::move(target);
  report.seconds = elapsed;
  for (const ThreadStats& s : stats) {
    for (int k = 0; k < kNumOps; ++k) {
      OpReport& r = report.ops[k];
      const ThreadStats::PerOp& p = s.op[k];
      r.ops += p.ops;
      r.logical_bytes += p.logical;
      r.stored_bytes += p.stored;
      r.latency_ns.insert(r.latency_ns.end(), p.lat.begin(), p.lat.end());
      for (const auto& [code, n] : p.errors) r.errors[code] += n;
    }
    report.verify_checked += s.verify_checked;
    report.verify_mismatches += s.verify_mismatches;
    report.lookup_keys += s.lookup_keys;
    report.lookup_present += s.lookup_present;
  }
  for (OpReport& r : report.ops) std::sort(r.latency_ns.begin(), r.latency_ns.end());
  if (absl::StatusOr<uint64_t> after = runner.ServerMemory(); after.ok()) {
    report.server_memory_after = *after;
    report.keys_stored = runner.KeysStored();
    if (memory_before.ok()) report.server_memory_before = *memory_before;
  }
  runner.Cleanup();

  if (options.memcpy_baseline) {
    report.memcpy_baseline = RunMemcpyBaseline(options.shape.payload_bytes(), runner.workers(),
                                               options.baseline_duration_s, options.count);
  }
  if (options.tcp_baseline) {
    TcpBaselineOptions b;
    b.payload_bytes = options.shape.payload_bytes();
    b.streams = runner.workers();
    b.duration_s = options.baseline_duration_s;
    b.count = options.count;
    absl::StatusOr<TcpBaselineResult> r = RunTcpBaseline(b);
    if (!r.ok()) return r.status();
    report.baseline = std::move(*r);
  }
  return report;
}

}  // namespace kvstash::bench
