// Paged caches through the real kvstashd over shared memory (the daemon gathers and
// scatters rows on the host; on a GPU the kernels do it, tests/gpu/cuda_ipc_test.cc): Put
// from blocks, Get into blocks (several chunks, layer and head slices), byte-exact against
// the codec; every engine layout of docs/api.md (strided planes) against a plain reference
// copy; and every refusal with its exact code. Also: CUDA IPC on a daemon without GPU.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cli_util.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "kvstash/client/client.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "paged_test_util.h"

namespace kvstash::client {
namespace {

using kernels::ChunkShape;
using kernels::DType;
using kernels::Preset;
using testing::PagedGeometry;

uint64_t FreshSeed() {
  static std::random_device rd;
  return (uint64_t{rd()} << 32) | rd();
}

std::vector<uint8_t> Oracle(const ChunkShape& shape, const std::vector<uint16_t>& in,
                            const kernels::Slice& slice = {}) {
  return testing::XQuantOracle(shape, in, slice);
}

// 80 tokens: two quantized groups and a 16-token tail, not a multiple of the block size.
const ChunkShape kShape{4, 80, 2, 128, DType::kF16};

class PagedIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // --gpu off: the shared-memory path must work the same on every machine.
    const absl::Status st = daemon_.Start(
        KVSTASHD_PATH, {"--host-capacity", "64MiB", "--log-level", "warn", "--gpu", "off"});
    ASSERT_TRUE(st.ok()) << st;
    ClientOptions o;
    o.target = daemon_.address();
    o.connect_timeout = std::chrono::seconds(10);
    auto c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
    geo_.layers = kShape.num_layers;
    geo_.heads = kShape.num_heads;
    geo_.head_dim = kShape.head_dim;
    geo_.num_blocks = 16;
    auto shm = SharedRegion::Create(2 * geo_.bytes());
    ASSERT_TRUE(shm.ok()) << shm.status();
    shm_ = std::move(*shm);
    auto region = client_->RegisterRegion("ns", shm_.path(), shm_.size());
    ASSERT_TRUE(region.ok()) << region.status();
    region_ = *region;
  }
  void TearDown() override {
    client_.reset();
    if (daemon_.running()) EXPECT_EQ(daemon_.Stop(), 0) << daemon_.Log();
  }

  // Stores `in` from random blocks of the first cache; returns the key.
  ChunkKey PutPaged(const std::vector<uint16_t>& in, uint32_t first_slot) {
    const uint32_t blocks = (first_slot + kShape.num_tokens + geo_.block_size - 1) / geo_.block_size;
    std::vector<uint32_t> ids = testing::RandomBlocks(geo_, blocks, rng_);
    std::vector<uint8_t> flat(kShape.payload_bytes());
    std::memcpy(flat.data(), in.data(), flat.size());
    testing::CopyRows(geo_, ids, first_slot, kShape.num_tokens, shm_.data(), flat.data(), true);
    const PagedCache cache = testing::MakeCache(geo_, &region_, 0, ids, first_slot);
    PutChunk c{ChunkKey{rng_(), rng_()}, kShape, Codec::FromPreset(Preset::kXQuant)};
    c.paged = &cache;
    auto put = client_->Put("ns", c);
    EXPECT_TRUE(put.ok()) << put.status();
    return c.key;
  }

  testing::DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
  PagedGeometry geo_;
  SharedRegion shm_;
  Region region_;
  std::mt19937_64 rng_{FreshSeed()};
};

