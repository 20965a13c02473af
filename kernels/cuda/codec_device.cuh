// Device helpers shared by the codec kernels: 16-bit unpacking, the exact quantizer
// thresholds, group parameters and launch dispatch. Internal to kvstash_codec_cuda.
//
// Every file that includes this is compiled with -fmad=false and IEEE division/sqrt, and
// the arithmetic below also spells its rounding out with __f*_rn intrinsics, so neither a
// contraction nor a fast-math flag can change a byte (docs/format.md section 3).
#ifndef KVSTASH_KERNELS_CUDA_CODEC_DEVICE_CUH_
#define KVSTASH_KERNELS_CUDA_CODEC_DEVICE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kvstash/kernels/cuda_codec.h"
#include "kvstash/kernels/half.h"

namespace kvstash::kernels::cuda::detail {

inline constexpr int kThreads = 256;

// dtype tags: kId is the format's dtype byte.
struct F16 {
  static constexpr int kId = 1;
  // Smallest (x & 0x7FFF) that is not encodable: Inf/NaN.
  static constexpr uint32_t kBadAbs = 0x7C00u;
};
struct BF16 {
  static constexpr int kId = 2;
  static constexpr uint32_t kBadAbs = 0x7E80u;  // 2^126
};

// Two packed 16-bit values (element 0 in the low half) to fp32, exactly.
template <class DT>
__device__ __forceinline__ float Lo(uint32_t w) {
  if constexpr (DT::kId == 1) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xFFFFu)));
  } else {
    return __uint_as_float(w << 16);
  }
}
template <class DT>
__device__ __forceinline__ float Hi(uint32_t w) {
  if constexpr (DT::kId == 1) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
  } else {
    return __uint_as_float(w & 0xFFFF0000u);
  }
}
template <class DT>
__device__ __forceinline__ float ToFloat(uint16_t v) {
  if constexpr (DT::kId == 1) {
    return __half2float(__ushort_as_half(v));
  } else {
    return __uint_as_float(static_cast<uint32_t>(v) << 16);
  }
}

// Lane-wise min / max of two packed pairs. Exact (a 16-bit order is the fp32 order); which
// zero comes out of min(-0, +0) does not matter because callers add +0.0f afterwards.
template <class DT>
__device__ __forceinline__ uint32_t Min2(uint32_t a, uint32_t b) {
  if constexpr (DT::kId == 1) {
    const __half2 r = __hmin2(*reinterpret_cast<const __half2*>(&a),
                              *reinterpret_cast<const __half2*>(&b));
    return *reinterpret_cast<const uint32_t*>(&r);
  } else {
    const __nv_bfloat162 r = __hmin2(*reinterpret_cast<const __nv_bfloat162*>(&a),
                                     *reinterpret_cast<const __nv_bfloat162*>(&b));
    return *reinterpret_cast<const uint32_t*>(&r);
  }
}
template <class DT>
__device__ __forceinline__ uint32_t Max2(uint32_t a, uint32_t b) {
  if constexpr (DT::kId == 1) {
    const __half2 r = __hmax2(*reinterpret_cast<const __half2*>(&a),
                              *reinterpret_cast<const __half2*>(&b));
    return *reinterpret_cast<const uint32_t*>(&r);
  } else {
    const __nv_bfloat162 r = __hmax2(*reinterpret_cast<const __nv_bfloat162*>(&a),
                                     *reinterpret_cast<const __nv_bfloat162*>(&b));
    return *reinterpret_cast<const uint32_t*>(&r);
  }
}

// Largest |x| bit pattern of both lanes, accumulated: a lane >= DT::kBadAbs means a value
// the format rejects.
__device__ __forceinline__ uint32_t AbsMax2(uint32_t acc, uint32_t w) {
  return __vmaxu2(acc, w & 0x7FFF7FFFu);
}
template <class DT>
__device__ __forceinline__ bool AnyBad(uint32_t absmax2) {
  return (absmax2 & 0xFFFFu) >= DT::kBadAbs || (absmax2 >> 16) >= DT::kBadAbs;
}
template <class DT>
__device__ __forceinline__ bool IsBad(uint32_t v16) {
  return (v16 & 0x7FFFu) >= DT::kBadAbs;
}

