// The handler logic of KvStashService without a network: request validation (every error
// names the field, with the exact code), Put/Get/Lookup/Delete/Stats semantics against a
// real store.
#include "server/rpc/service.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/half.h"
#include "server/store/store.h"

namespace kvstash::rpc {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

uint32_t Seed() {
  static const uint32_t seed = std::random_device{}();
  return seed;
}

// Random 16-bit K/V-like values (finite, a mix of scales), fresh per call.
std::string RandomPayload(const v1::Layout& l, v1::DType dtype, std::mt19937& rng) {
  const uint64_t n = 2ull * l.num_layers() * l.num_tokens() * l.num_heads() * l.head_dim();
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::string out(2 * n, '\0');
  std::vector<uint16_t> v(n);
  for (uint64_t i = 0; i < n; ++i)
    v[i] = kernels::FloatToHalfSat(normal(rng), static_cast<int>(dtype));
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

v1::Layout MakeLayout(uint32_t L, uint32_t T, uint32_t H, uint32_t D) {
  v1::Layout l;
  l.set_num_layers(L);
  l.set_num_tokens(T);
  l.set_num_heads(H);
  l.set_head_dim(D);
  return l;
}

v1::ChunkKey Key(uint64_t hi, uint64_t lo) {
  v1::ChunkKey k;
  k.set_hi(hi);
  k.set_lo(lo);
  return k;
}

class RpcServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rng_.seed(Seed());
    store::StoreOptions o;
    o.host_capacity_bytes = 64ull << 20;
    o.page_bytes = 16 << 10;
    o.num_shards = 4;
    absl::StatusOr<std::unique_ptr<store::Store>> s = store::Store::Create(o);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }

  // A valid chunk: L=4, T=40 (one group + tail), H=4, D=64.
  v1::PutChunk Chunk(uint64_t id, v1::Preset preset = v1::PRESET_XQUANT,
                     v1::DType dtype = v1::DTYPE_FP16) {
    v1::PutChunk c;
    c.set_namespace_("model-a");
    *c.mutable_key() = Key(0xABCDEF, id);
    *c.mutable_layout() = MakeLayout(4, 40, 4, 64);
    c.set_dtype(dtype);
    c.mutable_codec()->set_preset(preset);
    c.set_data(RandomPayload(c.layout(), dtype, rng_));
    return c;
  }

  absl::Status Put(const v1::PutRequest& req, v1::PutResponse* resp = nullptr) {
    v1::PutResponse local;
    return HandlePut(*store_, options_, req, resp ? resp : &local);
  }
  absl::Status Get(const v1::GetRequest& req, v1::GetResponse* resp) {
    return HandleGet(*store_, options_, req, resp);
  }
  v1::GetRequest GetOf(std::initializer_list<uint64_t> ids) {
    v1::GetRequest g;
    g.set_namespace_("model-a");
    for (uint64_t id : ids) *g.add_keys() = Key(0xABCDEF, id);
    return g;
  }
  uint64_t StoredChunks() { return store_->Stats().chunks; }

  std::mt19937 rng_;
  ServiceOptions options_;
  std::unique_ptr<store::Store> store_;
};

// --- Put validation ----------------------------------------------------------------------

TEST_F(RpcServiceTest, RejectsHeadDimNotMultipleOf32NamingChunkIndex) {
  v1::PutRequest req;
  *req.add_chunks() = Chunk(1);
  *req.add_chunks() = Chunk(2);
  *req.add_chunks() = Chunk(3);
  req.mutable_chunks(2)->mutable_layout()->set_head_dim(100);
  const absl::Status s = Put(req);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), StartsWith("chunks[2].layout.head_dim: 100 must be a multiple of 32"));
  EXPECT_EQ(StoredChunks(), 0u) << "the whole request is validated before storing";
}

TEST_F(RpcServiceTest, RejectsPayloadOfWrongSize) {
  v1::PutRequest req;
  v1::PutChunk* c = req.add_chunks();
  *c = Chunk(1);
  *c->mutable_layout() = MakeLayout(32, 256, 8, 128);
  c->set_data(std::string(1000, '\0'));
  const absl::Status s = Put(req);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(s), "chunks[0].data: 1000 bytes, expected 33554432 for this layout and dtype");
}