TEST_F(PagedIntegrationTest, PutFromBlocksAndGetIntoBlocksMatchTheCodecExactly) {
  std::vector<std::vector<uint16_t>> in;
  std::vector<ChunkKey> keys;
  for (uint32_t i = 0; i < 2; ++i) {
    in.push_back(cli::GeneratePayload(kShape, FreshSeed()));
    keys.push_back(PutPaged(in.back(), /*first_slot=*/i == 0 ? 5 : 0));
  }
  for (int i = 0; i < 2; ++i) {  // what was gathered is what was stored
    auto plain = client_->Get("ns", keys[i]);
    ASSERT_TRUE(plain.ok()) << plain.status();
    const std::vector<uint8_t> oracle = Oracle(kShape, in[i]);
    ASSERT_EQ(plain->data.size(), oracle.size());
    EXPECT_EQ(std::memcmp(plain->data.data(), oracle.data(), oracle.size()), 0) << i;
  }

  // Both chunks into the second cache: 160 tokens from slot 3 fill 11 blocks.
  uint8_t* out_cache = shm_.data() + geo_.bytes();
  std::memset(out_cache, 0xAB, geo_.bytes());
  const std::vector<uint32_t> ids = testing::RandomBlocks(geo_, 11, rng_);
  const PagedCache cache = testing::MakeCache(geo_, &region_, geo_.bytes(), ids, 3);
  GetOptions g;
  g.output_paged = &cache;
  auto got = client_->Get("ns", keys, g);
  ASSERT_TRUE(got.ok()) << got.status();
  for (int i = 0; i < 2; ++i) {
    const GetResult& r = (*got)[i];
    ASSERT_TRUE(r.found);
    EXPECT_TRUE(r.data.empty());
    EXPECT_EQ(r.first_token, uint64_t{80} * i);
    // Result i starts at token 80·i of the concatenation: slot 3 + 80·i.
    const uint32_t s0 = 3 + 80 * i;
    std::vector<uint32_t> sub(ids.begin() + s0 / geo_.block_size, ids.end());
    std::vector<uint8_t> flat(kShape.payload_bytes());
    testing::CopyRows(geo_, sub, s0 % geo_.block_size, kShape.num_tokens, out_cache, flat.data(),
                      false);
    EXPECT_EQ(flat, Oracle(kShape, in[i])) << i;
  }

  // A layer range and a head slice into a cache whose rows hold one head.
  PagedGeometry narrow = geo_;
  narrow.layers = 2;
  narrow.heads = 1;
  const std::vector<uint32_t> nids = testing::RandomBlocks(narrow, 5, rng_);
  const PagedCache ncache = testing::MakeCache(narrow, &region_, geo_.bytes(), nids, 0);
  GetOptions gs;
  gs.slice = kernels::Slice{1, 3, 1, 2};
  gs.output_paged = &ncache;
  auto sliced = client_->Get("ns", keys[0], gs);
  ASSERT_TRUE(sliced.ok()) << sliced.status();
  std::vector<uint8_t> flat(2ull * 2 * kShape.num_tokens * narrow.row_bytes());
  testing::CopyRows(narrow, nids, 0, kShape.num_tokens, out_cache, flat.data(), false);
  EXPECT_EQ(flat, Oracle(kShape, in[0], gs.slice));
}

