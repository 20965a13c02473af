// Stats RPC: the per-namespace statistics HandleStats copies from the store.
#include <memory>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/v1/kvstash.pb.h"
#include "server/rpc/service.h"
#include "server/store/store.h"
#include "tests/common/store_test_util.h"

namespace kvstash::rpc {
namespace {

TEST(RpcStatsTest, ReportsEveryNamespaceLargestFirst) {
  constexpr uint32_t kPage = 4096;
  store::StoreOptions o;
  o.use_gpu = false;
  o.page_bytes = kPage;
  o.host_capacity_bytes = 256 * kPage;
  std::mt19937_64 rng(store::test_util::FreshSeed());
  const store::test_util::Chunk c = store::test_util::RandomChunk(
      rng, kernels::ChunkShape{4, 70, 2, 64, kernels::DType::kF16}, kernels::Preset::kKivi2);
  const uint64_t per = store::test_util::PagesFor(c.shape, c.config, kPage) * kPage;
  o.namespace_quota_overrides = {{"small", per}};
  absl::StatusOr<std::unique_ptr<store::Store>> s = store::Store::Create(o);
  ASSERT_TRUE(s.ok()) << s.status();
  store::Store& st = **s;
  for (uint64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(st.Put("big", {1, i}, c.shape, c.config, c.bytes()).ok());
    ASSERT_TRUE(st.Put("small", {2, i}, c.shape, c.config, c.bytes()).ok());
  }

  v1::StatsResponse r;
  HandleStats(st, ServiceOptions{}, &r);
  ASSERT_EQ(r.namespaces_size(), 2);
  EXPECT_EQ(r.namespaces_omitted(), 0u);
  EXPECT_EQ(r.quota_evictions(), 2u);
  EXPECT_EQ(r.evictions(), 2u);
  const v1::NamespaceStats& big = r.namespaces(0);
  EXPECT_EQ(big.namespace_(), "big");
  EXPECT_EQ(big.chunks(), 3u);
  EXPECT_EQ(big.allocated_bytes(), 3 * per);
  EXPECT_EQ(big.logical_bytes(), 3 * c.shape.payload_bytes());
  EXPECT_EQ(big.stored_bytes(), 3 * kernels::ComputeLayout(c.shape, c.config).total_bytes);
  EXPECT_EQ(big.quota_bytes(), 0u);
  const v1::NamespaceStats& small = r.namespaces(1);
  EXPECT_EQ(small.namespace_(), "small");
  EXPECT_EQ(small.chunks(), 1u);
  EXPECT_EQ(small.allocated_bytes(), per);
  EXPECT_EQ(small.quota_bytes(), per);
  EXPECT_EQ(small.quota_evictions(), 2u);
  EXPECT_EQ(small.capacity_evictions(), 0u);
  EXPECT_EQ(r.used_bytes(), big.allocated_bytes() + small.allocated_bytes());
}

}  // namespace
}  // namespace kvstash::rpc
