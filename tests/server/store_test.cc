#include "server/store/store.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"
#include "tests/common/store_test_util.h"

namespace kvstash::store {
namespace {

using kernels::ChunkShape;
using kernels::CodecConfig;
using kernels::DType;
using kernels::Preset;
using kernels::Slice;
using test_util::Chunk;
using test_util::FreshSeed;
using test_util::GetBytes;
using test_util::RandomChunk;

constexpr uint32_t kPage = 4096;
constexpr char kNs[] = "model-a";

ChunkShape Shape(uint32_t layers = 5, DType dtype = DType::kF16, uint32_t tokens = 70) {
  ChunkShape s;
  s.num_layers = layers;  // odd by default: the last pair holds one layer
  s.num_tokens = tokens;  // 2 quantized groups and a 6-token tail by default
  s.num_heads = 3;
  s.head_dim = 64;
  s.dtype = dtype;
  return s;
}

std::vector<uint8_t> Expected(const Chunk& c, const Slice& slice = {}, DType out = DType::kF16) {
  return test_util::ExpectedBytes(c, slice, out);
}
uint64_t PagesFor(const Chunk& c) { return test_util::PagesFor(c.shape, c.config, kPage); }

ChunkKey Key(uint64_t i) { return ChunkKey{0xC0FFEE00ull + i, i * 0x9E3779B97F4A7C15ull}; }

class StoreTest : public ::testing::Test {
 protected:
  StoreTest() : rng_(FreshSeed()) {}

  std::unique_ptr<Store> MakeStore(uint64_t pages, uint32_t page_bytes = kPage,
                                   uint32_t shards = 16) {
    StoreOptions o;
    o.use_gpu = false;  // these tests pin down the host tier's accounting
    o.host_capacity_bytes = pages * page_bytes;
    o.page_bytes = page_bytes;
    o.num_shards = shards;
    auto store = Store::Create(o);
    EXPECT_TRUE(store.ok()) << store.status();
    return *std::move(store);
  }

  Chunk Random(Preset preset = Preset::kKivi2, const ChunkShape& shape = Shape()) {
    return RandomChunk(rng_, shape, preset);
  }

  absl::StatusOr<ChunkInfo> Put(Store& store, const ChunkKey& key, const Chunk& c,
                                std::string_view ns = kNs) {
    return store.Put(ns, key, c.shape, c.config, c.bytes());
  }

  static bool Present(Store& store, const ChunkKey& key) {
    return store.Describe(kNs, key).ok();
  }