TEST_F(PagedIntegrationTest, RefusesBadLayoutsWithTheirExactCodeAndStoresNothing) {
  const std::vector<uint16_t> in = cli::GeneratePayload(kShape, FreshSeed());
  std::vector<uint32_t> ids = testing::RandomBlocks(geo_, 5, rng_);
  const ChunkKey key{rng_(), rng_()};
  auto put = [&](const PagedCache& cache) {
    PutChunk c{key, kShape, Codec::FromPreset(Preset::kXQuant)};
    c.paged = &cache;
    return client_->Put("ns", c).status();
  };
  auto expect = [](const absl::Status& st, absl::StatusCode code, std::string_view field) {
    EXPECT_EQ(st.code(), code) << st;
    EXPECT_NE(st.message().find(std::string(field)), std::string::npos) << st;
  };

  PagedCache few = testing::MakeCache(geo_, &region_, 0, ids, 0);
  few.planes.pop_back();
  expect(put(few), absl::StatusCode::kInvalidArgument, "chunks[0].data_paged.planes");

  PagedCache past = testing::MakeCache(geo_, &region_, 0, ids, 0);
  past.block_ids[2] = geo_.num_blocks;  // one block past the end of every plane
  expect(put(past), absl::StatusCode::kInvalidArgument, "data_paged.planes[0].length");

  PagedCache stride = testing::MakeCache(geo_, &region_, 0, ids, 0);
  stride.block_stride += 8;
  expect(put(stride), absl::StatusCode::kInvalidArgument, "data_paged.block_stride");

  PagedCache count = testing::MakeCache(geo_, &region_, 0, ids, 0);
  count.block_ids.push_back(7);
  expect(put(count), absl::StatusCode::kInvalidArgument, "data_paged.block_ids");

  PagedCache slot = testing::MakeCache(geo_, &region_, 0, ids, geo_.block_size);
  expect(put(slot), absl::StatusCode::kInvalidArgument, "data_paged.first_slot");

  PagedCache misaligned = testing::MakeCache(geo_, &region_, 0, ids, 0);
  misaligned.planes[3].offset += 8;
  expect(put(misaligned), absl::StatusCode::kInvalidArgument, "data_paged.planes[3].offset");

  Region forged = region_;
  forged.token = std::string(region_.token.size(), '0');
  PagedCache token = testing::MakeCache(geo_, &forged, 0, ids, 0);
  expect(put(token), absl::StatusCode::kPermissionDenied, "data_paged.planes[0].token");

  // Nothing was stored, and the daemon still serves.
  const std::vector<ChunkKey> chain{key};
  auto present = client_->Lookup("ns", chain);
  ASSERT_TRUE(present.ok()) << present.status();
  EXPECT_EQ(*present, 0u);

  // Get into a paged cache too small for the tokens.
  const ChunkKey stored = PutPaged(in, 0);
  PagedCache small = testing::MakeCache(geo_, &region_, geo_.bytes(), {0, 1, 2, 3}, 0);
  GetOptions g;
  g.output_paged = &small;
  expect(client_->Get("ns", stored, g).status(), absl::StatusCode::kInvalidArgument,
         "output_paged.block_ids");

  // CUDA IPC on a daemon without GPU tiers.
  const std::string handle(64, '\1'), uuid(16, '\2');
  expect(client_->RegisterCudaIpc("ns", handle, uuid).status(),
         absl::StatusCode::kFailedPrecondition, "cuda_ipc");
  auto stats = client_->Stats();
  EXPECT_TRUE(stats.ok()) << stats.status();
}

// Every engine layout of docs/api.md "Paged caches" through the daemon's host gather and
// scatter (testing::CheckEngineRoundTrip says what is checked).
class PagedEngineLayoutTest : public PagedIntegrationTest,
                              public ::testing::WithParamInterface<testing::Engine> {};

TEST_P(PagedEngineLayoutTest, RoundTripsBitExactlyThroughTheEnginesOwnLayout) {
  const testing::Engine engine = GetParam();
  const bool page1 = engine == testing::Engine::kSglangTokenPoolPage1;
  // 4 heads of 64, so the head slice [1, 3) keeps two heads and their stride.
  const testing::EngineLayout e =
      testing::MakeEngineLayout(engine, 4, 4, 64, page1 ? 1 : 16, page1 ? 256 : 16);
  auto shm = SharedRegion::Create(2 * e.bytes);
  ASSERT_TRUE(shm.ok()) << shm.status();
  auto region = client_->RegisterRegion("ns", shm->path(), shm->size());
  ASSERT_TRUE(region.ok()) << region.status();
  uint8_t* base = shm->data();
  testing::CacheBuffer buf;
  buf.region = &*region;
  buf.write = [base](uint64_t at, const std::vector<uint8_t>& bytes) {
    std::memcpy(base + at, bytes.data(), bytes.size());
  };
  buf.read = [base](uint64_t at, uint64_t n) {
    return std::vector<uint8_t>(base + at, base + at + n);
  };
  testing::CheckEngineRoundTrip(*client_, e, DType::kF16, Preset::kXQuant, buf, rng_);
  testing::CheckEngineRoundTrip(*client_, e, DType::kBF16, Preset::kKivi2, buf, rng_);
}

INSTANTIATE_TEST_SUITE_P(Engines, PagedEngineLayoutTest, ::testing::ValuesIn(testing::kEngines),
                         [](const ::testing::TestParamInfo<testing::Engine>& info) {
                           return testing::EngineName(info.param);
                         });

