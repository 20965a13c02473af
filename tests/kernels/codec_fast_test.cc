// The fast path (AVX2 or its scalar fallback, threaded for large chunks) against the scalar
// reference, byte for byte, for encode and decode on random layouts, configurations and
// slices.
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "codec_test_util.h"
#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"

namespace kvstash::kernels {
namespace {

using ::kvstash::kernels::testing::Describe;
using ::kvstash::kernels::testing::RandomConfig;
using ::kvstash::kernels::testing::RandomInput;

// Encodes with both implementations and checks the bytes agree; then decodes the whole
// chunk and `slices` random slices into both dtypes with both and checks those agree.
void ExpectFastMatchesReference(const ChunkShape& shape, const CodecConfig& cfg,
                                const std::vector<uint16_t>& in, std::mt19937_64& rng, int slices) {
  SCOPED_TRACE(Describe(shape, cfg));
  absl::StatusOr<std::vector<uint8_t>> ref = EncodeChunk(shape, cfg, in, Impl::kReference);
  absl::StatusOr<std::vector<uint8_t>> fast = EncodeChunk(shape, cfg, in, Impl::kFast);
  ASSERT_TRUE(ref.ok()) << ref.status();
  ASSERT_TRUE(fast.ok()) << fast.status();
  ASSERT_EQ(ref->size(), fast->size());
  if (*ref != *fast) {
    // Report the first differing byte outside the header checksum (bytes 56..63), which
    // differs whenever anything else does.
    size_t first = 0;
    while (first < ref->size() &&
           ((first >= 56 && first < 64) || (*ref)[first] == (*fast)[first])) {
      ++first;
    }
    FAIL() << "encoded bytes differ first at offset " << first << " of " << ref->size();
  }
  for (int k = 0; k <= slices; ++k) {
    Slice slice;  // k == 0: the whole chunk
    if (k > 0) {
      slice.layer_begin = rng() % shape.num_layers;
      slice.layer_end = slice.layer_begin + 1 + rng() % (shape.num_layers - slice.layer_begin);
      slice.head_begin = rng() % shape.num_heads;
      slice.head_end = slice.head_begin + 1 + rng() % (shape.num_heads - slice.head_begin);
    }
    for (DType out : {DType::kF16, DType::kBF16}) {
      std::vector<uint16_t> a, b;
      ASSERT_TRUE(Decode(ref->data(), ref->size(), slice, out, &a, Impl::kReference).ok());
      ASSERT_TRUE(Decode(ref->data(), ref->size(), slice, out, &b, Impl::kFast).ok());
      ASSERT_EQ(a.size(), b.size());
      if (a != b) {
        size_t first = 0;
        while (a[first] == b[first]) ++first;
        FAIL() << "decoded values differ first at element " << first << " (" << a[first] << " vs "
               << b[first] << "), slice layers [" << slice.layer_begin << ", " << slice.layer_end
               << ") heads [" << slice.head_begin << ", " << slice.head_end << ") out "
               << DTypeName(out);
      }
    }
  }
}

TEST(CodecFastTest, ReportsWhichPathItUses) {
  const std::string name = FastPathName();
  EXPECT_TRUE(name == "avx2" || name == "scalar") << name;
  std::printf("fast path: %s\n", name.c_str());
}

TEST(CodecFastTest, MatchesReferenceByteForByteOnRandomLayouts) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  const uint32_t dims[] = {32, 64, 96, 128, 256};
  const uint32_t tokens[] = {1, 5, 31, 32, 33, 64, 65, 96, 100, 128};
  for (int iter = 0; iter < 160; ++iter) {
    ChunkShape shape;
    shape.num_layers = 1 + static_cast<uint32_t>(rng() % 5);
    shape.num_tokens = rng() % 3 ? tokens[rng() % 10] : 1 + static_cast<uint32_t>(rng() % 160);
    shape.num_heads = 1 + static_cast<uint32_t>(rng() % 8);
    shape.head_dim = dims[rng() % 5];
    shape.dtype = rng() % 2 ? DType::kF16 : DType::kBF16;
    const CodecConfig cfg = RandomConfig(shape, rng);
    const std::vector<uint16_t> in = RandomInput(shape, rng);
    ExpectFastMatchesReference(shape, cfg, in, rng, /*slices=*/2);
    if (HasFatalFailure() || HasNonfatalFailure()) return;
  }
}

TEST(CodecFastTest, MatchesReferenceOnEveryPresetAndDtypeAtAThreadedSize) {
  // 2·4·264·8·128·2 bytes = 8.25 MiB: above the threading threshold; T = 264 leaves a tail.
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    const ChunkShape shape{
        .num_layers = 4, .num_tokens = 264, .num_heads = 8, .head_dim = 128, .dtype = dt};
    const std::vector<uint16_t> in = RandomInput(shape, rng);
    for (Preset p : {Preset::kFp16, Preset::kKivi2, Preset::kAsymKv15, Preset::kXQuant}) {
      ExpectFastMatchesReference(shape, PresetConfig(p, 4), in, rng, /*slices=*/1);
    }
  }
}

TEST(CodecFastTest, ConcurrentCallersGetCorrectResults) {
  // Two threads encode and decode large chunks at once through the shared worker pool.
  const ChunkShape shape{.num_layers = 6, .num_tokens = 256, .num_heads = 8, .head_dim = 128};
  std::mt19937_64 rng(21);
  const std::vector<uint16_t> in = RandomInput(shape, rng, /*specials=*/false);
  const CodecConfig cfg = PresetConfig(Preset::kXQuant, 6);
  absl::StatusOr<std::vector<uint8_t>> want = EncodeChunk(shape, cfg, in, Impl::kFast);
  ASSERT_TRUE(want.ok());
  std::vector<uint16_t> want_dec;
  ASSERT_TRUE(Decode(want->data(), want->size(), {}, DType::kF16, &want_dec).ok());
  std::vector<int> ok(3, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 3; ++k) {
    threads.emplace_back([&, k] {
      int good = 1;
      for (int rep = 0; rep < 3; ++rep) {
        absl::StatusOr<std::vector<uint8_t>> got = EncodeChunk(shape, cfg, in, Impl::kFast);
        std::vector<uint16_t> dec;
        good &= got.ok() && *got == *want &&
                Decode(got->data(), got->size(), {}, DType::kF16, &dec).ok() && dec == want_dec;
      }
      ok[k] = good;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok, std::vector<int>(3, 1));
}

}  // namespace
}  // namespace kvstash::kernels
