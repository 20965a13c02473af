// Internal interface between the codec's entry points (codec.cc), the scalar reference
// (codec_reference.cc) and the fast path (codec_fast.cc). Not installed; not for users.
//
// Every function here works on an already validated layout and slice; the entry points in
// codec.cc do the argument checks once.
#ifndef KVSTASH_KERNELS_SRC_CODEC_INTERNAL_H_
#define KVSTASH_KERNELS_SRC_CODEC_INTERNAL_H_

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "absl/status/status.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"

namespace kvstash::kernels::internal {

// Puts the calling thread's SSE floating-point mode into the one docs/format.md section 3
// requires (round to nearest even, no flush-to-zero, no denormals-are-zero) for its
// lifetime, restoring the caller's mode afterwards. Some libraries turn FTZ/DAZ on for
// speed, and threads inherit the mode of the thread that created them.
class ScopedIeeeMode {
 public:
#if defined(__x86_64__) || defined(__i386__)
  ScopedIeeeMode() : saved_(_mm_getcsr()) {
    // MXCSR: bit 15 FTZ, bits 13-14 rounding control (00 = nearest), bit 6 DAZ.
    const unsigned want = saved_ & ~((1u << 15) | (3u << 13) | (1u << 6));
    if (want != saved_) _mm_setcsr(want);
  }
  ~ScopedIeeeMode() {
    if (_mm_getcsr() != saved_) _mm_setcsr(saved_);
  }

 private:
  unsigned saved_;
#endif
};

// Pointer to chunk offset `offset`, which lies in the section of the pair holding `layer`.
// `sections[p]` points at the start of pair p's section.
inline const uint8_t* SectionAt(const ChunkLayout& layout, const uint8_t* const* sections,
                                uint32_t layer, uint64_t offset) {
  const uint32_t p = layer / 2;
  return sections[p] + (offset - layout.pairs[p].offset);
}

// Input tensor x of layer l: [T][H][D] inside the canonical [L][2][T][H][D] chunk.
inline const uint16_t* InputTensor(const ChunkShape& s, const uint16_t* in, uint32_t layer, int x) {
  return in + (2ull * layer + x) * s.num_tokens * s.num_heads * s.head_dim;
}
// Output tensor x of layer l of a decoded slice: [T][h1-h0][D] inside [l1-l0][2][T][h1-h0][D].
inline uint16_t* OutputTensor(const ChunkShape& s, const Slice& slice, uint16_t* out,
                              uint32_t layer, int x) {
  return out + (2ull * (layer - slice.layer_begin) + x) * s.num_tokens *
                   (slice.head_end - slice.head_begin) * s.head_dim;
}

// The calibration η of a group of `bits` bits (docs/format.md section 3).
inline float EtaFor(const CodecConfig& c, uint32_t bits) { return bits == 2 ? c.eta2 : c.eta1; }

// DataLoss unless pair p's section matches the checksum in its directory entry.
absl::Status VerifySection(const ParsedHeader& header, const uint8_t* section, uint32_t pair);
// The DataLoss VerifySection returns for pair p.
absl::Status SectionChecksumError(const ChunkLayout& layout, uint32_t pair);

// Chunk offsets [begin, end) of all arrays of tensor x of `layer`: codes (when it owns
// them), scales, zeros and tail are contiguous, and the tensors of a pair follow one
// another in section order (layer 2p K, V, layer 2p+1 K, V).
inline uint64_t TensorBegin(const ChunkLayout& layout, uint32_t layer, int x) {
  const TensorLayout& t = layout.tensor(layer, x);
  return t.owns_codes ? t.codes : t.scales;
}
inline uint64_t TensorEnd(const ChunkLayout& layout, uint32_t layer, int x) {
  const ChunkShape& s = layout.shape;
  return layout.tensor(layer, x).tail + 2ull * s.num_heads * layout.tail_tokens * s.head_dim;
}

// --- Scalar reference (codec_reference.cc) -----------------------------------------------

// Writes every array of tensor x of `layer` (codes if it owns them, scales, zeros, tail) at
// its offset in `out` (the whole chunk). REQUIRES: input validated.
void EncodeTensorReference(const ChunkLayout& layout, const uint16_t* in, uint32_t layer, int x,
                           uint8_t* out);
// Decodes tensor x of `layer` (heads of `slice`) into its place in `out` (the whole slice).
// Reads through `sections`; checksums are the caller's business.
void DecodeTensorReference(const ChunkLayout& layout, const uint8_t* const* sections,
                           const Slice& slice, uint32_t layer, int x, DType out_dtype,
                           uint16_t* out);

// --- Fast path (codec_fast.cc) -----------------------------------------------------------

// Validates the input (falling back to ValidateInput for the message) and writes all
// sections, and each section's checksum into section_sums[p] (computed while the section
// is still in cache). The header is the caller's, and so is sealing it.
absl::Status EncodeFast(const ChunkLayout& layout, const uint16_t* in, uint8_t* out,
                        uint64_t* section_sums);
// Verifies the checksum of every pair the slice reads and decodes it.
absl::Status DecodeFast(const ParsedHeader& header, const uint8_t* const* sections,
                        const Slice& slice, DType out_dtype, uint16_t* out);
const char* FastPath();

}  // namespace kvstash::kernels::internal

#endif  // KVSTASH_KERNELS_SRC_CODEC_INTERNAL_H_
