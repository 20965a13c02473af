// CUDA IPC through the real kvstashd (ctest label `gpu`; skips without a device). This
// process is the worker: it cudaMallocs buffers, shares them with cudaIpcGetMemHandle and
// registers them; the daemon, a separate process, encodes from and decodes into them.
// Checked byte for byte against the CPU codec: contiguous and paged Put/Get, slices,
// host-tier restore (decoded on the GPU from compressed pages), every engine layout of
// docs/api.md "Paged caches" (strided planes) against a plain reference copy, and every
// refusal.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cli_util.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "kvstash/client/client.h"
#include "kvstash/kernels/format.h"
#include "paged_test_util.h"

namespace kvstash::client {
namespace {

using kernels::ChunkShape;
using kernels::DType;
using kernels::Preset;
using testing::PagedGeometry;

bool HaveDevice() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

uint64_t FreshSeed() {
  static std::random_device rd;
  return (uint64_t{rd()} << 32) | rd();
}

const ChunkShape kShape{4, 80, 2, 128, DType::kF16};

std::string DaemonPath() {
  const char* env = std::getenv("KVSTASHD");
  return env != nullptr && *env != '\0' ? env : KVSTASHD_PATH;
}

// A cudaMalloc'd buffer freed on destruction.
struct DeviceBuffer {
  explicit DeviceBuffer(uint64_t n) : bytes(n) { EXPECT_EQ(cudaMalloc(&data, n), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(data); }
  void Upload(uint64_t at, const void* src, uint64_t n) {
    ASSERT_EQ(cudaMemcpy(static_cast<uint8_t*>(data) + at, src, n, cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  std::vector<uint8_t> Download(uint64_t at, uint64_t n) const {
    std::vector<uint8_t> out(n);
    EXPECT_EQ(cudaMemcpy(out.data(), static_cast<uint8_t*>(data) + at, n, cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }
  std::string Handle() const {
    cudaIpcMemHandle_t h;
    EXPECT_EQ(cudaIpcGetMemHandle(&h, data), cudaSuccess);
    return std::string(reinterpret_cast<const char*>(&h), sizeof(h));
  }
  void* data = nullptr;
  uint64_t bytes = 0;
};

std::string DeviceUuid() {
  int d = 0;
  cudaGetDevice(&d);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, d);
  return std::string(prop.uuid.bytes, sizeof(prop.uuid.bytes));
}

class CudaIpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  }
  // `gpu_capacity` "64KiB" leaves the device pool one page: every chunk goes to the host
  // tier, so a Get into device memory is a host-tier restore.
  void StartDaemon(const std::string& gpu_capacity = "256MiB") {
    const absl::Status st = daemon_.Start(
        DaemonPath(), {"--host-capacity", "256MiB", "--gpu-capacity", gpu_capacity,
                        "--log-level", "warn"});
    ASSERT_TRUE(st.ok()) << st;
    ClientOptions o;
    o.target = daemon_.address();
    o.connect_timeout = std::chrono::seconds(10);
    auto c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }
  void TearDown() override {
    client_.reset();
    if (daemon_.running()) EXPECT_EQ(daemon_.Stop(), 0) << daemon_.Log();
  }
  Region Register(const DeviceBuffer& buf) {
    auto r = client_->RegisterCudaIpc("ns", buf.Handle(), DeviceUuid());
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : Region{};
  }

  // Put from device memory at offset 0, Get back into offset `payload` rounded up; both
  // must equal the codec, and the plain gRPC Get too.
  void RoundTripContiguous() {
    const uint64_t payload = kShape.payload_bytes();
    DeviceBuffer buf(3 * payload);
    const Region region = Register(buf);
    EXPECT_EQ(region.size, 3 * payload);
    const std::vector<uint16_t> in = cli::GeneratePayload(kShape, FreshSeed());
    buf.Upload(0, in.data(), payload);
    PutChunk c{ChunkKey{rng_(), rng_()}, kShape, Codec::FromPreset(Preset::kXQuant), {},
               &region, 0};
    auto put = client_->Put("ns", c);
    ASSERT_TRUE(put.ok()) << put.status();
    GetOptions g;
    g.output_region = &region;
    g.output_offset = payload + 64;
    auto got = client_->Get("ns", c.key, g);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->region_offset, payload + 64);
    const std::vector<uint8_t> oracle = testing::XQuantOracle(kShape, in);
    EXPECT_EQ(buf.Download(payload + 64, payload), oracle);
    auto plain = client_->Get("ns", c.key);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_EQ(std::memcmp(plain->data.data(), oracle.data(), payload), 0);
    EXPECT_TRUE(client_->UnregisterRegion(region).ok());
  }

  testing::DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
  std::mt19937_64 rng_{FreshSeed()};
};

TEST_F(CudaIpcTest, ContiguousPutFromAndGetIntoDeviceMemoryMatchTheCodec) {
  StartDaemon();
  RoundTripContiguous();
}

TEST_F(CudaIpcTest, HostTierRestoreDecodesOnTheGpuAndMatchesTheCodec) {
  StartDaemon("64KiB");
  RoundTripContiguous();
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GE(stats->chunks, 1u);
}

// A prefix restore: one Get of many host-tier chunks into a region, as the daemon batches
// it (one worker, all copies in flight, a decode launch per group of chunks). Every result
// equals the codec; a missing key in the middle is found == false and takes no room.
TEST_F(CudaIpcTest, MultiKeyHostTierRestoreIntoARegionMatchesTheCodecPerChunk) {
  StartDaemon("64KiB");
  constexpr int kChunks = 10;
  const uint64_t payload = kShape.payload_bytes();  // a multiple of 64
  DeviceBuffer buf((kChunks + 1) * payload);
  const Region region = Register(buf);
  std::vector<std::vector<uint8_t>> oracle;
  std::vector<ChunkKey> keys;
  for (int i = 0; i < kChunks; ++i) {
    const std::vector<uint16_t> in = cli::GeneratePayload(kShape, FreshSeed());
    buf.Upload(0, in.data(), payload);
    PutChunk c{ChunkKey{rng_(), rng_()}, kShape, Codec::FromPreset(Preset::kXQuant), {},
               &region, 0};
    ASSERT_TRUE(client_->Put("ns", c).ok());
    keys.push_back(c.key);
    oracle.push_back(testing::XQuantOracle(kShape, in));
    if (i == 4) keys.push_back(ChunkKey{rng_(), rng_()});  // never stored
  }
  GetOptions g;
  g.output_region = &region;
  g.output_offset = payload;
  g.allow_missing = true;
  auto got = client_->Get("ns", keys, g);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), keys.size());
  int o = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i == 5) {
      EXPECT_FALSE((*got)[i].found);
      continue;
    }
    ASSERT_TRUE((*got)[i].found) << i;
    EXPECT_EQ((*got)[i].region_offset, payload * (1 + o));
    EXPECT_TRUE(buf.Download((*got)[i].region_offset, payload) == oracle[o]) << "key " << i;
    ++o;
  }
  EXPECT_TRUE(client_->UnregisterRegion(region).ok());
}

