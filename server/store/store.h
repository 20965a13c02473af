// The chunk store: an index from (namespace, 128-bit key) to encoded chunks kept as
// layer-pair sections in paged memory pools, with LRU eviction of unpinned chunks. With
// GPUs, device pools are the first tier (encode and decode on the GPU; least recently read
// chunks demoted to the host pool under pressure) and the host pool the second.
// See docs/store.md for the page lifecycle.
//
// Thread-safe: every method may be called concurrently. The index is sharded by key hash,
// each shard with its own mutex; encoding, decoding and copies run outside every lock.
#ifndef KVSTASH_SERVER_STORE_STORE_H_
#define KVSTASH_SERVER_STORE_STORE_H_

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
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"

namespace kvstash::store {

// A 128-bit chunk key (docs/api.md, "Chunk keys").
struct ChunkKey {
  uint64_t hi = 0;
  uint64_t lo = 0;
  bool operator==(const ChunkKey&) const = default;
};

struct StoreOptions {
  // Bytes of host memory the pool owns, allocated up front. Default 1 GiB.
  uint64_t host_capacity_bytes = 1ull << 30;
  // Pool page size in bytes; a power of two >= 4096. Default 64 KiB.
  uint32_t page_bytes = 64 * 1024;
  // Index shards (power of two). Default 16.
  uint32_t num_shards = 16;
  // Encoder/decoder implementation. Default the fast CPU path.
  kernels::Impl impl = kernels::Impl::kFast;
  // Namespace names longer than this are rejected. Default 256 bytes.
  uint32_t max_namespace_bytes = 256;
  // Touch every pool page at startup (no page faults under load; a host short of memory
  // fails at startup). Default false.
  bool prefault = false;
  // Hard limit on the pool bytes one namespace may hold (whole pages, host and GPU tiers
  // together), for every namespace without an override; 0 = no limit. A Put into a
  // namespace at its quota first evicts that namespace's own least recently read unpinned
  // chunks; when even that cannot make room it fails with ResourceExhausted
  // (docs/store.md, "Namespaces and quotas"). Nonzero values are at least page_bytes.
  // Default 0.
  uint64_t namespace_quota_bytes = 0;
  // Per-namespace quotas in bytes, replacing namespace_quota_bytes for the namespaces
  // named; 0 = no limit for that namespace. Default empty.
  std::map<std::string, uint64_t> namespace_quota_overrides;

