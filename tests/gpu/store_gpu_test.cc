// The store's GPU tier against the CPU codec: what a GPU Put then Get returns must equal,
// byte for byte, the CPU reference's decode of the CPU reference's encode, whichever tier
// holds the chunk (device pool, demoted to the host pool, promoted back, or stored in the
// host pool because the device pool could not take it). Tests that need a device skip
// cleanly without one.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"
#include "server/store/store.h"
#include "server/store/store_impl.h"
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
using test_util::RandomChunk;

constexpr uint32_t kPage = 16 * 1024;
constexpr char kNs[] = "model-gpu";

bool HaveDevice() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

#define REQUIRE_DEVICE()              \
  if (!HaveDevice()) {                \
    GTEST_SKIP() << "no CUDA device"; \
  }

ChunkShape Shape(uint32_t layers = 5, DType dtype = DType::kF16, uint32_t tokens = 70,
                 uint32_t heads = 3, uint32_t head_dim = 64) {
  ChunkShape s;
  s.num_layers = layers;  // odd: the last pair holds one layer
  s.num_tokens = tokens;  // 2 quantized groups and a 6-token tail
  s.num_heads = heads;
  s.head_dim = head_dim;
  s.dtype = dtype;
  return s;
}

// The oracle: the CPU reference's decode of the CPU reference's encode.
std::vector<uint8_t> Expected(const Chunk& c, const Slice& slice, DType out_dtype) {
  return test_util::ExpectedBytes(c, slice, out_dtype, kernels::Impl::kReference);
}

absl::StatusOr<std::vector<uint8_t>> GetBytes(Store& store, const ChunkKey& key,
                                              const Slice& slice = {},
                                              DType out_dtype = DType::kF16,
                                              std::string_view ns = kNs) {
  return test_util::GetBytes(store, ns, key, slice, out_dtype);
}

uint64_t PagesFor(const ChunkShape& shape, const CodecConfig& config) {
  return test_util::PagesFor(shape, config, kPage);
}

StoreOptions Options(uint64_t gpu_capacity_bytes = 64ull << 20) {
  StoreOptions o;
  o.host_capacity_bytes = 64ull << 20;
  o.page_bytes = kPage;
  o.num_shards = 4;
  o.gpu_devices = {0};
  o.gpu_capacity_bytes = gpu_capacity_bytes;
  o.gpu_streams = 4;
  o.gpu_staging_bytes = 64 << 10;  // small, so multi-piece staging is exercised
  o.gpu_promote_on_read = false;
  return o;
}

std::unique_ptr<Store> MakeStore(const StoreOptions& o) {
  absl::StatusOr<std::unique_ptr<Store>> s = Store::Create(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

class StoreGpuTest : public ::testing::Test {
 protected:
  std::mt19937_64 rng_{FreshSeed()};
};

TEST_F(StoreGpuTest, UsesTheGpuTierOnlyWhenADeviceIsVisible) {
  StoreOptions o = Options();
  std::unique_ptr<Store> store = MakeStore(o);
  ASSERT_NE(store, nullptr);
  const StoreStats st = store->Stats();
  if (!HaveDevice()) {
    EXPECT_TRUE(st.gpus.empty());
    EXPECT_NE(st.codec_path, "cuda");
  } else {
    ASSERT_EQ(st.gpus.size(), 1u);
    EXPECT_EQ(st.codec_path, "cuda");
    EXPECT_EQ(st.gpus[0].capacity_bytes, o.gpu_capacity_bytes);
    EXPECT_TRUE(st.gpus[0].healthy);
    std::printf("device 0: %s\n", st.gpus[0].name.c_str());
  }
  // Either way Put and Get work.
  const Chunk c = RandomChunk(rng_, Shape(), Preset::kXQuant);
  ASSERT_TRUE(store->Put(kNs, {1, 2}, c.shape, c.config, c.bytes()).ok());
  absl::StatusOr<std::vector<uint8_t>> got = GetBytes(*store, {1, 2});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Expected(c, {}, DType::kF16));
  o.use_gpu = false;
  PutOptions po;
  po.device = 0;
  ASSERT_TRUE(store->Put(kNs, {1, 3}, c.shape, c.config, c.bytes(), po).ok());
  std::unique_ptr<Store> host_only = MakeStore(o);
  ASSERT_NE(host_only, nullptr);
  EXPECT_TRUE(host_only->Stats().gpus.empty());
  // Without GPU tiers a requested device is ignored.
  po.device = 3;
  ASSERT_TRUE(host_only->Put(kNs, {1, 2}, c.shape, c.config, c.bytes(), po).ok());
  got = GetBytes(*host_only, {1, 2});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Expected(c, {}, DType::kF16));
}