TEST_F(RpcServiceTest, RejectsEveryMalformedPutField) {
  struct Case {
    std::function<void(v1::PutChunk*)> mutate;
    const char* prefix;
  };
  const Case kCases[] = {
      {[](v1::PutChunk* c) { c->clear_namespace_(); }, "chunks[1].namespace: empty"},
      {[](v1::PutChunk* c) { c->set_namespace_(std::string(300, 'n')); },
       "chunks[1].namespace: 300 bytes, longer than the limit of 256"},
      {[](v1::PutChunk* c) { c->clear_key(); }, "chunks[1].key: unset"},
      {[](v1::PutChunk* c) { c->clear_layout(); }, "chunks[1].layout: unset"},
      {[](v1::PutChunk* c) { c->mutable_layout()->set_num_layers(0); },
       "chunks[1].layout.num_layers: 0 is outside [1, 1024]"},
      {[](v1::PutChunk* c) { c->mutable_layout()->set_num_tokens(0); },
       "chunks[1].layout.num_tokens: 0"},
      {[](v1::PutChunk* c) { c->mutable_layout()->set_num_heads(2000); },
       "chunks[1].layout.num_heads: 2000"},
      {[](v1::PutChunk* c) { c->set_dtype(v1::DTYPE_UNSPECIFIED); },
       "chunks[1].dtype: unspecified"},
      {[](v1::PutChunk* c) { c->set_dtype(static_cast<v1::DType>(7)); },
       "chunks[1].dtype: unknown value 7"},
      {[](v1::PutChunk* c) { c->clear_codec(); },
       "chunks[1].codec: neither preset nor custom set"},
      {[](v1::PutChunk* c) { c->mutable_codec()->set_preset(v1::PRESET_UNSPECIFIED); },
       "chunks[1].codec.preset: unspecified"},
      {[](v1::PutChunk* c) { c->mutable_codec()->set_preset(static_cast<v1::Preset>(9)); },
       "chunks[1].codec.preset: unknown value 9"},
      {[](v1::PutChunk* c) { c->mutable_codec()->mutable_custom()->set_k_q(5); },
       "chunks[1].codec.custom.k_q: 5 exceeds the number of layers 4"},
      {[](v1::PutChunk* c) {
         c->mutable_codec()->mutable_custom()->set_k_q(4);
         c->mutable_codec()->mutable_custom()->set_eta1(0.5f);
       },
       "chunks[1].codec.custom.eta1: 0.5 is outside [0, 0.5)"},
      {[](v1::PutChunk* c) { c->mutable_data()->pop_back(); }, "chunks[1].data: 163839 bytes, expected 163840 for this layout and dtype"},
  };
  for (const Case& c : kCases) {
    v1::PutRequest req;
    *req.add_chunks() = Chunk(1);
    *req.add_chunks() = Chunk(2);
    c.mutate(req.mutable_chunks(1));
    const absl::Status s = Put(req);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.prefix;
    EXPECT_THAT(Msg(s), StartsWith(c.prefix));
  }
  EXPECT_EQ(StoredChunks(), 0u);
  v1::PutRequest empty;
  EXPECT_EQ(Msg(Put(empty)), "chunks: empty");
}

TEST_F(RpcServiceTest, RejectsNanInALaterChunkBeforeStoringAny) {
  v1::PutRequest req;
  *req.add_chunks() = Chunk(1);
  *req.add_chunks() = Chunk(2);
  const uint16_t nan = 0x7E00;
  std::memcpy(req.mutable_chunks(1)->mutable_data()->data() + 2 * 12345, &nan, 2);
  const absl::Status s = Put(req);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), StartsWith("chunks[1].data: element ("));
  EXPECT_EQ(StoredChunks(), 0u);
}

TEST_F(RpcServiceTest, StorageErrorKeepsEarlierChunksAndNamesFailingIndex) {
  v1::PutRequest req;
  *req.add_chunks() = Chunk(1, v1::PRESET_FP16);
  v1::PutChunk* big = req.add_chunks();
  *big = Chunk(2, v1::PRESET_FP16);
  *big->mutable_layout() = MakeLayout(64, 512, 8, 128);  // 128 MiB of fp16: larger than 64 MiB
  big->set_data(std::string(2ull * 2 * 64 * 512 * 8 * 128, '\0'));
  const absl::Status s = Put(req);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(s), StartsWith("chunks[1]: "));
  EXPECT_THAT(Msg(s), HasSubstr("chunks [0, 1) of this request are stored"));
  EXPECT_EQ(StoredChunks(), 1u);
  v1::LookupRequest l;
  l.set_namespace_("model-a");
  *l.add_keys() = Key(0xABCDEF, 1);
  v1::LookupResponse lr;
  ASSERT_TRUE(HandleLookup(*store_, options_, l, &lr).ok());
  EXPECT_EQ(lr.present_prefix(), 1u);
}

