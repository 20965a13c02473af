// Namespace quotas, per-namespace statistics and the packed layout of small chunks
// (docs/store.md, "Namespaces and quotas" and "How a chunk is laid out in pages").
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "server/store/store.h"
#include "tests/common/store_test_util.h"

namespace kvstash::store {
namespace {

using kernels::ChunkShape;
using kernels::DType;
using kernels::Preset;
using kernels::Slice;
using test_util::Chunk;
using test_util::FreshSeed;
using test_util::GetBytes;
using test_util::RandomChunk;
using ::testing::HasSubstr;

constexpr uint32_t kPage = 4096;

// One layer, four tokens, one head of 64: a 1 KiB payload, far below a page.
ChunkShape Tiny() { return ChunkShape{1, 4, 1, 64, DType::kF16}; }
// A chunk of a few pages.
ChunkShape Small() { return ChunkShape{4, 70, 2, 64, DType::kF16}; }

ChunkKey Key(uint64_t i) { return ChunkKey{0xABCD0000ull + i, i * 0x9E3779B97F4A7C15ull}; }

const NamespaceStats* Find(const std::vector<NamespaceStats>& all, const std::string& name) {
  for (const NamespaceStats& n : all) {
    if (n.name == name) return &n;
  }
  return nullptr;
}

class StoreQuotaTest : public ::testing::Test {
 protected:
  StoreQuotaTest() : rng_(FreshSeed()) {}

  std::unique_ptr<Store> MakeStore(uint64_t pages, uint64_t quota_bytes = 0,
                                   std::map<std::string, uint64_t> overrides = {},
                                   uint32_t page_bytes = kPage) {
    StoreOptions o;
    o.use_gpu = false;
    o.host_capacity_bytes = pages * page_bytes;
    o.page_bytes = page_bytes;
    o.namespace_quota_bytes = quota_bytes;
    o.namespace_quota_overrides = std::move(overrides);
    auto store = Store::Create(o);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  Chunk Random(const ChunkShape& shape = Small(), Preset preset = Preset::kKivi2) {
    return RandomChunk(rng_, shape, preset);
  }

  static absl::StatusOr<ChunkInfo> Put(Store& store, std::string_view ns, const ChunkKey& key,
                                       const Chunk& c) {
    return store.Put(ns, key, c.shape, c.config, c.bytes());
  }
  static bool Present(Store& store, std::string_view ns, const ChunkKey& key) {
    return store.Describe(ns, key).ok();
  }
  static uint64_t Pages(const Chunk& c, uint32_t page = kPage) {
    return test_util::PagesFor(c.shape, c.config, page);
  }

  std::mt19937_64 rng_;
};

// Holds a Get of (ns, key) inside its OutputAllocator, so the chunk stays pinned.
class BlockedReader {
 public:
  BlockedReader(Store& store, std::string ns, const ChunkKey& key)
      : thread_([this, &store, ns, key] {
          result_ = store.Get(ns, key, Slice{}, DType::kF16, [this](uint64_t n) {
            out_.resize(n);
            inside_.Notify();
            release_.WaitForNotification();
            return out_.data();
          });
        }) {
    inside_.WaitForNotification();
  }
  ~BlockedReader() {
    release_.Notify();
    thread_.join();
    EXPECT_TRUE(result_.ok()) << result_.status();
  }

