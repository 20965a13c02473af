// Paged KV caches laid out in one region for tests (shared memory or a CUDA IPC buffer):
//  - PagedGeometry: 2 planes per layer of num_blocks blocks, each block block_size token
//    rows of H·D 16-bit values plus padding;
//  - EngineLayout: the inference engines' own layouts (vLLM, SGLang), described by plane
//    offsets and strides as docs/api.md "Paged caches" gives them;
// and plain reference copies that move a contiguous [L][2][T][H][D] chunk in and out of
// either on the host.
#ifndef KVSTASH_TESTS_INTEGRATION_PAGED_TEST_UTIL_H_
#define KVSTASH_TESTS_INTEGRATION_PAGED_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "cli_util.h"
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

// --- Engine layouts ---------------------------------------------------------------------

// The KV layouts of the engines (docs/api.md, "Paged caches"), for L layers of H heads of D.
enum class Engine {
  kVllmNhd,                // vLLM, per layer (2, num_blocks, block_size, H, D); default strides
  kVllmHnd,                // vLLM, per layer (2, num_blocks, H, block_size, D) in memory
  kVllmBlockFirst,         // vLLM, per layer (num_blocks, 2, block_size, H, D)
  kVllmInterleavedKv,      // vLLM, per layer (num_blocks, H, block_size, 2·D): K | V per row
  kSglangTokenPool,        // SGLang, per layer K[slots, H, D] and V[slots, H, D] tensors
  kSglangTokenPoolPage1,   // the same with page size 1: a block id per token
  kHiCacheLayerFirst,      // SGLang HiCache host pool (2, L, slots, H, D)
  kHiCachePageFirst,       // SGLang HiCache host pool (2, slots, L, H, D)
  kHiCachePageFirstDirect, // SGLang HiCache host pool (2, num_pages, L, page_size, H, D)
};
inline constexpr Engine kEngines[] = {
    Engine::kVllmNhd,         Engine::kVllmHnd,           Engine::kVllmBlockFirst,
    Engine::kVllmInterleavedKv, Engine::kSglangTokenPool, Engine::kSglangTokenPoolPage1,
    Engine::kHiCacheLayerFirst, Engine::kHiCachePageFirst, Engine::kHiCachePageFirstDirect};

inline std::string EngineName(Engine e) {
  switch (e) {
    case Engine::kVllmNhd: return "VllmNhd";
    case Engine::kVllmHnd: return "VllmHnd";
    case Engine::kVllmBlockFirst: return "VllmBlockFirst";
    case Engine::kVllmInterleavedKv: return "VllmInterleavedKv";
    case Engine::kSglangTokenPool: return "SglangTokenPool";
    case Engine::kSglangTokenPoolPage1: return "SglangTokenPoolPage1";
    case Engine::kHiCacheLayerFirst: return "HiCacheLayerFirst";
    case Engine::kHiCachePageFirst: return "HiCachePageFirst";
    case Engine::kHiCachePageFirstDirect: return "HiCachePageFirstDirect";
  }
  return "?";
}

// gtest prints parameters with it.
inline void PrintTo(Engine e, std::ostream* os) { *os << EngineName(e); }

// One engine's cache in a buffer of `bytes`: 2L planes at `offsets` (layer 0 K, layer 0 V,
// ...), each `lengths` long, and the strides a PagedLayout sends (0 = the default).
struct EngineLayout {
  Engine engine{};
  uint32_t layers = 0, heads = 0, head_dim = 0, block_size = 0, num_blocks = 0;
  uint64_t bytes = 0;
  std::vector<uint64_t> offsets, lengths;
  uint64_t block_stride = 0, token_stride = 0, head_stride = 0;

  uint64_t ts() const { return token_stride != 0 ? token_stride : 2ull * heads * head_dim; }
  uint64_t hs() const { return head_stride != 0 ? head_stride : 2ull * head_dim; }
  // Byte of element (h, 0) of slot `slot` of block b in plane lx, from the buffer's start.
  uint64_t At(uint32_t lx, uint32_t b, uint32_t slot, uint32_t h) const {
    return offsets[lx] + b * block_stride + slot * ts() + h * hs();
  }
};

