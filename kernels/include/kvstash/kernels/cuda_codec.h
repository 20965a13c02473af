// The XQuant codec on an NVIDIA GPU: launchers that encode 16-bit [L][2][T][H][D] chunks
// into the pair sections of docs/format.md and decode layer x head slices back, on device
// memory, producing the same bytes as the CPU reference (kvstash/kernels/codec.h).
//
// Framework-free on purpose (FlashInfer style): plain-data params of device pointers and
// sizes, a cudaStream_t, cudaError_t results. kvstash/kernels/cuda_chunk.h builds these
// params from a ChunkLayout and turns results into absl::Status.
//
// The header and the checksums are host work (XXH3 is not computed on the device): the
// encoder writes only bytes [header_bytes, total_bytes) of each chunk, so sections can stay
// on the device and be checksummed when they are copied to host (WriteHeader, then
// SealChecksums, both in format.h).
//
// Input validity (docs/format.md section 1: finite, and bf16 |x| < 2^126) has two protocols,
// both built on one device word `flag` holding the smallest bad flat element index of the
// batch (index c·2LTHD + ((l·2 + x)·T + t)·H·D + h·D + d), or kNoBadElement:
//
//   Separate pass (default; nothing is written for a bad chunk):
//     LaunchValidate({in, count, dtype, flag})   // resets *flag, then scans every element
//     LaunchEncode({..., gate = flag})           // every encode kernel exits at once when
//                                                //   *gate != kNoBadElement
//     copy *flag (and, if it is kNoBadElement, the sections) back; reject if it is set.
//   Fused check (one pass over the input, for throughput):
//     cudaMemsetAsync(flag, 0xFF, 8)
//     LaunchEncode({..., first_bad = flag})      // checks every element it reads
//     copy *flag back; if it is set the output bytes are meaningless and must be discarded.
//
// All launchers are asynchronous on `stream` and thread-compatible: they keep no state.
// Launch-time errors are returned; errors of the kernels themselves surface on the stream.
#ifndef KVSTASH_KERNELS_CUDA_CODEC_H_
#define KVSTASH_KERNELS_CUDA_CODEC_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#if defined(__CUDACC__)
#define KVSTASH_CUDA_HD __host__ __device__ __forceinline__
#else
#define KVSTASH_CUDA_HD inline
#endif

namespace kvstash::kernels::cuda {

inline constexpr unsigned long long kNoBadElement = ~0ull;

// Where one tensor (K or V) of one layer lives, in bytes from the chunk start; mirrors
// format.h's TensorLayout (tests check the two agree).
struct TensorOffsets {
  uint32_t bits;        // 1 or 2; 0 when raw
  bool owns_codes;      // false when the codes are layer l-1's
  uint64_t codes;       // code words this tensor decodes with
  uint64_t scales;      // [NGR] 16-bit
  uint64_t zeros;       // [NGR] 16-bit
  uint64_t tail;        // [H][Tt][D] 16-bit
};

// Plain-data geometry of a chunk (shape + codec configuration + derived sizes); build it
// with cuda_chunk.h's GeometryOf(layout). Offsets are computed in O(1) from it, so kernels
// need no per-layer tables.
struct CudaGeometry {
  uint32_t num_layers = 0;    // L
  uint32_t num_tokens = 0;    // T
  uint32_t num_heads = 0;     // H
  uint32_t head_dim = 0;      // D, multiple of 32
  uint32_t dtype = 1;         // chunk dtype: 1 fp16, 2 bf16
  uint32_t raw = 0;           // fp16 preset: everything is tail
  uint32_t k_q = 0, v_q = 0, k_m = 0, v_m = 0;
  float eta1 = 0.0f, eta2 = 0.0f;
  uint32_t num_groups_t = 0;  // NG = floor(T/32), 0 when raw
  uint32_t quant_tokens = 0;  // Tq
  uint32_t tail_tokens = 0;   // Tt
  uint64_t groups = 0;        // NGR = H·NG·D per layer and tensor
  uint64_t header_bytes = 0;
  uint64_t total_bytes = 0;

