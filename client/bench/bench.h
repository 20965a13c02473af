// The load generator behind kvstash-bench: workloads, the run loop, statistics and the
// report (text and JSON). The command line is client/bench/main.cc; docs/bench.md is the
// reference.
//
// Thread-safety: RunBench is thread-safe (each call owns its threads and state); the
// helper functions are pure.
#ifndef KVSTASH_CLIENT_BENCH_BENCH_H_
#define KVSTASH_CLIENT_BENCH_BENCH_H_

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvstash/client/chunk_key.h"
#include "kvstash/kernels/format.h"
#include "tcp_baseline.h"
#include "transport.h"

namespace kvstash::bench {

enum class Workload { kPut, kGet, kMixed, kLookup };
// "put", "get", "mixed", "lookup". InvalidArgument otherwise.
absl::StatusOr<Workload> ParseWorkload(std::string_view name);
std::string_view WorkloadName(Workload w);

enum class Op { kPut = 0, kGet = 1, kLookup = 2 };
inline constexpr int kNumOps = 3;
std::string_view OpName(Op op);

struct BenchOptions {
  Workload workload = Workload::kPut;
  // Chunk geometry and dtype of every chunk; default llama-3-8b, T=256, fp16.
  kernels::ChunkShape shape{32, 256, 8, 128, kernels::DType::kF16};
  std::string model = "llama-3-8b";  // informational, for the report
  kernels::Preset preset = kernels::Preset::kXQuant;  // codec preset; never kCustom
  std::string ns = "kvstash-bench";  // namespace of every key

  uint32_t connections = 1;  // transports opened
  uint32_t inflight = 1;     // threads per connection, one request in flight each
  double duration_s = 10;    // measured time, when count == 0
  uint64_t count = 0;        // measured operations (all threads together); 0 = duration
  double warmup_s = 0;       // run the workload this long first, not measured

  uint32_t keys = 16;        // distinct keys of put/get/mixed (cycled)
  uint32_t payloads = 4;     // distinct payloads generated; key i holds payload i % payloads
  double put_fraction = 0.5; // mixed: fraction of operations that are puts, [0, 1]
  uint32_t chains = 4;       // lookup: chains (token sequences)
  uint32_t chain_length = 8; // lookup: keys per chain
  double hit_rate = 0.5;     // lookup: leading fraction of each chain stored, [0, 1]

  bool verify = false;       // check every Get (and Lookup) against the expected answer
  bool cleanup = true;       // delete the keys written, at the end
  uint64_t seed = 1;         // payloads and keys
  bool progress = false;     // one status line per second on stderr

  // Loopback TCP baseline after the workload: same payload bytes, same concurrency.
  bool tcp_baseline = false;
  double baseline_duration_s = 3;  // per direction, when count == 0 (else `count` each)
  // memcpy baseline after the workload: each thread copies payload-sized buffers for
  // baseline_duration_s (or `count` copies in all); on by default for --transport shm.
  bool memcpy_baseline = false;
  // The transport stores payloads as given, with no codec (redis): --verify expects the
  // payload itself and the report names the codec "none".
  bool raw_store = false;
};

// Throughput of memcpy: `threads` threads each copying `bytes`-byte buffers (distinct
// source and destination per thread, touched first) for `seconds`, or `count` copies in
// all when count > 0.
struct MemcpyResult {
  uint64_t copies = 0;
  double seconds = 0;
  std::vector<uint64_t> latency_ns;  // sorted
  double gbps(uint64_t bytes) const { return seconds > 0 ? copies * double(bytes) / seconds / 1e9 : 0; }
};
MemcpyResult RunMemcpyBaseline(uint64_t bytes, uint32_t threads, double seconds, uint64_t count);

// InvalidArgument naming the first bad field (as its command-line flag).
absl::Status ValidateOptions(const BenchOptions& o);

// "P:G" (e.g. "1:3") → P / (P + G). InvalidArgument for anything else or 0:0.
absl::StatusOr<double> ParseRatio(std::string_view text);

// Whether operation i of a mixed workload is a put: a low-discrepancy sequence, so any
// window of n operations holds put_fraction·n ± 1 puts.
bool MixedIsPut(uint64_t i, double put_fraction);

// Key i of the put/get key space of a run (a pure function of seed and i).
client::ChunkKey BenchKey(uint64_t seed, uint64_t i);

// Leading keys of each lookup chain stored before lookups run: round(hit_rate · length).
uint32_t StoredPrefix(double hit_rate, uint32_t chain_length);

// Nearest-rank percentile (q in [0, 1]) of `sorted`; 0 when empty.
uint64_t Percentile(std::span<const uint64_t> sorted, double q);

// What one kind of operation did in the measured phase.
struct OpReport {
  uint64_t ops = 0;             // successful operations
  uint64_t logical_bytes = 0;   // 16-bit payload bytes moved by them
  uint64_t stored_bytes = 0;    // encoded bytes of the chunks they moved
  std::vector<uint64_t> latency_ns;  // sorted, successful operations only
  std::map<std::string, uint64_t> errors;  // status code name (or VERIFY_MISMATCH) → count
  uint64_t error_count() const;
};

struct BenchReport {
  BenchOptions options;
  std::string transport;
  std::string target;
  double seconds = 0;                    // measured wall time
  std::array<OpReport, kNumOps> ops;     // by Op
  uint64_t verify_checked = 0;           // Gets/Lookups compared with the expectation
  uint64_t verify_mismatches = 0;
  uint64_t lookup_keys = 0;              // keys asked by successful Lookups
  uint64_t lookup_present = 0;           // of which in the present prefix
  std::optional<TcpBaselineResult> baseline;
  std::optional<MemcpyResult> memcpy_baseline;
  // Transport::ServerMemoryBytes before pre-populating and after the measured phase (before
  // the bench deletes its keys); absent when the transport does not report it.
  std::optional<uint64_t> server_memory_before;
  std::optional<uint64_t> server_memory_after;
  uint64_t keys_stored = 0;  // distinct keys stored when server_memory_after was read

  uint64_t error_count() const;
  // server_memory_after / (keys_stored · T): memory per cached token, bytes; 0 when unknown.
  double memory_per_token() const;
  // Text for humans (stdout) and one JSON object (--json); docs/bench.md lists the fields.
  std::string Text() const;
  std::string Json() const;
};

// Opens connection `index` of a run.
using TransportFactory =
    std::function<absl::StatusOr<std::unique_ptr<Transport>>(uint32_t index)>;

// Runs the benchmark: opens options.connections transports, generates payloads (and their
// expected decodes with --verify: kernels::Decode(kernels::EncodeChunk(payload)), which
// the daemon must return byte for byte), pre-populates (get, mixed, lookup), runs the
// warmup and the measured phase, reads the server's memory (before pre-populating and
// after the measured phase), runs the TCP baseline, and deletes what it wrote.
// Errors of individual operations are counted in the report, not returned; a failure to
// open, pre-populate or run the baseline is returned with its status.
absl::StatusOr<BenchReport> RunBench(const BenchOptions& options, const TransportFactory& open,
                                     std::string transport_name = "grpc",
                                     std::string target = "");

}  // namespace kvstash::bench

#endif  // KVSTASH_CLIENT_BENCH_BENCH_H_