  std::mt19937_64 rng_;
};

TEST_F(StoreTest, RejectsBadOptions) {
  StoreOptions o;
  o.host_capacity_bytes = 1 << 20;
  o.page_bytes = 5000;
  EXPECT_EQ(Store::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.page_bytes = kPage;
  o.num_shards = 3;
  EXPECT_EQ(Store::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.num_shards = 4;
  o.host_capacity_bytes = 100;
  EXPECT_EQ(Store::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, RoundTripsEveryPresetAndDtype) {
  auto store = MakeStore(4096);
  uint64_t i = 0;
  for (DType in : {DType::kF16, DType::kBF16}) {
    for (Preset preset : {Preset::kFp16, Preset::kKivi2, Preset::kAsymKv15, Preset::kXQuant}) {
      SCOPED_TRACE(std::string(kernels::PresetName(preset)) + " from " +
                   std::string(kernels::DTypeName(in)));
      const Chunk c = Random(preset, Shape(5, in));
      const ChunkKey key = Key(i++);
      auto put = Put(*store, key, c);
      ASSERT_TRUE(put.ok()) << put.status();
      EXPECT_FALSE(put->replaced);
      EXPECT_EQ(put->shape, c.shape);
      EXPECT_EQ(put->logical_bytes, c.shape.payload_bytes());
      EXPECT_EQ(put->stored_bytes, kernels::ComputeLayout(c.shape, c.config).total_bytes);
      EXPECT_DOUBLE_EQ(put->equivalent_bits, kernels::EquivalentBits(c.shape, c.config));
      EXPECT_DOUBLE_EQ(put->true_bits,
                       8.0 * put->stored_bytes / static_cast<double>(c.shape.elements()));
      for (DType out : {DType::kF16, DType::kBF16}) {
        auto got = GetBytes(*store, kNs, key, {}, out);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(*got, Expected(c, {}, out));
      }
      if (preset == Preset::kFp16) {  // lossless in its own dtype
        auto got = GetBytes(*store, kNs, key, {}, in);
        ASSERT_TRUE(got.ok());
        ASSERT_EQ(got->size(), c.bytes().size());
        EXPECT_TRUE(std::equal(got->begin(), got->end(), c.bytes().begin()));
      } else {  // lossy, but bounded: every value within the input's range
        auto got = GetBytes(*store, kNs, key, {}, DType::kF16);
        ASSERT_TRUE(got.ok());
        float lo = INFINITY, hi = -INFINITY;
        for (uint16_t v : c.data) {
          const float f = in == DType::kF16 ? kernels::F16ToFloat(v) : kernels::BF16ToFloat(v);
          lo = std::min(lo, f);
          hi = std::max(hi, f);
        }
        const uint16_t* out16 = reinterpret_cast<const uint16_t*>(got->data());
        for (size_t e = 0; e < c.data.size(); ++e) {
          const float f = kernels::F16ToFloat(out16[e]);
          ASSERT_TRUE(std::isfinite(f));
          ASSERT_GE(f, lo - 0.01f * (hi - lo)) << e;
          ASSERT_LE(f, hi + 0.01f * (hi - lo)) << e;
        }
      }
    }
  }
}

TEST_F(StoreTest, GetsLayerAndHeadSlices) {
  auto store = MakeStore(4096);
  const Chunk c = Random(Preset::kXQuant, Shape(7));
  ASSERT_TRUE(Put(*store, Key(1), c).ok());
  const std::vector<Slice> slices = {
      {0, 0, 0, 0},  // everything
      {1, 4, 0, 0},  // starts on an odd layer that shares its codes
      {3, 4, 0, 0},  // one odd layer
      {6, 7, 0, 0},  // the single-layer last pair
      {0, 0, 1, 3},  // heads only
      {2, 5, 2, 3},  // both
  };
  for (const Slice& s : slices) {
    SCOPED_TRACE(testing::Message() << "layers [" << s.layer_begin << "," << s.layer_end
                                    << ") heads [" << s.head_begin << "," << s.head_end << ")");
    for (DType out : {DType::kF16, DType::kBF16}) {
      auto got = GetBytes(*store, kNs, Key(1), s, out);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, Expected(c, s, out));
    }
  }
}

TEST_F(StoreTest, RejectsBadSlicesAndDtypes) {
  auto store = MakeStore(1024);
  const Chunk c = Random();
  ASSERT_TRUE(Put(*store, Key(1), c).ok());
  auto st = GetBytes(*store, kNs, Key(1), Slice{2, 9, 0, 0});
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.status().message().find("layer_range"), std::string::npos) << st.status();
  st = GetBytes(*store, kNs, Key(1), Slice{0, 0, 2, 1});
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.status().message().find("head_range"), std::string::npos) << st.status();
  st = GetBytes(*store, kNs, Key(1), {}, static_cast<DType>(7));
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  // Unspecified: the chunk's own dtype (fp16 here).
  st = GetBytes(*store, kNs, Key(1), {}, DType::kUnspecified);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(*st, Expected(c, {}, c.shape.dtype));
  // An allocator that gives nothing.
  auto info = store->Get(kNs, Key(1), {}, DType::kF16, [](uint64_t) { return nullptr; });
  EXPECT_EQ(info.status().code(), absl::StatusCode::kResourceExhausted);
  // None of it pinned or damaged the chunk.
  auto got = GetBytes(*store, kNs, Key(1));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, Expected(c));
}

TEST_F(StoreTest, RejectsBadPutsAndLeavesStoreUnchanged) {
  auto store = MakeStore(1024);
  const Chunk c = Random();
  ASSERT_TRUE(Put(*store, Key(1), c).ok());
  const StoreStats before = store->Stats();

  auto expect_invalid = [&](absl::StatusOr<ChunkInfo> r, const char* field) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_NE(r.status().message().find(field), std::string::npos) << r.status();
  };
  expect_invalid(Put(*store, Key(2), c, ""), "namespace");
  expect_invalid(Put(*store, Key(2), c, std::string(257, 'n')), "namespace");
  EXPECT_TRUE(Put(*store, Key(2), c, std::string(256, 'n')).ok());  // the limit itself
  ASSERT_TRUE(store->Delete(std::string(256, 'n'), Key(2)).ok());