  // --- GPU tier (docs/store.md, "GPU tier"); used only in a CUDA build on a host where the
  // CUDA runtime reports devices. Otherwise the store is host-only and these are ignored.
  // Use visible GPUs as the first tier. false = host tier and CPU codec only. Default true.
  bool use_gpu = true;
  // CUDA ordinals to use, one device pool each; empty = every visible device. Default empty.
  std::vector<int> gpu_devices;
  // Bytes of device memory each device pool takes up front (cudaMalloc), rounded down to
  // whole pages of page_bytes; 0 = a quarter of the device's free memory at startup.
  // Default 0.
  uint64_t gpu_capacity_bytes = 0;
  // Worker streams per device; each has its own pinned staging pair and device scratch, so
  // up to this many requests copy and run kernels concurrently per device. Default 4.
  uint32_t gpu_streams = 4;
  // Bytes of each of a worker's two pinned host staging buffers (host<->device copies
  // are double-buffered through them). At least 64 KiB. Default 4 MiB.
  uint64_t gpu_staging_bytes = 4ull << 20;
  // Copy a host-tier chunk onto its device after a read when the device pool has free
  // pages (never demoting another chunk for it). Default false: with a host
  // OutputAllocator, reads decode faster on the CPU (docs/store.md, "GPU tier").
  bool gpu_promote_on_read = false;
  // Register the host pool with the CUDA driver (cudaHostRegister) so host-tier chunks are
  // copied to a device by DMA straight from their pages: the host-tier restore of GetDevice
  // moves only compressed bytes, with no staging copy. Pins the whole pool in RAM. Default
  // true.
  bool gpu_pin_host_pool = true;
};

// Per-request choices of Put.
struct PutOptions {
  // Index into the store's GPU devices (StoreStats::gpus) to keep the chunk on; -1 = the
  // namespace's device, hash(namespace) % number of devices. Ignored without GPUs.
  // InvalidArgument when out of range. Default -1.
  int device = -1;
  // Called once the encoder has finished reading the payload and before anything is
  // charged, allocated or published; a non-OK status fails the Put with it and leaves the
  // store unchanged. The rpc layer uses it to refuse a payload read from a shared-memory
  // region whose file lost pages during the read (SIGBUS caught by the region guard), so
  // that such a Put stays zero-copy. Default none.
  std::function<absl::Status()> verify_source;
};

// 16-bit K/V in the device memory of one GPU tier (a worker's buffer mapped through CUDA
// IPC): either contiguous, [L][2][T][H][D] for a Put and [l1-l0][2][T][h1-h0][D] for a Get,
// or a paged cache (the kernels gather from and scatter into its blocks in place; see
// kvstash/kernels/cuda_codec.h, PagedView, for the addressing). The caller has checked
// every address against the buffer's bounds; the store checks shapes and counts.
struct DeviceTensor {
  int tier = -1;                 // index into StoreStats::gpus; the memory is on that device
  uint8_t* data = nullptr;       // contiguous (16-byte aligned); null when paged
  uint64_t capacity = 0;         // contiguous Get: bytes writable at data (a larger slice
                                 //   fails with ResourceExhausted, writing nothing)
  // Paged: planes 2i + x = tensor x (K, V) of layer i of the chunk (Put) or of the slice
  // (Get). Token t is slot s = first_slot + t, in block block_ids[s / block_size], and its
  // element (h, d) is at byte block·block_stride + (s % block_size)·token_stride +
  // h·head_stride + 2·d of its plane. The caller checked bounds for `heads` heads of
  // `head_dim`; a chunk (Put) or slice (Get) of another geometry is refused.
  std::vector<uint8_t*> planes;  // 16-byte aligned
  std::vector<uint32_t> block_ids;
  uint32_t block_size = 0;
  uint32_t first_slot = 0;
  uint32_t heads = 0;            // heads of a token: H (Put) or the slice's (Get)
  uint32_t head_dim = 0;         // D
  uint64_t block_stride = 0;     // bytes, a multiple of 16
  uint64_t token_stride = 0;     // bytes, a multiple of 16; 0 = row_bytes()
  uint64_t head_stride = 0;      // bytes, a multiple of 16; 0 = head_dim·2
  bool paged() const { return data == nullptr; }
  // Bytes of one token's row when gathered contiguously: heads·head_dim·2.
  uint64_t row_bytes() const { return 2ull * heads * head_dim; }
};

// A device buffer of another process (CUDA IPC) mapped into the daemon; the mapping is
// closed when the last reference is dropped.
class IpcMapping {
 public:
  virtual ~IpcMapping() = default;
  int tier = -1;            // GPU tier of its device
  uint8_t* data = nullptr;  // the start of the shared allocation
  uint64_t size = 0;        // bytes of the allocation
};

// What a stored chunk is; returned by Put and Get.
struct ChunkInfo {
  kernels::ChunkShape shape;
  kernels::CodecConfig config;
  uint64_t logical_bytes = 0;   // 16-bit payload bytes (2·N)
  uint64_t stored_bytes = 0;    // encoded chunk bytes (header + sections)
  double equivalent_bits = 0;   // B_eq
  double true_bits = 0;         // 8·stored_bytes / N
  bool replaced = false;        // Put only: an existing chunk of this key was replaced
};

// One GPU tier's state.
struct GpuTierStats {
  int ordinal = 0;              // CUDA device ordinal
  std::string name;             // e.g. "NVIDIA H100 80GB HBM3"
  bool healthy = true;          // false after a CUDA error: takes no new chunks
  uint64_t capacity_bytes = 0;  // device pool bytes
  uint64_t used_bytes = 0;      // bytes of device pages held by chunks
  uint64_t pages_total = 0;
  uint64_t pages_used = 0;
  uint64_t chunks = 0;          // chunks resident on this device
};

struct StoreStats {
  // The host tier (the only tier without GPUs).
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;      // bytes of host pool pages held by chunks
  uint64_t page_bytes = 0;      // page size of every tier
  uint64_t pages_total = 0;
  uint64_t pages_used = 0;
  uint64_t chunks = 0;          // all tiers
  uint64_t host_chunks = 0;     // chunks resident in the host tier
  uint64_t logical_bytes = 0;   // sum of 16-bit payload sizes of stored chunks
  uint64_t stored_bytes = 0;    // sum of encoded sizes of stored chunks
  uint64_t elements = 0;        // sum of element counts (2·L·T·H·D) of stored chunks
  double equivalent_bit_elements = 0;  // sum of B_eq × elements of stored chunks
  uint64_t hits = 0;            // Get keys found + Lookup leading keys found
  uint64_t misses = 0;          // Get keys not found + Lookups that stopped at a missing key
  uint64_t evictions = 0;       // chunks removed to make room for a Put (quota evictions
                                //   included)
  uint64_t quota_evictions = 0; // of evictions: chunks removed to keep their namespace
                                //   within its quota
  uint64_t puts = 0;            // Puts that stored a chunk
  uint64_t gets = 0;            // Get calls, found or not
  uint64_t deletes = 0;         // Deletes that removed a chunk
  // The GPU tier; all zero / empty without GPUs.
  std::string codec_path;       // "cuda" with GPUs, else the CPU path ("avx2", "scalar",
                                //   "reference")
  std::vector<GpuTierStats> gpus;  // one per device pool, in StoreOptions order
  uint64_t gpu_capacity_bytes = 0; // sums over gpus
  uint64_t gpu_used_bytes = 0;
  uint64_t gpu_chunks = 0;
  uint64_t demotions = 0;       // chunks moved GPU -> host under GPU pressure
  uint64_t promotions = 0;      // chunks moved host -> GPU after a read
  uint64_t gpu_fallbacks = 0;   // Puts meant for a GPU stored in the host tier instead
                                //   (device pool full of pinned chunks, or unhealthy)
};

// One namespace's share of the store (Store::PerNamespaceStats).
struct NamespaceStats {
  std::string name;
  uint64_t chunks = 0;           // chunks stored, all tiers
  uint64_t allocated_bytes = 0;  // pool pages charged to it (what its quota limits): the
                                 //   pages of its chunks in every tier, including chunks
                                 //   removed but still being read, and Puts in progress
  uint64_t stored_bytes = 0;     // encoded bytes of its chunks
  uint64_t logical_bytes = 0;    // 16-bit payload bytes of its chunks
  uint64_t quota_evictions = 0;  // its chunks evicted to keep it within its quota
  uint64_t capacity_evictions = 0;  // its chunks evicted (or demoted and dropped) for a
                                    //   Put of any namespace when a pool was full
  uint64_t quota_bytes = 0;      // its quota; 0 = none
};

// Called by Get once the decoded size is known; returns where to write `bytes` bytes
// (e.g. a protobuf bytes field resized to fit, or a shared-memory region).
using OutputAllocator = std::function<uint8_t*(uint64_t bytes)>;

class Store {
 public:
  static absl::StatusOr<std::unique_ptr<Store>> Create(const StoreOptions& options);
  virtual ~Store() = default;