TEST_F(PagedIntegrationTest, RefusesBadStridesAndBlocksPastAStridedPlaneWithExactBounds) {
  // vLLM's interleaved layout: K and V planes share each layer's tensor, 256 bytes apart.
  const testing::EngineLayout e = testing::MakeEngineLayout(
      testing::Engine::kVllmInterleavedKv, kShape.num_layers, kShape.num_heads,
      kShape.head_dim, 16, 16);
  ASSERT_LE(e.bytes, shm_.size());
  const std::vector<uint16_t> in = cli::GeneratePayload(kShape, FreshSeed());
  std::vector<uint8_t> flat(kShape.payload_bytes());
  std::memcpy(flat.data(), in.data(), flat.size());
  const std::vector<uint32_t> ids = testing::RandomIds(e.num_blocks, 6, rng_);  // 87 slots
  testing::CopyElements(e, ids, 7, kShape.num_tokens, shm_.data(), flat.data(), true);
  const PagedCache good = testing::MakeCache(e, &region_, 0, ids, 7);
  const ChunkKey key{rng_(), rng_()};
  auto put = [&](const PagedCache& cache) {
    PutChunk c{key, kShape, Codec::FromPreset(Preset::kXQuant)};
    c.paged = &cache;
    return client_->Put("ns", c).status();
  };
  auto expect = [](const absl::Status& st, absl::StatusCode code, std::string_view field) {
    EXPECT_EQ(st.code(), code) << st;
    EXPECT_NE(st.message().find(std::string(field)), std::string::npos) << st;
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;

  for (uint64_t bad : {8, 24, 128}) {  // not a multiple of 16; 128: tokens would overlap
    PagedCache c = good;
    c.token_stride = bad;
    expect(put(c), kInvalid, "chunks[0].data_paged.token_stride");
  }
  for (uint64_t bad : {8, 24, 16}) {  // 16: heads would overlap
    PagedCache c = good;
    c.head_stride = bad;
    expect(put(c), kInvalid, "chunks[0].data_paged.head_stride");
  }
  PagedCache stride = good;
  stride.block_stride += 8;
  expect(put(stride), kInvalid, "chunks[0].data_paged.block_stride");
  PagedCache past = good;
  past.block_ids[3] = e.num_blocks;  // one block past the end of every plane
  expect(put(past), kInvalid, "chunks[0].data_paged.planes[0].length");

  // The bound is exact: a plane must reach the last byte its highest block can hold, at
  // slot block_size - 1 and head H - 1, whatever the slots the tokens use.
  const uint64_t max_id = *std::max_element(ids.begin(), ids.end());
  const uint64_t need = max_id * e.block_stride + (e.block_size - 1) * e.token_stride +
                        (e.heads - 1) * e.head_stride + 2ull * e.head_dim;
  PagedCache exact = good;
  for (PagedPlane& p : exact.planes) p.length = need;
  PagedCache short3 = exact;
  short3.planes[3].length = need - 16;
  expect(put(short3), kInvalid, "chunks[0].data_paged.planes[3].length");
  const std::vector<ChunkKey> chain{key};
  auto present = client_->Lookup("ns", chain);
  ASSERT_TRUE(present.ok()) << present.status();
  EXPECT_EQ(*present, 0u);
  ASSERT_TRUE(put(exact).ok());
  auto plain = client_->Get("ns", key);
  ASSERT_TRUE(plain.ok()) << plain.status();
  const std::vector<uint8_t> oracle = Oracle(kShape, in);
  EXPECT_TRUE(plain->data == std::string(oracle.begin(), oracle.end()));

  // The same checks on a Get's output.
  GetOptions g;
  PagedCache out = good;
  out.head_stride = 24;
  g.output_paged = &out;
  expect(client_->Get("ns", key, g).status(), kInvalid, "output_paged.head_stride");
  out = exact;
  out.planes[1].length = need - 16;
  expect(client_->Get("ns", key, g).status(), kInvalid, "output_paged.planes[1].length");
  out = exact;
  ASSERT_TRUE(client_->Get("ns", key, g).ok());
}

}  // namespace
}  // namespace kvstash::client
