#include "server/metrics/metrics.h"

#include <algorithm>
#include <cassert>
#include <iterator>
#include <sstream>
#include <type_traits>
#include <utility>

#include <prometheus/text_serializer.h>

#include "absl/strings/str_cat.h"
#include "server/metrics/catalog.h"

namespace kvstash::metrics {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;

std::string S(std::string_view v) { return std::string(v); }

template <typename T>
prometheus::Family<T>& Build(prometheus::Registry& registry, const MetricDef& def) {
  // The builder types differ per metric type; each call site names the matching one.
  if constexpr (std::is_same_v<T, prometheus::Counter>) {
    return prometheus::BuildCounter().Name(S(def.name)).Help(S(def.help)).Register(registry);
  } else if constexpr (std::is_same_v<T, prometheus::Gauge>) {
    return prometheus::BuildGauge().Name(S(def.name)).Help(S(def.help)).Register(registry);
  } else {
    return prometheus::BuildHistogram().Name(S(def.name)).Help(S(def.help)).Register(registry);
  }
}

prometheus::MetricType ToPrometheus(MetricType t) {
  switch (t) {
    case MetricType::kCounter: return prometheus::MetricType::Counter;
    case MetricType::kGauge: return prometheus::MetricType::Gauge;
    case MetricType::kHistogram: return prometheus::MetricType::Histogram;
  }
  return prometheus::MetricType::Untyped;
}

// Builds the families of catalog entries by hand (no Registry), for the scrape-time
// collector.
class FamilyBuilder {
 public:
  // Family() hands out references into families_, so it must never reallocate.
  FamilyBuilder() { families_.reserve(std::size(kCatalog)); }
  MetricFamily& Family(const MetricDef& def) {
    assert(families_.size() < families_.capacity());
    families_.push_back(MetricFamily{S(def.name), S(def.help), ToPrometheus(def.type), {}});
    return families_.back();
  }
  static void Add(MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
    ClientMetric m;
    m.label = std::move(labels);
    if (f.type == prometheus::MetricType::Counter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
    f.metric.push_back(std::move(m));
  }
  std::vector<MetricFamily> Take() { return std::move(families_); }

 private:
  std::vector<MetricFamily> families_;
};

// A namespace as a label value: the text format wants UTF-8, and the store takes any
// bytes (gRPC strings are UTF-8 already), so invalid bytes become U+FFFD.
std::string LabelValue(std::string_view name) {
  std::string out;
  out.reserve(name.size());
  size_t i = 0;
  while (i < name.size()) {
    const auto c = static_cast<unsigned char>(name[i]);
    const size_t len = c < 0x80            ? 1
                       : (c >> 5) == 0x6   ? 2
                       : (c >> 4) == 0xE   ? 3
                       : (c >> 3) == 0x1E  ? 4
                                           : 0;
    bool ok = len > 0 && i + len <= name.size();
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (static_cast<unsigned char>(name[i + k]) & 0xC0) == 0x80;
    }
    if (ok) {
      out.append(name.substr(i, len));
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");
      ++i;
    }
  }
  return out;
}

// The per-namespace families: the top `options.top_namespaces` by allocated bytes by name,
// the rest summed into kOtherNamespace.
void AddNamespaceFamilies(FamilyBuilder& b, const std::vector<store::NamespaceStats>& all,
                          const StoreCollectorOptions& options) {
  MetricFamily& chunks = b.Family(kNamespaceChunks);
  MetricFamily& allocated = b.Family(kNamespaceAllocatedBytes);
  MetricFamily& stored = b.Family(kNamespaceStoredBytes);
  MetricFamily& logical = b.Family(kNamespaceLogicalBytes);
  MetricFamily& quota = b.Family(kNamespaceQuotaBytes);
  MetricFamily& evictions = b.Family(kNamespaceEvictions);
  std::vector<const store::NamespaceStats*> order;
  order.reserve(all.size());
  for (const store::NamespaceStats& n : all) order.push_back(&n);
  const size_t top =
      std::min(order.size(), static_cast<size_t>(std::max(options.top_namespaces, 0)));
  // A real namespace spelled like the bucket is never listed by name (it would duplicate
  // the bucket's series); it is summed into the bucket.
  const auto before = [](const store::NamespaceStats* a, const store::NamespaceStats* c) {
    const bool a_other = a->name == kOtherNamespace, c_other = c->name == kOtherNamespace;
    if (a_other != c_other) return c_other;
    if (a->allocated_bytes != c->allocated_bytes) return a->allocated_bytes > c->allocated_bytes;
    return a->name < c->name;
  };
  std::partial_sort(order.begin(), order.begin() + top, order.end(), before);
  store::NamespaceStats other;
  for (size_t i = 0; i < order.size(); ++i) {
    const store::NamespaceStats& n = *order[i];
    if (i >= top || n.name == kOtherNamespace) {
      other.chunks += n.chunks;
      other.allocated_bytes += n.allocated_bytes;
      other.stored_bytes += n.stored_bytes;
      other.logical_bytes += n.logical_bytes;
      other.quota_evictions += n.quota_evictions;
      other.capacity_evictions += n.capacity_evictions;
      continue;
    }
    const std::string label = LabelValue(n.name);
    FamilyBuilder::Add(quota, {{"kv_namespace", label}}, static_cast<double>(n.quota_bytes));
    FamilyBuilder::Add(chunks, {{"kv_namespace", label}}, static_cast<double>(n.chunks));
    FamilyBuilder::Add(allocated, {{"kv_namespace", label}},
                       static_cast<double>(n.allocated_bytes));
    FamilyBuilder::Add(stored, {{"kv_namespace", label}}, static_cast<double>(n.stored_bytes));
    FamilyBuilder::Add(logical, {{"kv_namespace", label}}, static_cast<double>(n.logical_bytes));
    FamilyBuilder::Add(evictions, {{"kv_namespace", label}, {"reason", "quota"}},
                       static_cast<double>(n.quota_evictions));
    FamilyBuilder::Add(evictions, {{"kv_namespace", label}, {"reason", "capacity"}},
                       static_cast<double>(n.capacity_evictions));
  }
  const std::string label(kOtherNamespace);
  FamilyBuilder::Add(chunks, {{"kv_namespace", label}}, static_cast<double>(other.chunks));
  FamilyBuilder::Add(allocated, {{"kv_namespace", label}},
                     static_cast<double>(other.allocated_bytes));
  FamilyBuilder::Add(stored, {{"kv_namespace", label}}, static_cast<double>(other.stored_bytes));
  FamilyBuilder::Add(logical, {{"kv_namespace", label}},
                     static_cast<double>(other.logical_bytes));
  FamilyBuilder::Add(evictions, {{"kv_namespace", label}, {"reason", "quota"}},
                     static_cast<double>(other.quota_evictions));
  FamilyBuilder::Add(evictions, {{"kv_namespace", label}, {"reason", "capacity"}},
                     static_cast<double>(other.capacity_evictions));
}

}  // namespace

