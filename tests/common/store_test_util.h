// Helpers shared by the store's tests (tests/server/store_test.cc, tests/gpu/store_gpu_test.cc):
// random KV-like chunks, the codec oracle, and reading a chunk back from a Store.
#ifndef KVSTASH_TESTS_COMMON_STORE_TEST_UTIL_H_
#define KVSTASH_TESTS_COMMON_STORE_TEST_UTIL_H_

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"
#include "server/store/store.h"

namespace kvstash::store::test_util {

// A fresh random seed, printed so a failure can be replayed.
inline uint64_t FreshSeed() {
  const uint64_t seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^
                        std::random_device{}();
  std::printf("seed = %llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

// A chunk's input and codec configuration.
struct Chunk {
  kernels::ChunkShape shape;
  kernels::CodecConfig config;
  std::vector<uint16_t> data;  // [L][2][T][H][D] in shape.dtype
  std::span<const uint8_t> bytes() const {
    return {reinterpret_cast<const uint8_t*>(data.data()), data.size() * 2};
  }
};

// Random values with per-channel offsets and scales, like real K/V.
inline Chunk RandomChunk(std::mt19937_64& rng, const kernels::ChunkShape& shape,
                         kernels::Preset preset) {
  Chunk c;
  c.shape = shape;
  c.config = kernels::PresetConfig(preset, shape.num_layers);
  c.data.resize(shape.elements());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float offset = normal(rng) * 3;
  for (size_t i = 0; i < c.data.size(); ++i) {
    const uint32_t d = i % shape.head_dim;
    const float x = offset + (1.0f + d % 5) * normal(rng) + (d % 3 == 0 ? 4.0f : 0.0f);
    c.data[i] = shape.dtype == kernels::DType::kF16 ? kernels::FloatToF16Finite(x)
                                                    : kernels::FloatToBF16Finite(x);
  }
  return c;
}

// What a store must return for `c`: the codec's own decode of its own encoding.
inline std::vector<uint8_t> ExpectedBytes(const Chunk& c, const kernels::Slice& slice = {},
                                          kernels::DType out = kernels::DType::kF16,
                                          kernels::Impl impl = kernels::Impl::kFast) {
  auto encoded = kernels::EncodeChunk(c.shape, c.config, c.data, impl);
  EXPECT_TRUE(encoded.ok()) << encoded.status();
  if (!encoded.ok()) return {};
  std::vector<uint16_t> decoded;
  const absl::Status st =
      kernels::Decode(encoded->data(), encoded->size(), slice, out, &decoded, impl);
  EXPECT_TRUE(st.ok()) << st;
  std::vector<uint8_t> bytes(decoded.size() * 2);
  std::memcpy(bytes.data(), decoded.data(), bytes.size());
  return bytes;
}

// Reads a slice of a chunk back from `store` into a vector.
inline absl::StatusOr<std::vector<uint8_t>> GetBytes(Store& store, std::string_view ns,
                                                     const ChunkKey& key,
                                                     const kernels::Slice& slice = {},
                                                     kernels::DType out = kernels::DType::kF16) {
  std::vector<uint8_t> buf;
  auto info = store.Get(ns, key, slice, out, [&](uint64_t n) {
    buf.resize(n);
    return buf.data();
  });
  if (!info.ok()) return info.status();
  return buf;
}

// Pool pages a chunk occupies: a run for the header and one per pair section, or packed.
inline uint64_t PagesFor(const kernels::ChunkShape& shape, const kernels::CodecConfig& config,
                         uint32_t page) {
  const kernels::ChunkLayout lay = kernels::ComputeLayout(shape, config);
  uint64_t pages = (lay.header_bytes + page - 1) / page;
  for (const auto& p : lay.pairs) pages += (p.bytes + page - 1) / page;
  // A chunk is packed (stored verbatim) when that takes at most half the pages of
  // page-aligned sections (docs/store.md).
  const uint64_t packed = (lay.total_bytes + page - 1) / page;
  return 2 * packed <= pages ? packed : pages;
}

}  // namespace kvstash::store::test_util

#endif  // KVSTASH_TESTS_COMMON_STORE_TEST_UTIL_H_