// --- Put / Get semantics --------------------------------------------------------------------

TEST_F(RpcServiceTest, PutReportsInfoAndReputReplaces) {
  v1::PutRequest req;
  *req.add_chunks() = Chunk(1);
  v1::PutResponse resp;
  ASSERT_TRUE(Put(req, &resp).ok());
  ASSERT_EQ(resp.results_size(), 1);
  const v1::PutResult& r = resp.results(0);
  EXPECT_EQ(r.key().lo(), 1u);
  EXPECT_FALSE(r.replaced());
  EXPECT_EQ(r.info().preset(), v1::PRESET_XQUANT);
  EXPECT_EQ(r.info().layout().num_tokens(), 40u);
  EXPECT_EQ(r.info().dtype(), v1::DTYPE_FP16);
  EXPECT_EQ(r.info().config().k_q(), 4u);
  EXPECT_EQ(r.info().config().v_q(), 0u);
  EXPECT_EQ(r.info().config().k_m(), 4u);
  EXPECT_EQ(r.info().config().v_m(), 2u);
  EXPECT_EQ(r.info().logical_bytes(), 2ull * 2 * 4 * 40 * 4 * 64);
  EXPECT_GT(r.info().stored_bytes(), 0u);
  EXPECT_GT(r.info().equivalent_bits(), 0.0);
  EXPECT_NEAR(r.info().true_bits(),
              8.0 * r.info().stored_bytes() / (2.0 * 4 * 40 * 4 * 64), 1e-9);

  *req.mutable_chunks(0) = Chunk(1, v1::PRESET_KIVI_2);
  resp.Clear();
  ASSERT_TRUE(Put(req, &resp).ok());
  EXPECT_TRUE(resp.results(0).replaced());
  EXPECT_EQ(resp.results(0).info().preset(), v1::PRESET_KIVI_2);
  EXPECT_EQ(StoredChunks(), 1u);
}

TEST_F(RpcServiceTest, GetOfLosslessChunkReturnsExactSliceInChunkDtype) {
  v1::PutRequest req;
  *req.add_chunks() = Chunk(7, v1::PRESET_FP16, v1::DTYPE_BF16);
  const std::string original = req.chunks(0).data();
  ASSERT_TRUE(Put(req).ok());

  v1::GetRequest g = GetOf({7});
  g.mutable_layers()->set_begin(1);
  g.mutable_layers()->set_end(3);
  g.mutable_heads()->set_begin(2);  // end 0: to the last head
  v1::GetResponse resp;
  ASSERT_TRUE(Get(g, &resp).ok());
  ASSERT_EQ(resp.results_size(), 1);
  const v1::GetResult& r = resp.results(0);
  EXPECT_TRUE(r.found());
  EXPECT_EQ(r.dtype(), v1::DTYPE_BF16) << "unset output_dtype means the chunk's own";
  EXPECT_EQ(r.info().preset(), v1::PRESET_FP16);
  const uint32_t T = 40, H = 4, D = 64;
  ASSERT_EQ(r.data().size(), 2ull * 2 * 2 * T * 2 * D);
  // out[l-1][x][t][h-2][d] == in[l][x][t][h][d]
  size_t pos = 0;
  for (uint32_t l = 1; l < 3; ++l)
    for (uint32_t x = 0; x < 2; ++x)
      for (uint32_t t = 0; t < T; ++t)
        for (uint32_t h = 2; h < 4; ++h) {
          const size_t in = ((((l * 2 + x) * T + t) * H + h) * D) * 2;
          ASSERT_EQ(std::memcmp(r.data().data() + pos, original.data() + in, 2 * D), 0)
              << "l=" << l << " x=" << x << " t=" << t << " h=" << h;
          pos += 2 * D;
        }
}