TEST_F(StoreGpuTest, PutThenGetMatchesCpuCodecBytes) {
  REQUIRE_DEVICE();
  std::unique_ptr<Store> store = MakeStore(Options());
  ASSERT_NE(store, nullptr);
  uint64_t n = 0;
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (Preset preset : {Preset::kXQuant, Preset::kKivi2, Preset::kAsymKv15, Preset::kFp16}) {
      for (uint32_t head_dim : {64u, 128u, 96u}) {
        const Chunk c = RandomChunk(rng_, Shape(5, dtype, 70, 3, head_dim), preset);
        const ChunkKey key{n, 7};
        absl::StatusOr<ChunkInfo> put = store->Put(kNs, key, c.shape, c.config, c.bytes());
        ASSERT_TRUE(put.ok()) << put.status();
        ++n;
        for (DType out : {DType::kF16, DType::kBF16}) {
          absl::StatusOr<std::vector<uint8_t>> got = GetBytes(*store, key, {}, out);
          ASSERT_TRUE(got.ok()) << got.status();
          EXPECT_EQ(*got, Expected(c, {}, out))
              << "dtype " << int(dtype) << " preset " << int(preset) << " D " << head_dim;
        }
      }
    }
  }
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.gpu_chunks, n);
  EXPECT_EQ(st.host_chunks, 0u);
  EXPECT_EQ(st.pages_used, 0u);  // nothing in the host tier
  EXPECT_GT(st.gpu_used_bytes, 0u);
  EXPECT_EQ(st.demotions, 0u);
}

TEST_F(StoreGpuTest, HeadAndLayerSlicesMatchCpuCodec) {
  REQUIRE_DEVICE();
  std::unique_ptr<Store> store = MakeStore(Options());
  ASSERT_NE(store, nullptr);
  const Chunk c = RandomChunk(rng_, Shape(7, DType::kBF16, 100, 4, 128), Preset::kXQuant);
  ASSERT_TRUE(store->Put(kNs, {9, 9}, c.shape, c.config, c.bytes()).ok());
  const Slice slices[] = {{0, 0, 0, 0}, {1, 2, 0, 0}, {3, 6, 1, 3}, {6, 7, 3, 4},
                          {0, 7, 2, 3}, {5, 0, 0, 1}, {2, 5, 0, 4}};
  for (const Slice& s : slices) {
    for (DType out : {DType::kF16, DType::kBF16}) {
      absl::StatusOr<std::vector<uint8_t>> got = GetBytes(*store, {9, 9}, s, out);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, Expected(c, s, out)) << "layers [" << s.layer_begin << ", "
                                           << s.layer_end << ") heads [" << s.head_begin
                                           << ", " << s.head_end << ")";
    }
  }
  absl::StatusOr<std::vector<uint8_t>> bad = GetBytes(*store, {9, 9}, {3, 9, 0, 0});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreGpuTest, DemotesLeastRecentlyReadChunksUnderTinyGpuCapacity) {
  REQUIRE_DEVICE();
  const ChunkShape shape = Shape(5, DType::kF16, 70);
  const CodecConfig config = kernels::PresetConfig(Preset::kXQuant, shape.num_layers);
  const uint64_t per_chunk = PagesFor(shape, config);
  StoreOptions o = Options(2 * per_chunk * kPage);  // room for two chunks
  std::unique_ptr<Store> store = MakeStore(o);
  ASSERT_NE(store, nullptr);
  std::vector<Chunk> chunks;
  for (uint64_t i = 0; i < 6; ++i) {
    chunks.push_back(RandomChunk(rng_, shape, Preset::kXQuant));
    ASSERT_TRUE(store->Put(kNs, {i, 1}, shape, config, chunks.back().bytes()).ok());
    // Reading chunk 0 keeps it the most recently read: it stays on the GPU.
    ASSERT_TRUE(GetBytes(*store, {0, 1}).ok());
  }
  StoreStats st = store->Stats();
  EXPECT_EQ(st.chunks, 6u);
  EXPECT_EQ(st.gpu_chunks, 2u);
  EXPECT_EQ(st.host_chunks, 4u);
  EXPECT_EQ(st.demotions, 4u);
  EXPECT_EQ(st.evictions, 0u);
  EXPECT_LE(st.gpu_used_bytes, st.gpu_capacity_bytes);
  // Every chunk reads back exactly, from whichever tier holds it (host-tier reads decode
  // on the CPU; promotion is off here, so the tiers do not change).
  for (uint64_t i = 0; i < 6; ++i) {
    absl::StatusOr<std::vector<uint8_t>> got = GetBytes(*store, {i, 1});
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, Expected(chunks[i], {}, DType::kF16)) << "chunk " << i;
    absl::StatusOr<std::vector<uint8_t>> part = GetBytes(*store, {i, 1}, {1, 4, 1, 3});
    ASSERT_TRUE(part.ok()) << part.status();
    EXPECT_EQ(*part, Expected(chunks[i], {1, 4, 1, 3}, DType::kF16)) << "chunk " << i;
  }
  st = store->Stats();
  EXPECT_EQ(st.gpu_chunks, 2u);
  EXPECT_EQ(st.promotions, 0u);
}