  // Encodes `payload` ([L][2][T][H][D] in shape.dtype, shape.payload_bytes() bytes) and
  // stores it under (ns, key), evicting least-recently-used unpinned chunks if needed.
  // Re-putting an existing key replaces it atomically: readers see the old or the new
  // chunk, never a mix. Errors: InvalidArgument (shape, config, payload size, NaN/Inf),
  // ResourceExhausted (cannot free enough memory; or the chunk does not fit the
  // namespace's quota even after evicting the namespace's own unpinned chunks: the message
  // names the namespace, its quota and its usage), Internal (CUDA failure, with the CUDA
  // error name). On error the store is unchanged.
  virtual absl::StatusOr<ChunkInfo> Put(std::string_view ns, const ChunkKey& key,
                                        const kernels::ChunkShape& shape,
                                        const kernels::CodecConfig& config,
                                        std::span<const uint8_t> payload) = 0;
  // As above, with per-request options (the device). The default ignores them.
  virtual absl::StatusOr<ChunkInfo> Put(std::string_view ns, const ChunkKey& key,
                                        const kernels::ChunkShape& shape,
                                        const kernels::CodecConfig& config,
                                        std::span<const uint8_t> payload,
                                        const PutOptions& options) {
    (void)options;
    return Put(ns, key, shape, config, payload);
  }

  // Decodes `slice` of the chunk into memory from `alloc`, laid out
  // [l1-l0][2][T][h1-h0][D] in out_dtype; DType::kUnspecified = the chunk's own dtype,
  // that of the version read (the returned info's shape.dtype), so that bytes and info
  // agree under a concurrent re-put. The chunk is pinned while it is read (`alloc`
  // included) and becomes the most recently used when the read ends.
  // Errors: NotFound, InvalidArgument (slice, dtype), DataLoss (corrupt pages),
  // ResourceExhausted (`alloc` returned null, or GPU scratch memory), Internal (CUDA).
  virtual absl::StatusOr<ChunkInfo> Get(std::string_view ns, const ChunkKey& key,
                                        const kernels::Slice& slice, kernels::DType out_dtype,
                                        const OutputAllocator& alloc) = 0;