  KVSTASH_CUDA_HD uint64_t elements() const {
    return 2ull * num_layers * num_tokens * num_heads * head_dim;
  }
  KVSTASH_CUDA_HD uint32_t num_pairs() const { return (num_layers + 1) / 2; }
  KVSTASH_CUDA_HD uint32_t bits(uint32_t l, int x) const {
    return raw ? 0u : (l < (x == 0 ? k_q : v_q) ? 2u : 1u);
  }
  KVSTASH_CUDA_HD bool stores_codes(uint32_t l, int x) const {
    return !raw && !((l & 1u) && l >= (x == 0 ? k_m : v_m));
  }
  // Layers in [0, n) that store their own codes of tensor x.
  KVSTASH_CUDA_HD uint64_t storing_layers(uint32_t n, int x) const {
    const uint32_t m = x == 0 ? k_m : v_m;
    const uint32_t odd_shared = n / 2 > m / 2 ? n / 2 - m / 2 : 0u;  // odd l' in [m, n)
    return n - odd_shared;
  }
  // Code words (units of 4·NGR bytes) that layers [0, n) of tensor x store.
  KVSTASH_CUDA_HD uint64_t code_units(uint32_t n, int x) const {
    if (raw) return 0;
    const uint32_t q = x == 0 ? k_q : v_q;
    return storing_layers(n, x) + storing_layers(n < q ? n : q, x);
  }
  KVSTASH_CUDA_HD uint64_t tail_bytes() const {
    return 2ull * num_heads * tail_tokens * head_dim;
  }
  // Start of layer l (== pair start when l is even); l == L gives total_bytes.
  KVSTASH_CUDA_HD uint64_t layer_offset(uint32_t l) const {
    return header_bytes + 2ull * l * (4 * groups + tail_bytes()) +
           4 * groups * (code_units(l, 0) + code_units(l, 1));
  }
  KVSTASH_CUDA_HD uint64_t pair_offset(uint32_t p) const { return layer_offset(2 * p); }
  KVSTASH_CUDA_HD uint64_t pair_bytes(uint32_t p) const {
    const uint32_t end = 2 * p + 2 < num_layers ? 2 * p + 2 : num_layers;
    return layer_offset(end) - layer_offset(2 * p);
  }
  KVSTASH_CUDA_HD TensorOffsets tensor(uint32_t l, int x) const {
    TensorOffsets t;
    t.bits = bits(l, x);
    t.owns_codes = stores_codes(l, x);
    uint64_t off = layer_offset(l);
    if (x == 1) {
      off += (stores_codes(l, 0) ? 4 * groups * bits(l, 0) : 0) + 4 * groups + tail_bytes();
    }
    t.codes = 0;
    if (t.owns_codes) {
      t.codes = off;
      off += 4 * groups * t.bits;
    } else if (!raw) {
      t.codes = tensor_codes_of_previous(l, x);
    }
    t.scales = off;
    t.zeros = off + 2 * groups;
    t.tail = off + 4 * groups;
    return t;
  }

