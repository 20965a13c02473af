// Scalar 16-bit float conversions that match docs/format.md bit for bit on the host and,
// compiled by nvcc, on the device. Round-to-nearest-even, no flush-to-zero; to16 clamps to
// the largest finite value first (inputs are finite by contract).
#ifndef KVSTASH_KERNELS_HALF_H_
#define KVSTASH_KERNELS_HALF_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVSTASH_HD __host__ __device__ __forceinline__
#else
#define KVSTASH_HD inline
#endif

namespace kvstash::kernels {

inline constexpr float kF16Max = 65504.0f;
inline constexpr float kBF16Max = 3.38953139e38f;  // 0x7F7F as bf16
inline constexpr float kBF16InputLimit = 8.50705917e37f;  // 2^126; |x| must be below it

KVSTASH_HD uint32_t FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
KVSTASH_HD float BitsFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

KVSTASH_HD float F16ToFloat(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return BitsFloat(sign | 0x7F800000u | (mant << 13));  // inf/nan
  if (exp != 0) return BitsFloat(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return BitsFloat(sign);
  // Subnormal: value = mant · 2^-24, exact in fp32.
  int e = -1;
  do { ++e; mant <<= 1; } while ((mant & 0x400u) == 0);
  return BitsFloat(sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3FFu) << 13));
}

KVSTASH_HD float BF16ToFloat(uint16_t b) { return BitsFloat((uint32_t)b << 16); }

// fp32 -> fp16, round to nearest even. REQUIRES: finite |f| <= 65504 (callers clamp).
KVSTASH_HD uint16_t FloatToF16Finite(float f) {
  const uint32_t x = FloatBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x38800000u) {  // |f| >= 2^-14: normal fp16
    // Re-bias exponent and round the 13 dropped bits to nearest even.
    uint32_t r = ax - 0x38000000u;  // exponent bias 127 -> 15
    r += 0x0FFFu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
  }
  if (ax < 0x33000000u) return (uint16_t)sign;  // < 2^-25 rounds to zero (tie at 2^-25 -> 0)
  // Subnormal fp16: value = m · 2^-24 with m < 1024.
  const uint32_t e = ax >> 23;                  // 102..112
  const uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - e;              // so that m >> shift is in units of 2^-24
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return (uint16_t)(sign | q);
}

// fp32 -> bf16, round to nearest even. REQUIRES: finite.
KVSTASH_HD uint16_t FloatToBF16Finite(float f) {
  const uint32_t x = FloatBits(f);
  return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

KVSTASH_HD float ClampAbs(float f, float m) { return f > m ? m : (f < -m ? -m : f); }

// The format's to16: clamp to the largest finite value of the dtype, then round.
KVSTASH_HD uint16_t FloatToF16Sat(float f) { return FloatToF16Finite(ClampAbs(f, kF16Max)); }
KVSTASH_HD uint16_t FloatToBF16Sat(float f) { return FloatToBF16Finite(ClampAbs(f, kBF16Max)); }

// dtype: 1 = fp16, 2 = bf16 (DType's values).
KVSTASH_HD float HalfToFloat(uint16_t v, int dtype) {
  return dtype == 2 ? BF16ToFloat(v) : F16ToFloat(v);
}
KVSTASH_HD uint16_t FloatToHalfSat(float f, int dtype) {
  return dtype == 2 ? FloatToBF16Sat(f) : FloatToF16Sat(f);
}
// Finite, and for bf16 below 2^126 in magnitude (docs/format.md section 1).
KVSTASH_HD bool HalfIsEncodable(uint16_t v, int dtype) {
  if (dtype == 2) return (v & 0x7FFFu) < 0x7E80u;  // 2^126 = 0x7E80 as bf16
  return (v & 0x7C00u) != 0x7C00u;
}

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_HALF_H_