std::string_view MethodName(Method m) {
  switch (m) {
    case Method::kPut: return "Put";
    case Method::kGet: return "Get";
    case Method::kLookup: return "Lookup";
    case Method::kDelete: return "Delete";
    case Method::kStats: return "Stats";
    case Method::kRegisterRegion: return "RegisterRegion";
    case Method::kUnregisterRegion: return "UnregisterRegion";
    case Method::kRenewRegion: return "RenewRegion";
  }
  return "unknown";
}

std::string_view TransportName(Transport t) {
  switch (t) {
    case Transport::kGrpc: return "grpc";
    case Transport::kShm: return "shm";
    case Transport::kCudaIpc: return "cuda_ipc";
  }
  return "unknown";
}

const std::vector<double>& LatencyBuckets() {
  static const std::vector<double> kBuckets = {
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
      0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,     10};
  return kBuckets;
}

const std::vector<double>& HitLengthBuckets() {
  static const std::vector<double> kBuckets = {0,  1,   2,   4,   8,    16,   32,
                                               64, 128, 256, 512, 1024, 2048, 4096};
  return kBuckets;
}

const std::vector<double>& RelativeErrorBuckets() {
  static const std::vector<double> kBuckets = {0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1,
                                               0.15,   0.2,   0.3,   0.4,  0.5,  0.75, 1};
  return kBuckets;
}

// --- Metrics ----------------------------------------------------------------------------