TEST_F(StoreGpuTest, PromotesAHostTierChunkIntoFreeGpuPagesWhenRead) {
  REQUIRE_DEVICE();
  const ChunkShape shape = Shape(5, DType::kF16, 70);
  const CodecConfig config = kernels::PresetConfig(Preset::kXQuant, shape.num_layers);
  StoreOptions o = Options(PagesFor(shape, config) * kPage);  // room for one chunk
  o.gpu_promote_on_read = true;
  std::unique_ptr<Store> store = MakeStore(o);
  ASSERT_NE(store, nullptr);
  const Chunk a = RandomChunk(rng_, shape, Preset::kXQuant);
  const Chunk b = RandomChunk(rng_, shape, Preset::kXQuant);
  ASSERT_TRUE(store->Put(kNs, {1, 0}, shape, config, a.bytes()).ok());
  ASSERT_TRUE(store->Put(kNs, {2, 0}, shape, config, b.bytes()).ok());  // demotes a
  EXPECT_EQ(store->Stats().demotions, 1u);
  // The GPU is full: reading a decodes it from the host tier and does not promote it.
  absl::StatusOr<std::vector<uint8_t>> got = GetBytes(*store, {1, 0});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Expected(a, {}, DType::kF16));
  EXPECT_EQ(store->Stats().promotions, 0u);
  ASSERT_TRUE(store->Delete(kNs, {2, 0}).ok());
  // Now there is room: the read promotes it, and the next read decodes on the GPU.
  got = GetBytes(*store, {1, 0});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Expected(a, {}, DType::kF16));
  StoreStats st = store->Stats();
  EXPECT_EQ(st.promotions, 1u);
  EXPECT_EQ(st.gpu_chunks, 1u);
  EXPECT_EQ(st.host_chunks, 0u);
  EXPECT_EQ(st.pages_used, 0u);
  got = GetBytes(*store, {1, 0}, {2, 5, 0, 2}, DType::kBF16);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Expected(a, {2, 5, 0, 2}, DType::kBF16));
}

TEST_F(StoreGpuTest, FallsBackToHostTierWhenGpuPoolCannotTakeTheChunk) {
  REQUIRE_DEVICE();
  const ChunkShape shape = Shape(5, DType::kBF16, 70);
  const CodecConfig config = kernels::PresetConfig(Preset::kKivi2, shape.num_layers);
  // One page short of the chunk: the device pool can never hold it.
  StoreOptions o = Options((PagesFor(shape, config) - 1) * kPage);
  std::unique_ptr<Store> store = MakeStore(o);
  ASSERT_NE(store, nullptr);
  const Chunk c = RandomChunk(rng_, shape, Preset::kKivi2);
  absl::StatusOr<ChunkInfo> put = store->Put(kNs, {5, 5}, shape, config, c.bytes());
  ASSERT_TRUE(put.ok()) << put.status();
  StoreStats st = store->Stats();
  EXPECT_EQ(st.gpu_fallbacks, 1u);
  EXPECT_EQ(st.host_chunks, 1u);
  EXPECT_EQ(st.gpu_chunks, 0u);
  EXPECT_EQ(st.gpu_used_bytes, 0u);
  EXPECT_TRUE(st.gpus[0].healthy);
  absl::StatusOr<std::vector<uint8_t>> got = GetBytes(*store, {5, 5}, {}, DType::kBF16);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Expected(c, {}, DType::kBF16));
}