 private:
  absl::Notification inside_, release_;
  std::vector<uint8_t> out_;
  absl::StatusOr<ChunkInfo> result_ = absl::UnknownError("not run");
  std::thread thread_;
};

TEST_F(StoreQuotaTest, RejectsQuotasBelowOnePageAndBadOverrideNames) {
  StoreOptions o;
  o.use_gpu = false;
  o.host_capacity_bytes = 64 * kPage;
  o.page_bytes = kPage;
  o.namespace_quota_bytes = kPage - 1;
  absl::Status st = Store::Create(o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("store.namespace_quota_bytes"));
  o.namespace_quota_bytes = 0;
  o.namespace_quota_overrides = {{"a", 100}};
  st = Store::Create(o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("namespace_quota_overrides[\"a\"]"));
  o.namespace_quota_overrides = {{"", kPage}};
  EXPECT_EQ(Store::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.namespace_quota_overrides = {{"a", 0}, {"b", kPage}};  // 0 = unlimited
  EXPECT_TRUE(Store::Create(o).ok());
}

TEST_F(StoreQuotaTest, TinyChunkTakesOnePage) {
  // Finding 7: a tiny chunk took a page for its header and one for its section.
  auto store = MakeStore(64, 0, {}, 64 * 1024);
  const Chunk c = Random(Tiny(), Preset::kFp16);
  ASSERT_EQ(Pages(c, 64 * 1024), 1u);
  ASSERT_TRUE(Put(*store, "a", Key(1), c).ok());
  EXPECT_EQ(store->Stats().pages_used, 1u);
  auto got = GetBytes(*store, "a", Key(1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, test_util::ExpectedBytes(c));
}

TEST_F(StoreQuotaTest, PackedChunksReadBackAcrossSplitPages) {
  // Eight layers of tiny sections: packed into two pages, sections straddling the page
  // boundary. Put once on adjacent pages, once on pages the pool hands out apart.
  auto store = MakeStore(16);
  const Chunk c = Random(ChunkShape{8, 4, 1, 32, DType::kF16}, Preset::kKivi2);
  const kernels::ChunkLayout lay = kernels::ComputeLayout(c.shape, c.config);
  ASSERT_EQ(Pages(c), 2u);
  ASSERT_GT(lay.total_bytes, kPage);
  const Chunk one = Random(Tiny(), Preset::kFp16);
  ASSERT_EQ(Pages(one), 1u);
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(Put(*store, "f", Key(100 + i), one).ok());
  ASSERT_TRUE(Put(*store, "a", Key(1), c).ok());  // pages 4, 5
  // Free pages 0 and 2: the next two-page span is {2, 0}, not adjacent.
  ASSERT_TRUE(store->Delete("f", Key(100)).ok());
  ASSERT_TRUE(store->Delete("f", Key(102)).ok());
  ASSERT_TRUE(Put(*store, "a", Key(2), c).ok());
  for (const ChunkKey& key : {Key(1), Key(2)}) {
    for (const Slice& slice : {Slice{}, Slice{2, 7, 0, 0}, Slice{5, 6, 0, 0}}) {
      auto got = GetBytes(*store, "a", key, slice);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, test_util::ExpectedBytes(c, slice));
    }
  }
  EXPECT_EQ(store->Stats().pages_used, 2u + 2u + 2u);
}

TEST_F(StoreQuotaTest, LargeSectionsStayPageAligned) {
  auto store = MakeStore(256);
  const Chunk c = Random(ChunkShape{6, 256, 2, 64, DType::kF16}, Preset::kFp16);
  const kernels::ChunkLayout lay = kernels::ComputeLayout(c.shape, c.config);
  uint64_t aligned = (lay.header_bytes + kPage - 1) / kPage;
  for (const auto& p : lay.pairs) aligned += (p.bytes + kPage - 1) / kPage;
  ASSERT_EQ(Pages(c), aligned);
  ASSERT_TRUE(Put(*store, "a", Key(1), c).ok());
  EXPECT_EQ(store->Stats().pages_used, aligned);
}

TEST_F(StoreQuotaTest, ChargesWholePagesPerNamespace) {
  auto store = MakeStore(256);
  const Chunk a = Random(), b = Random(Tiny(), Preset::kFp16);
  ASSERT_TRUE(Put(*store, "a", Key(1), a).ok());
  ASSERT_TRUE(Put(*store, "a", Key(2), a).ok());
  ASSERT_TRUE(Put(*store, "b", Key(1), b).ok());
  const std::vector<NamespaceStats> all = store->PerNamespaceStats();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name, "a");  // largest first
  EXPECT_EQ(all[0].chunks, 2u);
  EXPECT_EQ(all[0].allocated_bytes, 2 * Pages(a) * kPage);
  EXPECT_EQ(all[0].logical_bytes, 2 * a.shape.payload_bytes());
  EXPECT_EQ(all[0].stored_bytes,
            2 * kernels::ComputeLayout(a.shape, a.config).total_bytes);
  EXPECT_EQ(all[0].quota_bytes, 0u);
  EXPECT_EQ(all[1].name, "b");
  EXPECT_EQ(all[1].allocated_bytes, kPage);
  EXPECT_EQ(store->Stats().used_bytes, all[0].allocated_bytes + all[1].allocated_bytes);
  // Delete returns the charge.
  ASSERT_TRUE(store->Delete("a", Key(1)).ok());
  EXPECT_EQ(Find(store->PerNamespaceStats(), "a")->allocated_bytes, Pages(a) * kPage);
}

TEST_F(StoreQuotaTest, PutAtQuotaEvictsOnlyItsOwnOldestChunks) {
  const Chunk c = Random();
  const uint64_t per = Pages(c) * kPage;
  auto store = MakeStore(64 * Pages(c), 3 * per);
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(Put(*store, "b", Key(i), c).ok());
  for (uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(Put(*store, "a", Key(i), c).ok());
  for (uint64_t i = 0; i < 10; ++i) EXPECT_EQ(Present(*store, "a", Key(i)), i >= 7) << i;
  for (uint64_t i = 0; i < 3; ++i) EXPECT_TRUE(Present(*store, "b", Key(i))) << i;
  const std::vector<NamespaceStats> all = store->PerNamespaceStats();
  EXPECT_EQ(Find(all, "a")->quota_evictions, 7u);
  EXPECT_EQ(Find(all, "a")->allocated_bytes, 3 * per);
  EXPECT_EQ(Find(all, "a")->quota_bytes, 3 * per);
  EXPECT_EQ(Find(all, "b")->quota_evictions, 0u);
  EXPECT_EQ(Find(all, "b")->capacity_evictions, 0u);
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.evictions, 7u);
  EXPECT_EQ(st.quota_evictions, 7u);
  EXPECT_EQ(st.chunks, st.puts - st.deletes - st.evictions);

  // Reading a's oldest chunk makes it the newest: the next Put evicts Key(8) instead.
  ASSERT_TRUE(GetBytes(*store, "a", Key(7)).ok());
  ASSERT_TRUE(Put(*store, "a", Key(10), c).ok());
  EXPECT_TRUE(Present(*store, "a", Key(7)));
  EXPECT_FALSE(Present(*store, "a", Key(8)));
}

TEST_F(StoreQuotaTest, RePutAtQuotaIsAReplacementNotAnEviction) {
  const Chunk c = Random();
  const uint64_t per = Pages(c) * kPage;
  auto store = MakeStore(64 * Pages(c), per);  // room for one chunk
  ASSERT_TRUE(Put(*store, "a", Key(1), c).ok());
  auto again = Put(*store, "a", Key(1), c);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->replaced);
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.evictions, 0u);
  EXPECT_EQ(st.chunks, 1u);
  EXPECT_EQ(Find(store->PerNamespaceStats(), "a")->quota_evictions, 0u);
}

TEST_F(StoreQuotaTest, ChunkLargerThanTheQuotaIsRefusedNamingTheNamespace) {
  const Chunk c = Random();
  const uint64_t per = Pages(c) * kPage;
  auto store = MakeStore(64 * Pages(c), 2 * per);
  ASSERT_TRUE(Put(*store, "tenant-a", Key(1), c).ok());
  const Chunk big = Random(ChunkShape{16, 70, 2, 64, DType::kF16});
  ASSERT_GT(Pages(big) * kPage, 2 * per);
  auto put = Put(*store, "tenant-a", Key(2), big);
  EXPECT_EQ(put.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(put.status().message());
  EXPECT_THAT(msg, HasSubstr("\"tenant-a\""));
  EXPECT_THAT(msg, HasSubstr(std::to_string(2 * per)));  // the quota
  EXPECT_THAT(msg, HasSubstr(std::to_string(per)));      // what it holds
  EXPECT_TRUE(Present(*store, "tenant-a", Key(1)));      // nothing changed
  EXPECT_EQ(store->Stats().evictions, 0u);
  EXPECT_EQ(store->Stats().chunks, 1u);
}

TEST_F(StoreQuotaTest, PinnedChunksAtTheQuotaAreNotEvictedAndThePutIsRefused) {
  const Chunk c = Random();
  const uint64_t per = Pages(c) * kPage;
  auto store = MakeStore(64 * Pages(c), 2 * per);
  ASSERT_TRUE(Put(*store, "a", Key(1), c).ok());
  ASSERT_TRUE(Put(*store, "a", Key(2), c).ok());
  {
    BlockedReader r1(*store, "a", Key(1));
    BlockedReader r2(*store, "a", Key(2));
    auto put = Put(*store, "a", Key(3), c);
    EXPECT_EQ(put.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(std::string(put.status().message()), HasSubstr("quota"));
    EXPECT_TRUE(Present(*store, "a", Key(1)));
    EXPECT_TRUE(Present(*store, "a", Key(2)));
    EXPECT_FALSE(Present(*store, "a", Key(3)));
    EXPECT_EQ(store->Stats().evictions, 0u);
    // Another namespace is not limited by a's quota.
    EXPECT_TRUE(Put(*store, "b", Key(3), c).ok());
  }
  // Unpinned again: the Put evicts exactly one of a's chunks.
  ASSERT_TRUE(Put(*store, "a", Key(3), c).ok());
  EXPECT_EQ(Find(store->PerNamespaceStats(), "a")->chunks, 2u);
  EXPECT_EQ(Find(store->PerNamespaceStats(), "a")->quota_evictions, 1u);
}

TEST_F(StoreQuotaTest, OverridesReplaceTheDefaultQuota) {
  const Chunk c = Random();
  const uint64_t per = Pages(c) * kPage;
  auto store = MakeStore(64 * Pages(c), per, {{"big", 4 * per}, {"free", 0}});
  for (uint64_t i = 0; i < 6; ++i) {
    ASSERT_TRUE(Put(*store, "small", Key(i), c).ok());
    ASSERT_TRUE(Put(*store, "big", Key(i), c).ok());
    ASSERT_TRUE(Put(*store, "free", Key(i), c).ok());
  }
  const std::vector<NamespaceStats> all = store->PerNamespaceStats();
  EXPECT_EQ(Find(all, "small")->chunks, 1u);
  EXPECT_EQ(Find(all, "small")->quota_bytes, per);
  EXPECT_EQ(Find(all, "big")->chunks, 4u);
  EXPECT_EQ(Find(all, "big")->quota_bytes, 4 * per);
  EXPECT_EQ(Find(all, "free")->chunks, 6u);
  EXPECT_EQ(Find(all, "free")->quota_bytes, 0u);
}

// The regression test of finding 7: one tenant's flood of tiny chunks (2,100 in one go, as
// in the report) stays within its quota and evicts none of another namespace's chunks.
TEST_F(StoreQuotaTest, ManyTinyChunksInAQuotaCannotEvictAnotherNamespace) {
  constexpr uint32_t kBigPage = 64 * 1024;
  constexpr uint64_t kPages = 512;  // a 32 MiB store
  auto store = MakeStore(kPages, 0, {{"a", 128ull * kBigPage}}, kBigPage);
  const Chunk b = Random(Small());
  const uint64_t b_pages = Pages(b, kBigPage);
  uint64_t b_chunks = 0;
  while ((b_chunks + 1) * b_pages <= kPages - 128) {
    ASSERT_TRUE(Put(*store, "b", Key(b_chunks), b).ok());
    ++b_chunks;
  }
  const Chunk tiny = Random(Tiny(), Preset::kFp16);
  ASSERT_EQ(Pages(tiny, kBigPage), 1u);
  for (uint64_t i = 0; i < 2100; ++i) {
    ASSERT_TRUE(Put(*store, "a", Key(i), tiny).ok()) << i;
  }
  for (uint64_t i = 0; i < b_chunks; ++i) EXPECT_TRUE(Present(*store, "b", Key(i))) << i;
  const std::vector<NamespaceStats> all = store->PerNamespaceStats();
  EXPECT_EQ(Find(all, "a")->chunks, 128u);
  EXPECT_EQ(Find(all, "a")->allocated_bytes, 128ull * kBigPage);
  EXPECT_EQ(Find(all, "a")->quota_evictions, 2100u - 128u);
  EXPECT_EQ(Find(all, "b")->capacity_evictions, 0u);
  EXPECT_EQ(Find(all, "b")->chunks, b_chunks);
  for (uint64_t i = 2100 - 128; i < 2100; ++i) EXPECT_TRUE(Present(*store, "a", Key(i)));
}

TEST_F(StoreQuotaTest, CapacityEvictionsAreCountedOnTheVictimsNamespace) {
  const Chunk c = Random();
  auto store = MakeStore(4 * Pages(c));
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(Put(*store, "b", Key(i), c).ok());
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(Put(*store, "a", Key(i), c).ok());
  const std::vector<NamespaceStats> all = store->PerNamespaceStats();
  // b holds nothing now but is still listed, with what happened to it.
  const NamespaceStats* b = Find(all, "b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->chunks, 0u);
  EXPECT_EQ(b->allocated_bytes, 0u);
  EXPECT_EQ(b->capacity_evictions, 4u);
  EXPECT_EQ(Find(all, "a")->capacity_evictions, 0u);
  EXPECT_EQ(store->Stats().quota_evictions, 0u);
  EXPECT_EQ(store->Stats().evictions, 4u);
}

TEST_F(StoreQuotaTest, IdleNamespacesAreForgottenBeyondABound) {
  auto store = MakeStore(64);
  const Chunk c = Random(Tiny(), Preset::kFp16);
  for (uint64_t i = 0; i < 1100; ++i) {
    const std::string ns = "ns" + std::to_string(i);
    ASSERT_TRUE(Put(*store, ns, Key(1), c).ok());
    ASSERT_TRUE(store->Delete(ns, Key(1)).ok());
  }
  EXPECT_LE(store->PerNamespaceStats().size(), 1024u);
  EXPECT_GE(store->PerNamespaceStats().size(), 1000u);
}

TEST_F(StoreQuotaTest, ConcurrentPutsStayWithinQuotasAndChargesAddUp) {
  const Chunk c = Random(ChunkShape{2, 40, 2, 64, DType::kF16});
  const uint64_t per = Pages(c) * kPage;
  auto store = MakeStore(40 * Pages(c), 6 * per, {{"n3", 0}});
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::string ns = "n" + std::to_string(t);
      for (uint64_t i = 0; i < 200; ++i) {
        auto put = Put(*store, ns, Key(i % 37), c);
        // A Put can find its namespace's other chunks pinned by the readers.
        if (!put.ok() && !absl::IsResourceExhausted(put.status())) ++failures;
        (void)GetBytes(*store, ns, Key((i * 7) % 37));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  const std::vector<NamespaceStats> all = store->PerNamespaceStats();
  uint64_t charged = 0, chunks = 0;
  for (const NamespaceStats& n : all) {
    if (n.quota_bytes > 0) EXPECT_LE(n.allocated_bytes, n.quota_bytes) << n.name;
    EXPECT_EQ(n.allocated_bytes, n.chunks * per) << n.name;
    charged += n.allocated_bytes;
    chunks += n.chunks;
  }
  const StoreStats st = store->Stats();
  EXPECT_EQ(charged, st.used_bytes);
  EXPECT_EQ(chunks, st.chunks);
}

}  // namespace
}  // namespace kvstash::store