  // Number of leading keys of `chain` present in ns (a prefix match). Does not touch LRU
  // order; each key is checked under its own shard lock, so the answer is a snapshot.
  virtual uint64_t Lookup(std::string_view ns, std::span<const ChunkKey> chain) = 0;

  // Whether one key is present, with its info; does not count as a hit or touch LRU order.
  virtual absl::StatusOr<ChunkInfo> Describe(std::string_view ns, const ChunkKey& key) = 0;

  // Removes the chunk; its memory is freed once no reader holds it. NotFound if absent.
  virtual absl::Status Delete(std::string_view ns, const ChunkKey& key) = 0;

  virtual StoreStats Stats() const = 0;

  // Every namespace holding chunks (or with a Put in progress), plus namespaces emptied
  // recently (up to 1024, with their eviction counts), by allocated_bytes, largest first,
  // then by name. A snapshot: each namespace's counters are read without stopping Puts.
  // The default (a store without namespace accounting) returns none.
  virtual std::vector<NamespaceStats> PerNamespaceStats() const { return {}; }

  // --- Device data paths (docs/store.md, "Device I/O"). A store without GPU tiers answers
  // FailedPrecondition.

  // Maps a cudaIpcMemHandle_t (64 bytes) of the device with UUID `device_uuid` (16 bytes).
  // Mappings are cached: the same handle opened again returns the live mapping.
  // InvalidArgument (sizes, a handle the driver refuses), FailedPrecondition (no GPU tier
  // on that device).
  virtual absl::StatusOr<std::shared_ptr<const IpcMapping>> OpenIpcBuffer(
      std::string_view handle, std::string_view device_uuid) {
    (void)handle, (void)device_uuid;
    return absl::FailedPreconditionError("cuda_ipc: this daemon has no GPU tier");
  }
  // Put from device memory: the encode kernels read `in` on its device (no host copy) and
  // the chunk is kept on that device's tier (or the host tier when the device pool cannot
  // take it). Returns after the kernels finished reading `in`. Errors as Put.
  virtual absl::StatusOr<ChunkInfo> PutDevice(std::string_view ns, const ChunkKey& key,
                                              const kernels::ChunkShape& shape,
                                              const kernels::CodecConfig& config,
                                              const DeviceTensor& in) {
    (void)ns, (void)key, (void)shape, (void)config, (void)in;
    return absl::FailedPreconditionError("cuda_ipc: this daemon has no GPU tier");
  }
  // Get into device memory: the decode kernels write `out` on its device. A chunk of the
  // host tier has its compressed sections copied to the device (checksums verified) and is
  // decoded there. Returns after the kernels finished writing. Errors as Get.
  virtual absl::StatusOr<ChunkInfo> GetDevice(std::string_view ns, const ChunkKey& key,
                                              const kernels::Slice& slice,
                                              kernels::DType out_dtype,
                                              const DeviceTensor& out) {
    (void)ns, (void)key, (void)slice, (void)out_dtype, (void)out;
    return absl::FailedPreconditionError("cuda_ipc: this daemon has no GPU tier");
  }
  // Batched GetDevice for the keys of one request, all with the same `slice`: out_dtypes[i]
  // and outs[i] as GetDevice's. Reads those keys it can batch (host-tier chunks of one
  // geometry into outputs on one device, contiguous or paged: a multi-chunk restore) and sets
  // results[i] for them, exactly as GetDevice would (NotFound, DataLoss naming no key, ...);
  // leaves results[i] empty for every other key, which the caller reads with GetDevice.
  // Returns after every kernel it launched finished writing. The default batches nothing.
  // REQUIRES: keys, out_dtypes, outs and results have the same size; the outputs are
  // disjoint.
  virtual void GetDeviceMany(std::string_view ns, std::span<const ChunkKey> keys,
                             const kernels::Slice& slice,
                             std::span<const kernels::DType> out_dtypes,
                             std::span<const DeviceTensor> outs,
                             std::span<std::optional<absl::StatusOr<ChunkInfo>>> results) {
    (void)ns, (void)keys, (void)slice, (void)out_dtypes, (void)outs, (void)results;
  }
  // Registers host memory (a shared-memory region) with the CUDA driver so copies between
  // it and the devices are DMA without staging; the returned handle unregisters it when
  // dropped. A null handle (no error) when there are no GPU tiers.
  virtual absl::StatusOr<std::shared_ptr<void>> RegisterHostMemory(void* data, uint64_t bytes) {
    (void)data, (void)bytes;
    return std::shared_ptr<void>();
  }
};

}  // namespace kvstash::store

#endif  // KVSTASH_SERVER_STORE_STORE_H_