// The layout of `engine` with every tensor the engine would allocate placed in one buffer.
// Separate allocations (a tensor per layer) are 4 KiB apart, as allocators leave them.
inline EngineLayout MakeEngineLayout(Engine engine, uint32_t layers, uint32_t heads,
                                     uint32_t head_dim, uint32_t block_size,
                                     uint32_t num_blocks) {
  EngineLayout e;
  e.engine = engine;
  e.layers = layers, e.heads = heads, e.head_dim = head_dim;
  e.block_size = block_size, e.num_blocks = num_blocks;
  const uint64_t L = layers, H = heads, D2 = 2ull * head_dim, bs = block_size, N = num_blocks;
  const uint64_t row = H * D2, slots = N * bs, gap = 4096;
  // Plane lx at `off`, running to the end of its tensor at `end`.
  auto plane = [&](uint64_t off, uint64_t end) {
    e.offsets.push_back(off);
    e.lengths.push_back(end - off);
  };
  switch (engine) {
    case Engine::kVllmNhd:
    case Engine::kVllmHnd: {
      const uint64_t tensor = 2 * slots * row + gap;  // (2, N, ...) per layer
      for (uint64_t l = 0; l < L; ++l) {
        plane(l * tensor, l * tensor + slots * row);
        plane(l * tensor + slots * row, l * tensor + 2 * slots * row);
      }
      e.bytes = L * tensor;
      e.block_stride = bs * row;
      if (engine == Engine::kVllmHnd) e.token_stride = D2, e.head_stride = bs * D2;
      break;
    }
    case Engine::kVllmBlockFirst: {
      const uint64_t tensor = N * 2 * bs * row + gap;
      for (uint64_t l = 0; l < L; ++l) {
        plane(l * tensor, l * tensor + N * 2 * bs * row);
        plane(l * tensor + bs * row, l * tensor + N * 2 * bs * row);
      }
      e.bytes = L * tensor;
      e.block_stride = 2 * bs * row, e.token_stride = row, e.head_stride = D2;
      break;
    }
    case Engine::kVllmInterleavedKv: {
      const uint64_t tensor = N * H * bs * 2 * D2 + gap;
      for (uint64_t l = 0; l < L; ++l) {
        plane(l * tensor, l * tensor + N * H * bs * 2 * D2);
        plane(l * tensor + D2, l * tensor + N * H * bs * 2 * D2);
      }
      e.bytes = L * tensor;
      e.block_stride = H * bs * 2 * D2, e.token_stride = 2 * D2, e.head_stride = bs * 2 * D2;
      break;
    }
    case Engine::kSglangTokenPool:
    case Engine::kSglangTokenPoolPage1: {
      const uint64_t tensor = slots * row + gap;  // k_buffer[0..L), then v_buffer[0..L)
      for (uint64_t l = 0; l < L; ++l) {
        plane(l * tensor, l * tensor + slots * row);
        plane((L + l) * tensor, (L + l) * tensor + slots * row);
      }
      e.bytes = 2 * L * tensor;
      e.block_stride = bs * row, e.token_stride = row, e.head_stride = D2;
      break;
    }
    case Engine::kHiCacheLayerFirst: {
      const uint64_t half = L * slots * row;
      for (uint64_t l = 0; l < L; ++l) {
        plane(l * slots * row, (l + 1) * slots * row);
        plane(half + l * slots * row, half + (l + 1) * slots * row);
      }
      e.bytes = 2 * half;
      e.block_stride = bs * row, e.token_stride = row, e.head_stride = D2;
      break;
    }
    case Engine::kHiCachePageFirst: {
      const uint64_t half = slots * L * row;
      for (uint64_t l = 0; l < L; ++l) {
        plane(l * row, half);
        plane(half + l * row, 2 * half);
      }
      e.bytes = 2 * half;
      e.block_stride = bs * L * row, e.token_stride = L * row, e.head_stride = D2;
      break;
    }
    case Engine::kHiCachePageFirstDirect: {
      const uint64_t half = N * L * bs * row;
      for (uint64_t l = 0; l < L; ++l) {
        plane(l * bs * row, half);
        plane(half + l * bs * row, 2 * half);
      }
      e.bytes = 2 * half;
      e.block_stride = L * bs * row, e.token_stride = row, e.head_stride = D2;
      break;
    }
  }
  return e;
}

// `count` distinct block ids of [0, num_blocks) in random order.
inline std::vector<uint32_t> RandomIds(uint32_t num_blocks, uint32_t count,
                                       std::mt19937_64& rng) {
  std::vector<uint32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0u);
  std::shuffle(ids.begin(), ids.end(), rng);
  ids.resize(count);
  return ids;
}

// The client's description of the cache `e` at `base` bytes into `region`.
inline client::PagedCache MakeCache(const EngineLayout& e, const client::Region* region,
                                    uint64_t base, std::vector<uint32_t> ids,
                                    uint32_t first_slot) {
  client::PagedCache c;
  for (size_t lx = 0; lx < e.offsets.size(); ++lx) {
    c.planes.push_back({region, base + e.offsets[lx], e.lengths[lx]});
  }
  c.block_size = e.block_size;
  c.block_stride = e.block_stride;
  c.token_stride = e.token_stride;
  c.head_stride = e.head_stride;
  c.block_ids = std::move(ids);
  c.first_slot = first_slot;
  return c;
}