// The transformers prefix cache's restore: one Get of many host-tier chunks into a dense
// [L][2][H][Ttot][D] tensor on the GPU, described as a paged cache of one block
// (token_stride D·2, head_stride Ttot·D·2), which the daemon batches (GetDeviceMany with
// paged windows). Each found chunk's tokens, at its first_token, equal the codec; a
// missing key in the middle is found == false and takes no slots.
TEST_F(CudaIpcTest, MultiKeyHostTierRestoreIntoADenseStridedPagedCacheMatchesTheCodec) {
  StartDaemon("64KiB");
  constexpr int kChunks = 10;
  const uint64_t payload = kShape.payload_bytes();
  const uint64_t T = kShape.num_tokens, H = kShape.num_heads, D = kShape.head_dim;
  const uint64_t total = T * kChunks;     // Ttot: the found chunks' tokens
  const uint64_t plane = H * total * D * 2;  // [H][Ttot][D] 16-bit
  DeviceBuffer buf(payload + 2 * kShape.num_layers * plane);
  const Region region = Register(buf);
  std::vector<std::vector<uint8_t>> oracle;
  std::vector<ChunkKey> keys;
  for (int i = 0; i < kChunks; ++i) {
    const std::vector<uint16_t> in = cli::GeneratePayload(kShape, FreshSeed());
    buf.Upload(0, in.data(), payload);
    PutChunk c{ChunkKey{rng_(), rng_()}, kShape, Codec::FromPreset(Preset::kXQuant), {},
               &region, 0};
    ASSERT_TRUE(client_->Put("ns", c).ok());
    keys.push_back(c.key);
    oracle.push_back(testing::XQuantOracle(kShape, in));
    if (i == 3) keys.push_back(ChunkKey{rng_(), rng_()});  // never stored
  }
  ASSERT_EQ(cudaMemset(static_cast<uint8_t*>(buf.data) + payload, 0xAB,
                       2 * kShape.num_layers * plane),
            cudaSuccess);
  PagedCache cache;
  for (uint32_t lx = 0; lx < 2 * kShape.num_layers; ++lx) {
    cache.planes.push_back({&region, payload + lx * plane, plane});
  }
  cache.block_size = static_cast<uint32_t>(total);
  cache.block_stride = plane;
  cache.block_ids = {0};
  cache.first_slot = 0;
  cache.token_stride = D * 2;
  cache.head_stride = total * D * 2;
  GetOptions g;
  g.output_paged = &cache;
  g.allow_missing = true;
  auto got = client_->Get("ns", keys, g);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), keys.size());
  const std::vector<uint8_t> image = buf.Download(payload, 2 * kShape.num_layers * plane);
  int o = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i == 4) {
      EXPECT_FALSE((*got)[i].found);
      continue;
    }
    ASSERT_TRUE((*got)[i].found) << i;
    EXPECT_EQ((*got)[i].first_token, T * o);
    // Back into the codec's [L][2][T][H][D].
    std::vector<uint8_t> flat(payload);
    for (uint64_t lx = 0; lx < 2ull * kShape.num_layers; ++lx) {
      for (uint64_t t = 0; t < T; ++t) {
        for (uint64_t h = 0; h < H; ++h) {
          std::memcpy(flat.data() + ((lx * T + t) * H + h) * D * 2,
                      image.data() + lx * plane + (h * total + o * T + t) * D * 2, D * 2);
        }
      }
    }
    EXPECT_TRUE(flat == oracle[o]) << "key " << i;
    ++o;
  }
  EXPECT_TRUE(client_->UnregisterRegion(region).ok());
}