TEST_F(RpcServiceTest, GetMatchesTheCodecAndConvertsDtype) {
  v1::PutRequest req;
  *req.add_chunks() = Chunk(8, v1::PRESET_XQUANT);
  const v1::PutChunk& c = req.chunks(0);
  ASSERT_TRUE(Put(req).ok());

  kernels::ChunkShape shape{4, 40, 4, 64, kernels::DType::kF16};
  std::vector<uint16_t> in(shape.elements());
  std::memcpy(in.data(), c.data().data(), c.data().size());
  absl::StatusOr<std::vector<uint8_t>> encoded = kernels::EncodeChunk(
      shape, kernels::PresetConfig(kernels::Preset::kXQuant, 4), in);
  ASSERT_TRUE(encoded.ok());
  std::vector<uint16_t> expected;
  ASSERT_TRUE(kernels::Decode(encoded->data(), encoded->size(), {}, kernels::DType::kBF16,
                              &expected).ok());

  v1::GetRequest g = GetOf({8});
  g.set_output_dtype(v1::DTYPE_BF16);
  v1::GetResponse resp;
  ASSERT_TRUE(Get(g, &resp).ok());
  EXPECT_EQ(resp.results(0).dtype(), v1::DTYPE_BF16);
  ASSERT_EQ(resp.results(0).data().size(), expected.size() * 2);
  EXPECT_EQ(std::memcmp(resp.results(0).data().data(), expected.data(), expected.size() * 2), 0);
}

TEST_F(RpcServiceTest, RejectsEveryMalformedGetField) {
  struct Case {
    std::function<void(v1::GetRequest*)> mutate;
    const char* message;
  };
  const Case kCases[] = {
      {[](v1::GetRequest* g) { g->clear_namespace_(); }, "namespace: empty"},
      {[](v1::GetRequest* g) { g->clear_keys(); }, "keys: empty"},
      {[](v1::GetRequest* g) {
         g->mutable_layers()->set_begin(3);
         g->mutable_layers()->set_end(2);
       },
       "layers: [3, 2) is empty"},
      {[](v1::GetRequest* g) {
         g->mutable_heads()->set_begin(1);
         g->mutable_heads()->set_end(1);
       },
       "heads: [1, 1) is empty"},
      {[](v1::GetRequest* g) { g->set_output_dtype(static_cast<v1::DType>(7)); },
       "output_dtype: unknown value 7"},
  };
  for (const Case& c : kCases) {
    v1::GetRequest g = GetOf({1});
    c.mutate(&g);
    v1::GetResponse resp;
    const absl::Status s = Get(g, &resp);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_EQ(Msg(s), c.message);
  }
}

TEST_F(RpcServiceTest, RejectsSliceOutsideTheChunk) {
  v1::PutRequest req;
  *req.add_chunks() = Chunk(1);
  ASSERT_TRUE(Put(req).ok());
  v1::GetRequest g = GetOf({1});
  g.mutable_layers()->set_begin(2);
  g.mutable_layers()->set_end(9);
  v1::GetResponse resp;
  absl::Status s = Get(g, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(s), "layers: [2, 9) is outside the 4 layers of the chunk at keys[0]");
  g = GetOf({1});
  g.mutable_heads()->set_begin(4);
  s = Get(g, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), StartsWith("heads: [4, 4) is outside the 4 heads"));
}

TEST_F(RpcServiceTest, MissingKeyIsNotFoundUnlessAllowed) {
  v1::PutRequest req;
  *req.add_chunks() = Chunk(1);
  ASSERT_TRUE(Put(req).ok());
  v1::GetResponse resp;
  absl::Status s = Get(GetOf({1, 2}), &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), StartsWith("keys[1]: chunk "));

  v1::GetRequest g = GetOf({2, 1});
  g.set_allow_missing(true);
  resp.Clear();
  ASSERT_TRUE(Get(g, &resp).ok());
  ASSERT_EQ(resp.results_size(), 2);
  EXPECT_FALSE(resp.results(0).found());
  EXPECT_EQ(resp.results(0).key().lo(), 2u);
  EXPECT_TRUE(resp.results(0).data().empty());
  EXPECT_TRUE(resp.results(1).found());
  EXPECT_EQ(resp.results(1).data().size(), 2ull * 2 * 4 * 40 * 4 * 64);
}

TEST_F(RpcServiceTest, OversizedGetIsResourceExhaustedBeforeDecoding) {
  v1::PutRequest req;
  for (uint64_t id = 1; id <= 3; ++id) *req.add_chunks() = Chunk(id);
  ASSERT_TRUE(Put(req).ok());
  options_.max_message_bytes = 300000;  // each full slice is 163840 bytes
  v1::GetResponse resp;
  const absl::Status s = Get(GetOf({1, 2, 3}), &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(s), HasSubstr("bytes over max_message_bytes (300000)"));
  EXPECT_THAT(Msg(s), HasSubstr("fewer keys"));
  EXPECT_THAT(Msg(s), HasSubstr("layer range"));
  EXPECT_EQ(resp.results_size(), 0) << "nothing was decoded";

  // Half the layers fit.
  v1::GetRequest g = GetOf({1, 2, 3});
  g.mutable_layers()->set_end(2);
  resp.Clear();
  EXPECT_TRUE(Get(g, &resp).ok());
  EXPECT_LE(resp.ByteSizeLong(), options_.max_message_bytes);
}

