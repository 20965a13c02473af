// Helpers shared by the CPU codec tests: random inputs (seeded, the seed logged by the
// caller), byte access into a chunk, and shape/config printing.
#ifndef KVSTASH_TESTS_KERNELS_CODEC_TEST_UTIL_H_
#define KVSTASH_TESTS_KERNELS_CODEC_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"

namespace kvstash::kernels::testing {

inline int Dt(DType d) { return static_cast<int>(d); }

inline uint16_t ToHalf(float f, DType d) { return FloatToHalfSat(f, Dt(d)); }
inline float FromHalf(uint16_t v, DType d) { return HalfToFloat(v, Dt(d)); }

template <typename T>
T ReadAt(const std::vector<uint8_t>& chunk, uint64_t offset) {
  T v;
  std::memcpy(&v, chunk.data() + offset, sizeof(T));
  return v;
}

inline std::string Describe(const ChunkShape& s, const CodecConfig& c) {
  std::ostringstream o;
  o << "L=" << s.num_layers << " T=" << s.num_tokens << " H=" << s.num_heads << " D=" << s.head_dim
    << " dtype=" << DTypeName(s.dtype) << " raw=" << c.raw << " k_q=" << c.k_q << " v_q=" << c.v_q
    << " k_m=" << c.k_m << " v_m=" << c.v_m << " eta1=" << c.eta1 << " eta2=" << c.eta2;
  return o.str();
}

// Index of element (l, x, t, h, d) in the canonical [L][2][T][H][D] input.
inline uint64_t InIndex(const ChunkShape& s, uint64_t l, uint64_t x, uint64_t t, uint64_t h,
                        uint64_t d) {
  return (((l * 2 + x) * s.num_tokens + t) * s.num_heads + h) * s.head_dim + d;
}

// Random 16-bit input that looks like a KV cache (per-channel offsets and scales, a few
// outlier channels) and, with `specials`, also holds the edge cases the quantizer must
// survive: -0, subnormals, exact ties (small integers), constant runs and, for fp16,
// values near +-65504, groups of adjacent 16-bit values, all-subnormal or huge groups.
inline std::vector<uint16_t> RandomInput(const ChunkShape& s, std::mt19937_64& rng,
                                         bool specials = true) {
  std::vector<uint16_t> in(s.elements());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  const uint64_t row = s.head_dim;
  const uint64_t rows = in.size() / row;
  // Per-(layer, x, head, channel) offset and spread, so keys get channel structure.
  const uint64_t nch = 2ull * s.num_layers * s.num_heads * s.head_dim;
  std::vector<float> off(nch), spread(nch);
  for (uint64_t i = 0; i < nch; ++i) {
    off[i] = 2.0f * normal(rng);
    spread[i] = uni(rng) < 0.05f ? 20.0f * uni(rng) : 0.1f + uni(rng);
  }
  const int mode = specials ? static_cast<int>(rng() % 7) : 0;
  for (uint64_t r = 0; r < rows; ++r) {
    const uint64_t h = r % s.num_heads;
    const uint64_t lx = r / (static_cast<uint64_t>(s.num_tokens) * s.num_heads);
    for (uint64_t d = 0; d < row; ++d) {
      const uint64_t ch = (lx * s.num_heads + h) * s.head_dim + d;
      float v = off[ch] + spread[ch] * normal(rng);
      if (mode == 1) v = std::round(v);               // ties at t = k + 1/2
      if (mode == 2 && uni(rng) < 0.3f) v = off[ch];  // many repeated values
      in[r * row + d] = ToHalf(v, s.dtype);
      if (mode == 4) {  // a few adjacent 16-bit values: quotients with small denominators
        const uint16_t base = ToHalf(off[ch], s.dtype);
        const uint16_t near = static_cast<uint16_t>(base + rng() % 7);
        in[r * row + d] = HalfIsEncodable(near, Dt(s.dtype)) ? near : base;
      }
      if (mode == 5) {  // subnormals only, both signs: tiny scales and thresholds
        in[r * row + d] = static_cast<uint16_t>((rng() % 24) | (rng() % 2) << 15);
      }
      if (mode == 6 && s.dtype == DType::kBF16) {  // huge: just below 2^126, both signs
        in[r * row + d] = static_cast<uint16_t>((0x7E00 + rng() % 0x80) | (rng() % 2) << 15);
      }
    }
  }
  if (specials) {
    const uint64_t n = in.size();
    const int count = static_cast<int>(n / 97) + 1;
    for (int k = 0; k < count; ++k) {
      const uint64_t e = rng() % n;
      switch (rng() % 6) {
        case 0:
          in[e] = 0x8000;
          break;  // -0
        case 1:
          in[e] = static_cast<uint16_t>((rng() % 0x3FF + 1) | (rng() % 2) << 15);
          break;
        case 2:
          in[e] = 0x0001;
          break;  // the smallest subnormal
        case 3:
          in[e] = 0x0000;
          break;
        case 4:
          if (s.dtype == DType::kF16 && rng() % 8 == 0) in[e] = (rng() % 2) ? 0x7BFF : 0xFBFF;
          break;
        case 5:
          if (s.dtype == DType::kBF16 && rng() % 8 == 0) in[e] = (rng() % 2) ? 0x7E7F : 0xFE7F;
          break;
      }
    }
    if (mode == 3 && s.num_tokens >= 32) {  // a constant K run and a constant V group
      const uint16_t c = in[rng() % n];
      for (uint32_t t = 0; t < 32; ++t) in[InIndex(s, 0, 0, t, 0, 0)] = c;
      for (uint32_t d = 0; d < 32; ++d) in[InIndex(s, 0, 1, 0, 0, d)] = c;
    }
  }
  return in;
}

// A random valid custom configuration for `s` (rejection-sampled through ValidateConfig).
inline CodecConfig RandomConfig(const ChunkShape& s, std::mt19937_64& rng) {
  const uint32_t L = s.num_layers;
  for (;;) {
    const int pick = static_cast<int>(rng() % 6);
    if (pick < 4) {
      const Preset presets[] = {Preset::kFp16, Preset::kKivi2, Preset::kAsymKv15, Preset::kXQuant};
      CodecConfig c = PresetConfig(presets[pick], L);
      if (ValidateConfig(s, c).ok()) return c;
      continue;
    }
    CodecConfig c;
    c.k_q = static_cast<uint32_t>(rng() % (L + 1));
    c.v_q = static_cast<uint32_t>(rng() % (L + 1));
    c.k_m = static_cast<uint32_t>(rng() % (L + 1));
    c.v_m = static_cast<uint32_t>(rng() % (L + 1));
    std::uniform_real_distribution<float> eta(0.0f, 0.499f);
    c.eta1 = rng() % 4 == 0 ? 0.0f : eta(rng);
    c.eta2 = rng() % 4 == 0 ? 0.0f : eta(rng);
    if (ValidateConfig(s, c).ok()) return c;
  }
}

}  // namespace kvstash::kernels::testing

#endif  // KVSTASH_TESTS_KERNELS_CODEC_TEST_UTIL_H_