  expect_invalid(store->Put(kNs, Key(2), c.shape, c.config, c.bytes().subspan(2)), "payload");
  ChunkShape bad = c.shape;
  bad.head_dim = 48;
  expect_invalid(store->Put(kNs, Key(2), bad, c.config, c.bytes()), "head_dim");
  CodecConfig bad_config = c.config;
  bad_config.eta1 = 0.7f;
  expect_invalid(store->Put(kNs, Key(2), c.shape, bad_config, c.bytes()), "eta");
  Chunk nan = c;
  nan.data[nan.data.size() / 2] = 0x7E00;  // fp16 NaN
  EXPECT_EQ(Put(*store, Key(2), nan).status().code(), absl::StatusCode::kInvalidArgument);
  // Re-putting a present key with a bad payload does not disturb it either.
  EXPECT_EQ(Put(*store, Key(1), nan).status().code(), absl::StatusCode::kInvalidArgument);

  const StoreStats after = store->Stats();
  EXPECT_EQ(after.chunks, 1u);
  EXPECT_EQ(after.pages_used, before.pages_used);
  EXPECT_EQ(after.stored_bytes, before.stored_bytes);
  EXPECT_EQ(after.puts, before.puts + 1);  // only the valid 256-byte namespace one
  EXPECT_EQ(store->Describe(kNs, Key(2)).status().code(), absl::StatusCode::kNotFound);
  auto got = GetBytes(*store, kNs, Key(1));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, Expected(c));

  EXPECT_EQ(store->Get("", Key(1), {}, DType::kF16, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Delete("", Key(1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Describe("", Key(1)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, AcceptsOddAlignedPayload) {
  auto store = MakeStore(1024);
  const Chunk c = Random(Preset::kXQuant);
  std::vector<uint8_t> shifted(c.bytes().size() + 1);
  std::memcpy(shifted.data() + 1, c.bytes().data(), c.bytes().size());
  ASSERT_TRUE(store->Put(kNs, Key(1), c.shape, c.config,
                         std::span<const uint8_t>(shifted).subspan(1)).ok());
  auto got = GetBytes(*store, kNs, Key(1));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, Expected(c));
}

TEST_F(StoreTest, MissingKeysAreNotFound) {
  auto store = MakeStore(1024);
  ASSERT_TRUE(Put(*store, Key(1), Random()).ok());
  EXPECT_EQ(GetBytes(*store, kNs, Key(2)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetBytes(*store, "other", Key(1)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Describe(kNs, Key(2)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Delete(kNs, Key(2)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Delete("other", Key(1)).code(), absl::StatusCode::kNotFound);
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.gets, 2u);
  EXPECT_EQ(st.misses, 2u);
  EXPECT_EQ(st.hits, 0u);
  EXPECT_EQ(st.deletes, 0u);
}

TEST_F(StoreTest, DescribeReportsWithoutCountingAHit) {
  auto store = MakeStore(1024);
  const Chunk c = Random(Preset::kAsymKv15);
  auto put = Put(*store, Key(1), c);
  ASSERT_TRUE(put.ok());
  auto info = store->Describe(kNs, Key(1));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->shape, c.shape);
  EXPECT_EQ(info->config, put->config);
  EXPECT_EQ(info->stored_bytes, put->stored_bytes);
  EXPECT_EQ(store->Stats().hits, 0u);
  EXPECT_EQ(store->Stats().misses, 0u);
}

TEST_F(StoreTest, LookupCountsLeadingPresentKeys) {
  auto store = MakeStore(4096);
  std::vector<ChunkKey> chain;
  for (uint64_t i = 0; i < 6; ++i) chain.push_back(Key(100 + i));
  for (uint64_t i : {0, 1, 2, 4, 5}) ASSERT_TRUE(Put(*store, chain[i], Random()).ok());
  EXPECT_EQ(store->Lookup(kNs, chain), 3u);                              // stops at the gap
  EXPECT_EQ(store->Lookup(kNs, std::span(chain).first(3)), 3u);          // all present
  EXPECT_EQ(store->Lookup(kNs, std::span(chain).subspan(3)), 0u);        // first missing
  EXPECT_EQ(store->Lookup(kNs, std::span(chain).subspan(4)), 2u);
  EXPECT_EQ(store->Lookup("other-model", chain), 0u);                    // namespaces apart
  EXPECT_EQ(store->Lookup(kNs, {}), 0u);
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.hits, 3u + 3u + 0u + 2u);
  EXPECT_EQ(st.misses, 3u);  // three lookups stopped at a missing key
}

TEST_F(StoreTest, EvictsLeastRecentlyReadFirst) {
  const Chunk a = Random(), b = Random(), c = Random(), d = Random(), e = Random();
  const uint64_t per = PagesFor(a);
  auto store = MakeStore(3 * per);
  ASSERT_TRUE(Put(*store, Key(0), a).ok());
  ASSERT_TRUE(Put(*store, Key(1), b).ok());
  ASSERT_TRUE(Put(*store, Key(2), c).ok());
  EXPECT_EQ(store->Stats().pages_used, 3 * per);
  ASSERT_TRUE(GetBytes(*store, kNs, Key(0)).ok());  // a is now the most recently read

  ASSERT_TRUE(Put(*store, Key(3), d).ok());  // evicts b, the oldest
  EXPECT_TRUE(Present(*store, Key(0)));
  EXPECT_FALSE(Present(*store, Key(1)));
  EXPECT_TRUE(Present(*store, Key(2)));
  EXPECT_TRUE(Present(*store, Key(3)));
  EXPECT_EQ(store->Stats().evictions, 1u);

  // Lookup and Describe do not refresh a chunk; Get does.
  ASSERT_TRUE(GetBytes(*store, kNs, Key(2)).ok());
  const ChunkKey a_key = Key(0);
  EXPECT_EQ(store->Lookup(kNs, std::span(&a_key, 1)), 1u);
  ASSERT_TRUE(Put(*store, Key(4), e).ok());  // order now a, d, c: evicts a
  EXPECT_FALSE(Present(*store, Key(0)));
  EXPECT_TRUE(Present(*store, Key(2)));
  EXPECT_TRUE(Present(*store, Key(3)));
  EXPECT_TRUE(Present(*store, Key(4)));
  EXPECT_EQ(store->Stats().evictions, 2u);

  // A chunk the size of two evicts as many as it needs, oldest first: d, then c; e stays.
  const Chunk big = Random(Preset::kKivi2, Shape(8));
  ASSERT_GT(PagesFor(big), per);
  ASSERT_LE(PagesFor(big), 2 * per);
  auto put = Put(*store, Key(5), big);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_FALSE(Present(*store, Key(2)));
  EXPECT_FALSE(Present(*store, Key(3)));
  EXPECT_TRUE(Present(*store, Key(4)));
  EXPECT_EQ(store->Stats().evictions, 4u);
  EXPECT_EQ(store->Stats().chunks, 2u);
  auto got = GetBytes(*store, kNs, Key(5));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, Expected(big));
}

// Hold a Get inside its OutputAllocator: the chunk is pinned until the allocator returns.
class BlockedReader {
 public:
  BlockedReader(Store& store, const ChunkKey& key, Slice slice = {})
      : thread_([this, &store, key, slice] {
          result_ = store.Get(kNs, key, slice, DType::kF16, [this](uint64_t n) {
            out_.resize(n);
            inside_.Notify();
            release_.WaitForNotification();
            return out_.data();
          });
        }) {
    inside_.WaitForNotification();
  }
  ~BlockedReader() { Finish(); }
  // Lets the read finish and returns what it read.
  const std::vector<uint8_t>& Finish() {
    if (!release_.HasBeenNotified()) release_.Notify();
    if (thread_.joinable()) thread_.join();
    EXPECT_TRUE(result_.ok()) << result_.status();
    return out_;
  }

 private:
  absl::Notification inside_, release_;
  std::vector<uint8_t> out_;
  absl::StatusOr<ChunkInfo> result_ = absl::UnknownError("not run");
  std::thread thread_;
};

TEST_F(StoreTest, EvictsOnlyUnpinnedChunks) {
  const Chunk a = Random(), b = Random(), c = Random(), d = Random();
  const uint64_t per = PagesFor(a);
  auto store = MakeStore(2 * per);
  ASSERT_TRUE(Put(*store, Key(0), a).ok());
  ASSERT_TRUE(Put(*store, Key(1), b).ok());
  {
    BlockedReader reader(*store, Key(0));  // a: oldest, but pinned
    ASSERT_TRUE(Put(*store, Key(2), c).ok());
    EXPECT_TRUE(Present(*store, Key(0)));
    EXPECT_FALSE(Present(*store, Key(1)));
    ASSERT_TRUE(Put(*store, Key(3), d).ok());  // only c is evictable
    EXPECT_TRUE(Present(*store, Key(0)));
    EXPECT_FALSE(Present(*store, Key(2)));
    EXPECT_EQ(store->Stats().evictions, 2u);

    // Needs two chunks' worth while one is pinned: refused, and nothing is evicted.
    const Chunk big = Random(Preset::kKivi2, Shape(8));
    ASSERT_GT(PagesFor(big), per);
    ASSERT_LE(PagesFor(big), 2 * per);
    EXPECT_EQ(Put(*store, Key(4), big).status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_TRUE(Present(*store, Key(3)));
    EXPECT_EQ(store->Stats().evictions, 2u);
    EXPECT_EQ(store->Stats().chunks, 2u);

    EXPECT_EQ(reader.Finish(), Expected(a));
  }
  // Unpinned, a is the most recently read; d goes first now.
  ASSERT_TRUE(Put(*store, Key(5), b).ok());
  EXPECT_TRUE(Present(*store, Key(0)));
  EXPECT_FALSE(Present(*store, Key(3)));
}

TEST_F(StoreTest, DeleteWhileReadingFreesPagesAfterTheRead) {
  const Chunk a = Random(Preset::kXQuant);
  auto store = MakeStore(1024);
  ASSERT_TRUE(Put(*store, Key(0), a).ok());
  const uint64_t pages = store->Stats().pages_used;
  ASSERT_EQ(pages, PagesFor(a));
  BlockedReader reader(*store, Key(0), Slice{1, 4, 1, 3});
  ASSERT_TRUE(store->Delete(kNs, Key(0)).ok());
  EXPECT_EQ(store->Describe(kNs, Key(0)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Delete(kNs, Key(0)).code(), absl::StatusCode::kNotFound);
  StoreStats st = store->Stats();
  EXPECT_EQ(st.chunks, 0u);
  EXPECT_EQ(st.stored_bytes, 0u);
  EXPECT_EQ(st.pages_used, pages);  // still held by the reader
  EXPECT_EQ(reader.Finish(), Expected(a, Slice{1, 4, 1, 3}));
  st = store->Stats();
  EXPECT_EQ(st.pages_used, 0u);
  EXPECT_EQ(st.used_bytes, 0u);
  EXPECT_EQ(st.deletes, 1u);
}

TEST_F(StoreTest, RePutReplacesAndReadersKeepTheOldChunk) {
  const Chunk v1 = Random(Preset::kKivi2), v2 = Random(Preset::kXQuant, Shape(4));
  auto store = MakeStore(1024);
  auto put = Put(*store, Key(7), v1);
  ASSERT_TRUE(put.ok());
  EXPECT_FALSE(put->replaced);
  {
    BlockedReader reader(*store, Key(7));
    put = Put(*store, Key(7), v2);
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_TRUE(put->replaced);
    EXPECT_EQ(put->shape, v2.shape);
    auto got = GetBytes(*store, kNs, Key(7));  // new readers see the new chunk
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, Expected(v2));
    EXPECT_EQ(store->Stats().pages_used, PagesFor(v1) + PagesFor(v2));
    EXPECT_EQ(reader.Finish(), Expected(v1));  // the reader finishes on the old one
  }
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.chunks, 1u);
  EXPECT_EQ(st.pages_used, PagesFor(v2));
  EXPECT_EQ(st.logical_bytes, v2.shape.payload_bytes());
  EXPECT_EQ(st.puts, 2u);
  EXPECT_EQ(st.evictions, 0u);
}

TEST_F(StoreTest, RePutOfAFullStoreReplacesItsOwnChunk) {
  const Chunk v1 = Random(), v2 = Random();
  auto store = MakeStore(PagesFor(v1));  // room for exactly one chunk
  ASSERT_TRUE(Put(*store, Key(1), v1).ok());
  auto put = Put(*store, Key(1), v2);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_TRUE(put->replaced);
  EXPECT_EQ(store->Stats().evictions, 0u);
  EXPECT_EQ(store->Stats().chunks, 1u);
  auto got = GetBytes(*store, kNs, Key(1));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, Expected(v2));
}

TEST_F(StoreTest, PutLargerThanCapacityIsResourceExhaustedAndEvictsNothing) {
  const Chunk a = Random(), b = Random();
  auto store = MakeStore(3 * PagesFor(a));
  ASSERT_TRUE(Put(*store, Key(0), a).ok());
  ASSERT_TRUE(Put(*store, Key(1), b).ok());
  const StoreStats before = store->Stats();
  const Chunk huge = Random(Preset::kFp16, Shape(16));
  ASSERT_GT(PagesFor(huge), before.pages_total);
  auto put = Put(*store, Key(2), huge);
  EXPECT_EQ(put.status().code(), absl::StatusCode::kResourceExhausted);
  const StoreStats after = store->Stats();
  EXPECT_EQ(after.chunks, 2u);
  EXPECT_EQ(after.pages_used, before.pages_used);
  EXPECT_EQ(after.evictions, 0u);
  EXPECT_EQ(after.puts, 2u);
  EXPECT_TRUE(Present(*store, Key(0)));
  EXPECT_TRUE(Present(*store, Key(1)));
}

// Small pages and churn scatter each chunk's sections over non-adjacent pages, so Get
// takes the gather path; its output must not change.
TEST_F(StoreTest, ReadsChunksWhosePagesAreScattered) {
  auto store = MakeStore(2048);
  std::vector<Chunk> small;
  for (int i = 0; i < 40; ++i) {
    small.push_back(Random(Preset::kXQuant, Shape(1 + i % 3, DType::kF16, 33)));
    ASSERT_TRUE(Put(*store, Key(i), small.back()).ok());
  }
  for (int i = 0; i < 40; i += 2) ASSERT_TRUE(store->Delete(kNs, Key(i)).ok());
  const Chunk big = Random(Preset::kFp16, Shape(6));
  ASSERT_TRUE(Put(*store, Key(1000), big).ok());
  for (const Slice& s : {Slice{}, Slice{2, 5, 0, 0}, Slice{5, 6, 1, 2}}) {
    auto got = GetBytes(*store, kNs, Key(1000), s);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, Expected(big, s));
  }
  for (int i = 1; i < 40; i += 2) {
    auto got = GetBytes(*store, kNs, Key(i));
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, Expected(small[i]));
  }
}

