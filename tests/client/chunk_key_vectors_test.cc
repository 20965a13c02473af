// The shared chunk-key vectors (tests/fixtures/chunk_keys.json), which the Python client's
// tests check too: both clients must derive byte-identical keys from the same tokens.
#include <cstdint>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvstash/client/chunk_key.h"
#include "nlohmann/json.hpp"

#ifndef KVSTASH_FIXTURES_DIR
#error "KVSTASH_FIXTURES_DIR must name tests/fixtures"
#endif

namespace kvstash::client {
namespace {

nlohmann::json LoadVectors() {
  std::ifstream in(std::string(KVSTASH_FIXTURES_DIR) + "/chunk_keys.json");
  EXPECT_TRUE(in.good()) << "cannot open chunk_keys.json under " << KVSTASH_FIXTURES_DIR;
  return nlohmann::json::parse(in);
}

TEST(ChunkKeyVectorsTest, ChainKeysMatchSharedVectors) {
  const nlohmann::json doc = LoadVectors();
  ASSERT_GE(doc["cases"].size(), 5u);
  for (const nlohmann::json& c : doc["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::vector<int32_t> tokens = c["tokens"].get<std::vector<int32_t>>();
    const auto chunk = c["chunk_tokens"].get<uint32_t>();
    const std::string ns = c["namespace"].get<std::string>();
    ChunkKey prev{};
    const std::string prev_hex = c["prev"].get<std::string>();
    if (!prev_hex.empty()) {
      absl::StatusOr<ChunkKey> parsed = KeyFromHex(prev_hex);
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      prev = *parsed;
    }
    std::vector<std::string> got;
    for (size_t i = 0; i + chunk <= tokens.size(); i += chunk) {
      prev = ChainKey(prev, std::span<const int32_t>(tokens.data() + i, chunk), ns);
      got.push_back(KeyToHex(prev));
    }
    EXPECT_EQ(got, c["keys"].get<std::vector<std::string>>());
    if (prev_hex.empty()) {
      std::vector<std::string> chained;
      for (const ChunkKey& k : ChainKeys(tokens, chunk, ns)) chained.push_back(KeyToHex(k));
      EXPECT_EQ(chained, got);
    }
  }
}

}  // namespace
}  // namespace kvstash::client