// GetDeviceMany (a multi-key restore from the host tier into device memory, as a Get into
// a CUDA IPC region runs it): every chunk's bytes equal the CPU codec's, whatever the
// slice, output dtype and output adjacency; a chunk whose section fails its checksum is
// DataLoss with its window untouched while the others still decode; a missing key is
// NotFound; keys it cannot batch are left to GetDevice.
TEST_F(StoreGpuTest, BatchedHostTierRestoreMatchesCpuCodecAndFlagsACorruptChunk) {
  REQUIRE_DEVICE();
  // A one-page device pool: every chunk falls back to the host tier.
  std::unique_ptr<Store> store = MakeStore(Options(kPage));
  ASSERT_NE(store, nullptr);
  auto* impl = dynamic_cast<internal::StoreImpl*>(store.get());
  ASSERT_NE(impl, nullptr);
  constexpr int kChunks = 11;  // three launch groups, the last one partial
  struct Case {
    DType dtype;
    Preset preset;
    Slice slice;
    DType out;
  };
  const Case cases[] = {
      {DType::kF16, Preset::kXQuant, {}, DType::kF16},
      {DType::kBF16, Preset::kKivi2, {1, 4, 0, 0}, DType::kF16},
      {DType::kF16, Preset::kKivi2, {0, 0, 1, 3}, DType::kBF16},
      {DType::kF16, Preset::kAsymKv15, {3, 5, 0, 2}, DType::kF16},
  };
  uint64_t next_key = 100;
  for (const Case& cs : cases) {
    SCOPED_TRACE(::testing::Message() << "preset " << int(cs.preset) << " layers ["
                                      << cs.slice.layer_begin << ", " << cs.slice.layer_end
                                      << ")");
    const ChunkShape shape = Shape(5, cs.dtype, 70, 3, 64);
    std::vector<Chunk> chunks;
    std::vector<ChunkKey> keys;
    for (int i = 0; i < kChunks; ++i) {
      chunks.push_back(RandomChunk(rng_, shape, cs.preset));
      keys.push_back({next_key++, 9});
      absl::StatusOr<ChunkInfo> put =
          store->Put(kNs, keys.back(), shape, chunks.back().config, chunks.back().bytes());
      ASSERT_TRUE(put.ok()) << put.status();
    }
    keys.push_back({next_key++, 9});  // never stored
    const int corrupt = 6;
    const absl::StatusOr<kernels::Slice> resolved = kernels::ResolveSlice(shape, cs.slice);
    ASSERT_TRUE(resolved.ok());
    ASSERT_TRUE(impl->CorruptSectionForTest(kNs, keys[corrupt],
                                            kernels::PairsForSlice(*resolved).last)
                    .ok());
    const uint64_t bytes = kernels::DecodedBytes(shape, *resolved);
    // Windows back to back, except a 256-byte gap after chunk 2 (a launch breaks there).
    std::vector<uint64_t> at;
    uint64_t end = 0;
    for (size_t i = 0; i < keys.size(); ++i) {
      at.push_back(end);
      end += bytes + (i == 2 ? 256 : 0);
    }
    void* dev = nullptr;
    ASSERT_EQ(cudaMalloc(&dev, end), cudaSuccess);
    ASSERT_EQ(cudaMemset(dev, 0xAB, end), cudaSuccess);
    std::vector<DType> outs(keys.size(), cs.out);
    std::vector<DeviceTensor> windows(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      windows[i].tier = 0;
      windows[i].data = static_cast<uint8_t*>(dev) + at[i];
      windows[i].capacity = bytes;
    }
    std::vector<std::optional<absl::StatusOr<ChunkInfo>>> results(keys.size());
    store->GetDeviceMany(kNs, keys, cs.slice, outs, windows, results);
    std::vector<uint8_t> host(end);
    ASSERT_EQ(cudaMemcpy(host.data(), dev, end, cudaMemcpyDeviceToHost), cudaSuccess);
    cudaFree(dev);
    for (int i = 0; i < kChunks; ++i) {
      ASSERT_TRUE(results[i].has_value()) << i;
      const std::vector<uint8_t> got(host.begin() + at[i], host.begin() + at[i] + bytes);
      if (i == corrupt) {
        EXPECT_EQ(results[i]->status().code(), absl::StatusCode::kDataLoss) << results[i]->status();
        EXPECT_EQ(got, std::vector<uint8_t>(bytes, 0xAB)) << "the corrupt chunk wrote bytes";
        continue;
      }
      ASSERT_TRUE(results[i]->ok()) << i << ": " << results[i]->status();
      EXPECT_EQ((*results[i])->shape, shape);
      EXPECT_TRUE(got == Expected(chunks[i], cs.slice, cs.out)) << "chunk " << i;
    }
    ASSERT_TRUE(results[kChunks].has_value());
    EXPECT_EQ(results[kChunks]->status().code(), absl::StatusCode::kNotFound);
    // The single-key path reports the same corruption.
    DeviceTensor one = windows[0];
    void* dev1 = nullptr;
    ASSERT_EQ(cudaMalloc(&dev1, bytes), cudaSuccess);
    one.data = static_cast<uint8_t*>(dev1);
    EXPECT_EQ(store->GetDevice(kNs, keys[corrupt], cs.slice, cs.out, one).status().code(),
              absl::StatusCode::kDataLoss);
    cudaFree(dev1);
  }
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.gpu_chunks, 0u);
  EXPECT_TRUE(st.gpus[0].healthy);
  // Paged windows GetDevice would refuse (here: no planes) are left to it.
  std::vector<std::optional<absl::StatusOr<ChunkInfo>>> results(2);
  std::vector<DeviceTensor> paged(2);
  paged[0].tier = paged[1].tier = 0;
  const std::vector<ChunkKey> two = {{100, 9}, {101, 9}};
  const std::vector<DType> f16(2, DType::kF16);
  store->GetDeviceMany(kNs, two, {}, f16, paged, results);
  EXPECT_FALSE(results[0].has_value());
  EXPECT_FALSE(results[1].has_value());
  // Nor raw (fp16-preset) chunks.
  const ChunkShape shape = Shape(5, DType::kF16, 70, 3, 64);
  const std::vector<ChunkKey> raw = {{1, 10}, {2, 10}};
  for (const ChunkKey& k : raw) {
    const Chunk c = RandomChunk(rng_, shape, Preset::kFp16);
    ASSERT_TRUE(store->Put(kNs, k, shape, c.config, c.bytes()).ok());
  }
  void* dev = nullptr;
  const uint64_t bytes = shape.payload_bytes();
  ASSERT_EQ(cudaMalloc(&dev, 2 * bytes), cudaSuccess);
  std::vector<DeviceTensor> contiguous(2);
  for (int i = 0; i < 2; ++i) {
    contiguous[i].tier = 0;
    contiguous[i].data = static_cast<uint8_t*>(dev) + i * bytes;
    contiguous[i].capacity = bytes;
  }
  results.assign(2, std::nullopt);
  store->GetDeviceMany(kNs, raw, {}, f16, contiguous, results);
  cudaFree(dev);
  EXPECT_FALSE(results[0].has_value());
  EXPECT_FALSE(results[1].has_value());
}

