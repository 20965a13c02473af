// The daemon's metrics: one prometheus::Registry holding every family of catalog.h that
// the front ends update, created once at startup and handed out as typed handles, plus a
// Collectable that reads the store's gauges and counters from Store::Stats() at scrape
// time. Nothing here knows gRPC; the rpc layer passes method, transport and status code.
//
// Thread-safe: every method may be called concurrently (prometheus-cpp metrics are
// atomic; the per-preset bit accounting has its own mutex).
#ifndef KVSTASH_SERVER_METRICS_METRICS_H_
#define KVSTASH_SERVER_METRICS_METRICS_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/store/store.h"

namespace kvstash::metrics {

enum class Method {
  kPut = 0, kGet, kLookup, kDelete, kStats, kRegisterRegion, kUnregisterRegion, kRenewRegion
};
inline constexpr int kNumMethods = 8;
std::string_view MethodName(Method m);  // "Put", "Get", ...

// How a request's payload reached the daemon: in gRPC messages, or through a registered
// shared-memory region (Put/Get with a RegionRef, and the region RPCs). CUDA IPC will be a
// further value.
enum class Transport { kGrpc = 0, kShm, kCudaIpc };
inline constexpr int kNumTransports = 3;
std::string_view TransportName(Transport t);  // "grpc", "shm", "cuda_ipc"

enum class CodecOp { kEncode = 0, kDecode };

struct BuildInfo {
  std::string version = "unknown";
  std::string git_commit = "unknown";
  bool cuda = false;          // built with the CUDA codec and GPU tier
  std::string gpu = "none";   // the first GPU tier's device name
};

// Bucket bounds, exported for tests and the dashboard's documentation.
const std::vector<double>& LatencyBuckets();        // seconds, 50 us .. 10 s
const std::vector<double>& HitLengthBuckets();      // chunks, 0 .. 4096
const std::vector<double>& RelativeErrorBuckets();  // 1e-4 .. 1

class Metrics {
 public:
  explicit Metrics(const BuildInfo& build);
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // What the HTTP endpoint serializes: the registry.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // One answered request. `code` is the status code's canonical name ("OK",
  // "INVALID_ARGUMENT", ...; absl::StatusCodeToString spells them so). bytes_out only for
  // successful requests (0 otherwise).
  void ObserveRequest(Method method, Transport transport, std::string_view code,
                      double seconds, uint64_t bytes_in, uint64_t bytes_out);
  void AddInFlight(Transport transport, double delta);
  // kvstash_registered_regions{transport}.
  void SetRegisteredRegions(Transport transport, double count);
  void ObserveCodec(CodecOp op, double seconds);
  // One Lookup: how many leading keys were present.
  void ObserveLookup(uint64_t present_prefix);
  // One chunk stored with preset `preset` (kernels::PresetName spelling).
  void ObservePutChunk(std::string_view preset, uint64_t elements, uint64_t stored_bytes,
                       double equivalent_bits);
  // Fidelity probe outcomes (kFidelityError, kFidelityProbes).
  void ObserveFidelity(std::string_view preset, double key_error, double value_error);
  void CountProbe(std::string_view result);  // "ok", "gone" or "error"
  void SetReady(bool ready);

 private:
  struct PerMethod {
    prometheus::Histogram* duration = nullptr;
    prometheus::Counter* bytes_in = nullptr;
    prometheus::Counter* bytes_out = nullptr;
    prometheus::Counter* ok = nullptr;  // code="OK", the common case, without a lookup
  };
  struct PresetBits {
    prometheus::Gauge* equivalent = nullptr;
    prometheus::Gauge* true_bits = nullptr;
    double elements = 0;
    double stored_bits = 0;
    double equivalent_bit_elements = 0;
  };

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Gauge>* codec_equivalent_bits_;
  prometheus::Family<prometheus::Gauge>* codec_true_bits_;
  prometheus::Family<prometheus::Histogram>* fidelity_;
  prometheus::Family<prometheus::Counter>* probes_;
  std::array<std::array<PerMethod, kNumMethods>, kNumTransports> per_method_;
  std::array<prometheus::Gauge*, kNumTransports> in_flight_;
  std::array<prometheus::Gauge*, kNumTransports> regions_;
  std::array<prometheus::Histogram*, 2> codec_;
  prometheus::Counter* lookup_hits_;
  prometheus::Counter* lookup_misses_;
  prometheus::Histogram* lookup_length_;
  prometheus::Gauge* ready_;

  absl::Mutex mu_;
  std::map<std::string, PresetBits, std::less<>> preset_bits_ ABSL_GUARDED_BY(mu_);
};

struct StoreCollectorOptions {
  // Namespaces exported by name in the per-namespace families, those with the most
  // allocated bytes; every other namespace is summed into kv_namespace="__other__".
  // Bounds those families at top_namespaces + 1 series each (catalog.h). Default 16.
  int top_namespaces = 16;
};

// Reads the store's state on every scrape: per-tier capacity, use and chunks, logical vs
// stored bytes, bits per element, hits/misses, evictions, demotions and promotions, and
// per namespace (the top N by allocated bytes, plus "__other__").
// `store` is not owned and must outlive every Collect call (unregister or stop the HTTP
// server before destroying the store).
class StoreCollector final : public prometheus::Collectable {
 public:
  explicit StoreCollector(const store::Store* store, StoreCollectorOptions options = {})
      : store_(store), options_(options) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const store::Store* const store_;
  const StoreCollectorOptions options_;
};

// The families of `stats` and `namespaces` as StoreCollector exports them (for tests).
std::vector<prometheus::MetricFamily> StoreFamilies(
    const store::StoreStats& stats, const std::vector<store::NamespaceStats>& namespaces = {},
    const StoreCollectorOptions& options = {});

// Serializes every family of `collectables` in the Prometheus text format 0.0.4.
std::string SerializeText(
    const std::vector<std::shared_ptr<prometheus::Collectable>>& collectables);

}  // namespace kvstash::metrics

#endif  // KVSTASH_SERVER_METRICS_METRICS_H_
