// The chunk store: an index from (namespace, 128-bit key) to encoded chunks kept as
// layer-pair sections in a paged host memory pool, with LRU eviction of unpinned chunks.
// See docs/store.md for the page lifecycle.
//
// Thread-safe: every method may be called concurrently. The index is sharded by key hash,
// each shard with its own mutex; encoding, decoding and copies run outside every lock.
#ifndef KVSTASH_SERVER_STORE_STORE_H_
#define KVSTASH_SERVER_STORE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

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

struct StoreStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;      // bytes of pool pages held by chunks
  uint64_t page_bytes = 0;
  uint64_t pages_total = 0;
  uint64_t pages_used = 0;
  uint64_t chunks = 0;
  uint64_t logical_bytes = 0;   // sum of 16-bit payload sizes of stored chunks
  uint64_t stored_bytes = 0;    // sum of encoded sizes of stored chunks
  uint64_t elements = 0;        // sum of element counts (2·L·T·H·D) of stored chunks
  double equivalent_bit_elements = 0;  // sum of B_eq × elements of stored chunks
  uint64_t hits = 0;            // Get keys found + Lookup leading keys found
  uint64_t misses = 0;          // Get keys not found + Lookups that stopped at a missing key
  uint64_t evictions = 0;       // chunks removed to make room for a Put
  uint64_t puts = 0;            // Puts that stored a chunk
  uint64_t gets = 0;            // Get calls, found or not
  uint64_t deletes = 0;         // Deletes that removed a chunk
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
  // ResourceExhausted (cannot free enough memory). On error the store is unchanged.
  virtual absl::StatusOr<ChunkInfo> Put(std::string_view ns, const ChunkKey& key,
                                        const kernels::ChunkShape& shape,
                                        const kernels::CodecConfig& config,
                                        std::span<const uint8_t> payload) = 0;

  // Decodes `slice` of the chunk into memory from `alloc`, laid out
  // [l1-l0][2][T][h1-h0][D] in out_dtype. The chunk is pinned while it is read (`alloc`
  // included) and becomes the most recently used when the read ends.
  // Errors: NotFound, InvalidArgument (slice, dtype), DataLoss (corrupt pages),
  // ResourceExhausted (`alloc` returned null).
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
};

}  // namespace kvstash::store

#endif  // KVSTASH_SERVER_STORE_STORE_H_
