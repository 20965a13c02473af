#include "cli_util.h"

#include <cmath>
#include <cstring>
#include <random>

#include "gtest/gtest.h"

namespace kvstash::cli {
namespace {

TEST(ParseTokenListTest, ParsesListsAndInclusiveRanges) {
  auto t = ParseTokenList("1,2,3");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, (std::vector<int32_t>{1, 2, 3}));
  t = ParseTokenList("5, 7-9 ,2147483647");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, (std::vector<int32_t>{5, 7, 8, 9, 2147483647}));
  t = ParseTokenList("0-255");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->size(), 256u);
  EXPECT_EQ(t->back(), 255);
}

TEST(ParseTokenListTest, RejectsGarbage) {
  for (const char* bad : {"", "1,,2", "a", "1-", "9-3", "2147483648", "1.5", "-1"}) {
    EXPECT_EQ(ParseTokenList(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ParseRangeTest, ParsesForms) {
  using P = std::pair<uint32_t, uint32_t>;
  EXPECT_EQ(*ParseRange("2:5"), P(2, 5));
  EXPECT_EQ(*ParseRange("3:"), P(3, 0));
  EXPECT_EQ(*ParseRange(":4"), P(0, 4));
  EXPECT_EQ(*ParseRange("7"), P(7, 8));
  EXPECT_EQ(ParseRange("5:5").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseRange("5:2").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseRange("x:2").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ParseLayoutTest, ParsesFourNumbers) {
  auto s = ParseLayout("32,256,8,128");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->num_layers, 32u);
  EXPECT_EQ(s->num_tokens, 256u);
  EXPECT_EQ(s->num_heads, 8u);
  EXPECT_EQ(s->head_dim, 128u);
  EXPECT_EQ(ParseLayout("32,256,8").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseLayout("32,256,8,x").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelGeometryTest, KnowsTheNamedModels) {
  auto s = ModelGeometry("llama-3-8b");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->num_layers, 32u);
  EXPECT_EQ(s->num_heads, 8u);
  EXPECT_EQ(s->head_dim, 128u);
  EXPECT_EQ(s->num_tokens, 256u);
  s = ModelGeometry("qwen2.5-7b");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->num_layers, 28u);
  EXPECT_EQ(s->num_heads, 4u);
  EXPECT_TRUE(ModelGeometry("mistral-7b").ok());
  EXPECT_EQ(ModelGeometry("gpt-5").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HalfTest, RoundTripsEveryFiniteHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t v = static_cast<uint16_t>(h);
    if ((v & 0x7c00) == 0x7c00) continue;  // inf / NaN
    ASSERT_EQ(FloatToHalf(HalfToFloat(v)), v) << std::hex << h;
  }
}

TEST(HalfTest, RoundsToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);     // halfway to 2^16 rounds to inf
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), 0x3c00);  // tie, even below
  EXPECT_EQ(FloatToHalf(1.0f + 3.0f / 2048), 0x3c02);  // tie, even above
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie to even zero
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -26)), 0x0001);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(NAN))));
}

TEST(Bf16Test, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  uint32_t bits = 0x3f808000;  // exactly halfway between 0x3f80 and 0x3f81
  float f;
  std::memcpy(&f, &bits, 4);
  EXPECT_EQ(FloatToBf16(f), 0x3f80);
  bits = 0x3f818000;
  std::memcpy(&f, &bits, 4);
  EXPECT_EQ(FloatToBf16(f), 0x3f82);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
}

TEST(GeneratePayloadTest, IsDeterministicFiniteAndRoughlyStandardNormal) {
  kernels::ChunkShape s{4, 64, 2, 64, kernels::DType::kF16};
  const std::vector<uint16_t> a = GeneratePayload(s, 42), b = GeneratePayload(s, 42),
                              c = GeneratePayload(s, 43);
  ASSERT_EQ(a.size(), s.elements());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // V values (no outlier channels): mean ~ 0, variance ~ 1.
  double sum = 0, sum2 = 0;
  uint64_t n = 0;
  const uint64_t per_tensor = uint64_t{s.num_tokens} * s.num_heads * s.head_dim;
  for (uint32_t l = 0; l < s.num_layers; ++l) {
    for (uint64_t i = 0; i < per_tensor; ++i) {
      const float v = HalfToFloat(a[(2 * l + 1) * per_tensor + i]);
      ASSERT_TRUE(std::isfinite(v));
      sum += v;
      sum2 += v * v;
      ++n;
    }
  }
  EXPECT_NEAR(sum / n, 0.0, 0.05);
  EXPECT_NEAR(sum2 / n, 1.0, 0.05);
  s.dtype = kernels::DType::kBF16;
  for (uint16_t v : GeneratePayload(s, 1)) ASSERT_TRUE(std::isfinite(Bf16ToFloat(v)));
}

