// Encode kernels (docs/format.md sections 3-4) and LaunchEncode.
//
// Three kernels, each over grid (items, layers or layer tensors, chunks), all reading the
// input exactly once:
//   keys  - one thread per (head, token group, channel pair): 32 coalesced 4-byte loads
//           (a warp reads 128 contiguous bytes per token), two groups per thread; the
//           thread order is the group order, so code/scale/zero stores are contiguous.
//   values- one thread per group of 32 channels: four 16-byte loads, one code word.
//   tails - one thread per 8 tail elements: a 16-byte copy (the whole tensor when raw).
// Block-uniform branches pick the layer's bit width and whether it stores codes.
#include "codec_device.cuh"

namespace kvstash::kernels::cuda {
namespace detail {
namespace {

struct EncodeArgs {
  CudaGeometry geo;
  const uint16_t* in;
  PagedView paged;
  uint8_t* out;
  const unsigned long long* gate;
  unsigned long long* first_bad;
  uint32_t items;  // per layer (keys, values) or per layer tensor (tails)
};

__device__ __forceinline__ bool Gated(const EncodeArgs& a) {
  return a.gate != nullptr && *a.gate != kNoBadElement;
}

// Element (h, dc) of token t of layer tensor lx (= 2l + x) of chunk c, whose column in
// the contiguous H·D row is col = h·D + dc. The contiguous address is the row's start plus
// col, exactly as before paged views had strides; a paged view addresses the head.
template <bool kPaged>
__device__ __forceinline__ const uint16_t* InAt(const EncodeArgs& a, uint32_t c, uint32_t lx,
                                                uint32_t t, uint32_t h, uint32_t dc,
                                                uint64_t col, uint64_t HD) {
  if constexpr (kPaged) {
    return PagedAt(a.paged, lx, t, h) + dc;
  } else {
    return a.in + c * a.geo.elements() + (uint64_t{lx} * a.geo.num_tokens + t) * HD + col;
  }
}

// Reports the smallest bad flat index (of the contiguous layout) among tokens
// [t0, t0 + nt) x channels [dc0, dc0 + ncol) of head h (columns from col0 = h·D + dc0) of
// layer tensor lx, row-major.
template <class DT, bool kPaged>
__device__ void ReportFirstBad(const EncodeArgs& a, uint32_t c, uint32_t lx, uint32_t t0,
                               int nt, uint32_t h, uint32_t dc0, uint64_t col0, int ncol,
                               uint64_t HD) {
  for (int k = 0; k < nt; ++k) {
    const uint16_t* in = InAt<kPaged>(a, c, lx, t0 + k, h, dc0, col0, HD);
    for (int e = 0; e < ncol; ++e) {
      if (IsBad<DT>(in[e])) {
        atomicMin(a.first_bad, c * a.geo.elements() +
                                   (uint64_t{lx} * a.geo.num_tokens + t0 + k) * HD + col0 + e);
        return;
      }
    }
  }
}

template <class DT, int kBits, bool kCodes>
__device__ __forceinline__ void KeyPair(const uint32_t (&w)[32], const GroupParams& g0,
                                        const GroupParams& g1, uint8_t* codes, uint64_t i0) {
  if constexpr (kCodes) {
    if constexpr (kBits == 1) {
      uint32_t c0 = 0, c1 = 0;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        c0 |= Code<1>(g0, Lo<DT>(w[j])) << j;
        c1 |= Code<1>(g1, Hi<DT>(w[j])) << j;
      }
      *reinterpret_cast<uint2*>(codes + 4 * i0) = make_uint2(c0, c1);
    } else {
      uint32_t c0[2] = {0, 0}, c1[2] = {0, 0};
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        c0[j / 16] |= Code<2>(g0, Lo<DT>(w[j])) << (2 * (j % 16));
        c1[j / 16] |= Code<2>(g1, Hi<DT>(w[j])) << (2 * (j % 16));
      }
      *reinterpret_cast<uint4*>(codes + 8 * i0) = make_uint4(c0[0], c0[1], c1[0], c1[1]);
    }
  }
}

template <class DT, int kD, bool kCheck, bool kPaged>
__global__ void __launch_bounds__(kThreads) EncodeKeysKernel(const EncodeArgs a) {
  const uint32_t idx = blockIdx.x * kThreads + threadIdx.x;
  if (idx >= a.items || Gated(a)) return;
  const CudaGeometry& geo = a.geo;
  const uint32_t D = kD ? kD : geo.head_dim;
  const uint32_t hg = idx / (D / 2), dp = idx % (D / 2);
  const uint32_t g = hg % geo.num_groups_t, h = hg / geo.num_groups_t;
  const uint32_t l = blockIdx.y, c = blockIdx.z;
  const uint64_t HD = uint64_t{geo.num_heads} * D;
  const uint64_t col = uint64_t{h} * D + 2 * dp;

  uint32_t w[32];
  if constexpr (kPaged) {
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      w[j] = __ldcs(reinterpret_cast<const uint32_t*>(
          InAt<true>(a, c, 2 * l, 32 * g + j, h, 2 * dp, col, HD)));
    }
  } else {
    const uint32_t* src =
        reinterpret_cast<const uint32_t*>(InAt<false>(a, c, 2 * l, 32 * g, h, 2 * dp, col, HD));
    const uint64_t stride = HD / 2;  // in words
#pragma unroll
    for (int j = 0; j < 32; ++j) w[j] = __ldcs(src + j * stride);
  }

