// The CPU codec against hand-computed bytes, the bit accounting of XQUANT.md section 7,
// error bounds, edge values, sharing, verification on decode and configuration checks.
// Unless a test says otherwise it runs on both implementations (the fast path is compared
// byte for byte with the reference in codec_fast_test.cc).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "codec_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"

namespace kvstash::kernels {
namespace {

using ::kvstash::kernels::testing::Describe;
using ::kvstash::kernels::testing::FromHalf;
using ::kvstash::kernels::testing::InIndex;
using ::kvstash::kernels::testing::RandomConfig;
using ::kvstash::kernels::testing::RandomInput;
using ::kvstash::kernels::testing::ReadAt;
using ::kvstash::kernels::testing::ToHalf;
using ::testing::HasSubstr;

constexpr Impl kImpls[] = {Impl::kReference, Impl::kFast};
const char* ImplName(Impl i) { return i == Impl::kReference ? "reference" : "fast"; }

// Unit roundoff of a 16-bit dtype (half an ulp, relative) and half its subnormal spacing.
double UnitRoundoff(DType d) { return d == DType::kF16 ? 0x1p-11 : 0x1p-8; }
double HalfSubnormal(DType d) { return d == DType::kF16 ? 0x1p-25 : 0x1p-134; }
// Rounding slack of the error bound in units of UnitRoundoff·(max|x| + range) (see
// GroupErrorBound); 4 covers rounding ẑ, ŝ, q·ŝ + ẑ and the output conversion.
constexpr double kRoundingSlackUlps = 4.0;

// Sound bound on |x − x̂| for one group with minimum mn, maximum mx (exact, in double):
//   with exact arithmetic x̂ = q·ŝ + ẑ = (q·s + mn) + η·s·(lv − 2q), and |x − (q·s + mn)| ≤ s/2
//   (q is x's nearest level), |η·s·(lv − 2q)| ≤ η·s·lv = η·r;
//   fp32 rounding of t can move q across a half only when x is within 2^-22·s of it (s/2·2^-20
//   covers it); storing ẑ and ŝ, and the output, in 16 bits adds at most UnitRoundoff times
//   |ẑ| ≤ max|x|, q·ŝ ≤ r and |x̂| ≤ max|x| + r each, plus one subnormal half-spacing apiece.
double GroupErrorBound(double mn, double mx, uint32_t bits, double eta, DType d) {
  const double r = mx - mn, s = r / (bits == 2 ? 3.0 : 1.0);
  const double amax = std::max(std::fabs(mn), std::fabs(mx));
  return s / 2 * (1 + 0x1p-20) + eta * r + kRoundingSlackUlps * UnitRoundoff(d) * (amax + r) +
         4 * HalfSubnormal(d);
}

absl::StatusOr<std::vector<uint16_t>> RoundTrip(const ChunkShape& shape, const CodecConfig& cfg,
                                                const std::vector<uint16_t>& in, Impl impl,
                                                DType out, Slice slice = {}) {
  absl::StatusOr<std::vector<uint8_t>> chunk = EncodeChunk(shape, cfg, in, impl);
  if (!chunk.ok()) return chunk.status();
  std::vector<uint16_t> dec;
  if (auto st = Decode(chunk->data(), chunk->size(), slice, out, &dec, impl); !st.ok()) return st;
  return dec;
}

// --- Hand-computed groups ------------------------------------------------------------------

// One 2-bit K group and one 1-bit V group, computed by hand (eta values chosen so every
// number is exact):
//  K, layer 0, head 0, channel 0, tokens j = 0..31: x_j = {-1,0,1,2,3,4,5}[j % 7]
//    mn = -1, mx = 5, r = 6, s = 2, t = (x+1)/2 = {0, .5, 1, 1.5, 2, 2.5, 3}
//    q = {0, 0, 1, 2, 2, 2, 3} (ties to even) -> word 0x90EA43A90EA43A90
//    eta2 = 1/8: zhat = -1 + 6/8 = -0.25 (fp16 0xB400), shat = 0.75·2 = 1.5 (0x3E00)
//    decoded q·1.5 - 0.25 = {-0.25, 1.25, 2.75, 4.25}
//  V, layer 0, token 0, head 0, channels j = 0..31: x_j = {-2,-1,0,1,2}[j % 5]
//    mn = -2, r = s = 4, t = {0, .25, .5, .75, 1} -> q = {0, 0, 0, 1, 1} -> word 0x318C6318
//    eta1 = 1/4: zhat = -2 + 1 = -1 (0xBC00), shat = 0.5·4 = 2 (0x4000); decoded {-1, 1}
TEST(CodecHandComputedTest, TwoBitKeyAndOneBitValueGroupsMatchHandComputedBytes) {
  const ChunkShape shape{
      .num_layers = 1, .num_tokens = 32, .num_heads = 1, .head_dim = 32, .dtype = DType::kF16};
  CodecConfig cfg;
  cfg.k_q = 1, cfg.v_q = 0, cfg.k_m = 1, cfg.v_m = 1, cfg.eta1 = 0.25f, cfg.eta2 = 0.125f;
  std::vector<uint16_t> in(shape.elements(), ToHalf(0.0f, DType::kF16));
  const float kv[7] = {-1, 0, 1, 2, 3, 4, 5}, vv[5] = {-2, -1, 0, 1, 2};
  for (uint32_t j = 0; j < 32; ++j) {
    in[InIndex(shape, 0, 0, j, 0, 0)] = ToHalf(kv[j % 7], DType::kF16);
    in[InIndex(shape, 0, 1, 0, 0, j)] = ToHalf(vv[j % 5], DType::kF16);
  }
  const ChunkLayout lay = ComputeLayout(shape, cfg);
  for (Impl impl : kImpls) {
    SCOPED_TRACE(ImplName(impl));
    absl::StatusOr<std::vector<uint8_t>> chunk = EncodeChunk(shape, cfg, in, impl);
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    const TensorLayout& k = lay.tensor(0, 0);
    const TensorLayout& v = lay.tensor(0, 1);
    ASSERT_EQ(k.bits, 2u);
    ASSERT_EQ(v.bits, 1u);
    EXPECT_EQ(ReadAt<uint64_t>(*chunk, k.codes), 0x90EA43A90EA43A90ull);
    EXPECT_EQ(ReadAt<uint16_t>(*chunk, k.scales), 0x3E00);
    EXPECT_EQ(ReadAt<uint16_t>(*chunk, k.zeros), 0xB400);
    EXPECT_EQ(ReadAt<uint32_t>(*chunk, v.codes), 0x318C6318u);
    EXPECT_EQ(ReadAt<uint16_t>(*chunk, v.scales), 0x4000);
    EXPECT_EQ(ReadAt<uint16_t>(*chunk, v.zeros), 0xBC00);
    // The other K groups (constant 0) store code 0, scale 0 and zero 0.
    EXPECT_EQ(ReadAt<uint64_t>(*chunk, k.codes + 8), 0u);
    EXPECT_EQ(ReadAt<uint16_t>(*chunk, k.scales + 2), 0);

    std::vector<uint16_t> out;
    ASSERT_TRUE(Decode(chunk->data(), chunk->size(), {}, DType::kF16, &out, impl).ok());
    const float kdec[4] = {-0.25f, 1.25f, 2.75f, 4.25f};
    const int kq[7] = {0, 0, 1, 2, 2, 2, 3}, vq[5] = {0, 0, 0, 1, 1};
    for (uint32_t j = 0; j < 32; ++j) {
      EXPECT_EQ(FromHalf(out[InIndex(shape, 0, 0, j, 0, 0)], DType::kF16), kdec[kq[j % 7]]) << j;
      EXPECT_EQ(FromHalf(out[InIndex(shape, 0, 1, 0, 0, j)], DType::kF16), vq[j % 5] ? 1.0f : -1.0f)
          << j;
    }
  }
}

TEST(CodecHandComputedTest, ChunkSizeFollowsTheLayoutOfSectionFour) {
  // L=3, T=40 (NG=1, 8 tail tokens), H=2, D=64, kivi-2: per tensor NGR = 2·1·64 = 128
  // groups: codes 128·8 = 1024, scales 256, zeros 256, tail 2·2·8·64 = 2048 bytes.
  const ChunkShape shape{
      .num_layers = 3, .num_tokens = 40, .num_heads = 2, .head_dim = 64, .dtype = DType::kBF16};
  const ChunkLayout lay = ComputeLayout(shape, PresetConfig(Preset::kKivi2, 3));
  const uint64_t tensor = 1024 + 256 + 256 + 2048;
  EXPECT_EQ(lay.header_bytes, 128u);  // 64 + 24·2 rounded up to 64
  EXPECT_EQ(lay.total_bytes, 128u + 6 * tensor);
  std::mt19937_64 rng(7);
  const std::vector<uint16_t> in = RandomInput(shape, rng);
  absl::StatusOr<std::vector<uint8_t>> chunk =
      EncodeChunk(shape, PresetConfig(Preset::kKivi2, 3), in, Impl::kReference);
  ASSERT_TRUE(chunk.ok());
  EXPECT_EQ(chunk->size(), lay.total_bytes);
  // The tail holds the 16-bit input as is, [H][Tt][D].
  const TensorLayout& v2 = lay.tensor(2, 1);
  EXPECT_EQ(ReadAt<uint16_t>(*chunk, v2.tail + 2 * ((1 * 8 + 3) * 64 + 5)),
            in[InIndex(shape, 2, 1, 32 + 3, 1, 5)]);
}

// --- Bit accounting (XQUANT.md section 7) ----------------------------------------------------

TEST(CodecBitsTest, EquivalentBitsMatchThePaperForThirtyTwoLayers) {
  const ChunkShape shape{.num_layers = 32, .num_tokens = 256, .num_heads = 8, .head_dim = 128};
  EXPECT_DOUBLE_EQ(EquivalentBits(shape, PresetConfig(Preset::kKivi2, 32)), 2.0);
  EXPECT_DOUBLE_EQ(EquivalentBits(shape, PresetConfig(Preset::kAsymKv15, 32)), 1.5);
  EXPECT_DOUBLE_EQ(EquivalentBits(shape, PresetConfig(Preset::kXQuant, 32)), 1.375);
  EXPECT_DOUBLE_EQ(EquivalentBits(shape, PresetConfig(Preset::kFp16, 32)), 16.0);
  auto custom = [](uint32_t kq, uint32_t vq, uint32_t km, uint32_t vm) {
    CodecConfig c;
    c.k_q = kq, c.v_q = vq, c.k_m = km, c.v_m = vm, c.eta1 = 1.0f / 6, c.eta2 = 0.045f;
    return c;
  };
  for (auto [cfg, want] :
       {std::pair{custom(32, 0, 32, 20), 1.40625}, std::pair{custom(28, 0, 32, 28), 1.40625},
        std::pair{custom(26, 0, 32, 0), 1.15625}}) {
    ASSERT_TRUE(ValidateConfig(shape, cfg).ok()) << Describe(shape, cfg);
    EXPECT_DOUBLE_EQ(EquivalentBits(shape, cfg), want) << Describe(shape, cfg);
  }
}

TEST(CodecBitsTest, TrueBitsOfXQuantAtSevenBGeometryIsAbout2375) {
  const ChunkShape shape{.num_layers = 32, .num_tokens = 256, .num_heads = 8, .head_dim = 128};
  const ChunkLayout lay = ComputeLayout(shape, PresetConfig(Preset::kXQuant, 32));
  EXPECT_NEAR(TrueBits(lay), 2.375, 0.01);
  EXPECT_NEAR(static_cast<double>(shape.payload_bytes()) / lay.total_bytes, 6.7, 0.1);
}

// --- Error bounds and exact cases --------------------------------------------------------------

// Checks every quantized element of every layer that owns its codes against
// GroupErrorBound, and every tail element for exact equality.
void ExpectWithinGroupBounds(const ChunkShape& s, const CodecConfig& cfg,
                             const std::vector<uint16_t>& in, const std::vector<uint16_t>& out) {
  const uint32_t T = s.num_tokens, H = s.num_heads, D = s.head_dim, Tq = T / 32 * 32;
  int failures = 0;
  for (uint32_t l = 0; l < s.num_layers; ++l) {
    for (int x = 0; x < 2; ++x) {
      const uint32_t bits = Bits(cfg, l, x);
      const double eta = bits == 2 ? cfg.eta2 : cfg.eta1;
      // K groups: 32 tokens of one channel; V groups: 32 channels of one token.
      for (uint32_t h = 0; h < H; ++h) {
        for (uint32_t a = 0; a < (x == 0 ? Tq / 32 : Tq); ++a) {
          for (uint32_t b = 0; b < (x == 0 ? D : D / 32); ++b) {
            auto idx = [&](uint32_t j) {
              return x == 0 ? InIndex(s, l, 0, 32 * a + j, h, b)
                            : InIndex(s, l, 1, a, h, 32 * b + j);
            };
            double mn = INFINITY, mx = -INFINITY;
            for (uint32_t j = 0; j < 32; ++j) {
              const double v = FromHalf(in[idx(j)], s.dtype);
              mn = std::min(mn, v), mx = std::max(mx, v);
            }
            const double bound = GroupErrorBound(mn, mx, bits, eta, s.dtype);
            for (uint32_t j = 0; j < 32; ++j) {
              const double v = FromHalf(in[idx(j)], s.dtype);
              const double got = FromHalf(out[idx(j)], s.dtype);
              if (!(std::fabs(v - got) <= bound) && failures++ < 5) {
                ADD_FAILURE() << "layer " << l << " x " << x << " h " << h << " group " << a << ","
                              << b << " j " << j << ": " << v << " decoded " << got << " bound "
                              << bound;
              }
            }
          }
        }
      }
      for (uint32_t t = Tq; t < T; ++t) {
        for (uint32_t h = 0; h < H; ++h) {
          for (uint32_t d = 0; d < D; ++d) {
            const uint64_t e = InIndex(s, l, x, t, h, d);
            if (out[e] != in[e] && failures++ < 5) ADD_FAILURE() << "tail element " << e;
          }
        }
      }
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(CodecAccuracyTest, RandomGroupsStayWithinTheDerivedErrorBound) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    const ChunkShape shape{
        .num_layers = 4, .num_tokens = 77, .num_heads = 3, .head_dim = 64, .dtype = dt};
    std::vector<CodecConfig> cfgs = {PresetConfig(Preset::kKivi2, 4),
                                     PresetConfig(Preset::kAsymKv15, 4)};
    CodecConfig x = PresetConfig(Preset::kXQuant, 4);
    x.v_m = 4;  // no sharing: the bound is about a layer's own codes
    cfgs.push_back(x);
    CodecConfig wide;
    wide.k_q = 2, wide.v_q = 3, wide.k_m = 4, wide.v_m = 4, wide.eta1 = 0.4f, wide.eta2 = 0.3f;
    cfgs.push_back(wide);
    for (const CodecConfig& cfg : cfgs) {
      SCOPED_TRACE(Describe(shape, cfg));
      const std::vector<uint16_t> in = RandomInput(shape, rng, /*specials=*/false);
      for (Impl impl : kImpls) {
        absl::StatusOr<std::vector<uint16_t>> out = RoundTrip(shape, cfg, in, impl, dt);
        ASSERT_TRUE(out.ok()) << out.status();
        ExpectWithinGroupBounds(shape, cfg, in, *out);
      }
    }
  }
}

TEST(CodecAccuracyTest, ConstantGroupsReconstructExactly) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    const ChunkShape shape{
        .num_layers = 2, .num_tokens = 64, .num_heads = 2, .head_dim = 32, .dtype = dt};
    // K: constant along tokens per channel; V: constant along channels per token; the
    // constants include extremes, subnormals and negative values.
    const uint16_t specials[] = {0x0001,
                                 0x8001,
                                 0x03FF,
                                 dt == DType::kF16 ? uint16_t{0x7BFF} : uint16_t{0x7E7F},
                                 dt == DType::kF16 ? uint16_t{0xFBFF} : uint16_t{0xFE7F},
                                 0x3C00,
                                 0xC000};
    std::vector<uint16_t> in(shape.elements());
    for (uint32_t l = 0; l < 2; ++l) {
      for (uint32_t h = 0; h < 2; ++h) {
        for (uint32_t d = 0; d < 32; ++d) {
          const uint16_t c = rng() % 3 ? specials[rng() % 7]
                                       : ToHalf(std::ldexp(1.0f + (rng() % 1000) / 1000.0f,
                                                           static_cast<int>(rng() % 20) - 10),
                                                dt);
          for (uint32_t g = 0; g < 2; ++g) {
            const uint16_t cg = g ? c : specials[(d + h) % 7];
            for (uint32_t j = 0; j < 32; ++j) in[InIndex(shape, l, 0, 32 * g + j, h, d)] = cg;
          }
        }
        for (uint32_t t = 0; t < 64; ++t) {
          const uint16_t c = specials[rng() % 7];
          for (uint32_t d = 0; d < 32; ++d) in[InIndex(shape, l, 1, t, h, d)] = c;
        }
      }
    }
    for (Preset p : {Preset::kKivi2, Preset::kAsymKv15, Preset::kXQuant}) {
      CodecConfig cfg = PresetConfig(p, 2);
      cfg.v_m = 2;  // shared layers would use layer 0's codes, which are 0 here anyway
      cfg.eta1 = 0.3f, cfg.eta2 = 0.2f;
      for (Impl impl : kImpls) {
        absl::StatusOr<std::vector<uint16_t>> out = RoundTrip(shape, cfg, in, impl, dt);
        ASSERT_TRUE(out.ok()) << out.status();
        EXPECT_EQ(*out, in) << PresetName(p) << " " << ImplName(impl) << " " << DTypeName(dt);
      }
    }
  }
}

TEST(CodecAccuracyTest, EdgeValuesDecodeFiniteAndNegativeZeroBecomesPositiveZero) {
  // fp16 extremes, subnormals, mixed signs and -0, 2-bit: within the bound, finite.
  const ChunkShape shape{
      .num_layers = 1, .num_tokens = 32, .num_heads = 1, .head_dim = 32, .dtype = DType::kF16};
  std::vector<uint16_t> in(shape.elements(), 0x8000);  // all -0
  // K channel 1: {65504, -65504, subnormals, -0}; V token 3: tiny subnormals of both signs.
  for (uint32_t j = 0; j < 32; ++j) {
    const uint16_t k[] = {0x7BFF, 0xFBFF, 0x0001, 0x8001, 0x03FF, 0x8000, 0x0000, 0x3C00};
    in[InIndex(shape, 0, 0, j, 0, 1)] = k[j % 8];
    in[InIndex(shape, 0, 1, 3, 0, j)] = static_cast<uint16_t>((j % 3) | ((j & 4) << 13));
  }
  const CodecConfig kivi = PresetConfig(Preset::kKivi2, 1);
  for (Impl impl : kImpls) {
    absl::StatusOr<std::vector<uint16_t>> out = RoundTrip(shape, kivi, in, impl, DType::kF16);
    ASSERT_TRUE(out.ok());
    for (uint16_t v : *out) EXPECT_NE(v & 0x7C00, 0x7C00);
    // An all -0 group decodes to +0.
    EXPECT_EQ((*out)[InIndex(shape, 0, 0, 5, 0, 7)], 0x0000);
    ExpectWithinGroupBounds(shape, kivi, in, *out);
  }
  // 1-bit K of the same channel: range 131008 > 65504 stores a saturated scale (format.md
  // section 3) and still decodes finite.
  const CodecConfig one_bit = PresetConfig(Preset::kAsymKv15, 1);
  CodecConfig c = one_bit;
  c.k_q = 0;
  const ChunkLayout lay = ComputeLayout(shape, c);
  absl::StatusOr<std::vector<uint8_t>> chunk = EncodeChunk(shape, c, in, Impl::kReference);
  ASSERT_TRUE(chunk.ok());
  EXPECT_EQ(ReadAt<uint16_t>(*chunk, lay.tensor(0, 0).scales + 2), 0x7BFF);
  EXPECT_EQ(ReadAt<uint16_t>(*chunk, lay.tensor(0, 0).zeros + 2), 0xFBFF);
  std::vector<uint16_t> out;
  ASSERT_TRUE(Decode(chunk->data(), chunk->size(), {}, DType::kF16, &out).ok());
  for (uint16_t v : out) EXPECT_NE(v & 0x7C00, 0x7C00);
}

TEST(CodecAccuracyTest, BF16SubnormalsAndHugeValuesStayWithinBound) {
  const ChunkShape shape{
      .num_layers = 1, .num_tokens = 64, .num_heads = 2, .head_dim = 32, .dtype = DType::kBF16};
  std::mt19937_64 rng(11);
  std::vector<uint16_t> in(shape.elements());
  for (uint64_t e = 0; e < in.size(); ++e) {
    // Half the groups subnormal (exponent 0), a few huge (just below 2^126), mixed signs.
    const uint16_t sign = static_cast<uint16_t>((rng() & 1) << 15);
    const bool sub = (e / 32) % 2 == 0;
    in[e] = sign | (sub ? static_cast<uint16_t>(rng() % 0x80)
                        : static_cast<uint16_t>(0x3F00 + rng() % 0x200));
    if (rng() % 500 == 0) in[e] = sign | 0x7E7F;
  }
  for (Impl impl : kImpls) {
    for (const CodecConfig& cfg :
         {PresetConfig(Preset::kKivi2, 1), PresetConfig(Preset::kAsymKv15, 1)}) {
      absl::StatusOr<std::vector<uint16_t>> out = RoundTrip(shape, cfg, in, impl, DType::kBF16);
      ASSERT_TRUE(out.ok()) << out.status();
      ExpectWithinGroupBounds(shape, cfg, in, *out);
    }
  }
}

TEST(CodecAccuracyTest, EtaZeroEqualsAnIndependentPlainKiviQuantizer) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    const ChunkShape shape{
        .num_layers = 2, .num_tokens = 100, .num_heads = 2, .head_dim = 96, .dtype = dt};
    const std::vector<uint16_t> in = RandomInput(shape, rng);
    // Plain KIVI: per group s = (max - min)/3, q = round((x - min)/s), x̂ = q·s + min with s
    // and min stored in the chunk's dtype. Written tensor by tensor, in double where exact.
    std::vector<uint16_t> want = in;
    const uint32_t T = shape.num_tokens, H = shape.num_heads, D = shape.head_dim, Tq = 96;
    auto quantize = [&](std::vector<uint64_t> idx) {
      std::vector<float> v;
      for (uint64_t e : idx) v.push_back(FromHalf(in[e], dt) + 0.0f);
      const float mn = *std::min_element(v.begin(), v.end());
      const float mx = *std::max_element(v.begin(), v.end());
      const float s = (mx - mn) / 3.0f;
      const float s16 = FromHalf(ToHalf(s, dt), dt), mn16 = FromHalf(ToHalf(mn, dt), dt);
      for (size_t j = 0; j < idx.size(); ++j) {
        const float q = s == 0 ? 0.0f : std::nearbyint(std::clamp((v[j] - mn) / s, 0.0f, 3.0f));
        want[idx[j]] = ToHalf(q * s16 + mn16, dt);
      }
    };
    for (uint32_t l = 0; l < 2; ++l) {
      for (uint32_t h = 0; h < H; ++h) {
        for (uint32_t d = 0; d < D; ++d) {
          for (uint32_t g = 0; g < Tq / 32; ++g) {
            std::vector<uint64_t> idx;
            for (uint32_t j = 0; j < 32; ++j) idx.push_back(InIndex(shape, l, 0, 32 * g + j, h, d));
            quantize(idx);
          }
        }
        for (uint32_t t = 0; t < Tq; ++t) {
          for (uint32_t c = 0; c < D / 32; ++c) {
            std::vector<uint64_t> idx;
            for (uint32_t j = 0; j < 32; ++j) idx.push_back(InIndex(shape, l, 1, t, h, 32 * c + j));
            quantize(idx);
          }
        }
      }
    }
    (void)T;
    for (Impl impl : kImpls) {
      absl::StatusOr<std::vector<uint16_t>> out =
          RoundTrip(shape, PresetConfig(Preset::kKivi2, 2), in, impl, dt);
      ASSERT_TRUE(out.ok());
      EXPECT_EQ(*out, want) << DTypeName(dt) << " " << ImplName(impl);
    }
  }
}

