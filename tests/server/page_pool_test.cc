#include "server/memory/page_pool.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace kvstash::memory {
namespace {

constexpr uint32_t kPage = 4096;

std::unique_ptr<PagePool> MakePool(uint64_t pages, uint32_t page_bytes = kPage) {
  PagePoolOptions o;
  o.capacity_bytes = pages * page_bytes;
  o.page_bytes = page_bytes;
  auto pool = PagePool::Create(o);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return *std::move(pool);
}

uint64_t FreshSeed() {
  const uint64_t seed = std::random_device{}();
  std::printf("seed = %llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

// Fills a span with bytes derived from `tag`, so that overlap between spans shows up.
void Stamp(PageSpan& s, uint8_t tag) {
  std::vector<uint8_t> bytes(s.bytes());
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(tag * 31 + i);
  s.Write(0, bytes.data(), bytes.size());
}
bool HasStamp(const PageSpan& s, uint8_t tag) {
  std::vector<uint8_t> bytes(s.bytes());
  s.Read(0, bytes.size(), bytes.data());
  for (size_t i = 0; i < bytes.size(); ++i)
    if (bytes[i] != static_cast<uint8_t>(tag * 31 + i)) return false;
  return true;
}

TEST(PagePoolTest, RejectsBadOptions) {
  PagePoolOptions o;
  o.capacity_bytes = 1 << 20;
  o.page_bytes = 3000;
  auto pool = PagePool::Create(o);
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(pool.status().message().find("page_bytes"), std::string::npos);
  o.page_bytes = 2048;  // a power of two, but below 4096
  EXPECT_EQ(PagePool::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.page_bytes = 8192;
  o.capacity_bytes = 4096;
  pool = PagePool::Create(o);
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(pool.status().message().find("capacity_bytes"), std::string::npos);
}

TEST(PagePoolTest, RoundsCapacityDownToWholePages) {
  PagePoolOptions o;
  o.capacity_bytes = 10 * kPage + 123;
  o.page_bytes = kPage;
  auto pool = PagePool::Create(o);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->pages_total(), 10u);
  EXPECT_EQ((*pool)->capacity_bytes(), 10u * kPage);
}

TEST(PagePoolTest, AllocatesAndReturnsPagesOnDestruction) {
  auto pool = MakePool(16);
  {
    auto a = pool->Allocate(3);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->num_pages(), 3u);
    EXPECT_EQ(a->bytes(), 3u * kPage);
    EXPECT_EQ(pool->pages_free(), 13u);
    EXPECT_EQ(pool->pages_used(), 3u);
    auto b = pool->Allocate(13);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(pool->pages_free(), 0u);
    b->Release();
    EXPECT_TRUE(b->empty());
    EXPECT_EQ(pool->pages_free(), 13u);
  }
  EXPECT_EQ(pool->pages_free(), 16u);
}

TEST(PagePoolTest, ExhaustionIsResourceExhaustedAndTakesNothing) {
  auto pool = MakePool(8);
  auto a = pool->Allocate(5);
  ASSERT_TRUE(a.ok());
  auto b = pool->Allocate(4);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->pages_free(), 3u);
  auto c = pool->Allocate(9);  // more than the whole pool
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->pages_free(), 3u);
  EXPECT_TRUE(pool->Allocate(3).ok());
}

TEST(PagePoolTest, ZeroPagesIsInvalidArgument) {
  auto pool = MakePool(4);
  EXPECT_EQ(pool->Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PagePoolTest, SpansNeverShareAPage) {
  auto pool = MakePool(64);
  std::vector<PageSpan> spans;
  for (int n : {1, 7, 3, 20, 33}) {
    auto s = pool->Allocate(n);
    ASSERT_TRUE(s.ok());
    spans.push_back(*std::move(s));
  }
  std::vector<uint32_t> ids;
  for (size_t i = 0; i < spans.size(); ++i) {
    Stamp(spans[i], static_cast<uint8_t>(i + 1));
    for (size_t p = 0; p < spans[i].num_pages(); ++p) ids.push_back(spans[i].page_id(p));
  }
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end());
  EXPECT_EQ(ids.size(), 64u);
  for (size_t i = 0; i < spans.size(); ++i) EXPECT_TRUE(HasStamp(spans[i], i + 1));
}

TEST(PagePoolTest, WritesAndReadsAcrossPageBoundaries) {
  std::mt19937_64 rng(FreshSeed());
  auto pool = MakePool(32);
  // Break contiguity: take pages, free every other span, then allocate across the gaps.
  std::vector<PageSpan> hold;
  for (int i = 0; i < 16; ++i) hold.push_back(*pool->Allocate(2));
  for (int i = 0; i < 16; i += 2) hold[i].Release();
  auto span = pool->Allocate(16);
  ASSERT_TRUE(span.ok());
  std::vector<uint8_t> data(span->bytes());
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  span->Write(0, data.data(), data.size());
  for (int trial = 0; trial < 200; ++trial) {
    const uint64_t off = rng() % data.size();
    const uint64_t n = rng() % (data.size() - off + 1);
    std::vector<uint8_t> got(n);
    span->Read(off, n, got.data());
    ASSERT_TRUE(std::equal(got.begin(), got.end(), data.begin() + off)) << off << "+" << n;
    // An in-place pointer, when offered, must show the same bytes.
    if (const uint8_t* p = span->ContiguousAt(off, n)) {
      ASSERT_EQ(std::memcmp(p, data.data() + off, n), 0);
    }
  }
}

