// Host glue between the chunk format (format.h, absl::Status) and the framework-free CUDA
// launchers of cuda_codec.h: geometry from a ChunkLayout, the InvalidArgument status of a
// rejected element, and the whole separate-pass encode protocol for one chunk.
// Thread-safe: no shared state; each call uses only the stream and buffers it is given.
#ifndef KVSTASH_KERNELS_CUDA_CHUNK_H_
#define KVSTASH_KERNELS_CUDA_CHUNK_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "kvstash/kernels/cuda_codec.h"
#include "kvstash/kernels/format.h"

namespace kvstash::kernels::cuda {

// The launchers' view of `layout`. REQUIRES: layout made by ComputeLayout/MakeLayout.
CudaGeometry GeometryOf(const ChunkLayout& layout);

// InvalidElementStatus (format.h) names a bad element LaunchValidate reports.

// How EncodeToHost checks its input (cuda_codec.h, "Input validity").
enum class ValidityCheck {
  kStrict,  // a separate validation pass first; nothing is written to d_out for a bad chunk
  kFused,   // checked while encoding (one read of the input, ~1.7x faster); for a bad chunk
            // d_out holds meaningless bytes, which the caller must treat as scratch
};

// Encodes one chunk on the device and brings it to host, ready to store:
//   [LaunchValidate ->] LaunchEncode -> copy the flag and sections back -> synchronize
//   -> on a bad element, InvalidArgument -> WriteHeader and SealChecksums into host_out.
// d_in: [L][2][T][H][D] device input; d_out: device scratch of layout.total_bytes;
// d_flag: one device word; host_out: layout.total_bytes host bytes (pinned for speed).
// Synchronizes `stream`. CUDA failures come back through CudaStatus.
absl::Status EncodeToHost(const ChunkLayout& layout, const uint16_t* d_in, uint8_t* d_out,
                          unsigned long long* d_flag, cudaStream_t stream, uint8_t* host_out,
                          ValidityCheck check = ValidityCheck::kStrict);

// The input of an encode from a paged cache (cuda_codec.h's PagedView), with host copies of
// its device arrays so a rejected element can be read back for the error message.
struct PagedInput {
  PagedView view;                             // device arrays
  std::span<uint16_t* const> host_planes;     // == view.planes, on the host
  std::span<const uint32_t> host_block_ids;   // == view.block_ids, on the host
};
// EncodeToHost gathering the chunk from a paged cache inside the encode kernels. Only
// ValidityCheck::kFused (the validation pass reads contiguous input): d_out is scratch.
absl::Status EncodeToHost(const ChunkLayout& layout, const PagedInput& in, uint8_t* d_out,
                          unsigned long long* d_flag, cudaStream_t stream, uint8_t* host_out);

}  // namespace kvstash::kernels::cuda

#endif  // KVSTASH_KERNELS_CUDA_CHUNK_H_
