// Paged caches through the real kvstashd over shared memory (the daemon gathers and
// scatters rows on the host; on a GPU the kernels do it, tests/gpu/cuda_ipc_test.cc): Put
// from blocks, Get into blocks (several chunks, layer and head slices), byte-exact against
// the codec, and every refusal with its exact code. Also: CUDA IPC on a daemon without GPU.
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

}  // namespace
}  // namespace kvstash::client