  uint32_t mn2 = w[0], mx2 = w[0];
#pragma unroll
  for (int j = 1; j < 32; ++j) {
    mn2 = Min2<DT>(mn2, w[j]);
    mx2 = Max2<DT>(mx2, w[j]);
  }
  if constexpr (kCheck) {
    uint32_t am = 0;
#pragma unroll
    for (int j = 0; j < 32; ++j) am = AbsMax2(am, w[j]);
    if (AnyBad<DT>(am)) {
      ReportFirstBad<DT, kPaged>(a, c, 2 * l, 32 * g, 32, h, 2 * dp, col, 2, HD);
      return;
    }
  }

  const TensorOffsets to = geo.tensor(l, 0);
  uint8_t* chunk = a.out + c * geo.total_bytes;
  const uint64_t i0 = 2ull * idx;  // group index of the even channel
  const float eta = EtaFor(geo, to.bits);
  GroupParams g0, g1;
  if (to.bits == 2) {
    g0 = MakeGroup<DT, 2>(Lo<DT>(mn2), Lo<DT>(mx2), eta);
    g1 = MakeGroup<DT, 2>(Hi<DT>(mn2), Hi<DT>(mx2), eta);
    if (to.owns_codes) KeyPair<DT, 2, true>(w, g0, g1, chunk + to.codes, i0);
  } else {
    g0 = MakeGroup<DT, 1>(Lo<DT>(mn2), Lo<DT>(mx2), eta);
    g1 = MakeGroup<DT, 1>(Hi<DT>(mn2), Hi<DT>(mx2), eta);
    if (to.owns_codes) KeyPair<DT, 1, true>(w, g0, g1, chunk + to.codes, i0);
  }
  *reinterpret_cast<uint32_t*>(chunk + to.scales + 2 * i0) =
      uint32_t{g0.scale} | (uint32_t{g1.scale} << 16);
  *reinterpret_cast<uint32_t*>(chunk + to.zeros + 2 * i0) =
      uint32_t{g0.zero} | (uint32_t{g1.zero} << 16);
}

template <class DT, int kBits>
__device__ __forceinline__ uint64_t ValueCodes(const uint32_t (&w)[16], const GroupParams& g) {
  if constexpr (kBits == 1) {
    uint32_t c = 0;
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      c |= Code<1>(g, Lo<DT>(w[k])) << (2 * k);
      c |= Code<1>(g, Hi<DT>(w[k])) << (2 * k + 1);
    }
    return c;
  } else {
    uint32_t c[2] = {0, 0};
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      c[k / 8] |= Code<2>(g, Lo<DT>(w[k])) << (4 * (k % 8));
      c[k / 8] |= Code<2>(g, Hi<DT>(w[k])) << (4 * (k % 8) + 2);
    }
    return uint64_t{c[0]} | (uint64_t{c[1]} << 32);
  }
}