TEST(CodecAccuracyTest, Fp16PresetRoundTripsBitExactlyAndConvertsAcrossDtypes) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    const ChunkShape shape{
        .num_layers = 3, .num_tokens = 45, .num_heads = 3, .head_dim = 32, .dtype = dt};
    const std::vector<uint16_t> in = RandomInput(shape, rng);
    const CodecConfig cfg = PresetConfig(Preset::kFp16, 3);
    const ChunkLayout lay = ComputeLayout(shape, cfg);
    EXPECT_EQ(lay.total_bytes, lay.header_bytes + shape.payload_bytes());
    const DType other = dt == DType::kF16 ? DType::kBF16 : DType::kF16;
    for (Impl impl : kImpls) {
      absl::StatusOr<std::vector<uint16_t>> same = RoundTrip(shape, cfg, in, impl, dt);
      ASSERT_TRUE(same.ok());
      EXPECT_EQ(*same, in);
      absl::StatusOr<std::vector<uint16_t>> conv = RoundTrip(shape, cfg, in, impl, other);
      ASSERT_TRUE(conv.ok());
      for (size_t e = 0; e < in.size(); ++e) {
        ASSERT_EQ((*conv)[e], ToHalf(FromHalf(in[e], dt), other)) << e;
      }
    }
  }
}

