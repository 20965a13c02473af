#include "kvstash/client/chunk_key.h"

#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "xxhash.h"

namespace kvstash::client {
namespace {

// Expected values were produced independently with the Python `xxhash` package 4.1.0:
//
//   import xxhash, struct
//   def chain(prev, toks, ns):
//       buf = struct.pack('<QQ', *prev) + struct.pack('<%di' % len(toks), *toks) + ns.encode()
//       d = xxhash.xxh3_128_intdigest(buf)
//       return (d >> 64, d & ((1 << 64) - 1))
//   hex = '%016x%016x' % key
constexpr char kFirst[] = "044558a75c1e2603c5f4eb5ee766ff5d";   // [1,2,3,4], "default"
constexpr char kSecond[] = "938653051dbbf535091f66721a183034";  // then [5,6,7,8]
constexpr char kThird[] = "fca891d6220c266ae3090ff3f9d56b2a";   // then [9,10,11,12]
constexpr char kOtherNs[] = "a89e6d424bb6af099a38d4ff51594efa"; // [1,2,3,4], "other"
constexpr char kOddTokens[] = "9932006450c4252ee23a7d58ebabef1b"; // [-1, 2^31-1, 0], ""
constexpr char kRange256[] = "dcb6055b124104d7bb4c4de33e2302fb"; // range(256), "default"

TEST(ChainKeyTest, MatchesPythonXxhashFixture) {
  const std::vector<int32_t> t1 = {1, 2, 3, 4}, t2 = {5, 6, 7, 8}, t3 = {9, 10, 11, 12};
  const ChunkKey k1 = ChainKey(ChunkKey{}, t1, "default");
  const ChunkKey k2 = ChainKey(k1, t2, "default");
  const ChunkKey k3 = ChainKey(k2, t3, "default");
  EXPECT_EQ(KeyToHex(k1), kFirst);
  EXPECT_EQ(KeyToHex(k2), kSecond);
  EXPECT_EQ(KeyToHex(k3), kThird);
  EXPECT_EQ(KeyToHex(ChainKey(ChunkKey{}, t1, "other")), kOtherNs);
  const std::vector<int32_t> odd = {-1, 2147483647, 0};
  EXPECT_EQ(KeyToHex(ChainKey(ChunkKey{}, odd, "")), kOddTokens);
  std::vector<int32_t> r(256);
  std::iota(r.begin(), r.end(), 0);
  EXPECT_EQ(KeyToHex(ChainKey(ChunkKey{}, r, "default")), kRange256);
}

TEST(ChainKeyTest, MatchesXxh3OverHandBuiltBuffer) {
  const ChunkKey prev{0x0102030405060708ull, 0x1112131415161718ull};
  const std::vector<int32_t> tokens = {7, -2, 300000};
  // prev.hi LE, prev.lo LE, tokens LE, namespace.
  const uint8_t buf[] = {0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
                         0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11,
                         0x07, 0x00, 0x00, 0x00,
                         0xfe, 0xff, 0xff, 0xff,
                         0xe0, 0x93, 0x04, 0x00,
                         'n', 's', '1'};
  const XXH128_hash_t h = XXH3_128bits(buf, sizeof(buf));
  const ChunkKey k = ChainKey(prev, tokens, "ns1");
  EXPECT_EQ(k.hi, h.high64);
  EXPECT_EQ(k.lo, h.low64);
}

TEST(ChainKeyTest, ChainKeysCutsCompleteChunksOnly) {
  std::vector<int32_t> tokens(10);
  std::iota(tokens.begin(), tokens.end(), 1);
  const std::vector<ChunkKey> keys = ChainKeys(tokens, 4, "default");
  ASSERT_EQ(keys.size(), 2u);  // 10 tokens = 2 full chunks of 4 + 2 left over
  EXPECT_EQ(KeyToHex(keys[0]), kFirst);
  EXPECT_EQ(KeyToHex(keys[1]), kSecond);
  EXPECT_TRUE(ChainKeys(tokens, 0, "default").empty());
  EXPECT_TRUE(ChainKeys(tokens, 11, "default").empty());
}

TEST(ChainKeyTest, NamespaceAndOrderChangeTheKey) {
  const std::vector<int32_t> a = {1, 2}, b = {2, 1};
  EXPECT_NE(ChainKey({}, a, "x"), ChainKey({}, a, "y"));
  EXPECT_NE(ChainKey({}, a, "x"), ChainKey({}, b, "x"));
  EXPECT_NE(ChainKey({}, a, "x"), ChainKey({1, 0}, a, "x"));
}

TEST(KeyHexTest, RoundTripsRandomKeys) {
  uint64_t s = 0x1234;
  for (int i = 0; i < 100; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    const ChunkKey k{s, s * 31 + 7};
    const std::string hex = KeyToHex(k);
    ASSERT_EQ(hex.size(), 32u);
    auto back = KeyFromHex(hex);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, k);
  }
}

TEST(KeyHexTest, FormatsHiThenLoLowercase) {
  EXPECT_EQ(KeyToHex(ChunkKey{0x00000000000000ABull, 0xFEDCBA9876543210ull}),
            "00000000000000abfedcba9876543210");
  auto k = KeyFromHex("00000000000000ABFEDCBA9876543210");
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->hi, 0xABull);
  EXPECT_EQ(k->lo, 0xFEDCBA9876543210ull);
}

TEST(KeyHexTest, RejectsWrongLengthAndNonHex) {
  EXPECT_EQ(KeyFromHex("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyFromHex("abc").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyFromHex(std::string(33, 'a')).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyFromHex("0x0000000000000000000000000000ab").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyFromHex("g0000000000000000000000000000000").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvstash::client
