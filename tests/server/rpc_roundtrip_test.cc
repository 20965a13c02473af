// A real-socket round trip in one process: grpc::Server on 127.0.0.1:0 with KvStashService,
// driven through the generated stub.
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/half.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "server/rpc/service.h"
#include "server/store/store.h"

namespace kvstash::rpc {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::vector<uint16_t> RandomValues(uint64_t n, kernels::DType dtype, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> v(n);
  for (uint64_t i = 0; i < n; ++i)
    v[i] = kernels::FloatToHalfSat(normal(rng) * (1.0f + (i % 7)), static_cast<int>(dtype));
  return v;
}

v1::PutChunk MakeChunk(const std::string& ns, uint64_t id, uint32_t L, uint32_t T, uint32_t H,
                       uint32_t D, v1::Preset preset, const std::vector<uint16_t>& values) {
  v1::PutChunk c;
  c.set_namespace_(ns);
  c.mutable_key()->set_hi(0x1234);
  c.mutable_key()->set_lo(id);
  c.mutable_layout()->set_num_layers(L);
  c.mutable_layout()->set_num_tokens(T);
  c.mutable_layout()->set_num_heads(H);
  c.mutable_layout()->set_head_dim(D);
  c.set_dtype(v1::DTYPE_FP16);
  c.mutable_codec()->set_preset(preset);
  c.set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 2));
  return c;
}

class RpcRoundTripTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(256ull << 20); }
  void TearDown() override { Stop(); }

  void Start(uint64_t max_message_bytes) {
    const uint32_t seed = std::random_device{}();
    rng_.seed(seed);
    RecordProperty("seed", std::to_string(seed));
    store::StoreOptions so;
    so.host_capacity_bytes = 256ull << 20;
    absl::StatusOr<std::unique_ptr<store::Store>> st = store::Store::Create(so);
    ASSERT_TRUE(st.ok()) << st.status();
    store_ = *std::move(st);
    ServiceOptions o;
    o.worker_threads = 2;
    o.max_message_bytes = max_message_bytes;
    service_ = std::make_unique<KvStashService>(store_.get(), o);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
    builder.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    stub_ = v1::KvStash::NewStub(grpc::CreateCustomChannel(
        "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args));
  }

  // The daemon's shutdown order: refuse new calls, let gRPC finish in-flight ones, then
  // service (drains the pool), then store.
  void Stop() {
    if (server_ == nullptr) return;
    service_->StartDraining();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    server_->Wait();
    server_.reset();
    service_.reset();
    store_.reset();
    stub_.reset();
  }

  template <typename Req, typename Resp, typename Method>
  grpc::Status Call(Method method, const Req& req, Resp* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return ((*stub_).*method)(&ctx, req, resp);
  }

  std::mt19937 rng_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<KvStashService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::KvStash::Stub> stub_;
};

TEST_F(RpcRoundTripTest, PutsAndGets32MiBChunkMatchingTheCodec) {
  const uint32_t L = 32, T = 256, H = 8, D = 128;
  const kernels::ChunkShape shape{L, T, H, D, kernels::DType::kF16};
  const std::vector<uint16_t> values = RandomValues(shape.elements(), shape.dtype, rng_);
  ASSERT_EQ(values.size() * 2, 32ull << 20);

  v1::PutRequest put;
  *put.add_chunks() = MakeChunk("llama", 1, L, T, H, D, v1::PRESET_XQUANT, values);
  v1::PutResponse put_resp;
  grpc::Status s = Call(&v1::KvStash::Stub::Put, put, &put_resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(put_resp.results_size(), 1);
  EXPECT_EQ(put_resp.results(0).info().logical_bytes(), 32ull << 20);
  EXPECT_LT(put_resp.results(0).info().stored_bytes(), 8ull << 20);  // < 4 bits/element

  absl::StatusOr<std::vector<uint8_t>> encoded = kernels::EncodeChunk(
      shape, kernels::PresetConfig(kernels::Preset::kXQuant, L), values);
  ASSERT_TRUE(encoded.ok());
  std::vector<uint16_t> expected;
  ASSERT_TRUE(kernels::Decode(encoded->data(), encoded->size(), {}, kernels::DType::kF16,
                              &expected).ok());

  v1::GetRequest get;
  get.set_namespace_("llama");
  *get.add_keys() = put.chunks(0).key();
  v1::GetResponse get_resp;
  s = Call(&v1::KvStash::Stub::Get, get, &get_resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(get_resp.results_size(), 1);
  const v1::GetResult& r = get_resp.results(0);
  EXPECT_TRUE(r.found());
  EXPECT_EQ(r.dtype(), v1::DTYPE_FP16);
  ASSERT_EQ(r.data().size(), 32ull << 20);
  EXPECT_EQ(std::memcmp(r.data().data(), expected.data(), r.data().size()), 0);

  // Layers [4, 8) are a contiguous run of the full decode.
  get.mutable_layers()->set_begin(4);
  get.mutable_layers()->set_end(8);
  s = Call(&v1::KvStash::Stub::Get, get, &get_resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  const uint64_t per_layer = 2ull * T * H * D;
  ASSERT_EQ(get_resp.results(0).data().size(), 4 * per_layer * 2);
  EXPECT_EQ(std::memcmp(get_resp.results(0).data().data(), expected.data() + 4 * per_layer,
                        4 * per_layer * 2),
            0);
}

TEST_F(RpcRoundTripTest, LookupDeleteAndStatsOverTheWire) {
  v1::PutRequest put;
  for (uint64_t id = 1; id <= 3; ++id)
    *put.add_chunks() = MakeChunk("ns", id, 2, 64, 2, 32, v1::PRESET_KIVI_2,
                                  RandomValues(2ull * 2 * 64 * 2 * 32, kernels::DType::kF16,
                                               rng_));
  v1::PutResponse put_resp;
  ASSERT_TRUE(Call(&v1::KvStash::Stub::Put, put, &put_resp).ok());
  ASSERT_EQ(put_resp.results_size(), 3);

  v1::LookupRequest lookup;
  lookup.set_namespace_("ns");
  for (uint64_t id : {1, 2, 9, 3}) {
    v1::ChunkKey* k = lookup.add_keys();
    k->set_hi(0x1234);
    k->set_lo(id);
  }
  v1::LookupResponse lookup_resp;
  ASSERT_TRUE(Call(&v1::KvStash::Stub::Lookup, lookup, &lookup_resp).ok());
  EXPECT_EQ(lookup_resp.present_prefix(), 2u);

  v1::DeleteRequest del;
  del.set_namespace_("ns");
  *del.mutable_keys() = lookup.keys();
  v1::DeleteResponse del_resp;
  ASSERT_TRUE(Call(&v1::KvStash::Stub::Delete, del, &del_resp).ok());
  EXPECT_EQ(del_resp.deleted(), 3u);
  EXPECT_EQ(del_resp.not_found(), 1u);

  v1::StatsResponse stats;
  ASSERT_TRUE(Call(&v1::KvStash::Stub::Stats, v1::StatsRequest(), &stats).ok());
  EXPECT_EQ(stats.chunks(), 0u);
  EXPECT_EQ(stats.puts(), 3u);
  EXPECT_EQ(stats.deletes(), 3u);
  EXPECT_EQ(stats.max_message_bytes(), 256ull << 20);
  EXPECT_EQ(stats.codec_path(), kernels::FastPathName());
  EXPECT_FALSE(stats.version().empty());
}

TEST_F(RpcRoundTripTest, BadRequestThenGoodRequestKeepsServing) {
  std::vector<uint16_t> values = RandomValues(2ull * 2 * 32 * 2 * 64, kernels::DType::kF16, rng_);
  v1::PutRequest bad;
  *bad.add_chunks() = MakeChunk("ns", 1, 2, 32, 2, 64, v1::PRESET_XQUANT, values);
  *bad.add_chunks() = MakeChunk("ns", 2, 2, 32, 2, 64, v1::PRESET_XQUANT, values);
  bad.mutable_chunks(1)->mutable_layout()->set_head_dim(100);
  v1::PutResponse resp;
  grpc::Status s = Call(&v1::KvStash::Stub::Put, bad, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), StartsWith("chunks[1].layout.head_dim: 100 must be a multiple"));

  v1::GetRequest get;
  get.set_namespace_("ns");
  *get.add_keys() = bad.chunks(0).key();
  v1::GetResponse get_resp;
  s = Call(&v1::KvStash::Stub::Get, get, &get_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << "nothing of the bad Put is stored";

  bad.mutable_chunks(1)->mutable_layout()->set_head_dim(64);
  s = Call(&v1::KvStash::Stub::Put, bad, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.results_size(), 2);
  s = Call(&v1::KvStash::Stub::Get, get, &get_resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(get_resp.results(0).found());
}

TEST_F(RpcRoundTripTest, ConcurrentClientsAllSucceed) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  const uint32_t seed = rng_();
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(seed + t);
      for (int i = 0; i < 5; ++i) {
        const std::vector<uint16_t> values =
            RandomValues(2ull * 4 * 64 * 4 * 64, kernels::DType::kF16, rng);
        v1::PutRequest put;
        *put.add_chunks() =
            MakeChunk("ns" + std::to_string(t), i, 4, 64, 4, 64, v1::PRESET_FP16, values);
        v1::PutResponse pr;
        if (!Call(&v1::KvStash::Stub::Put, put, &pr).ok()) ++failures;
        v1::GetRequest get;
        get.set_namespace_(put.chunks(0).namespace_());
        *get.add_keys() = put.chunks(0).key();
        v1::GetResponse gr;
        if (!Call(&v1::KvStash::Stub::Get, get, &gr).ok() ||
            gr.results(0).data() != put.chunks(0).data())
          ++failures;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_F(RpcRoundTripTest, DrainingRefusesNewCallsWithUnavailable) {
  service_->StartDraining();
  v1::StatsResponse stats;
  grpc::Status s = Call(&v1::KvStash::Stub::Stats, v1::StatsRequest(), &stats);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  v1::GetRequest get;
  get.set_namespace_("ns");
  get.add_keys();
  v1::GetResponse gr;
  s = Call(&v1::KvStash::Stub::Get, get, &gr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(RpcRoundTripTest, MessagesOverTheLimitAreResourceExhausted) {
  Stop();
  Start(1 << 20);
  // A request over the limit is refused by gRPC itself.
  const std::vector<uint16_t> big = RandomValues(2ull * 4 * 256 * 4 * 128, kernels::DType::kF16,
                                                 rng_);  // 2 MiB
  v1::PutRequest put;
  *put.add_chunks() = MakeChunk("ns", 1, 4, 256, 4, 128, v1::PRESET_XQUANT, big);
  v1::PutResponse resp;
  grpc::Status s = Call(&v1::KvStash::Stub::Put, put, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  // A response over the limit is refused by the service before decoding, with advice.
  // Two 512 KiB chunks each fit a Put; both in one Get do not.
  put.Clear();
  for (uint64_t id = 1; id <= 2; ++id) {
    v1::PutRequest one;
    *one.add_chunks() = MakeChunk("ns", id, 2, 128, 4, 128, v1::PRESET_XQUANT,
                                  RandomValues(2ull * 2 * 128 * 4 * 128, kernels::DType::kF16,
                                               rng_));
    s = Call(&v1::KvStash::Stub::Put, one, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    *put.add_chunks() = one.chunks(0);
  }
  v1::GetRequest get;
  get.set_namespace_("ns");
  *get.add_keys() = put.chunks(0).key();
  *get.add_keys() = put.chunks(1).key();
  v1::GetResponse gr;
  s = Call(&v1::KvStash::Stub::Get, get, &gr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("over max_message_bytes (1048576)"));
  EXPECT_THAT(s.error_message(), HasSubstr("fewer keys"));
  get.mutable_layers()->set_end(1);  // half of each fits
  s = Call(&v1::KvStash::Stub::Get, get, &gr);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

}  // namespace
}  // namespace kvstash::rpc