#if defined(__x86_64__)
TEST(CodecAccuracyTest, IgnoresTheCallersFlushToZeroMode) {
  // bf16 subnormals are fp32 subnormals: with DAZ/FTZ on, the arithmetic would change.
  const ChunkShape shape{
      .num_layers = 2, .num_tokens = 64, .num_heads = 2, .head_dim = 64, .dtype = DType::kBF16};
  std::mt19937_64 rng(17);
  std::vector<uint16_t> in(shape.elements());
  for (uint16_t& v : in) v = static_cast<uint16_t>((rng() % 0x7F) | (rng() % 2) << 15);
  const CodecConfig cfg = PresetConfig(Preset::kXQuant, 2);
  for (Impl impl : kImpls) {
    absl::StatusOr<std::vector<uint8_t>> want = EncodeChunk(shape, cfg, in, impl);
    ASSERT_TRUE(want.ok());
    std::vector<uint16_t> want_dec;
    ASSERT_TRUE(Decode(want->data(), want->size(), {}, DType::kBF16, &want_dec, impl).ok());
    const unsigned saved = _mm_getcsr();
    _mm_setcsr(saved | (1u << 15) | (1u << 6));  // FTZ | DAZ
    absl::StatusOr<std::vector<uint8_t>> got = EncodeChunk(shape, cfg, in, impl);
    std::vector<uint16_t> got_dec;
    const absl::Status dec = Decode(want->data(), want->size(), {}, DType::kBF16, &got_dec, impl);
    const unsigned after = _mm_getcsr();
    _mm_setcsr(saved);
    EXPECT_EQ(after, saved | (1u << 15) | (1u << 6)) << "the caller's mode is restored";
    ASSERT_TRUE(got.ok());
    ASSERT_TRUE(dec.ok());
    EXPECT_TRUE(*got == *want) << ImplName(impl);
    EXPECT_TRUE(got_dec == want_dec) << ImplName(impl);
  }
}
#endif

