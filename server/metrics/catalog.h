// Every metric kvstashd exports, in one place: name, type, labels and help. Code creates
// metrics only from these definitions, tests check the catalog against a live scrape, and
// docs/operators.md explains them. Names follow Prometheus conventions: the kvstash_
// prefix, base units (bytes, seconds), counters end in _total, labels low-cardinality.
//
// Thread-compatible: constant data.
#ifndef KVSTASH_SERVER_METRICS_CATALOG_H_
#define KVSTASH_SERVER_METRICS_CATALOG_H_

#include <string_view>

namespace kvstash::metrics {

enum class MetricType { kCounter, kGauge, kHistogram };

struct MetricDef {
  std::string_view name;
  MetricType type;
  std::string_view labels;  // comma-separated label names, "" for none
  std::string_view help;
};

// --- Build and lifecycle ----------------------------------------------------------------
inline constexpr MetricDef kBuildInfo{
    "kvstash_build_info", MetricType::kGauge, "version,git_commit,cuda,gpu",
    "Always 1; the labels say which build runs: version, git commit, CUDA on/off and the "
    "first GPU's name (\"none\" without GPUs)."};
inline constexpr MetricDef kReady{
    "kvstash_ready", MetricType::kGauge, "",
    "1 while the daemon accepts requests, 0 while starting or draining (as /readyz)."};
inline constexpr MetricDef kRequestsInFlight{
    "kvstash_requests_in_flight", MetricType::kGauge, "transport",
    "Requests accepted and not yet answered (queued for a worker or running)."};
inline constexpr MetricDef kRegisteredRegions{
    "kvstash_registered_regions", MetricType::kGauge, "transport",
    "Client memory regions registered for zero-copy transfer (always 0 for grpc)."};

// --- Requests (the rpc layer) -----------------------------------------------------------
inline constexpr MetricDef kRequests{
    "kvstash_requests_total", MetricType::kCounter, "method,transport,code",
    "Requests answered, by method, transport and status code (OK, INVALID_ARGUMENT, ...)."};
inline constexpr MetricDef kRequestDuration{
    "kvstash_request_duration_seconds", MetricType::kHistogram, "method,transport",
    "Time from a request's arrival to its answer, queueing for a worker included."};
inline constexpr MetricDef kReceivedBytes{
    "kvstash_received_bytes_total", MetricType::kCounter, "method,transport",
    "Serialized request bytes received."};
inline constexpr MetricDef kSentBytes{
    "kvstash_sent_bytes_total", MetricType::kCounter, "method,transport",
    "Serialized response bytes sent (successful requests)."};
inline constexpr MetricDef kCodecDuration{
    "kvstash_codec_duration_seconds", MetricType::kHistogram, "op",
    "Worker time of one Put (op=encode: validate, encode, store) or Get (op=decode: "
    "gather, verify, decode) request."};
inline constexpr MetricDef kLookups{
    "kvstash_lookups_total", MetricType::kCounter, "result",
    "Lookup requests: result=hit when at least the first key is present, else miss."};
inline constexpr MetricDef kLookupHitLength{
    "kvstash_lookup_hit_length_chunks", MetricType::kHistogram, "",
    "Leading chunks present per Lookup (present_prefix), misses included as 0."};
inline constexpr MetricDef kCodecEquivalentBits{
    "kvstash_codec_equivalent_bitwidth", MetricType::kGauge, "preset",
    "Element-weighted mean equivalent bits per element (B_eq, code bits only) of the "
    "chunks put with this preset since start."};
inline constexpr MetricDef kCodecTrueBits{
    "kvstash_codec_true_bitwidth", MetricType::kGauge, "preset",
    "Element-weighted mean true bits per element (every stored bit: scales, zeros, "
    "header) of the chunks put with this preset since start."};
inline constexpr MetricDef kFidelityError{
    "kvstash_fidelity_relative_error", MetricType::kHistogram, "preset,tensor",
    "Sampled fidelity probe: relative reconstruction error ||x - x_hat|| / ||x|| of a "
    "stored chunk's keys (tensor=key) or values (tensor=value), decoded right after its Put."};
inline constexpr MetricDef kFidelityProbes{
    "kvstash_fidelity_probes_total", MetricType::kCounter, "result",
    "Fidelity probes run: result=ok, gone (deleted, evicted or replaced before the probe) "
    "or error (the decode failed)."};

// --- The store (collected from Store::Stats() at scrape time) ---------------------------
inline constexpr MetricDef kTierCapacity{
    "kvstash_tier_capacity_bytes", MetricType::kGauge, "tier,device",
    "Bytes of memory a tier's pool owns (tier=host device=host, or tier=gpu device=ordinal)."};
inline constexpr MetricDef kTierUsed{
    "kvstash_tier_used_bytes", MetricType::kGauge, "tier,device",
    "Bytes of a tier's pool pages held by chunks."};
inline constexpr MetricDef kTierChunks{
    "kvstash_tier_chunks", MetricType::kGauge, "tier,device",
    "Chunks resident in a tier's pool."};
inline constexpr MetricDef kTierHealthy{
    "kvstash_tier_healthy", MetricType::kGauge, "tier,device",
    "1 while a tier takes new chunks; 0 for a GPU after a CUDA error."};
inline constexpr MetricDef kPageBytes{
    "kvstash_page_bytes", MetricType::kGauge, "",
    "Page size of every pool; chunks occupy whole pages."};
inline constexpr MetricDef kChunks{
    "kvstash_chunks", MetricType::kGauge, "", "Chunks stored, all tiers."};
inline constexpr MetricDef kLogicalBytes{
    "kvstash_logical_bytes", MetricType::kGauge, "",
    "16-bit payload bytes (2 per element) of the chunks stored."};
inline constexpr MetricDef kStoredBytes{
    "kvstash_stored_bytes", MetricType::kGauge, "",
    "Encoded bytes of the chunks stored (headers included)."};
inline constexpr MetricDef kStoredElements{
    "kvstash_stored_elements", MetricType::kGauge, "",
    "K and V elements (2*L*T*H*D summed) of the chunks stored."};
inline constexpr MetricDef kEquivalentBits{
    "kvstash_stored_equivalent_bitwidth", MetricType::kGauge, "",
    "Element-weighted mean equivalent bits (B_eq) of the chunks stored; 0 when empty."};
inline constexpr MetricDef kTrueBits{
    "kvstash_stored_true_bitwidth", MetricType::kGauge, "",
    "8 * stored bytes / stored elements of the chunks stored; 0 when empty."};
inline constexpr MetricDef kHits{
    "kvstash_store_hits_total", MetricType::kCounter, "",
    "Get keys found plus Lookup leading keys found."};
inline constexpr MetricDef kMisses{
    "kvstash_store_misses_total", MetricType::kCounter, "",
    "Get keys not found plus Lookups stopped by a missing key."};
inline constexpr MetricDef kChunksPut{
    "kvstash_chunks_put_total", MetricType::kCounter, "", "Chunks stored by Put."};
inline constexpr MetricDef kChunksDeleted{
    "kvstash_chunks_deleted_total", MetricType::kCounter, "", "Chunks removed by Delete."};
inline constexpr MetricDef kEvictions{
    "kvstash_evictions_total", MetricType::kCounter, "tier",
    "Chunks dropped from a tier to make room for a Put (tier=host: gone for good)."};
inline constexpr MetricDef kDemotions{
    "kvstash_demotions_total", MetricType::kCounter, "tier",
    "Chunks moved out of a tier to the next one under pressure (tier=gpu: GPU -> host)."};
inline constexpr MetricDef kPromotions{
    "kvstash_promotions_total", MetricType::kCounter, "tier",
    "Chunks moved into a tier after a read (tier=gpu: host -> GPU)."};
inline constexpr MetricDef kGpuFallbacks{
    "kvstash_gpu_fallbacks_total", MetricType::kCounter, "",
    "Puts meant for a GPU stored in the host tier instead (device pool full of pinned "
    "chunks, or unhealthy)."};

// --- Per namespace (collected from Store::PerNamespaceStats() at scrape time) ------------
// Label kv_namespace: the StoreCollector's top_namespaces namespaces by allocated bytes, by
// name, and one series kv_namespace="__other__" summing every other namespace, so the
// number of series stays bounded whatever namespaces clients use. (Not "namespace": that
// label is the Kubernetes namespace Prometheus attaches to every scraped series.)
inline constexpr std::string_view kOtherNamespace = "__other__";
inline constexpr MetricDef kNamespaces{
    "kvstash_namespaces", MetricType::kGauge, "",
    "Namespaces the store accounts for: those holding chunks, plus recently emptied ones "
    "(at most 1024 of those)."};
inline constexpr MetricDef kNamespaceChunks{
    "kvstash_namespace_chunks", MetricType::kGauge, "kv_namespace",
    "Chunks a namespace holds, all tiers (kv_namespace=__other__: every namespace outside "
    "the top N by allocated bytes)."};
inline constexpr MetricDef kNamespaceAllocatedBytes{
    "kvstash_namespace_allocated_bytes", MetricType::kGauge, "kv_namespace",
    "Bytes of pool pages charged to a namespace, host and GPU tiers: what its quota "
    "limits."};
inline constexpr MetricDef kNamespaceStoredBytes{
    "kvstash_namespace_stored_bytes", MetricType::kGauge, "kv_namespace",
    "Encoded bytes of a namespace's chunks."};
inline constexpr MetricDef kNamespaceLogicalBytes{
    "kvstash_namespace_logical_bytes", MetricType::kGauge, "kv_namespace",
    "16-bit payload bytes of a namespace's chunks."};
inline constexpr MetricDef kNamespaceQuotaBytes{
    "kvstash_namespace_quota_bytes", MetricType::kGauge, "kv_namespace",
    "A namespace's quota in bytes of pool pages; 0 = none. Only for namespaces listed by "
    "name."};
inline constexpr MetricDef kNamespaceEvictions{
    "kvstash_namespace_evictions_total", MetricType::kCounter, "kv_namespace,reason",
    "A namespace's chunks evicted: reason=quota to keep it within its own quota, "
    "reason=capacity because a pool was full. Series of __other__ drop when a namespace "
    "enters the top N or is forgotten."};

// Every definition above, in catalog order.
inline constexpr MetricDef kCatalog[] = {
    kBuildInfo,      kReady,          kRequestsInFlight, kRegisteredRegions, kRequests,
    kRequestDuration, kReceivedBytes, kSentBytes,        kCodecDuration,     kLookups,
    kLookupHitLength, kCodecEquivalentBits, kCodecTrueBits, kFidelityError,  kFidelityProbes,
    kTierCapacity,   kTierUsed,       kTierChunks,       kTierHealthy,       kPageBytes,
    kChunks,         kLogicalBytes,   kStoredBytes,      kStoredElements,    kEquivalentBits,
    kTrueBits,       kHits,           kMisses,           kChunksPut,         kChunksDeleted,
    kEvictions,      kDemotions,      kPromotions,       kGpuFallbacks,      kNamespaces,
    kNamespaceChunks, kNamespaceAllocatedBytes, kNamespaceStoredBytes, kNamespaceLogicalBytes,
    kNamespaceQuotaBytes, kNamespaceEvictions,
};

}  // namespace kvstash::metrics

#endif  // KVSTASH_SERVER_METRICS_CATALOG_H_