// --- Lookup, Delete, Stats -------------------------------------------------------------------

TEST_F(RpcServiceTest, LookupCountsThePresentPrefix) {
  v1::PutRequest req;
  *req.add_chunks() = Chunk(1);
  *req.add_chunks() = Chunk(2);
  *req.add_chunks() = Chunk(4);
  ASSERT_TRUE(Put(req).ok());
  v1::LookupRequest l;
  l.set_namespace_("model-a");
  for (uint64_t id : {1, 2, 3, 4}) *l.add_keys() = Key(0xABCDEF, id);
  v1::LookupResponse resp;
  ASSERT_TRUE(HandleLookup(*store_, options_, l, &resp).ok());
  EXPECT_EQ(resp.present_prefix(), 2u);
  l.set_namespace_("model-b");  // namespaces are separate
  ASSERT_TRUE(HandleLookup(*store_, options_, l, &resp).ok());
  EXPECT_EQ(resp.present_prefix(), 0u);

  l.clear_keys();
  EXPECT_EQ(Msg(HandleLookup(*store_, options_, l, &resp)), "keys: empty");
  l.clear_namespace_();
  *l.add_keys() = Key(1, 1);
  const absl::Status s = HandleLookup(*store_, options_, l, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(s), "namespace: empty");
}

TEST_F(RpcServiceTest, DeleteCountsDeletedAndNotFound) {
  v1::PutRequest req;
  *req.add_chunks() = Chunk(1);
  *req.add_chunks() = Chunk(2);
  ASSERT_TRUE(Put(req).ok());
  v1::DeleteRequest d;
  d.set_namespace_("model-a");
  for (uint64_t id : {1, 3, 2, 1}) *d.add_keys() = Key(0xABCDEF, id);
  v1::DeleteResponse resp;
  ASSERT_TRUE(HandleDelete(*store_, options_, d, &resp).ok());
  EXPECT_EQ(resp.deleted(), 2u);
  EXPECT_EQ(resp.not_found(), 2u);
  EXPECT_EQ(StoredChunks(), 0u);
  d.clear_keys();
  const absl::Status s = HandleDelete(*store_, options_, d, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(s), "keys: empty");
}

TEST_F(RpcServiceTest, StatsReportsBitsAndIdentity) {
  v1::StatsResponse empty;
  HandleStats(*store_, options_, &empty);
  EXPECT_EQ(empty.chunks(), 0u);
  EXPECT_EQ(empty.equivalent_bits(), 0.0);
  EXPECT_EQ(empty.true_bits(), 0.0);
  EXPECT_EQ(empty.capacity_bytes(), 64ull << 20);
  EXPECT_EQ(empty.page_bytes(), 16u << 10);
  EXPECT_EQ(empty.max_message_bytes(), 256ull << 20);
  EXPECT_FALSE(empty.version().empty());
  EXPECT_EQ(empty.codec_path(), kernels::FastPathName());

  v1::PutRequest req;
  *req.add_chunks() = Chunk(1, v1::PRESET_KIVI_2);
  *req.add_chunks() = Chunk(2, v1::PRESET_FP16);
  v1::PutResponse put;
  ASSERT_TRUE(Put(req, &put).ok());
  v1::StatsResponse s;
  HandleStats(*store_, options_, &s);
  EXPECT_EQ(s.chunks(), 2u);
  EXPECT_EQ(s.puts(), 2u);
  // Same element count per chunk: the element-weighted mean is the plain mean.
  EXPECT_NEAR(s.equivalent_bits(), (2.0 + 16.0) / 2, 1e-9);
  const double elements = 2 * (2.0 * 4 * 40 * 4 * 64);
  EXPECT_NEAR(s.true_bits(), 8.0 * s.stored_bytes() / elements, 1e-9);
  EXPECT_EQ(s.stored_bytes(),
            put.results(0).info().stored_bytes() + put.results(1).info().stored_bytes());
  EXPECT_EQ(s.logical_bytes(), 2 * put.results(0).info().logical_bytes());
}

}  // namespace
}  // namespace kvstash::rpc