template <class DT, int kD, bool kCheck, bool kPaged>
__global__ void __launch_bounds__(kThreads) EncodeValuesKernel(const EncodeArgs a) {
  const uint32_t i = blockIdx.x * kThreads + threadIdx.x;  // the group index
  if (i >= a.items || Gated(a)) return;
  const CudaGeometry& geo = a.geo;
  const uint32_t D = kD ? kD : geo.head_dim;
  const uint32_t C = D / 32;
  const uint32_t ht = i / C, cc = i % C;
  const uint32_t t = ht % geo.quant_tokens, h = ht / geo.quant_tokens;
  const uint32_t l = blockIdx.y, c = blockIdx.z;
  const uint64_t HD = uint64_t{geo.num_heads} * D;
  const uint64_t col = uint64_t{h} * D + 32 * cc;
  const uint4* src =
      reinterpret_cast<const uint4*>(InAt<kPaged>(a, c, 2 * l + 1, t, h, 32 * cc, col, HD));

  uint32_t w[16];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint4 v = __ldcs(src + k);
    w[4 * k] = v.x, w[4 * k + 1] = v.y, w[4 * k + 2] = v.z, w[4 * k + 3] = v.w;
  }
  uint32_t mn2 = w[0], mx2 = w[0];
#pragma unroll
  for (int k = 1; k < 16; ++k) {
    mn2 = Min2<DT>(mn2, w[k]);
    mx2 = Max2<DT>(mx2, w[k]);
  }
  if constexpr (kCheck) {
    uint32_t am = 0;
#pragma unroll
    for (int k = 0; k < 16; ++k) am = AbsMax2(am, w[k]);
    if (AnyBad<DT>(am)) {
      ReportFirstBad<DT, kPaged>(a, c, 2 * l + 1, t, 1, h, 32 * cc, col, 32, HD);
      return;
    }
  }
  const float mn = fminf(Lo<DT>(mn2), Hi<DT>(mn2));
  const float mx = fmaxf(Lo<DT>(mx2), Hi<DT>(mx2));

  const TensorOffsets to = geo.tensor(l, 1);
  uint8_t* chunk = a.out + c * geo.total_bytes;
  const float eta = EtaFor(geo, to.bits);
  GroupParams g;
  if (to.bits == 2) {
    g = MakeGroup<DT, 2>(mn, mx, eta);
    if (to.owns_codes)
      *reinterpret_cast<uint64_t*>(chunk + to.codes + 8ull * i) = ValueCodes<DT, 2>(w, g);
  } else {
    g = MakeGroup<DT, 1>(mn, mx, eta);
    if (to.owns_codes)
      *reinterpret_cast<uint32_t*>(chunk + to.codes + 4ull * i) =
          static_cast<uint32_t>(ValueCodes<DT, 1>(w, g));
  }
  reinterpret_cast<uint16_t*>(chunk + to.scales)[i] = g.scale;
  reinterpret_cast<uint16_t*>(chunk + to.zeros)[i] = g.zero;
}

