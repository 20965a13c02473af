// Decode kernels (docs/format.md sections 3 and 7) and LaunchDecode.
//
// A group decodes to at most four distinct values, q·scale + zero for q < 2^b, so each
// group's values are converted once (to16_out through the hardware cvt after the clamp) and
// every element is then a byte-permute select; stores are 16 bytes and contiguous across the
// warp. Grids are (blocks, layers of the slice, chunks); the keys and values kernels loop
// over their layer's items so the offsets (which depend only on the layer) are computed once
// per thread:
//   keys  - an item is (token group, head, 8 channels): 8 code words, 8 scales, 8 zeros in,
//           32 tokens x 16 bytes out.
//   values- an item is (token, head, 8 channels), a quarter of a group.
//   tails - one thread per 8 elements, converted when the dtypes differ.
#include <algorithm>

#include "codec_device.cuh"

namespace kvstash::kernels::cuda {
namespace detail {
namespace {

struct DecodeArgs {
  CudaGeometry geo;
  const uint8_t* const* sections;
  uint32_t l0, h0, hs;  // first layer, first head, heads in the slice
  uint32_t ls;          // layers in the slice
  uint16_t* out;
  PagedView paged;
  uint32_t items;       // tail items per layer tensor
};

// Contiguous output row (hs·D elements) of token t of slice tensor lx = 2·l' + x of chunk c.
__device__ __forceinline__ uint16_t* OutRow(const DecodeArgs& a, uint32_t c, uint32_t lx,
                                            uint32_t t, uint64_t row) {
  return a.out + ((uint64_t{c} * a.ls * 2 + lx) * a.geo.num_tokens + t) * row;
}

__device__ __forceinline__ const uint8_t* At(const DecodeArgs& a, uint32_t c, uint32_t l,
                                             uint64_t off) {
  const uint32_t p = l / 2;
  return a.sections[uint64_t{c} * a.geo.num_pairs() + p] + (off - a.geo.pair_offset(p));
}

// Decoded 16-bit patterns of q = 0..3, packed {q0 | q1 << 16, q2 | q3 << 16}.
template <class IN, class OUT, int kBits>
__device__ __forceinline__ uint2 Table(uint16_t scale16, uint16_t zero16) {
  const float scale = ToFloat<IN>(scale16), zero = ToFloat<IN>(zero16);
  uint32_t v[4] = {0, 0, 0, 0};
#pragma unroll
  for (int q = 0; q < (1 << kBits); ++q) {
    v[q] = To16Hw<OUT>(__fadd_rn(__fmul_rn(static_cast<float>(q), scale), zero));
  }
  return make_uint2(v[0] | (v[1] << 16), v[2] | (v[3] << 16));
}
// The 16-bit pattern of code q (low half of the result).
__device__ __forceinline__ uint32_t Pick(uint2 t, uint32_t q) {
  return __byte_perm(t.x, t.y, 0x10u + q * 0x22u);
}
__device__ __forceinline__ uint32_t Pack(uint32_t lo, uint32_t hi) {
  return __byte_perm(lo, hi, 0x5410u);
}

// Writes tokens 0..31 of the tile at dst(j), j = token within the group.
template <class IN, class OUT, int kBits, class Dst>
__device__ __forceinline__ void KeyTile(const uint8_t* codes, const uint8_t* scales,
                                        const uint8_t* zeros, uint64_t i, const Dst& dst) {
  uint32_t cw[8][kBits];  // 8 channels' code words, 32 bits each half
  if constexpr (kBits == 1) {
    const uint4* s = reinterpret_cast<const uint4*>(codes + 4 * i);
    const uint4 c0 = __ldg(s), c1 = __ldg(s + 1);
    cw[0][0] = c0.x, cw[1][0] = c0.y, cw[2][0] = c0.z, cw[3][0] = c0.w;
    cw[4][0] = c1.x, cw[5][0] = c1.y, cw[6][0] = c1.z, cw[7][0] = c1.w;
  } else {
    const uint4* s = reinterpret_cast<const uint4*>(codes + 8 * i);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint4 v = __ldg(s + k);
      cw[2 * k][0] = v.x, cw[2 * k][1] = v.y, cw[2 * k + 1][0] = v.z, cw[2 * k + 1][1] = v.w;
    }
  }
  const uint4 sc = __ldg(reinterpret_cast<const uint4*>(scales + 2 * i));
  const uint4 ze = __ldg(reinterpret_cast<const uint4*>(zeros + 2 * i));
  const uint32_t scw[4] = {sc.x, sc.y, sc.z, sc.w}, zew[4] = {ze.x, ze.y, ze.z, ze.w};
  uint2 tab[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const uint16_t s16 = static_cast<uint16_t>(scw[k / 2] >> (16 * (k % 2)));
    const uint16_t z16 = static_cast<uint16_t>(zew[k / 2] >> (16 * (k % 2)));
    tab[k] = Table<IN, OUT, kBits>(s16, z16);
  }
  constexpr uint32_t kMask = (1u << kBits) - 1;
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    constexpr int kPer = 32 / kBits;  // codes per 32-bit half
    uint32_t o[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint32_t q0 = (cw[2 * k][j / kPer] >> (kBits * (j % kPer))) & kMask;
      const uint32_t q1 = (cw[2 * k + 1][j / kPer] >> (kBits * (j % kPer))) & kMask;
      o[k] = Pack(Pick(tab[2 * k], q0), Pick(tab[2 * k + 1], q1));
    }
    __stcs(reinterpret_cast<uint4*>(dst(j)), make_uint4(o[0], o[1], o[2], o[3]));
  }
}

// Grid (blocks, layers of the slice, chunks); a block-stride loop over this layer's items
// keeps the offsets, which depend only on the layer, out of the loop.
template <class IN, class OUT, int kD, int kBits, bool kPaged>
__device__ __forceinline__ void DecodeKeysLayer(const DecodeArgs& a, uint32_t l, uint32_t c,
                                                const TensorOffsets& to, uint16_t* base) {
  const CudaGeometry& geo = a.geo;
  const uint32_t D = kD ? kD : geo.head_dim;
  const uint32_t D8 = D / 8;
  const uint8_t* codes = At(a, c, l, to.codes);
  const uint8_t* scales = At(a, c, l, to.scales);
  const uint8_t* zeros = At(a, c, l, to.zeros);
  const uint64_t row = uint64_t{a.hs} * D;  // output token stride, elements
  const uint32_t NG = geo.num_groups_t;
  for (RowStepper s(blockIdx.x * kThreads + threadIdx.x, gridDim.x * kThreads, a.hs * D8);
       s.row < NG; s.Next()) {  // row = token group g, col = h'·D8 + d8
    const uint32_t hp = s.col / D8, d8 = s.col % D8;
    const uint64_t i = (uint64_t{a.h0 + hp} * NG + s.row) * D + 8 * d8;
    if constexpr (kPaged) {
      const uint32_t lx = 2 * (l - a.l0), t0 = 32 * s.row;
      KeyTile<IN, OUT, kBits>(codes, scales, zeros, i, [&](int j) {
        return PagedAt(a.paged, lx, t0 + j, hp) + 8 * d8;
      });
    } else {
      const uint64_t col = uint64_t{hp} * D + 8 * d8;
      uint16_t* dst = base + 32ull * s.row * row + col;
      KeyTile<IN, OUT, kBits>(codes, scales, zeros, i, [&](int j) { return dst + j * row; });
    }
  }
}

template <class IN, class OUT, int kD, bool kPaged>
__global__ void __launch_bounds__(kThreads) DecodeKeysKernel(const DecodeArgs a) {
  const CudaGeometry& geo = a.geo;
  const uint32_t lp = blockIdx.y, l = a.l0 + lp, c = blockIdx.z;
  const TensorOffsets to = geo.tensor(l, 0);
  const uint64_t row = uint64_t{a.hs} * (kD ? kD : geo.head_dim);
  uint16_t* base = kPaged ? nullptr : OutRow(a, c, 2 * lp, 0, row);
  if (to.bits == 2) {
    DecodeKeysLayer<IN, OUT, kD, 2, kPaged>(a, l, c, to, base);
  } else {
    DecodeKeysLayer<IN, OUT, kD, 1, kPaged>(a, l, c, to, base);
  }
}

template <class IN, class OUT, int kD, int kBits, bool kPaged>
__device__ __forceinline__ void DecodeValuesLayer(const DecodeArgs& a, uint32_t l, uint32_t c,
                                                  const TensorOffsets& to, uint16_t* base) {
  const CudaGeometry& geo = a.geo;
  const uint32_t D = kD ? kD : geo.head_dim;
  const uint32_t D8 = D / 8, C = D / 32;
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(At(a, c, l, to.scales));
  const uint16_t* zeros = reinterpret_cast<const uint16_t*>(At(a, c, l, to.zeros));
  const uint8_t* codes = At(a, c, l, to.codes);
  const uint64_t row = uint64_t{a.hs} * D;
  const uint32_t Tq = geo.quant_tokens;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  for (RowStepper s(blockIdx.x * kThreads + threadIdx.x, gridDim.x * kThreads, a.hs * D8);
       s.row < Tq; s.Next()) {  // row = token t, col = h'·D8 + d8
    const uint32_t hp = s.col / D8, d8 = s.col % D8;
    const uint64_t i = (uint64_t{a.h0 + hp} * Tq + s.row) * C + d8 / 4;
    const uint32_t quarter = d8 % 4;
    uint32_t bits;  // this quarter's 8 codes
    if constexpr (kBits == 1) {
      bits = __ldg(reinterpret_cast<const uint32_t*>(codes) + i) >> (8 * quarter);
    } else {
      bits = static_cast<uint32_t>(
          __ldg(reinterpret_cast<const unsigned long long*>(codes) + i) >> (16 * quarter));
    }
    const uint2 tab = Table<IN, OUT, kBits>(__ldg(scales + i), __ldg(zeros + i));
    uint32_t o[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint32_t q0 = (bits >> (kBits * 2 * k)) & kMask;
      const uint32_t q1 = (bits >> (kBits * (2 * k + 1))) & kMask;
      o[k] = Pack(Pick(tab, q0), Pick(tab, q1));
    }
    uint16_t* dst = kPaged ? PagedAt(a.paged, 2 * (l - a.l0) + 1, s.row, hp) + 8 * d8
                           : base + s.row * row + uint64_t{hp} * D + 8 * d8;
    __stcs(reinterpret_cast<uint4*>(dst), make_uint4(o[0], o[1], o[2], o[3]));
  }
}

template <class IN, class OUT, int kD, bool kPaged>
__global__ void __launch_bounds__(kThreads) DecodeValuesKernel(const DecodeArgs a) {
  const CudaGeometry& geo = a.geo;
  const uint32_t lp = blockIdx.y, l = a.l0 + lp, c = blockIdx.z;
  const TensorOffsets to = geo.tensor(l, 1);
  const uint64_t row = uint64_t{a.hs} * (kD ? kD : geo.head_dim);
  uint16_t* base = kPaged ? nullptr : OutRow(a, c, 2 * lp + 1, 0, row);
  if (to.bits == 2) {
    DecodeValuesLayer<IN, OUT, kD, 2, kPaged>(a, l, c, to, base);
  } else {
    DecodeValuesLayer<IN, OUT, kD, 1, kPaged>(a, l, c, to, base);
  }
}

template <class IN, class OUT>
__device__ __forceinline__ uint32_t Convert2(uint32_t w) {
  if constexpr (IN::kId == OUT::kId) {
    return w;
  } else {
    return uint32_t{To16<OUT>(Lo<IN>(w))} | (uint32_t{To16<OUT>(Hi<IN>(w))} << 16);
  }
}

// Tail tokens of layer tensor blockIdx.y = 2·l' + x: [H][Tt][D] -> out[l'][x][Tq + tt][h'][d].
template <class IN, class OUT, int kD, bool kPaged>
__global__ void __launch_bounds__(kThreads) DecodeTailKernel(const DecodeArgs a) {
  const uint32_t idx = blockIdx.x * kThreads + threadIdx.x;
  if (idx >= a.items) return;
  const CudaGeometry& geo = a.geo;
  const uint32_t D = kD ? kD : geo.head_dim;
  const uint32_t D8 = D / 8;
  const uint32_t th = idx / D8, d8 = idx % D8;  // th = tt·hs + h'
  const uint32_t hp = th % a.hs, tt = th / a.hs;
  const uint32_t lx = blockIdx.y, lp = lx / 2, x = lx % 2, l = a.l0 + lp, c = blockIdx.z;
  const TensorOffsets to = geo.tensor(l, static_cast<int>(x));
  const uint64_t row = uint64_t{a.hs} * D;
  const uint8_t* src = At(a, c, l, to.tail) +
                       2 * ((uint64_t{a.h0 + hp} * geo.tail_tokens + tt) * D + 8 * d8);
  uint16_t* dst = kPaged ? PagedAt(a.paged, lx, geo.quant_tokens + tt, hp) + 8 * d8
                         : OutRow(a, c, lx, geo.quant_tokens + tt, row) + uint64_t{hp} * D + 8 * d8;
  const uint4 v = __ldcs(reinterpret_cast<const uint4*>(src));
  __stcs(reinterpret_cast<uint4*>(dst), make_uint4(Convert2<IN, OUT>(v.x), Convert2<IN, OUT>(v.y),
                                                   Convert2<IN, OUT>(v.z), Convert2<IN, OUT>(v.w)));
}

template <class IN, class OUT, int kD, bool kPaged>
cudaError_t LaunchAll(const DecodeParams& p, cudaStream_t stream) {
  const CudaGeometry& geo = p.geo;
  const uint32_t hs = p.head_end - p.head_begin;
  DecodeArgs a{geo, p.sections, p.layer_begin, p.head_begin, hs,
               p.layer_end - p.layer_begin, p.out,
               kPaged ? p.paged.Resolved(hs, geo.head_dim) : p.paged, 0};
  const uint32_t D8 = geo.head_dim / 8;
  if (geo.groups > 0) {
    // Enough blocks to fill the device a few times over; each thread then loops over
    // several items of its layer.
    int device = 0, sms = 0;
    if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
    if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
        e != cudaSuccess)
      return e;
    const uint64_t layers = uint64_t{a.ls} * p.num_chunks;
    const uint64_t cap = std::max<uint64_t>(1, (uint64_t(sms) * 32 + layers - 1) / layers);
    const uint32_t k_items = geo.num_groups_t * a.hs * D8;
    DecodeKeysKernel<IN, OUT, kD, kPaged>
        <<<dim3(std::min<uint64_t>(BlocksFor(k_items), cap), a.ls, p.num_chunks), kThreads, 0,
           stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    const uint32_t v_items = geo.quant_tokens * a.hs * D8;
    DecodeValuesKernel<IN, OUT, kD, kPaged>
        <<<dim3(std::min<uint64_t>(BlocksFor(v_items), cap), a.ls, p.num_chunks), kThreads, 0,
           stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  if (geo.tail_tokens > 0) {
    a.items = geo.tail_tokens * a.hs * D8;
    DecodeTailKernel<IN, OUT, kD, kPaged>
        <<<dim3(BlocksFor(a.items), 2 * a.ls, p.num_chunks), kThreads, 0, stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace
}  // namespace detail

cudaError_t LaunchDecode(const DecodeParams& p, cudaStream_t stream) {
  using namespace detail;
  const CudaGeometry& geo = p.geo;
  const bool paged = p.paged.enabled();
  if (paged ? !PagedOk(p.paged) || p.num_chunks != 1 : p.out == nullptr || !Aligned(p.out, 16))
    return cudaErrorInvalidValue;
  if (p.sections == nullptr || !Aligned(p.sections, 8) || p.num_chunks < 1 || p.num_chunks > 65535 || !GeometryOk(geo) ||
      p.layer_begin >= p.layer_end || p.layer_end > geo.num_layers ||
      p.head_begin >= p.head_end || p.head_end > geo.num_heads)
    return cudaErrorInvalidValue;
  // 32-bit per-layer item counts (see LaunchEncode).
  if (uint64_t{geo.num_tokens} * geo.num_heads * geo.head_dim / 8 >= (1ull << 31))
    return cudaErrorInvalidValue;
  return DispatchDType(geo.dtype, [&](auto in) {
    using IN = decltype(in);
    return DispatchDType(p.out_dtype, [&](auto out) {
      using OUT = decltype(out);
      return DispatchHeadDim(geo.head_dim, [&](auto d) {
        constexpr int kD = decltype(d)::value;
        return paged ? LaunchAll<IN, OUT, kD, true>(p, stream)
                     : LaunchAll<IN, OUT, kD, false>(p, stream);
      });
    });
  });
}

}  // namespace kvstash::kernels::cuda
