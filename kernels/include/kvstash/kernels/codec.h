// The XQuant codec on the CPU: encode a 16-bit [L][2][T][H][D] chunk into the stored format
// of docs/format.md and decode slices of it back.
//
// Two implementations produce identical bytes: kReference is a plain scalar loop that is
// the test oracle; kFast is vectorized (AVX2/F16C with runtime dispatch, scalar fallback)
// and spreads large chunks over threads by layer. All functions are thread-safe: they share
// no mutable state except the process-wide worker pool kFast uses.
#ifndef KVSTASH_KERNELS_CODEC_H_
#define KVSTASH_KERNELS_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvstash/kernels/format.h"

namespace kvstash::kernels {

enum class Impl { kReference, kFast };

// A sub-range of a chunk to decode; an end of 0 means "to the last".
struct Slice {
  uint32_t layer_begin = 0;
  uint32_t layer_end = 0;
  uint32_t head_begin = 0;
  uint32_t head_end = 0;
};

// Resolves zero ends and checks the ranges against the shape. InvalidArgument naming
// "layer_range" or "head_range" when empty or outside the chunk.
absl::StatusOr<Slice> ResolveSlice(const ChunkShape& shape, const Slice& slice);
// Bytes of a decoded slice: 2·(l1−l0)·2·T·(h1−h0)·D. REQUIRES: slice resolved.
uint64_t DecodedBytes(const ChunkShape& shape, const Slice& slice);

// InvalidArgument naming the first element that is NaN/Inf (or a bf16 value >= 2^126),
// with its (layer, K|V, token, head, channel). `in` holds shape.elements() values.
absl::Status ValidateInput(const ChunkShape& shape, const uint16_t* in);

// Encodes `in` ([L][2][T][H][D], shape.dtype) into out[0, layout.total_bytes), header and
// checksums included. Validates the input first; on error nothing meaningful is in `out`.
absl::Status Encode(const ChunkLayout& layout, const uint16_t* in, uint8_t* out,
                    Impl impl = Impl::kFast);
// Convenience: validates shape and config, allocates the output.
absl::StatusOr<std::vector<uint8_t>> EncodeChunk(const ChunkShape& shape,
                                                 const CodecConfig& config,
                                                 std::span<const uint16_t> in,
                                                 Impl impl = Impl::kFast);

// Which pair sections a slice reads: [first, last] inclusive.
struct PairRange {
  uint32_t first = 0;
  uint32_t last = 0;
};
PairRange PairsForSlice(const Slice& resolved);

// Decodes a resolved slice given the chunk's verified header and a pointer to each pair
// section it reads (sections[p] for p in PairsForSlice; others may be null). Verifies each
// read section's checksum (DataLoss on mismatch). `out` holds DecodedBytes(...) bytes,
// laid out [l1−l0][2][T][h1−h0][D] in out_dtype.
absl::Status DecodeSections(const ParsedHeader& header, const uint8_t* const* sections,
                            const Slice& resolved, DType out_dtype, uint16_t* out,
                            Impl impl = Impl::kFast);

// Parses and verifies a whole contiguous chunk, then decodes the slice.
absl::Status Decode(const uint8_t* chunk, size_t size, const Slice& slice, DType out_dtype,
                    std::vector<uint16_t>* out, Impl impl = Impl::kFast);

// Which fast path this process uses: "avx2" or "scalar".
const char* FastPathName();

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_CODEC_H_