TEST_F(CudaIpcTest, PagedPutAndGetGatherAndScatterInTheKernels) {
  StartDaemon();
  PagedGeometry geo;
  geo.layers = kShape.num_layers;
  geo.heads = kShape.num_heads;
  geo.head_dim = kShape.head_dim;
  geo.num_blocks = 16;
  DeviceBuffer buf(2 * geo.bytes());
  const Region region = Register(buf);

  // The input chunk in random blocks of the first cache, from slot 5.
  const std::vector<uint16_t> in = cli::GeneratePayload(kShape, FreshSeed());
  std::vector<uint8_t> image(geo.bytes(), 0);
  const std::vector<uint32_t> ids = testing::RandomBlocks(geo, 6, rng_);
  std::vector<uint8_t> flat(kShape.payload_bytes());
  std::memcpy(flat.data(), in.data(), flat.size());
  testing::CopyRows(geo, ids, 5, kShape.num_tokens, image.data(), flat.data(), true);
  buf.Upload(0, image.data(), image.size());
  const PagedCache cache = testing::MakeCache(geo, &region, 0, ids, 5);
  PutChunk c{ChunkKey{rng_(), rng_()}, kShape, Codec::FromPreset(Preset::kXQuant)};
  c.paged = &cache;
  auto put = client_->Put("ns", c);
  ASSERT_TRUE(put.ok()) << put.status();
  const std::vector<uint8_t> oracle = testing::XQuantOracle(kShape, in);
  auto plain = client_->Get("ns", c.key);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(std::memcmp(plain->data.data(), oracle.data(), oracle.size()), 0);

  // Scattered into the second cache, from slot 9.
  const std::vector<uint32_t> out_ids = testing::RandomBlocks(geo, 6, rng_);
  const PagedCache out = testing::MakeCache(geo, &region, geo.bytes(), out_ids, 9);
  GetOptions g;
  g.output_paged = &out;
  auto got = client_->Get("ns", c.key, g);
  ASSERT_TRUE(got.ok()) << got.status();
  const std::vector<uint8_t> out_image = buf.Download(geo.bytes(), geo.bytes());
  std::vector<uint8_t> back(kShape.payload_bytes());
  testing::CopyRows(geo, out_ids, 9, kShape.num_tokens, const_cast<uint8_t*>(out_image.data()),
                    back.data(), false);
  EXPECT_EQ(back, oracle);

  // A layer range and one head, into a cache whose rows hold one head.
  PagedGeometry narrow = geo;
  narrow.layers = 2;
  narrow.heads = 1;
  const std::vector<uint32_t> nids = testing::RandomBlocks(narrow, 5, rng_);
  const PagedCache ncache = testing::MakeCache(narrow, &region, geo.bytes(), nids, 0);
  GetOptions gs;
  gs.slice = kernels::Slice{1, 3, 1, 2};
  gs.output_paged = &ncache;
  ASSERT_TRUE(client_->Get("ns", c.key, gs).ok());
  const std::vector<uint8_t> nimage = buf.Download(geo.bytes(), narrow.bytes());
  std::vector<uint8_t> nflat(2ull * 2 * kShape.num_tokens * narrow.row_bytes());
  testing::CopyRows(narrow, nids, 0, kShape.num_tokens, const_cast<uint8_t*>(nimage.data()),
                    nflat.data(), false);
  EXPECT_EQ(nflat, testing::XQuantOracle(kShape, in, gs.slice));
}

