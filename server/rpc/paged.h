// Paged KV caches in registered regions (docs/api.md, "Paged caches"): resolving a
// v1::PagedLayout of a request into pinned, bounds-checked plane addresses, and the host
// gather/scatter used when the planes are in shared memory (on a GPU the kernels do it).
//
// Thread-compatible: no shared state.
#ifndef KVSTASH_SERVER_RPC_PAGED_H_
#define KVSTASH_SERVER_RPC_PAGED_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kvstash/v1/kvstash.pb.h"
#include "server/rpc/region_registry.h"
#include "server/store/store.h"

namespace kvstash::rpc {

// A PagedLayout with every plane pinned and every block checked against its plane.
struct ResolvedPaged {
  std::vector<RegionPin> pins;   // one per plane; keeps the regions mapped
  int tier = -1;                 // the planes' GPU tier (CUDA IPC), or -1 (shared memory)
  std::vector<uint8_t*> planes;  // block 0 of each plane
  std::vector<uint32_t> block_ids;
  uint32_t block_size = 0;
  uint32_t first_slot = 0;
  uint32_t heads = 0;            // heads of a token the bounds were checked for
  uint32_t head_dim = 0;
  uint64_t block_stride = 0;     // bytes
  uint64_t token_stride = 0;     // bytes, resolved (the default heads·head_dim·2 filled in)
  uint64_t head_stride = 0;      // bytes, resolved (the default head_dim·2 filled in)

  bool on_device() const { return tier >= 0; }
  uint64_t slots() const { return uint64_t{block_ids.size()} * block_size; }
  // The store's view of tokens [t0, t0 + tokens) of the concatenation (a Get's result i).
  store::DeviceTensor Window(uint64_t t0, uint64_t tokens) const;
};

// Validates `paged` (field names prefixed by `field`, e.g. "chunks[1].data_paged") for
// `layers` layers of tokens of `heads` heads of `head_dim` 16-bit values (a Put: the
// chunk's; a Get: the requested slice's), holding `tokens` tokens in all, and pins its
// planes. Every byte any token of any listed block could occupy must lie in every plane.
// InvalidArgument (counts, alignment, strides, a block past its plane, planes of mixed
// kinds or devices), and Acquire's errors (NotFound, PermissionDenied, ...). Planes that
// overlap one another are not detected: a Get into them writes garbage there, but only
// inside the caller's own regions.
absl::StatusOr<ResolvedPaged> ResolvePaged(RegionRegistry* regions, std::string_view ns,
                                           const v1::PagedLayout& paged, uint32_t layers,
                                           uint64_t tokens, uint32_t heads, uint32_t head_dim,
                                           const std::string& field);

// What of `paged` can be checked without the chunks' geometry, for a Get that found no
// key (nothing will be written, but a malformed layout or a region the caller does not
// own is an error all the same): a positive, even number of planes, block_size,
// first_slot, the strides' alignment, and each plane's offset, ownership and range
// (Acquire). Errors as ResolvePaged's; block_ids are not counted (no token is placed).
absl::Status CheckPagedRefs(RegionRegistry* regions, std::string_view ns,
                            const v1::PagedLayout& paged, const std::string& field);

// Host copies between a shared-memory paged cache and the contiguous [layers][2][T][rows]
// layout of `window` (from ResolvedPaged::Window, shared memory only): one memcpy per token
// when its heads are adjacent (head_stride = head_dim·2), else one per head.
void GatherHost(const store::DeviceTensor& window, uint32_t layers, uint32_t tokens,
                uint8_t* out);
void ScatterHost(const store::DeviceTensor& window, uint32_t layers, uint32_t tokens,
                 const uint8_t* in);

}  // namespace kvstash::rpc

#endif  // KVSTASH_SERVER_RPC_PAGED_H_