// GetDeviceMany into a paged (strided) output, as the transformers prefix cache restores:
// one dense [l1-l0][2][h1-h0][Ttot][D] tensor described as a single block (token_stride
// D·2, head_stride Ttot·D·2), chunk c at slots [c·T, (c+1)·T). Every chunk's tokens equal
// the CPU codec's; a corrupt chunk is DataLoss with its slots untouched while the others
// decode; a missing key is NotFound and writes nothing into the slots it was given.
TEST_F(StoreGpuTest, BatchedHostTierRestoreIntoADenseStridedPagedOutputMatchesCpuCodec) {
  REQUIRE_DEVICE();
  std::unique_ptr<Store> store = MakeStore(Options(kPage));  // every chunk in the host tier
  ASSERT_NE(store, nullptr);
  auto* impl = dynamic_cast<internal::StoreImpl*>(store.get());
  ASSERT_NE(impl, nullptr);
  constexpr int kChunks = 11;  // three launch groups over two copy streams, the last partial
  struct Case {
    DType dtype;
    Preset preset;
    Slice slice;
    DType out;
  };
  const Case cases[] = {
      {DType::kF16, Preset::kXQuant, {}, DType::kF16},
      {DType::kBF16, Preset::kKivi2, {1, 4, 1, 3}, DType::kBF16},
      {DType::kF16, Preset::kAsymKv15, {3, 5, 0, 2}, DType::kBF16},
  };
  uint64_t next_key = 500;
  for (const Case& cs : cases) {
    SCOPED_TRACE(::testing::Message() << "preset " << int(cs.preset) << " layers ["
                                      << cs.slice.layer_begin << ", " << cs.slice.layer_end
                                      << ")");
    const ChunkShape shape = Shape(5, cs.dtype, 70, 3, 64);
    std::vector<Chunk> chunks;
    std::vector<ChunkKey> keys;
    for (int i = 0; i < kChunks; ++i) {
      chunks.push_back(RandomChunk(rng_, shape, cs.preset));
      keys.push_back({next_key++, 11});
      ASSERT_TRUE(
          store->Put(kNs, keys.back(), shape, chunks.back().config, chunks.back().bytes()).ok());
    }
    keys.push_back({next_key++, 11});  // never stored; given the last chunk's slots
    const int corrupt = 5;
    const absl::StatusOr<kernels::Slice> resolved = kernels::ResolveSlice(shape, cs.slice);
    ASSERT_TRUE(resolved.ok());
    ASSERT_TRUE(impl->CorruptSectionForTest(kNs, keys[corrupt],
                                            kernels::PairsForSlice(*resolved).first)
                    .ok());
    const uint32_t ls = resolved->layer_end - resolved->layer_begin;
    const uint32_t hs = resolved->head_end - resolved->head_begin;
    const uint64_t T = shape.num_tokens, D = shape.head_dim;
    const uint64_t total = T * keys.size();         // Ttot slots
    const uint64_t plane = uint64_t{hs} * total * D * 2;  // [h1-h0][Ttot][D] 16-bit
    const uint64_t dense = 2ull * ls * plane;
    void* dev = nullptr;
    ASSERT_EQ(cudaMalloc(&dev, dense), cudaSuccess);
    ASSERT_EQ(cudaMemset(dev, 0xAB, dense), cudaSuccess);
    std::vector<DeviceTensor> windows(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      DeviceTensor& w = windows[i];
      w.tier = 0;
      for (uint32_t lx = 0; lx < 2 * ls; ++lx) {
        w.planes.push_back(static_cast<uint8_t*>(dev) + lx * plane);
      }
      w.block_ids = {0};
      w.block_size = static_cast<uint32_t>(total);
      w.first_slot = static_cast<uint32_t>(i * T);
      w.heads = hs;
      w.head_dim = shape.head_dim;
      w.block_stride = plane;
      w.token_stride = 2 * D;
      w.head_stride = total * D * 2;
    }
    std::vector<DType> outs(keys.size(), cs.out);
    std::vector<std::optional<absl::StatusOr<ChunkInfo>>> results(keys.size());
    store->GetDeviceMany(kNs, keys, cs.slice, outs, windows, results);
    std::vector<uint8_t> host(dense);
    ASSERT_EQ(cudaMemcpy(host.data(), dev, dense, cudaMemcpyDeviceToHost), cudaSuccess);
    // Key i's tokens gathered back into the codec's [l1-l0][2][T][h1-h0][D].
    auto gathered = [&](size_t i) {
      std::vector<uint8_t> flat(2ull * ls * T * hs * D * 2);
      for (uint64_t lx = 0; lx < 2ull * ls; ++lx) {
        for (uint64_t t = 0; t < T; ++t) {
          for (uint64_t h = 0; h < hs; ++h) {
            std::memcpy(flat.data() + ((lx * T + t) * hs + h) * D * 2,
                        host.data() + lx * plane + (h * total + i * T + t) * D * 2, D * 2);
          }
        }
      }
      return flat;
    };
    const std::vector<uint8_t> untouched(2ull * ls * T * hs * D * 2, 0xAB);
    for (int i = 0; i < kChunks; ++i) {
      ASSERT_TRUE(results[i].has_value()) << "chunk " << i << " was not batched";
      if (i == corrupt) {
        EXPECT_EQ(results[i]->status().code(), absl::StatusCode::kDataLoss)
            << results[i]->status();
        EXPECT_TRUE(gathered(i) == untouched) << "the corrupt chunk wrote bytes";
        continue;
      }
      ASSERT_TRUE(results[i]->ok()) << i << ": " << results[i]->status();
      EXPECT_EQ((*results[i])->shape, shape);
      EXPECT_TRUE(gathered(i) == Expected(chunks[i], cs.slice, cs.out)) << "chunk " << i;
    }
    ASSERT_TRUE(results[kChunks].has_value());
    EXPECT_EQ(results[kChunks]->status().code(), absl::StatusCode::kNotFound);
    EXPECT_TRUE(gathered(kChunks) == untouched) << "the missing key's slots were written";
    // The single-key path reports the same corruption on the same window.
    EXPECT_EQ(store->GetDevice(kNs, keys[corrupt], cs.slice, cs.out, windows[corrupt])
                  .status()
                  .code(),
              absl::StatusCode::kDataLoss);
    cudaFree(dev);
  }
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.gpu_chunks, 0u);
  EXPECT_TRUE(st.gpus[0].healthy);
}