 private:
  // Codes of layer l-1 (even, so it stores them) for a sharing layer l.
  KVSTASH_CUDA_HD uint64_t tensor_codes_of_previous(uint32_t l, int x) const {
    const uint32_t a = l - 1;
    uint64_t off = layer_offset(a);
    if (x == 1) off += (stores_codes(a, 0) ? 4 * groups * bits(a, 0) : 0) + 4 * groups + tail_bytes();
    return off;
  }
};

// --- Validation ---------------------------------------------------------------------------

struct ValidateParams {
  const uint16_t* in = nullptr;       // [count] 16-bit, dtype; device, 16-byte aligned
  uint64_t count = 0;                 // elements (a batch: num_chunks · 2LTHD)
  uint32_t dtype = 1;                 // 1 fp16, 2 bf16
  unsigned long long* flag = nullptr; // [1] device; set to kNoBadElement, then to the
                                      //   smallest index of a NaN/Inf (bf16: |x| >= 2^126)
};
// REQUIRES: in, flag non-null; in 16-byte aligned. cudaErrorInvalidValue otherwise.
cudaError_t LaunchValidate(const ValidateParams& p, cudaStream_t stream);

// --- Paged caches --------------------------------------------------------------------------

// A paged KV cache (vLLM / SGLang style) as the source of an encode or the destination of a
// decode, instead of a contiguous [L][2][T][H][D] buffer. Plane 2i+x is tensor x (K, V) of
// layer i (of the chunk for an encode, of the slice for a decode), holding rowH heads:
// rowH = H (encode) or the slice's heads (decode, head h' of the plane = head h0 + h').
// Token t lives at slot s = first_slot + t, in block b = block_ids[s / block_size], and its
// element (h, d) at
//   planes[2i+x] + b·block_stride + (s % block_size)·token_stride + h·head_stride + d
// elements. The strides describe the engines' layouts in place (docs/api.md, "Paged
// caches"): [block][slot][head][D] rows (the defaults), head-major blocks, K and V
// interleaved per head, layer-interleaved host pools. Bounds are the caller's: the kernels
// read and write exactly those elements. Elements that overlap (strides too small for the
// shape) are the caller's mistake: an encode reads them as they are, a decode leaves them
// unspecified, and neither touches anything outside the elements above.
struct PagedView {
  uint16_t* const* planes = nullptr;  // device array of device pointers, each 16-byte aligned;
                                      //   only read through by an encode
  const uint32_t* block_ids = nullptr;  // device array, ceil((first_slot + T) / block_size)
  uint32_t block_size = 0;            // tokens per block, >= 1
  uint32_t first_slot = 0;            // < block_size
  uint64_t block_stride = 0;          // elements between blocks; a multiple of 8
  uint64_t token_stride = 0;          // elements between slots of a block; a multiple of 8;
                                      //   0 = rowH·D (contiguous rows)
  uint64_t head_stride = 0;           // elements between heads of a token; a multiple of 8;
                                      //   0 = D
  KVSTASH_CUDA_HD bool enabled() const { return planes != nullptr; }
  // This view with zero token/head strides replaced by their defaults for rows of `heads`
  // heads of `head_dim` elements (the launchers call it; kernels see explicit strides).
  KVSTASH_CUDA_HD PagedView Resolved(uint32_t heads, uint32_t head_dim) const {
    PagedView v = *this;
    if (v.head_stride == 0) v.head_stride = head_dim;
    if (v.token_stride == 0) v.token_stride = uint64_t{heads} * head_dim;
    return v;
  }
};

// --- Encode ---------------------------------------------------------------------------------

struct EncodeParams {
  CudaGeometry geo;
  const uint16_t* in = nullptr;   // [C][L][2][T][H][D] in geo.dtype; device, 16-byte aligned
  uint8_t* out = nullptr;         // [C][total_bytes] device, 16-byte aligned; writes bytes
                                  //   [header_bytes, total_bytes) of each chunk only
  uint32_t num_chunks = 1;        // C, chunks of the same geometry, contiguous (<= 65535)
  const unsigned long long* gate = nullptr;  // [1] device or null: skip all work when
                                             //   *gate != kNoBadElement (separate pass)
  unsigned long long* first_bad = nullptr;   // [1] device or null: fused check; atomicMin
                                             //   of every bad element's flat index
  PagedView paged;                // when enabled: read the input from it instead of `in`
                                  //   (num_chunks must be 1); flat indexes stay those of the
                                  //   contiguous layout
};
// Writes every section: codes, scales and zeros of each quantized tensor (a layer that
// shares codes writes only its own scales and zeros) and the 16-bit tails. Head dims 64,
// 96, 128 and 256 have specialized kernels; other multiples of 32 up to 512 use a generic
// one. cudaErrorInvalidValue for null/misaligned pointers, a bad geometry, or a layer
// tensor with 2^31 or more groups.
cudaError_t LaunchEncode(const EncodeParams& p, cudaStream_t stream);

// --- Decode ---------------------------------------------------------------------------------

struct DecodeParams {
  CudaGeometry geo;
  const uint8_t* const* sections = nullptr;  // [C][num_pairs] device array of device
                                             //   pointers, each to one pair section
                                             //   (16-byte aligned); only pairs the layer
                                             //   range reads must be valid
  uint32_t num_chunks = 1;                   // C (<= 65535)
  uint32_t layer_begin = 0, layer_end = 0;   // [l0, l1), resolved (non-empty, <= L)
  uint32_t head_begin = 0, head_end = 0;     // [h0, h1), resolved (non-empty, <= H)
  uint32_t out_dtype = 1;                    // 1 fp16, 2 bf16
  uint16_t* out = nullptr;                   // [C][l1-l0][2][T][h1-h0][D] in out_dtype;
                                             //   device, 16-byte aligned
  PagedView paged;                           // when enabled: write the slice into it
                                             //   instead of `out` (num_chunks must be 1)
};
// Decodes the slice (docs/format.md sections 3 and 7). Does NOT verify checksums: the
// sections must have been verified when they were stored or copied to the device.
cudaError_t LaunchDecode(const DecodeParams& p, cudaStream_t stream);

// --- The straightforward alternative ----------------------------------------------------
// One thread per group, scalar 16-bit loads and stores, a true fp32 division per element:
// the benchmark's baseline and a second oracle in tests. Same contracts as above, without
// the validity options, and no paged views.
cudaError_t LaunchEncodeNaive(const EncodeParams& p, cudaStream_t stream);
cudaError_t LaunchDecodeNaive(const DecodeParams& p, cudaStream_t stream);

}  // namespace kvstash::kernels::cuda

#endif  // KVSTASH_KERNELS_CUDA_CODEC_H_