TEST_F(CudaIpcTest, RefusesBadHandlesRangesAndValuesAndKeepsServing) {
  StartDaemon();
  const uint64_t payload = kShape.payload_bytes();
  DeviceBuffer buf(2 * payload);
  auto expect = [](const absl::Status& st, absl::StatusCode code, std::string_view field) {
    EXPECT_EQ(st.code(), code) << st;
    EXPECT_NE(st.message().find(std::string(field)), std::string::npos) << st;
  };
  std::string junk(64, '\0');
  for (char& ch : junk) ch = static_cast<char>(rng_());
  expect(client_->RegisterCudaIpc("ns", junk, DeviceUuid()).status(),
         absl::StatusCode::kInvalidArgument, "cuda_ipc.handle");
  expect(client_->RegisterCudaIpc("ns", buf.Handle().substr(0, 10), DeviceUuid()).status(),
         absl::StatusCode::kInvalidArgument, "cuda_ipc.handle");
  expect(client_->RegisterCudaIpc("ns", buf.Handle(), std::string(16, '\x7f')).status(),
         absl::StatusCode::kFailedPrecondition, "cuda_ipc.device_uuid");
  expect(client_->RegisterCudaIpc("ns", buf.Handle(), DeviceUuid(), 4 * payload).status(),
         absl::StatusCode::kInvalidArgument, "size");

  const Region region = Register(buf);
  const std::vector<uint16_t> in = cli::GeneratePayload(kShape, FreshSeed());
  buf.Upload(0, in.data(), payload);
  const ChunkKey key{rng_(), rng_()};
  PutChunk c{key, kShape, Codec::FromPreset(Preset::kXQuant), {}, &region, 8};
  expect(client_->Put("ns", c).status(), absl::StatusCode::kInvalidArgument,
         "chunks[0].data_region.offset");
  c.region_offset = payload + 16;  // runs past the end of the allocation
  expect(client_->Put("ns", c).status(), absl::StatusCode::kInvalidArgument,
         "chunks[0].data_region.length");
  expect(client_->Put("other", c).status(), absl::StatusCode::kPermissionDenied,
         "chunks[0].data_region.region_id");

  // A NaN in device memory: refused by the encode kernels, naming the element.
  std::vector<uint16_t> bad = in;
  bad[12345] = 0x7E00;
  buf.Upload(payload, bad.data(), payload);
  c.region_offset = payload;
  const absl::Status nan = client_->Put("ns", c).status();
  expect(nan, absl::StatusCode::kInvalidArgument, "chunks[0]");
  EXPECT_NE(nan.message().find("NaN"), std::string::npos) << nan;
  const std::vector<ChunkKey> chain{key};
  auto present = client_->Lookup("ns", chain);
  ASSERT_TRUE(present.ok());
  EXPECT_EQ(*present, 0u);

  // Still serving, and the good bytes still store.
  c.region_offset = 0;
  EXPECT_TRUE(client_->Put("ns", c).ok());
  GetOptions g;
  g.output_region = &region;
  g.output_offset = payload + 64;  // the slice does not fit in what is left
  expect(client_->Get("ns", key, g).status(), absl::StatusCode::kInvalidArgument,
         "output_region.length");
}