TEST_F(StoreGpuTest, RejectsNonFiniteInputOnTheGpuAndStaysHealthy) {
  REQUIRE_DEVICE();
  std::unique_ptr<Store> store = MakeStore(Options());
  ASSERT_NE(store, nullptr);
  Chunk c = RandomChunk(rng_, Shape(), Preset::kXQuant);
  c.data[c.data.size() / 2] = 0x7E00;  // fp16 NaN
  absl::StatusOr<ChunkInfo> put = store->Put(kNs, {3, 3}, c.shape, c.config, c.bytes());
  EXPECT_EQ(put.status().code(), absl::StatusCode::kInvalidArgument) << put.status();
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.chunks, 0u);
  EXPECT_EQ(st.gpu_used_bytes, 0u);
  EXPECT_TRUE(st.gpus[0].healthy);
  PutOptions po;
  po.device = 1;
  put = store->Put(kNs, {3, 4}, c.shape, c.config, c.bytes(), po);
  EXPECT_EQ(put.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreGpuTest, ConcurrentPutsAndGetsFromFourThreadsStayExact) {
  REQUIRE_DEVICE();
  const ChunkShape shape = Shape(4, DType::kF16, 96, 2, 128);
  const CodecConfig config = kernels::PresetConfig(Preset::kXQuant, shape.num_layers);
  // Room for about 6 of the 32 chunks: demotions run while other threads read.
  StoreOptions o = Options(6 * PagesFor(shape, config) * kPage);
  o.gpu_promote_on_read = true;
  std::unique_ptr<Store> store = MakeStore(o);
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 4, kPerThread = 8;
  std::vector<Chunk> chunks;
  std::vector<std::vector<uint8_t>> expected;
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    chunks.push_back(RandomChunk(rng_, shape, Preset::kXQuant));
    expected.push_back(Expected(chunks.back(), {}, DType::kF16));
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (int j = 0; j < kPerThread; ++j) {
          const int i = t * kPerThread + j;
          const ChunkKey key{static_cast<uint64_t>(i), 42};
          if (round == 0 && !store->Put(kNs, key, shape, config, chunks[i].bytes()).ok()) {
            ++failures;
          }
          // Read this chunk and one of another thread's (which may be absent yet).
          absl::StatusOr<std::vector<uint8_t>> got = GetBytes(*store, key);
          if (!got.ok() || *got != expected[i]) ++failures;
          const int other = (i + kPerThread) % (kThreads * kPerThread);
          got = GetBytes(*store, {static_cast<uint64_t>(other), 42});
          if (got.ok() ? *got != expected[other] : !absl::IsNotFound(got.status())) {
            ++failures;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.chunks, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_EQ(st.gpu_chunks + st.host_chunks, st.chunks);
  EXPECT_GT(st.demotions, 0u);
  EXPECT_LE(st.gpu_used_bytes, st.gpu_capacity_bytes);
  EXPECT_TRUE(st.gpus[0].healthy);
  std::printf("demotions %llu promotions %llu gpu chunks %llu\n",
              (unsigned long long)st.demotions, (unsigned long long)st.promotions,
              (unsigned long long)st.gpu_chunks);
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    absl::StatusOr<std::vector<uint8_t>> got = GetBytes(*store, {static_cast<uint64_t>(i), 42});
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, expected[i]) << "chunk " << i;
  }
}