TEST(SlicePayloadTest, PicksLayersAndHeads) {
  const kernels::ChunkShape s{3, 2, 4, 32, kernels::DType::kF16};
  std::vector<uint16_t> full(s.elements());
  for (size_t i = 0; i < full.size(); ++i) full[i] = static_cast<uint16_t>(i);
  kernels::Slice sl{1, 3, 1, 3};
  const std::vector<uint16_t> out = SlicePayload(s, full, sl);
  ASSERT_EQ(out.size(), 2u * 2 * 2 * 2 * 32);
  // out[l'][x][t][h'][d] == full[l'+1][x][t][h'+1][d]
  size_t i = 0;
  for (uint32_t l = 1; l < 3; ++l)
    for (uint32_t x = 0; x < 2; ++x)
      for (uint32_t t = 0; t < 2; ++t)
        for (uint32_t h = 1; h < 3; ++h)
          for (uint32_t d = 0; d < 32; ++d, ++i)
            ASSERT_EQ(out[i], full[(((l * 2 + x) * 2 + t) * 4 + h) * 32 + d]);
}

TEST(CompareValuesTest, ComputesMaxAbsAndRelativeRms) {
  const std::vector<uint16_t> ref = {FloatToHalf(1), FloatToHalf(-2), FloatToHalf(2)};
  const std::vector<uint16_t> got = {FloatToHalf(1), FloatToHalf(-1.5), FloatToHalf(2)};
  auto m = CompareValues(ref, kernels::DType::kF16, got, kernels::DType::kF16);
  ASSERT_TRUE(m.ok());
  EXPECT_DOUBLE_EQ(m->max_abs, 0.5);
  EXPECT_NEAR(m->rel_rms, std::sqrt(0.25 / 9.0), 1e-12);
  // Cross-dtype comparison converts both sides.
  const std::vector<uint16_t> got_bf = {FloatToBf16(1), FloatToBf16(-2), FloatToBf16(2)};
  m = CompareValues(ref, kernels::DType::kF16, got_bf, kernels::DType::kBF16);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->max_abs, 0.0);
  EXPECT_EQ(CompareValues(ref, kernels::DType::kF16, {}, kernels::DType::kF16).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ExitCodeTest, MapsStatusCodes) {
  EXPECT_EQ(ExitCodeFor(absl::StatusCode::kOk), 0);
  EXPECT_EQ(ExitCodeFor(absl::StatusCode::kInternal), 1);
  EXPECT_EQ(ExitCodeFor(absl::StatusCode::kInvalidArgument), 2);
  EXPECT_EQ(ExitCodeFor(absl::StatusCode::kNotFound), 3);
  EXPECT_EQ(ExitCodeFor(absl::StatusCode::kUnavailable), 4);
  EXPECT_EQ(ExitCodeFor(absl::StatusCode::kDeadlineExceeded), 4);
  EXPECT_EQ(ExitCodeFor(absl::StatusCode::kResourceExhausted), 5);
  EXPECT_EQ(ExitCodeFor(absl::StatusCode::kUnauthenticated), 6);
  EXPECT_EQ(ExitCodeFor(absl::StatusCode::kPermissionDenied), 6);
}

TEST(HumanBytesTest, UsesBinaryUnits) {
  EXPECT_EQ(HumanBytes(123), "123 B");
  EXPECT_EQ(HumanBytes(1536), "1.50 KiB");
  EXPECT_EQ(HumanBytes(32ull << 20), "32.00 MiB");
}

}  // namespace
}  // namespace kvstash::cli