TEST_F(StoreTest, StatsAreConsistent) {
  const Chunk a = Random(Preset::kFp16), b = Random(Preset::kXQuant), c = Random();
  auto store = MakeStore(4096, kPage, 4);
  StoreStats st = store->Stats();
  EXPECT_EQ(st.capacity_bytes, 4096u * kPage);
  EXPECT_EQ(st.page_bytes, kPage);
  EXPECT_EQ(st.pages_total, 4096u);
  EXPECT_EQ(st.pages_used, 0u);
  ASSERT_TRUE(Put(*store, Key(0), a).ok());
  ASSERT_TRUE(Put(*store, Key(1), b).ok());
  ASSERT_TRUE(Put(*store, Key(2), c).ok());
  ASSERT_TRUE(GetBytes(*store, kNs, Key(0)).ok());
  ASSERT_FALSE(GetBytes(*store, kNs, Key(9)).ok());
  ASSERT_TRUE(store->Delete(kNs, Key(2)).ok());
  st = store->Stats();
  EXPECT_EQ(st.chunks, 2u);
  EXPECT_EQ(st.pages_used, PagesFor(a) + PagesFor(b));
  EXPECT_EQ(st.used_bytes, st.pages_used * kPage);
  EXPECT_EQ(st.logical_bytes, a.shape.payload_bytes() + b.shape.payload_bytes());
  EXPECT_EQ(st.stored_bytes, kernels::ComputeLayout(a.shape, a.config).total_bytes +
                                 kernels::ComputeLayout(b.shape, b.config).total_bytes);
  EXPECT_LE(st.stored_bytes, st.used_bytes);
  EXPECT_EQ(st.elements, a.shape.elements() + b.shape.elements());
  EXPECT_DOUBLE_EQ(st.equivalent_bit_elements,
                   16.0 * a.shape.elements() +
                       kernels::EquivalentBits(b.shape, b.config) * b.shape.elements());
  EXPECT_EQ(st.puts, 3u);
  EXPECT_EQ(st.gets, 2u);
  EXPECT_EQ(st.hits, 1u);
  EXPECT_EQ(st.misses, 1u);
  EXPECT_EQ(st.deletes, 1u);
  EXPECT_EQ(st.evictions, 0u);
}