Metrics::Metrics(const BuildInfo& build) : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  Build<prometheus::Gauge>(r, kBuildInfo)
      .Add({{"version", build.version},
            {"git_commit", build.git_commit},
            {"cuda", build.cuda ? "on" : "off"},
            {"gpu", build.gpu.empty() ? "none" : build.gpu}})
      .Set(1);
  ready_ = &Build<prometheus::Gauge>(r, kReady).Add({});
  auto& in_flight = Build<prometheus::Gauge>(r, kRequestsInFlight);
  auto& regions = Build<prometheus::Gauge>(r, kRegisteredRegions);
  requests_ = &Build<prometheus::Counter>(r, kRequests);
  auto& duration = Build<prometheus::Histogram>(r, kRequestDuration);
  auto& received = Build<prometheus::Counter>(r, kReceivedBytes);
  auto& sent = Build<prometheus::Counter>(r, kSentBytes);
  for (int t = 0; t < kNumTransports; ++t) {
    const std::string transport = S(TransportName(static_cast<Transport>(t)));
    in_flight_[t] = &in_flight.Add({{"transport", transport}});
    regions_[t] = &regions.Add({{"transport", transport}});
    regions_[t]->Set(0);
    for (int m = 0; m < kNumMethods; ++m) {
      const std::string method = S(MethodName(static_cast<Method>(m)));
      const prometheus::Labels labels = {{"method", method}, {"transport", transport}};
      PerMethod& pm = per_method_[t][m];
      pm.duration = &duration.Add(labels, LatencyBuckets());
      pm.bytes_in = &received.Add(labels);
      pm.bytes_out = &sent.Add(labels);
      pm.ok = &requests_->Add({{"method", method}, {"transport", transport}, {"code", "OK"}});
    }
  }
  auto& codec = Build<prometheus::Histogram>(r, kCodecDuration);
  codec_[static_cast<int>(CodecOp::kEncode)] = &codec.Add({{"op", "encode"}}, LatencyBuckets());
  codec_[static_cast<int>(CodecOp::kDecode)] = &codec.Add({{"op", "decode"}}, LatencyBuckets());
  auto& lookups = Build<prometheus::Counter>(r, kLookups);
  lookup_hits_ = &lookups.Add({{"result", "hit"}});
  lookup_misses_ = &lookups.Add({{"result", "miss"}});
  lookup_length_ = &Build<prometheus::Histogram>(r, kLookupHitLength).Add({}, HitLengthBuckets());
  codec_equivalent_bits_ = &Build<prometheus::Gauge>(r, kCodecEquivalentBits);
  codec_true_bits_ = &Build<prometheus::Gauge>(r, kCodecTrueBits);
  fidelity_ = &Build<prometheus::Histogram>(r, kFidelityError);
  probes_ = &Build<prometheus::Counter>(r, kFidelityProbes);
  for (const char* result : {"ok", "gone", "error"}) probes_->Add({{"result", result}});
}

void Metrics::ObserveRequest(Method method, Transport transport, std::string_view code,
                             double seconds, uint64_t bytes_in, uint64_t bytes_out) {
  const PerMethod& pm = per_method_[static_cast<int>(transport)][static_cast<int>(method)];
  pm.duration->Observe(seconds);
  pm.bytes_in->Increment(static_cast<double>(bytes_in));
  if (bytes_out > 0) pm.bytes_out->Increment(static_cast<double>(bytes_out));
  if (code == "OK") {
    pm.ok->Increment();
  } else {
    // Rare; Family::Add returns the existing series for known labels.
    requests_
        ->Add({{"method", S(MethodName(method))},
               {"transport", S(TransportName(transport))},
               {"code", S(code)}})
        .Increment();
  }
}

void Metrics::AddInFlight(Transport transport, double delta) {
  in_flight_[static_cast<int>(transport)]->Increment(delta);
}

void Metrics::SetRegisteredRegions(Transport transport, double count) {
  regions_[static_cast<int>(transport)]->Set(count);
}

void Metrics::ObserveCodec(CodecOp op, double seconds) {
  codec_[static_cast<int>(op)]->Observe(seconds);
}

void Metrics::ObserveLookup(uint64_t present_prefix) {
  (present_prefix > 0 ? lookup_hits_ : lookup_misses_)->Increment();
  lookup_length_->Observe(static_cast<double>(present_prefix));
}

void Metrics::ObservePutChunk(std::string_view preset, uint64_t elements,
                              uint64_t stored_bytes, double equivalent_bits) {
  if (elements == 0) return;
  absl::MutexLock lock(&mu_);
  auto it = preset_bits_.find(preset);
  if (it == preset_bits_.end()) {
    PresetBits fresh;
    fresh.equivalent = &codec_equivalent_bits_->Add({{"preset", S(preset)}});
    fresh.true_bits = &codec_true_bits_->Add({{"preset", S(preset)}});
    it = preset_bits_.emplace(S(preset), fresh).first;
  }
  PresetBits& b = it->second;
  b.elements += static_cast<double>(elements);
  b.stored_bits += 8.0 * static_cast<double>(stored_bytes);
  b.equivalent_bit_elements += equivalent_bits * static_cast<double>(elements);
  b.equivalent->Set(b.equivalent_bit_elements / b.elements);
  b.true_bits->Set(b.stored_bits / b.elements);
}