// The plain reference: copies contiguous [L][2][T][H][D] `flat` into (or, into_cache =
// false, out of) the buffer image `cache` laid out as `e`, tokens [0, T) from first_slot,
// one 16-bit element at a time.
inline void CopyElements(const EngineLayout& e, const std::vector<uint32_t>& ids,
                         uint32_t first_slot, uint32_t tokens, uint8_t* cache, uint8_t* flat,
                         bool into_cache) {
  for (uint32_t lx = 0; lx < 2 * e.layers; ++lx) {
    for (uint32_t t = 0; t < tokens; ++t) {
      const uint32_t s = first_slot + t;
      for (uint32_t h = 0; h < e.heads; ++h) {
        const uint64_t at = e.At(lx, ids[s / e.block_size], s % e.block_size, h);
        const uint64_t f = ((uint64_t{lx} * tokens + t) * e.heads + h) * e.head_dim;
        for (uint32_t d = 0; d < e.head_dim; ++d) {
          uint8_t* c = cache + at + 2ull * d;
          uint8_t* x = flat + 2 * (f + d);
          if (into_cache) {
            c[0] = x[0], c[1] = x[1];
          } else {
            x[0] = c[0], x[1] = c[1];
          }
        }
      }
    }
  }
}

// Where a test keeps its cache images: shared memory or a device buffer, registered with
// the daemon as `region`; write and read move bytes at an offset of it.
struct CacheBuffer {
  const client::Region* region = nullptr;
  std::function<void(uint64_t at, const std::vector<uint8_t>& bytes)> write;
  std::function<std::vector<uint8_t>(uint64_t at, uint64_t n)> read;
};

// "" when equal, else where the first difference is.
inline std::string FirstDifference(const std::vector<uint8_t>& want,
                                   const std::vector<uint8_t>& got) {
  if (want.size() != got.size()) return "sizes differ";
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] != got[i])
      return "first difference at byte " + std::to_string(i) + " of " +
             std::to_string(want.size());
  }
  return "";
}