// to16 in the chunk's dtype (half.h's functions: the CPU's own, bit for bit).
template <class DT>
__device__ __forceinline__ uint16_t To16(float f) {
  if constexpr (DT::kId == 1) {
    return FloatToF16Sat(f);
  } else {
    return FloatToBF16Sat(f);
  }
}

// The same function as To16 through the hardware conversion (cvt.rn, gradual underflow,
// no FTZ under this build): clamp, then round to nearest even. A NaN, which only a
// hand-made section can produce, takes half.h's path so even its bit pattern matches.
template <class DT>
__device__ __forceinline__ uint16_t To16Hw(float f) {
  if (f != f) return To16<DT>(f);
  if constexpr (DT::kId == 1) {
    return __half_as_ushort(__float2half_rn(fminf(fmaxf(f, -kF16Max), kF16Max)));
  } else {
    return __bfloat16_as_ushort(__float2bfloat16_rn(fminf(fmaxf(f, -kBF16Max), kBF16Max)));
  }
}

// Walks a grid-stride loop over items = rows x R without a division per step.
struct RowStepper {
  uint32_t row, col, drow, dcol, cols;
  __device__ __forceinline__ RowStepper(uint32_t idx, uint32_t stride, uint32_t r)
      : row(idx / r), col(idx % r), drow(stride / r), dcol(stride % r), cols(r) {}
  __device__ __forceinline__ void Next() {
    col += dcol;
    row += drow;
    if (col >= cols) col -= cols, ++row;
  }
};

// Smallest float strictly above / at least the positive double v (v exact, not a NaN).
__device__ __forceinline__ float FloatAbove(double v) {
  float t = __double2float_ru(v);
  if (static_cast<double>(t) == v) t = __uint_as_float(__float_as_uint(t) + 1u);
  return t;
}
__device__ __forceinline__ float FloatAtLeast(double v) { return __double2float_ru(v); }

// One quantized group's parameters.
//
// The format's code is q = rint(min(max(RN(a / s), 0), lv)) with a = RN(x - mn) and rint
// ties to even. Because RN(a / s) is correctly rounded and a, s >= 0, each step of q is a
// comparison of a with an exact real threshold, which we turn into a float once per group:
//   q >= 1  <=>  RN(a/s) >  0.5   <=>  a/s >  0.5 + 2^-25  (the tie rounds to even 0.5)
//   q >= 2  <=>  RN(a/s) >= 1.5   <=>  a/s >= 1.5 - 2^-24  (the tie rounds to even 1.5)
//   q >= 3  <=>  RN(a/s) >  2.5   <=>  a/s >  2.5 + 2^-23  (the tie rounds to even 2.5)
// s·c is exact in double (24 + 25 significant bits), and "a > v" for a float a is
// "a >= the smallest float above v" (directed rounding handles subnormals, no FTZ). So a
// code costs one compare per level instead of an IEEE division per element, and equals the
// reference bit for bit; tests check this on adversarial inputs and ties.
struct GroupParams {
  float mn;      // min, canonical (+0 for zeros)
  float t1, t2, t3;  // thresholds for q >= 1, 2, 3 (t2, t3 unused at 1 bit)
  uint16_t scale, zero;
};

template <class DT, int kBits>
__device__ __forceinline__ GroupParams MakeGroup(float mn, float mx, float eta) {
  GroupParams g;
  mn = __fadd_rn(mn, 0.0f);
  mx = __fadd_rn(mx, 0.0f);
  const float r = __fsub_rn(mx, mn);
  const float s = kBits == 2 ? __fdiv_rn(r, 3.0f) : r;  // r / 1 == r exactly
  g.mn = mn;
  if (s == 0.0f) {
    g.t1 = g.t2 = g.t3 = __int_as_float(0x7F800000);  // +inf: every code 0
  } else {
    const double sd = static_cast<double>(s);
    g.t1 = FloatAbove(sd * (0.5 + 0x1p-25));
    if (kBits == 2) {
      g.t2 = FloatAtLeast(sd * (1.5 - 0x1p-24));
      g.t3 = FloatAbove(sd * (2.5 + 0x1p-23));
    } else {
      g.t2 = g.t3 = g.t1;
    }
  }
  const float zhat = __fadd_rn(mn, __fmul_rn(eta, r));
  const float factor = __fsub_rn(1.0f, __fmul_rn(2.0f, eta));
  const float shat = __fmul_rn(factor, s);
  g.scale = To16<DT>(shat);
  g.zero = To16<DT>(zhat);
  return g;
}

