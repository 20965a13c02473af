// The per-namespace metric families: top N namespaces by allocated bytes by name, the rest
// in kv_namespace="__other__", read from a real store at scrape time.
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics/catalog.h"
#include "server/metrics/metrics.h"
#include "server/store/store.h"
#include "tests/common/store_test_util.h"

namespace kvstash::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class Fixed : public prometheus::Collectable {
 public:
  Fixed(store::StoreStats s, std::vector<store::NamespaceStats> n, StoreCollectorOptions o)
      : s_(std::move(s)), n_(std::move(n)), o_(o) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    return StoreFamilies(s_, n_, o_);
  }

 private:
  store::StoreStats s_;
  std::vector<store::NamespaceStats> n_;
  StoreCollectorOptions o_;
};

std::string Scrape(std::vector<store::NamespaceStats> namespaces, int top) {
  return SerializeText({std::make_shared<Fixed>(store::StoreStats{}, std::move(namespaces),
                                                StoreCollectorOptions{.top_namespaces = top})});
}

store::NamespaceStats Ns(std::string name, uint64_t allocated) {
  store::NamespaceStats n;
  n.name = std::move(name);
  n.allocated_bytes = allocated;
  n.chunks = allocated / 4096;
  n.stored_bytes = allocated / 2;
  n.logical_bytes = allocated * 3;
  n.quota_evictions = 1;
  n.capacity_evictions = 2;
  n.quota_bytes = allocated * 10;
  return n;
}

TEST(NamespaceMetricsTest, TopNByAllocatedBytesByNameTheRestAsOther) {
  std::vector<store::NamespaceStats> all;
  for (int i = 0; i < 20; ++i) all.push_back(Ns("tenant-" + std::to_string(i), 4096 * (i + 1)));
  const std::string text = Scrape(all, 3);
  EXPECT_THAT(text, HasSubstr("kvstash_namespaces 20"));
  for (int i : {17, 18, 19}) {
    const std::string l = "{kv_namespace=\"tenant-" + std::to_string(i) + "\"}";
    EXPECT_THAT(text, HasSubstr("kvstash_namespace_allocated_bytes" + l + " " +
                                std::to_string(4096 * (i + 1))));
    EXPECT_THAT(text, HasSubstr("kvstash_namespace_quota_bytes" + l));
  }
  EXPECT_THAT(text, Not(HasSubstr("kv_namespace=\"tenant-16\"")));
  // The other 17: allocated 4096 * (1 + ... + 17), one quota and two capacity evictions each.
  EXPECT_THAT(text, HasSubstr("kvstash_namespace_allocated_bytes{kv_namespace=\"__other__\"} " +
                              std::to_string(4096 * 17 * 18 / 2)));
  EXPECT_THAT(text, HasSubstr("kvstash_namespace_chunks{kv_namespace=\"__other__\"} 153"));
  EXPECT_THAT(text, HasSubstr(
      "kvstash_namespace_evictions_total{kv_namespace=\"__other__\",reason=\"quota\"} 17"));
  EXPECT_THAT(text, HasSubstr(
      "kvstash_namespace_evictions_total{kv_namespace=\"__other__\",reason=\"capacity\"} 34"));
  EXPECT_THAT(text, HasSubstr(
      "kvstash_namespace_evictions_total{kv_namespace=\"tenant-19\",reason=\"capacity\"} 2"));
  EXPECT_THAT(text, Not(HasSubstr("kvstash_namespace_quota_bytes{kv_namespace=\"__other__\"")));
  // Bounded: N named series plus __other__ per family.
  size_t series = 0;
  for (size_t at = 0; (at = text.find("\nkvstash_namespace_chunks{", at)) != std::string::npos;
       ++at)
    ++series;
  EXPECT_EQ(series, 4u);
}

TEST(NamespaceMetricsTest, NoNamespacesStillExportsEveryFamily) {
  const std::string text = Scrape({}, 16);
  for (const MetricDef& d : {kNamespaces, kNamespaceChunks, kNamespaceAllocatedBytes,
                             kNamespaceStoredBytes, kNamespaceLogicalBytes,
                             kNamespaceQuotaBytes, kNamespaceEvictions}) {
    EXPECT_THAT(text, HasSubstr("# TYPE " + std::string(d.name) + " ")) << d.name;
  }
  EXPECT_THAT(text, HasSubstr("kvstash_namespace_chunks{kv_namespace=\"__other__\"} 0"));
}

TEST(NamespaceMetricsTest, ANamespaceSpelledLikeTheBucketIsCountedInIt) {
  const std::string text = Scrape({Ns("__other__", 1 << 20), Ns("a", 4096)}, 16);
  EXPECT_THAT(text, HasSubstr("kvstash_namespace_allocated_bytes{kv_namespace=\"a\"} 4096"));
  EXPECT_THAT(text,
              HasSubstr("kvstash_namespace_allocated_bytes{kv_namespace=\"__other__\"} 1048576"));
  size_t n = 0;
  for (size_t at = 0; (at = text.find("kv_namespace=\"__other__\"}", at)) != std::string::npos;
       ++at)
    ++n;
  EXPECT_EQ(n, 4u);  // chunks, allocated, stored, logical: once each; no quota series
}

TEST(NamespaceMetricsTest, LabelValuesAreValidUtf8) {
  const std::string text = Scrape({Ns(std::string("caf\xC3\xA9-\xFF\"x", 9), 4096)}, 16);
  EXPECT_THAT(text, HasSubstr("kv_namespace=\"caf\xC3\xA9-\xEF\xBF\xBD\\\"x\""));
}

TEST(NamespaceMetricsTest, StoreCollectorReadsTheStore) {
  constexpr uint32_t kPage = 4096;
  store::StoreOptions o;
  o.use_gpu = false;
  o.page_bytes = kPage;
  o.host_capacity_bytes = 64 * kPage;
  o.namespace_quota_bytes = 2 * kPage;
  absl::StatusOr<std::unique_ptr<store::Store>> s = store::Store::Create(o);
  ASSERT_TRUE(s.ok()) << s.status();
  std::mt19937_64 rng(store::test_util::FreshSeed());
  const store::test_util::Chunk c = store::test_util::RandomChunk(
      rng, kernels::ChunkShape{1, 4, 1, 64, kernels::DType::kF16}, kernels::Preset::kFp16);
  for (uint64_t i = 0; i < 5; ++i) {
    ASSERT_TRUE((*s)->Put("alpha", {0, i}, c.shape, c.config, c.bytes()).ok());
  }
  auto collector = std::make_shared<StoreCollector>(s->get(), StoreCollectorOptions{});
  const std::string text = SerializeText({collector});
  EXPECT_THAT(text, HasSubstr("kvstash_namespace_chunks{kv_namespace=\"alpha\"} 2"));
  EXPECT_THAT(text, HasSubstr("kvstash_namespace_allocated_bytes{kv_namespace=\"alpha\"} 8192"));
  EXPECT_THAT(text, HasSubstr("kvstash_namespace_quota_bytes{kv_namespace=\"alpha\"} 8192"));
  EXPECT_THAT(text, HasSubstr(
      "kvstash_namespace_evictions_total{kv_namespace=\"alpha\",reason=\"quota\"} 3"));
  EXPECT_THAT(text, HasSubstr("kvstash_evictions_total{tier=\"host\"} 3"));
}

}  // namespace
}  // namespace kvstash::metrics