// Checks the engine layout `e` end to end through the daemon, caches at [0, e.bytes)
// (input) and [e.bytes, 2·e.bytes) (output) of `buf`, chunks of 80 tokens of `dtype`,
// random block ids and first slots, and random bytes around the planes:
//  1. fp16 preset: a Put from the blocks stores the chunk bit for bit (plain Get), and a Get
//     into the output writes exactly the chunk's elements, no other byte.
//  2. `lossy`: a Put from the blocks stores what a contiguous Put of the same data stores,
//     and a Get of both chunks (concatenated) into the output writes the contiguous Get's
//     bytes.
//  3. A layer and head slice into a cache of the slice's geometry in the same layout.
inline void CheckEngineRoundTrip(client::Client& client, const EngineLayout& e,
                                 kernels::DType dtype, kernels::Preset lossy,
                                 const CacheBuffer& buf, std::mt19937_64& rng) {
  SCOPED_TRACE(EngineName(e.engine) + " " + std::string(kernels::DTypeName(dtype)));
  using client::ChunkKey;
  using client::Codec;
  using client::GetOptions;
  using client::PagedCache;
  using client::PutChunk;
  const kernels::ChunkShape shape{e.layers, 80, e.heads, e.head_dim, dtype};
  const uint32_t T = shape.num_tokens, bs = e.block_size;
  auto random_bytes = [&](uint64_t n) {
    std::vector<uint8_t> v(n);
    for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
    return v;
  };
  auto slot = [&] { return bs == 1 ? 0u : 1 + static_cast<uint32_t>(rng() % (bs - 1)); };
  auto blocks = [&](uint32_t first_slot, uint64_t tokens) {
    return static_cast<uint32_t>((first_slot + tokens + bs - 1) / bs);
  };

  const std::vector<uint16_t> in = cli::GeneratePayload(shape, rng());
  std::vector<uint8_t> flat(shape.payload_bytes());
  std::memcpy(flat.data(), in.data(), flat.size());
  const uint32_t put_slot = slot();
  const std::vector<uint32_t> put_ids = RandomIds(e.num_blocks, blocks(put_slot, T), rng);
  std::vector<uint8_t> image = random_bytes(e.bytes);
  CopyElements(e, put_ids, put_slot, T, image.data(), flat.data(), true);
  buf.write(0, image);
  const PagedCache put_cache = MakeCache(e, buf.region, 0, put_ids, put_slot);

  // 1. Bit-exact through the fp16 preset.
  PutChunk raw{ChunkKey{rng(), rng()}, shape, Codec::FromPreset(kernels::Preset::kFp16)};
  raw.paged = &put_cache;
  auto put = client.Put("ns", raw);
  ASSERT_TRUE(put.ok()) << put.status();
  auto plain = client.Get("ns", raw.key);
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(plain->data == std::string(flat.begin(), flat.end())) << "gathered chunk differs";
  {
    const uint32_t get_slot = slot();
    const std::vector<uint32_t> ids = RandomIds(e.num_blocks, blocks(get_slot, T), rng);
    std::vector<uint8_t> want = random_bytes(e.bytes);
    buf.write(e.bytes, want);
    const PagedCache out = MakeCache(e, buf.region, e.bytes, ids, get_slot);
    GetOptions g;
    g.output_paged = &out;
    auto got = client.Get("ns", raw.key, g);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(got->data.empty());
    CopyElements(e, ids, get_slot, T, want.data(), flat.data(), true);
    const std::string diff = FirstDifference(want, buf.read(e.bytes, e.bytes));
    EXPECT_EQ(diff, "") << "fp16 scatter";
  }

  // 2. A lossy preset: the same as a contiguous Put and Get of the same data.
  PutChunk contiguous{ChunkKey{rng(), rng()}, shape, Codec::FromPreset(lossy), flat};
  PutChunk paged{ChunkKey{rng(), rng()}, shape, Codec::FromPreset(lossy)};
  paged.paged = &put_cache;
  ASSERT_TRUE(client.Put("ns", contiguous).ok());
  put = client.Put("ns", paged);
  ASSERT_TRUE(put.ok()) << put.status();
  auto want_lossy = client.Get("ns", contiguous.key);
  ASSERT_TRUE(want_lossy.ok()) << want_lossy.status();
  auto got_lossy = client.Get("ns", paged.key);
  ASSERT_TRUE(got_lossy.ok()) << got_lossy.status();
  ASSERT_TRUE(got_lossy->data == want_lossy->data) << "paged Put stored other bytes";
  std::vector<uint8_t> lossy_flat(want_lossy->data.begin(), want_lossy->data.end());
  {
    const uint32_t get_slot = slot();
    const std::vector<uint32_t> ids = RandomIds(e.num_blocks, blocks(get_slot, 2 * T), rng);
    std::vector<uint8_t> want = random_bytes(e.bytes);
    buf.write(e.bytes, want);
    const PagedCache out = MakeCache(e, buf.region, e.bytes, ids, get_slot);
    GetOptions g;
    g.output_paged = &out;
    const std::vector<ChunkKey> keys{paged.key, contiguous.key};
    auto got = client.Get("ns", keys, g);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), 2u);
    for (uint32_t i = 0; i < 2; ++i) {
      EXPECT_EQ((*got)[i].first_token, uint64_t{T} * i);
      const uint32_t s0 = get_slot + T * i;
      const std::vector<uint32_t> sub(ids.begin() + s0 / bs, ids.end());
      CopyElements(e, sub, s0 % bs, T, want.data(), lossy_flat.data(), true);
    }
    const std::string diff = FirstDifference(want, buf.read(e.bytes, e.bytes));
    EXPECT_EQ(diff, "") << "lossy scatter";
  }

  // 3. Layers [1, 3) and heads [1, 3) into the slice's own cache of this layout.
  const EngineLayout narrow =
      MakeEngineLayout(e.engine, 2, 2, e.head_dim, e.block_size, e.num_blocks);
  const kernels::Slice slice{1, 3, 1, 3};
  const std::vector<uint16_t> part = cli::SlicePayload(shape, in, slice);
  std::vector<uint8_t> part_flat(part.size() * 2);
  std::memcpy(part_flat.data(), part.data(), part_flat.size());
  const uint32_t get_slot = slot();
  const std::vector<uint32_t> ids = RandomIds(e.num_blocks, blocks(get_slot, T), rng);
  std::vector<uint8_t> want = random_bytes(narrow.bytes);
  buf.write(e.bytes, want);
  const PagedCache out = MakeCache(narrow, buf.region, e.bytes, ids, get_slot);
  GetOptions g;
  g.slice = slice;
  g.output_paged = &out;
  auto got = client.Get("ns", raw.key, g);
  ASSERT_TRUE(got.ok()) << got.status();
  CopyElements(narrow, ids, get_slot, T, want.data(), part_flat.data(), true);
  const std::string diff = FirstDifference(want, buf.read(e.bytes, narrow.bytes));
  EXPECT_EQ(diff, "") << "slice scatter";
}

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_INTEGRATION_PAGED_TEST_UTIL_H_