template <int kBits>
__device__ __forceinline__ uint32_t Code(const GroupParams& g, float x) {
  const float a = __fsub_rn(x, g.mn);
  if (kBits == 1) return a >= g.t1 ? 1u : 0u;
  return (a >= g.t1 ? 1u : 0u) + (a >= g.t2 ? 1u : 0u) + (a >= g.t3 ? 1u : 0u);
}

__device__ __forceinline__ float EtaFor(const CudaGeometry& geo, uint32_t bits) {
  return bits == 2 ? geo.eta2 : geo.eta1;
}

// --- Host-side dispatch ----------------------------------------------------------------

template <int N>
using IntC = std::integral_constant<int, N>;

// Calls f(IntC<D>) for the specialized head dims and f(IntC<0>) (runtime D) otherwise.
template <class F>
cudaError_t DispatchHeadDim(uint32_t d, F&& f) {
  switch (d) {
    case 64: return f(IntC<64>{});
    case 96: return f(IntC<96>{});
    case 128: return f(IntC<128>{});
    case 256: return f(IntC<256>{});
    default: return f(IntC<0>{});
  }
}
template <class F>
cudaError_t DispatchDType(uint32_t dtype, F&& f) {
  if (dtype == 1) return f(F16{});
  if (dtype == 2) return f(BF16{});
  return cudaErrorInvalidValue;
}

// Shape checks shared by the launchers (docs/format.md section 1 limits).
inline bool GeometryOk(const CudaGeometry& g) {
  if (g.num_layers < 1 || g.num_layers > 1024 || g.num_tokens < 1 ||
      g.num_tokens > (1u << 20) || g.num_heads < 1 || g.num_heads > 1024 ||
      g.head_dim < 32 || g.head_dim > 512 || g.head_dim % 32 != 0 ||
      (g.dtype != 1 && g.dtype != 2))
    return false;
  const uint32_t ng = g.raw ? 0 : g.num_tokens / 32;
  return g.num_groups_t == ng && g.quant_tokens == 32 * ng &&
         g.tail_tokens == g.num_tokens - 32 * ng &&
         g.groups == uint64_t{g.num_heads} * ng * g.head_dim &&
         g.total_bytes == g.layer_offset(g.num_layers);
}

inline bool Aligned(const void* p, uintptr_t a) {
  return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0;
}

// Element (h, 0) of token t in plane `plane` of a paged view whose strides are explicit
// (PagedView::Resolved; cuda_codec.h gives the addressing).
__device__ __forceinline__ uint16_t* PagedAt(const PagedView& v, uint32_t plane, uint32_t t,
                                             uint32_t h) {
  const uint32_t s = v.first_slot + t;
  const uint32_t b = __ldg(v.block_ids + s / v.block_size);
  return v.planes[plane] + uint64_t{b} * v.block_stride +
         uint64_t{s % v.block_size} * v.token_stride + uint64_t{h} * v.head_stride;
}

// What the launchers can check of a paged view on the host (the plane pointers and block
// ids are device data, checked by the caller). Strides in multiples of 8 elements keep
// every head's start 16-byte aligned, so the kernels' 16-byte accesses stay legal (D is a
// multiple of 32).
inline bool PagedOk(const PagedView& v) {
  return v.planes != nullptr && Aligned(v.planes, 8) && v.block_ids != nullptr &&
         Aligned(v.block_ids, 4) && v.block_size >= 1 && v.first_slot < v.block_size &&
         v.block_stride % 8 == 0 && v.token_stride % 8 == 0 && v.head_stride % 8 == 0;
}

inline unsigned BlocksFor(uint64_t items) {
  return static_cast<unsigned>((items + kThreads - 1) / kThreads);
}

}  // namespace kvstash::kernels::cuda::detail

#endif  // KVSTASH_KERNELS_CUDA_CODEC_DEVICE_CUH_