// --- Input validation --------------------------------------------------------------------------

TEST(CodecValidationTest, RejectsNonFiniteAndHugeInputNamingTheElement) {
  struct Case {
    DType dt;
    uint16_t bad;
  };
  const Case cases[] = {{DType::kF16, 0x7E00},  {DType::kF16, 0x7C00},  {DType::kF16, 0xFC00},
                        {DType::kBF16, 0x7FC0}, {DType::kBF16, 0xFF80}, {DType::kBF16, 0x7E80},
                        {DType::kBF16, 0xFE80}};
  for (const Case& c : cases) {
    const ChunkShape shape{
        .num_layers = 3, .num_tokens = 40, .num_heads = 4, .head_dim = 64, .dtype = c.dt};
    std::mt19937_64 rng(3);
    std::vector<uint16_t> in = RandomInput(shape, rng, /*specials=*/false);
    in[InIndex(shape, 1, 1, 5, 2, 7)] = c.bad;
    in[InIndex(shape, 2, 0, 39, 3, 63)] = c.bad;  // a later one; the first is named
    for (Impl impl : kImpls) {
      absl::StatusOr<std::vector<uint8_t>> chunk =
          EncodeChunk(shape, PresetConfig(Preset::kXQuant, 3), in, impl);
      ASSERT_FALSE(chunk.ok());
      EXPECT_EQ(chunk.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(chunk.status().message(), HasSubstr("layer 1, V, token 5, head 2, channel 7"));
    }
  }
  // Just below 2^126 is accepted for bf16; so is 65504 for fp16 (also as a raw chunk).
  for (auto [dt, v] :
       {std::pair{DType::kBF16, uint16_t{0xFE7F}}, std::pair{DType::kF16, uint16_t{0xFBFF}}}) {
    const ChunkShape shape{
        .num_layers = 1, .num_tokens = 32, .num_heads = 1, .head_dim = 32, .dtype = dt};
    std::vector<uint16_t> in(shape.elements(), v);
    for (Impl impl : kImpls) {
      EXPECT_TRUE(EncodeChunk(shape, PresetConfig(Preset::kKivi2, 1), in, impl).ok());
      EXPECT_TRUE(EncodeChunk(shape, PresetConfig(Preset::kFp16, 1), in, impl).ok());
    }
  }
}

TEST(CodecValidationTest, RejectsNonFiniteInputInRawChunksToo) {
  const ChunkShape shape{.num_layers = 2, .num_tokens = 3, .num_heads = 1, .head_dim = 32};
  std::vector<uint16_t> in(shape.elements(), 0x3C00);
  in[InIndex(shape, 0, 0, 2, 0, 31)] = 0x7C01;
  for (Impl impl : kImpls) {
    absl::StatusOr<std::vector<uint8_t>> chunk =
        EncodeChunk(shape, PresetConfig(Preset::kFp16, 2), in, impl);
    EXPECT_EQ(chunk.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(chunk.status().message(), HasSubstr("layer 0, K, token 2, head 0, channel 31"));
  }
}

TEST(CodecValidationTest, RejectsInvalidConfigsNamingTheField) {
  const ChunkShape shape{.num_layers = 4, .num_tokens = 64, .num_heads = 1, .head_dim = 32};
  std::vector<uint16_t> in(shape.elements(), 0x3C00);
  auto expect_invalid = [&](const ChunkShape& s, const CodecConfig& c, const char* field) {
    std::vector<uint16_t> v(s.elements(), 0x3C00);
    absl::StatusOr<std::vector<uint8_t>> chunk = EncodeChunk(s, c, v);
    EXPECT_EQ(chunk.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(chunk.status().message(), HasSubstr(field));
  };
  CodecConfig c = PresetConfig(Preset::kKivi2, 4);
  c.k_q = 1, c.k_m = 0;  // layer 1 (1-bit) would share the codes of layer 0 (2-bit)
  expect_invalid(shape, c, "config.k_m");
  c = PresetConfig(Preset::kKivi2, 4);
  c.v_q = 3, c.v_m = 2;  // layer 3 (1-bit) would share layer 2's (2-bit) codes
  expect_invalid(shape, c, "config.v_m");
  c = PresetConfig(Preset::kXQuant, 4);
  c.eta1 = 0.5f;
  expect_invalid(shape, c, "config.eta1");
  c = PresetConfig(Preset::kXQuant, 4);
  c.eta2 = -0.01f;
  expect_invalid(shape, c, "config.eta2");
  c.eta2 = NAN;
  expect_invalid(shape, c, "config.eta2");
  c = PresetConfig(Preset::kXQuant, 4);
  c.k_q = 5;
  expect_invalid(shape, c, "config.k_q");
  ChunkShape bad = shape;
  bad.head_dim = 48;
  expect_invalid(bad, PresetConfig(Preset::kKivi2, 4), "shape.head_dim");
  bad = shape;
  bad.dtype = DType::kUnspecified;
  expect_invalid(bad, PresetConfig(Preset::kKivi2, 4), "shape.dtype");
  // Sharing with equal widths on an even k_q boundary is fine.
  c = PresetConfig(Preset::kKivi2, 4);
  c.k_q = 2, c.k_m = 0;
  EXPECT_TRUE(EncodeChunk(shape, c, in).ok());
  // Wrong input length.
  std::vector<uint16_t> short_in(shape.elements() - 1);
  EXPECT_EQ(EncodeChunk(shape, PresetConfig(Preset::kKivi2, 4), short_in).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- Cross-layer sharing ---------------------------------------------------------------------

TEST(CodecSharingTest, SharedOddLayerStoresNoCodesAndDecodesWithLowerLayersCodes) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    const ChunkShape shape{
        .num_layers = 5, .num_tokens = 70, .num_heads = 3, .head_dim = 64, .dtype = dt};
    const std::vector<uint16_t> in = RandomInput(shape, rng);
    CodecConfig shared = PresetConfig(Preset::kXQuant, 5);  // v_m = 2: layer 3 shares V
    shared.k_m = 1;                                         // layers 1 and 3 share K
    CodecConfig unshared = shared;
    unshared.k_m = unshared.v_m = 5;
    const ChunkLayout ls = ComputeLayout(shape, shared), lu = ComputeLayout(shape, unshared);
    const uint64_t ngr = ls.groups;  // 3·2·64
    EXPECT_EQ(lu.total_bytes - ls.total_bytes, 2 * ngr * 8 /*K 2-bit*/ + ngr * 4 /*V 1-bit*/);
    EXPECT_FALSE(ls.tensor(3, 1).owns_codes);
    EXPECT_EQ(ls.tensor(3, 1).codes, ls.tensor(2, 1).codes);
    EXPECT_TRUE(ls.tensor(1, 1).owns_codes);  // v_m = 2: layer 1 keeps its V codes
    for (Impl impl : kImpls) {
      SCOPED_TRACE(ImplName(impl));
      absl::StatusOr<std::vector<uint8_t>> chunk = EncodeChunk(shape, shared, in, impl);
      ASSERT_TRUE(chunk.ok());
      // Decoding only the shared layer must work; compare it with q_{l-1}·ŝ_l + ẑ_l computed
      // from the chunk's bytes.
      for (uint32_t l : {1u, 3u}) {
        std::vector<uint16_t> out;
        ASSERT_TRUE(Decode(chunk->data(), chunk->size(), {.layer_begin = l, .layer_end = l + 1}, dt,
                           &out, impl)
                        .ok());
        for (int x = 0; x < 2; ++x) {
          const TensorLayout& tl = ls.tensor(l, x);
          const bool expect_shared = x == 0 || l == 3;
          ASSERT_EQ(!tl.owns_codes, expect_shared) << l << " " << x;
          if (expect_shared) {
            ASSERT_EQ(tl.codes, ls.tensor(l - 1, x).codes);
          }
          for (uint32_t h = 0; h < 3; ++h) {
            for (uint32_t a = 0; a < (x == 0 ? 2u : 64u); ++a) {
              for (uint32_t b = 0; b < (x == 0 ? 64u : 2u); ++b) {
                // K: a = token group, b = channel; V: a = token, b = channel group.
                const uint64_t i = x == 0 ? (h * 2 + a) * 64 + b : (h * 64 + a) * 2 + b;
                const uint64_t word = tl.bits == 2 ? ReadAt<uint64_t>(*chunk, tl.codes + 8 * i)
                                                   : ReadAt<uint32_t>(*chunk, tl.codes + 4 * i);
                const float sc = FromHalf(ReadAt<uint16_t>(*chunk, tl.scales + 2 * i), dt);
                const float zr = FromHalf(ReadAt<uint16_t>(*chunk, tl.zeros + 2 * i), dt);
                for (uint32_t j = 0; j < 32; ++j) {
                  const uint64_t q = (word >> (tl.bits * j)) & (tl.bits == 2 ? 3 : 1);
                  const float prod = static_cast<float>(q) * sc;
                  const uint16_t want = ToHalf(prod + zr, dt);
                  const uint32_t t = x == 0 ? 32 * a + j : a, d = x == 0 ? b : 32 * b + j;
                  const uint64_t e = ((static_cast<uint64_t>(x) * 70 + t) * 3 + h) * 64 + d;
                  ASSERT_EQ(out[e], want)
                      << "layer " << l << " x " << x << " t " << t << " h " << h << " d " << d;
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(CodecSharingTest, SharedLayerUsesItsOwnScaleAndZero) {
  // Layer 1's values are layer 0's doubled: same codes, scale and zero twice as large, so
  // sharing reconstructs layer 1 exactly as well as layer 0 (times two).
  const ChunkShape shape{.num_layers = 2, .num_tokens = 32, .num_heads = 1, .head_dim = 32};
  std::mt19937_64 rng(5);
  std::vector<uint16_t> in(shape.elements());
  for (uint32_t x = 0; x < 2; ++x) {
    for (uint32_t t = 0; t < 32; ++t) {
      for (uint32_t d = 0; d < 32; ++d) {
        const float v = static_cast<float>(static_cast<int>(rng() % 9) - 4);  // exact levels
        in[InIndex(shape, 0, x, t, 0, d)] = ToHalf(v, DType::kF16);
        in[InIndex(shape, 1, x, t, 0, d)] = ToHalf(2 * v, DType::kF16);
      }
    }
  }
  CodecConfig c = PresetConfig(Preset::kKivi2, 2);
  c.k_m = c.v_m = 0;
  for (Impl impl : kImpls) {
    absl::StatusOr<std::vector<uint16_t>> out = RoundTrip(shape, c, in, impl, DType::kF16);
    ASSERT_TRUE(out.ok());
    for (uint32_t x = 0; x < 2; ++x) {
      for (uint32_t t = 0; t < 32; ++t) {
        for (uint32_t d = 0; d < 32; ++d) {
          EXPECT_EQ(FromHalf((*out)[InIndex(shape, 1, x, t, 0, d)], DType::kF16),
                    2 * FromHalf((*out)[InIndex(shape, 0, x, t, 0, d)], DType::kF16));
        }
      }
    }
  }
}

// --- Slicing --------------------------------------------------------------------------------

TEST(CodecSliceTest, SliceEqualsTheSubTensorOfAFullDecode) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  for (int iter = 0; iter < 12; ++iter) {
    const ChunkShape shape{.num_layers = 1 + static_cast<uint32_t>(rng() % 5),
                           .num_tokens = 1 + static_cast<uint32_t>(rng() % 100),
                           .num_heads = 1 + static_cast<uint32_t>(rng() % 5),
                           .head_dim = 32 * (1 + static_cast<uint32_t>(rng() % 3)),
                           .dtype = rng() % 2 ? DType::kF16 : DType::kBF16};
    const CodecConfig cfg = RandomConfig(shape, rng);
    SCOPED_TRACE(Describe(shape, cfg));
    const std::vector<uint16_t> in = RandomInput(shape, rng);
    absl::StatusOr<std::vector<uint8_t>> chunk = EncodeChunk(shape, cfg, in);
    ASSERT_TRUE(chunk.ok());
    std::vector<uint16_t> full;
    ASSERT_TRUE(Decode(chunk->data(), chunk->size(), {}, shape.dtype, &full).ok());
    for (int k = 0; k < 4; ++k) {
      const uint32_t l0 = rng() % shape.num_layers, l1 = l0 + 1 + rng() % (shape.num_layers - l0);
      const uint32_t h0 = rng() % shape.num_heads, h1 = h0 + 1 + rng() % (shape.num_heads - h0);
      const Slice slice{l0, l1, h0, h1};
      for (Impl impl : kImpls) {
        std::vector<uint16_t> part;
        ASSERT_TRUE(Decode(chunk->data(), chunk->size(), slice, shape.dtype, &part, impl).ok());
        ASSERT_EQ(part.size(), DecodedBytes(shape, slice) / 2);
        const uint32_t Hs = h1 - h0, T = shape.num_tokens, D = shape.head_dim;
        for (uint32_t l = l0; l < l1; ++l)
          for (uint32_t x = 0; x < 2; ++x)
            for (uint32_t t = 0; t < T; ++t)
              for (uint32_t h = h0; h < h1; ++h)
                for (uint32_t d = 0; d < D; ++d)
                  ASSERT_EQ(part[((((l - l0) * 2 + x) * T + t) * Hs + (h - h0)) * D + d],
                            full[InIndex(shape, l, x, t, h, d)]);
      }
    }
  }
}

TEST(CodecSliceTest, ResolvesZeroEndsAndRejectsBadRanges) {
  const ChunkShape shape{.num_layers = 4, .num_tokens = 8, .num_heads = 2, .head_dim = 32};
  absl::StatusOr<Slice> s = ResolveSlice(shape, {});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->layer_end, 4u);
  EXPECT_EQ(s->head_end, 2u);
  EXPECT_EQ(PairsForSlice({3, 4, 0, 2}).first, 1u);
  EXPECT_EQ(PairsForSlice({1, 3, 0, 2}).last, 1u);
  EXPECT_EQ(DecodedBytes(shape, {1, 3, 1, 2}), 2u * 2 * 2 * 8 * 1 * 32);
  for (Slice bad : {Slice{4, 5, 0, 0}, Slice{2, 1, 0, 0}, Slice{0, 0, 2, 3}, Slice{0, 0, 1, 1},
                    Slice{0, 5, 0, 0}, Slice{0, 0, 0, 3}}) {
    EXPECT_EQ(ResolveSlice(shape, bad).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_THAT(ResolveSlice(shape, {0, 9, 0, 0}).status().message(), HasSubstr("layer_range"));
  EXPECT_THAT(ResolveSlice(shape, {0, 0, 0, 3}).status().message(), HasSubstr("head_range"));
  std::vector<uint16_t> in(shape.elements(), 0x3C00);
  absl::StatusOr<std::vector<uint8_t>> chunk =
      EncodeChunk(shape, PresetConfig(Preset::kXQuant, 4), in);
  ASSERT_TRUE(chunk.ok());
  std::vector<uint16_t> out;
  for (Impl impl : kImpls) {
    EXPECT_EQ(Decode(chunk->data(), chunk->size(), {0, 9, 0, 0}, DType::kF16, &out, impl).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Decode(chunk->data(), chunk->size(), {}, DType::kUnspecified, &out, impl).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

// --- Verification on decode ----------------------------------------------------------------

TEST(CodecCorruptionTest, DetectsFlippedTruncatedAndForeignBytes) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  const ChunkShape shape{.num_layers = 3, .num_tokens = 50, .num_heads = 2, .head_dim = 32};
  const std::vector<uint16_t> in = RandomInput(shape, rng);
  absl::StatusOr<std::vector<uint8_t>> good =
      EncodeChunk(shape, PresetConfig(Preset::kXQuant, 3), in);
  ASSERT_TRUE(good.ok());
  const ChunkLayout lay = ComputeLayout(shape, PresetConfig(Preset::kXQuant, 3));
  for (Impl impl : kImpls) {
    SCOPED_TRACE(ImplName(impl));
    std::vector<uint16_t> out;
    ASSERT_TRUE(Decode(good->data(), good->size(), {}, DType::kF16, &out, impl).ok());
    // A flipped byte anywhere in a section: DataLoss when that section is read.
    for (int k = 0; k < 20; ++k) {
      std::vector<uint8_t> bad = *good;
      const uint64_t pos = lay.header_bytes + rng() % (lay.total_bytes - lay.header_bytes);
      bad[pos] ^= static_cast<uint8_t>(1 + rng() % 255);
      EXPECT_EQ(Decode(bad.data(), bad.size(), {}, DType::kF16, &out, impl).code(),
                absl::StatusCode::kDataLoss)
          << pos;
    }
    // A flipped byte in the last pair's section is not noticed by a read of pair 0 only.
    {
      std::vector<uint8_t> bad = *good;
      bad[lay.pairs[1].offset + 3] ^= 0x10;
      EXPECT_TRUE(Decode(bad.data(), bad.size(), {0, 2, 0, 0}, DType::kF16, &out, impl).ok());
      EXPECT_EQ(Decode(bad.data(), bad.size(), {2, 3, 0, 0}, DType::kF16, &out, impl).code(),
                absl::StatusCode::kDataLoss);
    }
    // Any header or directory byte (the checksum covers them all, padding included).
    for (uint64_t pos = 0; pos < lay.header_bytes; ++pos) {
      std::vector<uint8_t> bad = *good;
      bad[pos] ^= 0x01;
      const absl::StatusCode code =
          Decode(bad.data(), bad.size(), {}, DType::kF16, &out, impl).code();
      if (pos == 4 || pos == 5) {
        EXPECT_EQ(code, absl::StatusCode::kFailedPrecondition);  // an unknown version
      } else {
        EXPECT_EQ(code, absl::StatusCode::kDataLoss) << pos;
      }
    }
    // Truncated, extended, shorter than a header.
    EXPECT_EQ(Decode(good->data(), good->size() - 1, {}, DType::kF16, &out, impl).code(),
              absl::StatusCode::kDataLoss);
    std::vector<uint8_t> longer = *good;
    longer.push_back(0);
    EXPECT_EQ(Decode(longer.data(), longer.size(), {}, DType::kF16, &out, impl).code(),
              absl::StatusCode::kDataLoss);
    EXPECT_EQ(Decode(good->data(), 63, {}, DType::kF16, &out, impl).code(),
              absl::StatusCode::kDataLoss);
  }
}

TEST(CodecCorruptionTest, DecodeSectionsReadsOnlyTheNeededSections) {
  const ChunkShape shape{.num_layers = 5, .num_tokens = 33, .num_heads = 2, .head_dim = 32};
  std::mt19937_64 rng(9);
  const std::vector<uint16_t> in = RandomInput(shape, rng);
  absl::StatusOr<std::vector<uint8_t>> chunk =
      EncodeChunk(shape, PresetConfig(Preset::kXQuant, 5), in);
  ASSERT_TRUE(chunk.ok());
  absl::StatusOr<ParsedHeader> hdr = ParseHeader(chunk->data(), chunk->size(), true);
  ASSERT_TRUE(hdr.ok());
  std::vector<uint16_t> full;
  ASSERT_TRUE(Decode(chunk->data(), chunk->size(), {}, DType::kF16, &full).ok());
  // Separate copies of pair 1's section only (layers 2, 3), others null.
  const PairLayout& p1 = hdr->layout.pairs[1];
  std::vector<uint8_t> sec(chunk->begin() + p1.offset, chunk->begin() + p1.offset + p1.bytes);
  const uint8_t* sections[3] = {nullptr, sec.data(), nullptr};
  const Slice slice{3, 4, 0, 2};  // the shared odd layer alone
  for (Impl impl : kImpls) {
    std::vector<uint16_t> out(DecodedBytes(shape, slice) / 2);
    ASSERT_TRUE(DecodeSections(*hdr, sections, slice, DType::kF16, out.data(), impl).ok());
    EXPECT_TRUE(std::equal(out.begin(), out.end(), full.begin() + InIndex(shape, 3, 0, 0, 0, 0)));
    const Slice wider{2, 5, 0, 2};  // needs pair 2
    std::vector<uint16_t> big(DecodedBytes(shape, wider) / 2);
    EXPECT_EQ(DecodeSections(*hdr, sections, wider, DType::kF16, big.data(), impl).code(),
              absl::StatusCode::kInvalidArgument);
    sec[10] ^= 1;
    EXPECT_EQ(DecodeSections(*hdr, sections, slice, DType::kF16, out.data(), impl).code(),
              absl::StatusCode::kDataLoss);
    sec[10] ^= 1;
  }
}

}  // namespace
}  // namespace kvstash::kernels