TEST_F(StoreGpuTest, LargeChunkCrossesManyStagingPiecesExactly) {
  REQUIRE_DEVICE();
  StoreOptions o = Options(256ull << 20);
  o.host_capacity_bytes = 256ull << 20;
  std::unique_ptr<Store> store = MakeStore(o);
  ASSERT_NE(store, nullptr);
  // 8 MiB of payload through 64 KiB staging buffers.
  const Chunk c = RandomChunk(rng_, Shape(8, DType::kBF16, 512, 4, 128), Preset::kXQuant);
  ASSERT_TRUE(store->Put(kNs, {8, 8}, c.shape, c.config, c.bytes()).ok());
  absl::StatusOr<std::vector<uint8_t>> got = GetBytes(*store, {8, 8}, {}, DType::kBF16);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Expected(c, {}, DType::kBF16));
}

// Not a test: prints Put/Get timings of one 128 MiB chunk through each path, to decide how
// host-tier chunks are read when a GPU is present (docs/store.md). Never gates on a time.
// Run with --gtest_also_run_disabled_tests --gtest_filter='*Timings*'.
TEST_F(StoreGpuTest, DISABLED_PrintPathTimings) {
  REQUIRE_DEVICE();
  const Chunk c = RandomChunk(rng_, Shape(32, DType::kBF16, 1024, 8, 128), Preset::kXQuant);
  std::vector<uint8_t> out(c.data.size() * 2, 1);
  const OutputAllocator alloc = [&](uint64_t n) { return n <= out.size() ? out.data() : nullptr; };
  auto median_ms = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  auto time_path = [&](const char* name, StoreOptions o) {
    std::unique_ptr<Store> store = MakeStore(o);
    ASSERT_NE(store, nullptr);
    std::vector<double> put_ms, get_ms;
    for (int i = 0; i < 7; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      ASSERT_TRUE(store->Put(kNs, {1, 1}, c.shape, c.config, c.bytes()).ok());
      auto t1 = std::chrono::steady_clock::now();
      ASSERT_TRUE(store->Get(kNs, {1, 1}, {}, DType::kBF16, alloc).ok());
      auto t2 = std::chrono::steady_clock::now();
      put_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      get_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
    }
    const StoreStats st = store->Stats();
    std::printf("%-34s put %8.2f ms (%6.2f GB/s)  get %8.2f ms (%6.2f GB/s)  gpu_chunks %llu\n",
                name, median_ms(put_ms), c.data.size() * 2 / median_ms(put_ms) / 1e6,
                median_ms(get_ms), c.data.size() * 2 / median_ms(get_ms) / 1e6,
                (unsigned long long)st.gpu_chunks);
  };
  StoreOptions o = Options(1ull << 30);
  o.host_capacity_bytes = 512ull << 20;
  o.page_bytes = 64 * 1024;
  o.gpu_staging_bytes = 4ull << 20;
  time_path("gpu tier (encode+decode on GPU)", o);
  StoreOptions small = o;
  small.gpu_capacity_bytes = 1ull << 20;  // cannot hold it: GPU encode, host tier, CPU decode
  time_path("host tier, GPU encode, CPU decode", small);
  StoreOptions cpu = o;
  cpu.use_gpu = false;
  time_path("no GPU (CPU encode + decode)", cpu);
}

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// With two GPUs (the lent nvidia-h200-x2): one pool per device, the request's device or the
// namespace's hash chooses the pool, and reads from either match the CPU codec.
TEST_F(StoreGpuTest, TwoDevicesEachHoldTheirChunks) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs two CUDA devices";
  StoreOptions o = Options();
  o.gpu_devices = {0, 1};
  std::unique_ptr<Store> store = MakeStore(o);
  ASSERT_NE(store, nullptr);
  ASSERT_EQ(store->Stats().gpus.size(), 2u);
  std::vector<Chunk> chunks;
  for (int i = 0; i < 6; ++i) {
    chunks.push_back(RandomChunk(rng_, Shape(5, DType::kF16, 70, 3, 128), Preset::kXQuant));
    PutOptions po;
    po.device = i % 2;
    absl::StatusOr<ChunkInfo> put = store->Put(kNs, {static_cast<uint64_t>(i), 2},
                                               chunks[i].shape, chunks[i].config,
                                               chunks[i].bytes(), po);
    ASSERT_TRUE(put.ok()) << put.status();
  }
  // The namespace's own device: hash(namespace) % 2, whichever it is.
  const Chunk extra = RandomChunk(rng_, Shape(), Preset::kKivi2);
  ASSERT_TRUE(store->Put("another-namespace", {7, 7}, extra.shape, extra.config,
                         extra.bytes()).ok());
  PutOptions bad;
  bad.device = 2;
  EXPECT_EQ(store->Put(kNs, {8, 8}, extra.shape, extra.config, extra.bytes(), bad)
                .status().code(),
            absl::StatusCode::kInvalidArgument);
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.gpus[0].chunks + st.gpus[1].chunks, 7u);
  EXPECT_GE(st.gpus[0].chunks, 3u);
  EXPECT_GE(st.gpus[1].chunks, 3u);
  EXPECT_GT(st.gpus[0].used_bytes, 0u);
  EXPECT_GT(st.gpus[1].used_bytes, 0u);
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<std::vector<uint8_t>> got = GetBytes(*store, {static_cast<uint64_t>(i), 2});
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, Expected(chunks[i], {}, DType::kF16)) << "chunk " << i;
  }
  absl::StatusOr<std::vector<uint8_t>> got =
      GetBytes(*store, {7, 7}, {}, DType::kF16, "another-namespace");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Expected(extra, {}, DType::kF16));
}

}  // namespace
}  // namespace kvstash::store

// A crash on the lent GPU machine must say where: symbolized stack traces on fatal signals.
int main(int argc, char** argv) {
  absl::InitializeSymbolizer(argv[0]);
  absl::InstallFailureSignalHandler(absl::FailureSignalHandlerOptions());
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