TEST_F(CudaIpcTest, EveryEngineLayoutRoundTripsBitExactlyThroughTheKernels) {
  StartDaemon();
  auto layout = [](testing::Engine engine) {
    const bool page1 = engine == testing::Engine::kSglangTokenPoolPage1;
    return testing::MakeEngineLayout(engine, 4, 4, 128, page1 ? 1 : 16, page1 ? 256 : 16);
  };
  uint64_t bytes = 0;
  for (testing::Engine engine : testing::kEngines) bytes = std::max(bytes, layout(engine).bytes);
  DeviceBuffer dev(2 * bytes);
  const Region region = Register(dev);
  testing::CacheBuffer buf;
  buf.region = &region;
  buf.write = [&dev](uint64_t at, const std::vector<uint8_t>& b) {
    dev.Upload(at, b.data(), b.size());
  };
  buf.read = [&dev](uint64_t at, uint64_t n) { return dev.Download(at, n); };
  for (testing::Engine engine : testing::kEngines) {
    const testing::EngineLayout e = layout(engine);
    testing::CheckEngineRoundTrip(*client_, e, DType::kF16, Preset::kXQuant, buf, rng_);
    testing::CheckEngineRoundTrip(*client_, e, DType::kBF16, Preset::kKivi2, buf, rng_);
    if (HasFatalFailure()) return;
  }
}

TEST_F(CudaIpcTest, StridedPagedPutNamesTheBadElementAndStoresNothing) {
  StartDaemon();
  const testing::EngineLayout e =
      testing::MakeEngineLayout(testing::Engine::kVllmHnd, 4, 2, 128, 16, 16);
  DeviceBuffer dev(e.bytes);
  const Region region = Register(dev);
  std::vector<uint16_t> in = cli::GeneratePayload(kShape, FreshSeed());
  // Layer 2, V, token 37, head 1, channel 77.
  in[(((2ull * 2 + 1) * kShape.num_tokens + 37) * 2 + 1) * 128 + 77] = 0x7E00;
  std::vector<uint8_t> flat(kShape.payload_bytes());
  std::memcpy(flat.data(), in.data(), flat.size());
  std::vector<uint8_t> image(e.bytes, 0);
  const std::vector<uint32_t> ids = testing::RandomIds(e.num_blocks, 6, rng_);
  testing::CopyElements(e, ids, 3, kShape.num_tokens, image.data(), flat.data(), true);
  dev.Upload(0, image.data(), image.size());
  const PagedCache cache = testing::MakeCache(e, &region, 0, ids, 3);
  PutChunk c{ChunkKey{rng_(), rng_()}, kShape, Codec::FromPreset(Preset::kXQuant)};
  c.paged = &cache;
  const absl::Status st = client_->Put("ns", c).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("element (layer 2, V, token 37, head 1, channel 77) = 0x7e00"),
            std::string::npos)
      << st;
  const std::vector<ChunkKey> chain{c.key};
  auto present = client_->Lookup("ns", chain);
  ASSERT_TRUE(present.ok());
  EXPECT_EQ(*present, 0u);
}

}  // namespace
}  // namespace kvstash::client