// Several threads put, get, delete and look up an overlapping key set in a store too
// small for all of it. Every chunk read must be exactly its key's chunk; afterwards the
// stats agree with what is present.
TEST_F(StoreTest, ConcurrentPutsAndGetsReturnTheRightChunks) {
  constexpr int kKeys = 24;
  constexpr int kThreads = 4;
  constexpr int kOps = 800;
  std::vector<Chunk> chunks;
  std::vector<std::vector<uint8_t>> expected;
  uint64_t total_pages = 0;
  for (int i = 0; i < kKeys; ++i) {
    // Two sizes and several presets, so page counts differ from chunk to chunk.
    const Preset preset = static_cast<Preset>(1 + i % 4);
    chunks.push_back(Random(preset, Shape(i % 2 ? 5 : 2, i % 3 ? DType::kF16 : DType::kBF16)));
    expected.push_back(Expected(chunks.back()));
    total_pages += PagesFor(chunks.back());
  }
  auto store = MakeStore(total_pages / 2);
  const uint64_t seed = rng_();

  struct Counts {
    uint64_t puts = 0, replaced = 0, gets = 0, found = 0, deletes = 0, hits = 0, misses = 0;
  };
  std::vector<Counts> counts(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      Counts& n = counts[t];
      for (int op = 0; op < kOps; ++op) {
        const int k = rng() % kKeys;
        const int what = rng() % 20;
        if (what < 8) {
          auto put = Put(*store, Key(k), chunks[k]);
          // Under contention a Put can find every other page pinned by readers.
          if (!put.ok()) {
            ASSERT_EQ(put.status().code(), absl::StatusCode::kResourceExhausted);
            continue;
          }
          ++n.puts;
          n.replaced += put->replaced;
        } else if (what < 17) {
          ++n.gets;
          auto got = GetBytes(*store, kNs, Key(k));
          if (got.ok()) {
            ++n.found;
            ++n.hits;
            ASSERT_EQ(*got, expected[k]) << "key " << k;
          } else {
            ASSERT_EQ(got.status().code(), absl::StatusCode::kNotFound);
            ++n.misses;
          }
        } else if (what < 18) {
          if (store->Delete(kNs, Key(k)).ok()) ++n.deletes;
        } else {
          std::vector<ChunkKey> chain = {Key(k), Key((k + 1) % kKeys)};
          const uint64_t got = store->Lookup(kNs, chain);
          n.hits += got;
          n.misses += got < chain.size();
        }
      }
    });
  }
  for (auto& t : threads) t.join();

  Counts sum;
  for (const Counts& n : counts) {
    sum.puts += n.puts;
    sum.replaced += n.replaced;
    sum.gets += n.gets;
    sum.deletes += n.deletes;
    sum.hits += n.hits;
    sum.misses += n.misses;
  }
  const StoreStats st = store->Stats();
  uint64_t chunks_present = 0, pages = 0, logical = 0, stored = 0, elements = 0;
  double bit_elements = 0;
  for (int k = 0; k < kKeys; ++k) {
    auto info = store->Describe(kNs, Key(k));
    if (!info.ok()) continue;
    ++chunks_present;
    pages += PagesFor(chunks[k]);
    logical += info->logical_bytes;
    stored += info->stored_bytes;
    elements += info->shape.elements();
    bit_elements += info->equivalent_bits * info->shape.elements();
    auto got = GetBytes(*store, kNs, Key(k));
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, expected[k]);
  }
  EXPECT_GT(st.evictions, 0u);
  EXPECT_EQ(st.chunks, chunks_present);
  EXPECT_EQ(st.pages_used, pages);
  EXPECT_LE(st.pages_used, st.pages_total);
  EXPECT_EQ(st.logical_bytes, logical);
  EXPECT_EQ(st.stored_bytes, stored);
  EXPECT_EQ(st.elements, elements);
  EXPECT_DOUBLE_EQ(st.equivalent_bit_elements, bit_elements);
  EXPECT_EQ(st.puts, sum.puts);
  EXPECT_EQ(st.gets, sum.gets);
  EXPECT_EQ(st.deletes, sum.deletes);
  EXPECT_EQ(st.hits, sum.hits);
  EXPECT_EQ(st.misses, sum.misses);
  EXPECT_EQ(st.chunks, sum.puts - sum.replaced - sum.deletes - st.evictions);
}

}  // namespace
}  // namespace kvstash::store