TEST(PagePoolTest, FreshPoolHandsOutContiguousRuns) {
  auto pool = MakePool(16);
  auto a = pool->Allocate(6);
  ASSERT_TRUE(a.ok());
  EXPECT_NE(a->ContiguousAt(0, a->bytes()), nullptr);
  EXPECT_EQ(a->ContiguousAt(0, a->bytes()), a->page(0));
  // A freed run that is reused whole comes back in the same order.
  const uint32_t first = a->page_id(0);
  a->Release();
  auto b = pool->Allocate(6);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->page_id(0), first);
  EXPECT_NE(b->ContiguousAt(0, b->bytes()), nullptr);
}

TEST(PagePoolTest, ReportsSplitRangesAsNotContiguous) {
  auto pool = MakePool(4);
  auto a = pool->Allocate(1);
  auto b = pool->Allocate(1);
  auto c = pool->Allocate(1);
  b->Release();
  a->Release();
  // Three pages from {a, b, the never-used last page}: two are apart from the third.
  auto d = pool->Allocate(3);
  ASSERT_TRUE(d.ok());
  bool adjacent = true;
  for (size_t i = 1; i < d->num_pages(); ++i)
    adjacent = adjacent && d->page_id(i) == d->page_id(i - 1) + 1;
  EXPECT_FALSE(adjacent);
  EXPECT_EQ(d->ContiguousAt(0, d->bytes()), nullptr);
  // Within one page a range is always contiguous.
  EXPECT_EQ(d->ContiguousAt(kPage + 10, 100), d->page(1) + 10);
}

TEST(PagePoolTest, MoveTransfersOwnership) {
  auto pool = MakePool(8);
  PageSpan a = *pool->Allocate(3);
  PageSpan b = std::move(a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(b.num_pages(), 3u);
  PageSpan c = *pool->Allocate(2);
  c = std::move(b);  // c's own two pages go back
  EXPECT_EQ(pool->pages_free(), 5u);
  c = PageSpan();
  EXPECT_EQ(pool->pages_free(), 8u);
}

// Fixed-size pages: after any mix of sizes is allocated and freed in any order, every
// free page can back one request. The freed pages are scattered all over the pool.
TEST(PagePoolTest, MixedSizesLeaveNoExternalFragmentation) {
  std::mt19937_64 rng(FreshSeed());
  constexpr uint64_t kPages = 1024;
  auto pool = MakePool(kPages);
  for (int round = 0; round < 5; ++round) {
    std::vector<PageSpan> spans;
    std::vector<uint8_t> tags;
    // Fill the pool completely with spans of 1 to 37 pages.
    while (pool->pages_free() > 0) {
      const uint64_t n = std::min<uint64_t>(1 + rng() % 37, pool->pages_free());
      auto s = pool->Allocate(n);
      ASSERT_TRUE(s.ok()) << s.status();
      spans.push_back(*std::move(s));
      tags.push_back(static_cast<uint8_t>(rng()));
      Stamp(spans.back(), tags.back());
    }
    EXPECT_EQ(pool->Allocate(1).status().code(), absl::StatusCode::kResourceExhausted);
    // Free a random half.
    std::vector<size_t> order(spans.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t i = 0; i < order.size() / 2; ++i) spans[order[i]].Release();
    const uint64_t free = pool->pages_free();
    ASSERT_GT(free, 0u);
    // One allocation of exactly the free page count succeeds; one more page does not.
    EXPECT_EQ(pool->Allocate(free + 1).status().code(), absl::StatusCode::kResourceExhausted);
    auto big = pool->Allocate(free);
    ASSERT_TRUE(big.ok()) << big.status();
    EXPECT_EQ(pool->pages_free(), 0u);
    Stamp(*big, 0xAB);
    // The survivors were not touched by the big span.
    for (size_t i = order.size() / 2; i < order.size(); ++i)
      EXPECT_TRUE(HasStamp(spans[order[i]], tags[order[i]]));
    EXPECT_TRUE(HasStamp(*big, 0xAB));
    big->Release();
    spans.clear();
    EXPECT_EQ(pool->pages_free(), kPages);
  }
}

TEST(PagePoolTest, ConcurrentAllocateAndFreeKeepCountsExact) {
  const uint64_t seed = FreshSeed();
  constexpr uint64_t kPages = 512;
  auto pool = MakePool(kPages);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      std::vector<std::pair<PageSpan, uint8_t>> held;
      for (int i = 0; i < 3000; ++i) {
        if (held.empty() || rng() % 2 == 0) {
          auto s = pool->Allocate(1 + rng() % 16);
          if (s.ok()) {
            const uint8_t tag = static_cast<uint8_t>(rng());
            Stamp(*s, tag);
            held.emplace_back(*std::move(s), tag);
          } else {
            ASSERT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
          }
        } else {
          const size_t k = rng() % held.size();
          ASSERT_TRUE(HasStamp(held[k].first, held[k].second));
          held.erase(held.begin() + k);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(pool->pages_free(), kPages);
}

TEST(PagePoolTest, HugePageAdviceAndPrefaultWork) {
  PagePoolOptions o;
  o.capacity_bytes = 8ull << 20;
  o.page_bytes = 64 * 1024;
  o.prefault = true;
  auto pool = PagePool::Create(o);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_TRUE((*pool)->huge_pages());
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*pool)->page(0)) % (2u << 20), 0u);
  auto s = (*pool)->Allocate((*pool)->pages_total());
  ASSERT_TRUE(s.ok());
  Stamp(*s, 7);
  EXPECT_TRUE(HasStamp(*s, 7));
}

}  // namespace
}  // namespace kvstash::memory