void Metrics::ObserveFidelity(std::string_view preset, double key_error, double value_error) {
  fidelity_->Add({{"preset", S(preset)}, {"tensor", "key"}}, RelativeErrorBuckets())
      .Observe(key_error);
  fidelity_->Add({{"preset", S(preset)}, {"tensor", "value"}}, RelativeErrorBuckets())
      .Observe(value_error);
}

void Metrics::CountProbe(std::string_view result) { probes_->Add({{"result", S(result)}}).Increment(); }

void Metrics::SetReady(bool ready) { ready_->Set(ready ? 1 : 0); }

// --- The store collector ----------------------------------------------------------------

std::vector<MetricFamily> StoreFamilies(const store::StoreStats& s,
                                        const std::vector<store::NamespaceStats>& namespaces,
                                        const StoreCollectorOptions& options) {
  FamilyBuilder b;
  const auto d = [](double v) { return v; };
  MetricFamily& capacity = b.Family(kTierCapacity);
  MetricFamily& used = b.Family(kTierUsed);
  MetricFamily& chunks = b.Family(kTierChunks);
  MetricFamily& healthy = b.Family(kTierHealthy);
  const std::vector<ClientMetric::Label> host = {{"tier", "host"}, {"device", "host"}};
  FamilyBuilder::Add(capacity, host, d(s.capacity_bytes));
  FamilyBuilder::Add(used, host, d(s.used_bytes));
  // Without a GPU tier every chunk is a host chunk; the GPU-aware store counts them.
  FamilyBuilder::Add(chunks, host, d(s.gpus.empty() ? s.chunks : s.host_chunks));
  FamilyBuilder::Add(healthy, host, 1);
  for (const store::GpuTierStats& g : s.gpus) {
    const std::vector<ClientMetric::Label> gpu = {{"tier", "gpu"},
                                                  {"device", absl::StrCat(g.ordinal)}};
    FamilyBuilder::Add(capacity, gpu, d(g.capacity_bytes));
    FamilyBuilder::Add(used, gpu, d(g.used_bytes));
    FamilyBuilder::Add(chunks, gpu, d(g.chunks));
    FamilyBuilder::Add(healthy, gpu, g.healthy ? 1 : 0);
  }
  FamilyBuilder::Add(b.Family(kPageBytes), {}, d(s.page_bytes));
  FamilyBuilder::Add(b.Family(kChunks), {}, d(s.chunks));
  FamilyBuilder::Add(b.Family(kLogicalBytes), {}, d(s.logical_bytes));
  FamilyBuilder::Add(b.Family(kStoredBytes), {}, d(s.stored_bytes));
  FamilyBuilder::Add(b.Family(kStoredElements), {}, d(s.elements));
  const double elements = static_cast<double>(s.elements);
  FamilyBuilder::Add(b.Family(kEquivalentBits), {},
                     s.elements ? s.equivalent_bit_elements / elements : 0.0);
  FamilyBuilder::Add(b.Family(kTrueBits), {},
                     s.elements ? 8.0 * static_cast<double>(s.stored_bytes) / elements : 0.0);
  FamilyBuilder::Add(b.Family(kHits), {}, d(s.hits));
  FamilyBuilder::Add(b.Family(kMisses), {}, d(s.misses));
  FamilyBuilder::Add(b.Family(kChunksPut), {}, d(s.puts));
  FamilyBuilder::Add(b.Family(kChunksDeleted), {}, d(s.deletes));
  FamilyBuilder::Add(b.Family(kEvictions), {{"tier", "host"}}, d(s.evictions));
  FamilyBuilder::Add(b.Family(kDemotions), {{"tier", "gpu"}}, d(s.demotions));
  FamilyBuilder::Add(b.Family(kPromotions), {{"tier", "gpu"}}, d(s.promotions));
  FamilyBuilder::Add(b.Family(kGpuFallbacks), {}, d(s.gpu_fallbacks));
  FamilyBuilder::Add(b.Family(kNamespaces), {}, d(static_cast<double>(namespaces.size())));
  AddNamespaceFamilies(b, namespaces, options);
  return b.Take();
}

std::vector<MetricFamily> StoreCollector::Collect() const {
  return StoreFamilies(store_->Stats(), store_->PerNamespaceStats(), options_);
}

std::string SerializeText(
    const std::vector<std::shared_ptr<prometheus::Collectable>>& collectables) {
  std::vector<MetricFamily> families;
  for (const auto& c : collectables) {
    std::vector<MetricFamily> part = c->Collect();
    families.insert(families.end(), std::make_move_iterator(part.begin()),
                    std::make_move_iterator(part.end()));
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace kvstash::metrics
