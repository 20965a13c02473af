// A paged KV cache laid out in one region for tests (shared memory or a CUDA IPC buffer):
// 2 planes per layer of num_blocks blocks, each block block_size token rows of H·D 16-bit
// values plus padding, and helpers to move a contiguous [L][2][T][H][D] chunk in and out
// of it on the host.
#ifndef KVSTASH_TESTS_INTEGRATION_PAGED_TEST_UTIL_H_
#define KVSTASH_TESTS_INTEGRATION_PAGED_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kvstash/client/client.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"

namespace kvstash::testing {

struct PagedGeometry {
  uint32_t layers = 0;
  uint32_t heads = 0;        // rows hold this many heads
  uint32_t head_dim = 0;
  uint32_t block_size = 16;
  uint32_t num_blocks = 0;
  uint64_t pad = 64;         // bytes after each block's rows (stride > rows)

  uint64_t row_bytes() const { return 2ull * heads * head_dim; }
  uint64_t stride() const { return block_size * row_bytes() + pad; }
  uint64_t plane_bytes() const { return num_blocks * stride(); }
  uint64_t bytes() const { return 2ull * layers * plane_bytes(); }
  // Byte offset of token slot s of block b in plane lx (from the cache's start).
  uint64_t RowAt(uint32_t lx, uint32_t b, uint32_t slot) const {
    return lx * plane_bytes() + b * stride() + slot * row_bytes();
  }
};

// The slice the daemon must return for `in` stored with the xquant preset, from the codec.
inline std::vector<uint8_t> XQuantOracle(const kernels::ChunkShape& shape,
                                         const std::vector<uint16_t>& in,
                                         const kernels::Slice& slice = {}) {
  auto enc = kernels::EncodeChunk(
      shape, kernels::PresetConfig(kernels::Preset::kXQuant, shape.num_layers), in);
  EXPECT_TRUE(enc.ok()) << enc.status();
  if (!enc.ok()) return {};
  std::vector<uint16_t> out;
  EXPECT_TRUE(kernels::Decode(enc->data(), enc->size(), slice, shape.dtype, &out).ok());
  std::vector<uint8_t> bytes(out.size() * 2);
  std::memcpy(bytes.data(), out.data(), bytes.size());
  return bytes;
}

// `count` distinct block ids in random order.
inline std::vector<uint32_t> RandomBlocks(const PagedGeometry& g, uint32_t count,
                                          std::mt19937_64& rng) {
  std::vector<uint32_t> ids(g.num_blocks);
  std::iota(ids.begin(), ids.end(), 0u);
  std::shuffle(ids.begin(), ids.end(), rng);
  ids.resize(count);
  return ids;
}

// The client's description of the cache at `base` bytes into `region`.
inline client::PagedCache MakeCache(const PagedGeometry& g, const client::Region* region,
                                    uint64_t base, std::vector<uint32_t> ids,
                                    uint32_t first_slot) {
  client::PagedCache c;
  for (uint32_t lx = 0; lx < 2 * g.layers; ++lx) {
    c.planes.push_back({region, base + lx * g.plane_bytes(), g.plane_bytes()});
  }
  c.block_size = g.block_size;
  c.block_stride = g.stride();
  c.block_ids = std::move(ids);
  c.first_slot = first_slot;
  return c;
}

// Copies contiguous [L][2][T][rows] `in` into (or, Scatter = false, out of) the cache image
// `cache` (host bytes laid out as PagedGeometry) for tokens [0, T) at first_slot.
inline void CopyRows(const PagedGeometry& g, const std::vector<uint32_t>& ids,
                     uint32_t first_slot, uint32_t tokens, uint8_t* cache, uint8_t* flat,
                     bool into_cache) {
  for (uint32_t lx = 0; lx < 2 * g.layers; ++lx) {
    for (uint32_t t = 0; t < tokens; ++t) {
      const uint32_t s = first_slot + t;
      uint8_t* row = cache + g.RowAt(lx, ids[s / g.block_size], s % g.block_size);
      uint8_t* f = flat + (uint64_t{lx} * tokens + t) * g.row_bytes();
      if (into_cache) {
        std::memcpy(row, f, g.row_bytes());
      } else {
        std::memcpy(f, row, g.row_bytes());
      }
    }
  }
}

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_INTEGRATION_PAGED_TEST_UTIL_H_