// Tail tokens [Tq, T) of layer tensor blockIdx.y (= 2l + x), [T][H][D] -> [H][Tt][D].
template <class DT, int kD, bool kCheck, bool kPaged>
__global__ void __launch_bounds__(kThreads) EncodeTailKernel(const EncodeArgs a) {
  const uint32_t idx = blockIdx.x * kThreads + threadIdx.x;
  if (idx >= a.items || Gated(a)) return;
  const CudaGeometry& geo = a.geo;
  const uint32_t D = kD ? kD : geo.head_dim;
  const uint32_t D8 = D / 8;
  const uint32_t row = idx / D8, d8 = idx % D8;  // row = h·Tt + tt
  const uint32_t tt = row % geo.tail_tokens, h = row / geo.tail_tokens;
  const uint32_t lx = blockIdx.y, c = blockIdx.z;
  const uint64_t HD = uint64_t{geo.num_heads} * D;
  const uint64_t col = uint64_t{h} * D + 8 * d8;
  const uint4 v = __ldcs(reinterpret_cast<const uint4*>(
      InAt<kPaged>(a, c, lx, geo.quant_tokens + tt, h, 8 * d8, col, HD)));
  if constexpr (kCheck) {
    uint32_t am = AbsMax2(AbsMax2(AbsMax2(AbsMax2(0, v.x), v.y), v.z), v.w);
    if (AnyBad<DT>(am)) {
      ReportFirstBad<DT, kPaged>(a, c, lx, geo.quant_tokens + tt, 1, h, 8 * d8, col, 8, HD);
      return;
    }
  }
  const TensorOffsets to = geo.tensor(lx / 2, static_cast<int>(lx % 2));
  uint8_t* dst = a.out + c * geo.total_bytes + to.tail + 16ull * idx;
  *reinterpret_cast<uint4*>(dst) = v;
}

template <class DT, int kD, bool kCheck, bool kPaged>
cudaError_t LaunchAll(const EncodeParams& p, cudaStream_t stream) {
  const CudaGeometry& geo = p.geo;
  EncodeArgs a{geo, p.in, kPaged ? p.paged.Resolved(geo.num_heads, geo.head_dim) : p.paged,
               p.out, p.gate, p.first_bad, 0};
  const uint32_t L = geo.num_layers;
  if (geo.groups > 0) {
    a.items = static_cast<uint32_t>(geo.groups / 2);
    EncodeKeysKernel<DT, kD, kCheck, kPaged>
        <<<dim3(BlocksFor(a.items), L, p.num_chunks), kThreads, 0, stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    a.items = static_cast<uint32_t>(geo.groups);
    EncodeValuesKernel<DT, kD, kCheck, kPaged>
        <<<dim3(BlocksFor(a.items), L, p.num_chunks), kThreads, 0, stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  const uint64_t tail_items = uint64_t{geo.num_heads} * geo.tail_tokens * geo.head_dim / 8;
  if (tail_items > 0) {
    a.items = static_cast<uint32_t>(tail_items);
    EncodeTailKernel<DT, kD, kCheck, kPaged>
        <<<dim3(BlocksFor(a.items), 2 * L, p.num_chunks), kThreads, 0, stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace
}  // namespace detail

cudaError_t LaunchEncode(const EncodeParams& p, cudaStream_t stream) {
  using namespace detail;
  const CudaGeometry& geo = p.geo;
  const bool paged = p.paged.enabled();
  if (paged ? !PagedOk(p.paged) || p.num_chunks != 1
            : p.in == nullptr || !Aligned(p.in, 16))
    return cudaErrorInvalidValue;
  if (p.out == nullptr || !Aligned(p.out, 16) || p.num_chunks < 1 || p.num_chunks > 65535 ||
      !GeometryOk(geo))
    return cudaErrorInvalidValue;
  // Per-launch item counts are 32-bit and grids hold at most 2^31 - 1 blocks.
  const uint64_t tail_items = uint64_t{geo.num_heads} * geo.tail_tokens * geo.head_dim / 8;
  if (geo.groups >= (1ull << 31) || tail_items >= (1ull << 31)) return cudaErrorInvalidValue;
  return DispatchDType(geo.dtype, [&](auto dt) {
    using DT = decltype(dt);
    return DispatchHeadDim(geo.head_dim, [&](auto d) {
      constexpr int kD = decltype(d)::value;
      if (paged) {
        return p.first_bad != nullptr ? LaunchAll<DT, kD, true, true>(p, stream)
                                      : LaunchAll<DT, kD, false, true>(p, stream);
      }
      return p.first_bad != nullptr ? LaunchAll<DT, kD, true, false>(p, stream)
                                    : LaunchAll<DT, kD, false, false>(p, stream);
    });
  });
}

}  // namespace kvstash::kernels::cuda
