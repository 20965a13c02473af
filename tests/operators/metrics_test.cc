// The metric catalog, the metric handles, the store collector, the HTTP endpoint
// (/metrics, /healthz, /readyz), the fidelity probe, and the daemon's gRPC health and
// reflection services.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <future>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"
#include "server/metrics/catalog.h"
#include "server/metrics/http_server.h"
#include "server/metrics/metrics.h"
#include "server/rpc/service.h"
#include "server/store/store.h"
#include "tests/integration/daemon_process.h"

namespace kvstash::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

struct HttpReply {
  int status = 0;
  std::string body;
};

// A minimal HTTP/1.0 GET over loopback.
HttpReply Get(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  HttpReply reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return reply;
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  (void)::send(fd, request.data(), request.size(), 0);
  std::string raw;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) raw.append(buf, n);
  ::close(fd);
  if (raw.size() > 12) reply.status = std::stoi(raw.substr(9, 3));
  const size_t body = raw.find("\r\n\r\n");
  if (body != std::string::npos) reply.body = raw.substr(body + 4);
  return reply;
}

TEST(CatalogTest, NamesFollowPrometheusConventions) {
  std::set<std::string_view> names;
  for (const MetricDef& d : kCatalog) {
    EXPECT_TRUE(names.insert(d.name).second) << "duplicate " << d.name;
    EXPECT_EQ(d.name.substr(0, 8), "kvstash_") << d.name;
    for (char c : d.name) EXPECT_TRUE(std::islower(c) || std::isdigit(c) || c == '_') << d.name;
    const bool total = d.name.size() > 6 && d.name.substr(d.name.size() - 6) == "_total";
    EXPECT_EQ(total, d.type == MetricType::kCounter) << d.name;
    EXPECT_FALSE(d.help.empty()) << d.name;
    EXPECT_THAT(std::string(d.name), Not(HasSubstr("_bits"))) << "base unit is bytes";
  }
  EXPECT_GE(names.size(), 30u);
}

TEST(MetricsTest, ExportsEveryCatalogFamily) {
  auto metrics = std::make_shared<Metrics>(BuildInfo{"1.2.3", "abc", true, "Test GPU"});
  metrics->ObserveRequest(Method::kGet, Transport::kGrpc, "NOT_FOUND", 0.01, 10, 0);
  metrics->ObserveFidelity("xquant", 0.1, 0.2);
  metrics->ObserveLookup(3);
  metrics->ObservePutChunk("xquant", 100, 30, 1.375);  // families without series print nothing
  store::StoreStats stats;
  stats.capacity_bytes = 1 << 20;
  stats.used_bytes = 1 << 16;
  stats.gpus.push_back({.ordinal = 0, .name = "Test GPU", .healthy = false,
                        .capacity_bytes = 1 << 20});
  class Fixed : public prometheus::Collectable {
   public:
    explicit Fixed(store::StoreStats s) : s_(std::move(s)) {}
    std::vector<prometheus::MetricFamily> Collect() const override { return StoreFamilies(s_); }
    store::StoreStats s_;
  };
  const std::string text = SerializeText({metrics->registry(), std::make_shared<Fixed>(stats)});
  for (const MetricDef& d : kCatalog)
    EXPECT_NE(text.find("# TYPE " + std::string(d.name) + " "), std::string::npos) << d.name;
  EXPECT_THAT(text, HasSubstr("kvstash_build_info{cuda=\"on\",git_commit=\"abc\",gpu=\"Test GPU\","
                              "version=\"1.2.3\"} 1"));
  EXPECT_THAT(text, HasSubstr(
      "kvstash_requests_total{code=\"NOT_FOUND\",method=\"Get\",transport=\"grpc\"} 1"));
  EXPECT_THAT(text, HasSubstr("kvstash_tier_healthy{tier=\"gpu\",device=\"0\"} 0"));
  EXPECT_THAT(text, HasSubstr("kvstash_tier_used_bytes{tier=\"host\",device=\"host\"} 65536"));
  EXPECT_THAT(text, HasSubstr("kvstash_lookups_total{result=\"hit\"} 1"));
}

TEST(MetricsTest, PresetBitsAreElementWeightedMeans) {
  Metrics metrics(BuildInfo{});
  metrics.ObservePutChunk("xquant", 1000, 250, 1.5);   // 2 true bits
  metrics.ObservePutChunk("xquant", 3000, 1500, 1.0);  // 4 true bits
  const std::string text = SerializeText({metrics.registry()});
  EXPECT_THAT(text, HasSubstr("kvstash_codec_true_bitwidth{preset=\"xquant\"} 3.5"));
  EXPECT_THAT(text, HasSubstr("kvstash_codec_equivalent_bitwidth{preset=\"xquant\"} 1.125"));
}

TEST(HttpServerTest, ServesMetricsHealthAndReadiness) {
  auto metrics = std::make_shared<Metrics>(BuildInfo{});
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start({.listen = "127.0.0.1:0"}, {metrics->registry()});
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);
  EXPECT_EQ((*server)->address(), "127.0.0.1:" + std::to_string(port));

  EXPECT_EQ(Get(port, "/healthz").status, 200);
  EXPECT_EQ(Get(port, "/readyz").status, 503);  // not ready until told
  (*server)->SetReady(true);
  EXPECT_EQ(Get(port, "/readyz").status, 200);
  HttpReply m = Get(port, "/metrics");
  EXPECT_EQ(m.status, 200);
  EXPECT_THAT(m.body, HasSubstr("# TYPE kvstash_build_info gauge"));
  EXPECT_EQ(Get(port, "/metricsfoo").status, 404);
  EXPECT_EQ(Get(port, "/").status, 404);
  (*server)->SetReady(false);  // draining
  EXPECT_EQ(Get(port, "/readyz").status, 503);
  EXPECT_EQ(Get(port, "/healthz").status, 200);
}

TEST(HttpServerTest, TakenPortIsUnavailableNamingTheOption) {
  absl::StatusOr<std::unique_ptr<HttpServer>> first = HttpServer::Start({.listen = "127.0.0.1:0"}, {});
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<HttpServer>> second =
      HttpServer::Start({.listen = (*first)->address()}, {});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("metrics.listen"));
}

// --- The fidelity probe -------------------------------------------------------------------

class FidelityProbeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store::StoreOptions o;
    o.host_capacity_bytes = 64 << 20;
    o.use_gpu = false;
    absl::StatusOr<std::unique_ptr<store::Store>> s = store::Store::Create(o);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }
  std::vector<uint16_t> RandomPayload(const kernels::ChunkShape& shape) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<uint16_t> out(shape.elements());
    for (uint16_t& v : out) v = kernels::FloatToHalfSat(normal(rng_), static_cast<int>(shape.dtype));
    return out;
  }
  std::span<const uint8_t> Bytes(const std::vector<uint16_t>& v) {
    return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * 2};
  }
  std::mt19937 rng_{std::random_device{}()};
  std::unique_ptr<store::Store> store_;
};

TEST_F(FidelityProbeTest, LosslessIsExactAndLossyIsBounded) {
  const kernels::ChunkShape shape{4, 32, 2, 64, kernels::DType::kF16};
  const std::vector<uint16_t> x = RandomPayload(shape);
  ASSERT_TRUE(store_->Put("ns", {0, 1}, shape, kernels::PresetConfig(kernels::Preset::kFp16, 4),
                          Bytes(x)).ok());
  absl::StatusOr<rpc::FidelityError> exact = rpc::ProbeFidelity(*store_, "ns", {0, 1}, shape, Bytes(x));
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ(exact->key, 0.0);
  EXPECT_EQ(exact->value, 0.0);

  ASSERT_TRUE(store_->Put("ns", {0, 2}, shape, kernels::PresetConfig(kernels::Preset::kKivi2, 4),
                          Bytes(x)).ok());
  absl::StatusOr<rpc::FidelityError> lossy = rpc::ProbeFidelity(*store_, "ns", {0, 2}, shape, Bytes(x));
  ASSERT_TRUE(lossy.ok()) << lossy.status();
  EXPECT_GT(lossy->key, 0.01);  // 2-bit codes of Gaussian data: roughly 0.2-0.4
  EXPECT_LT(lossy->key, 0.6);
  EXPECT_GT(lossy->value, 0.01);
  EXPECT_LT(lossy->value, 0.6);
}

TEST_F(FidelityProbeTest, GoneOrReshapedChunkIsNotFound) {
  const kernels::ChunkShape shape{2, 16, 2, 32, kernels::DType::kBF16};
  const std::vector<uint16_t> x = RandomPayload(shape);
  EXPECT_EQ(rpc::ProbeFidelity(*store_, "ns", {9, 9}, shape, Bytes(x)).status().code(),
            absl::StatusCode::kNotFound);
  kernels::ChunkShape other = shape;
  other.num_tokens = 32;
  const std::vector<uint16_t> y = RandomPayload(other);
  ASSERT_TRUE(store_->Put("ns", {9, 9}, other, kernels::PresetConfig(kernels::Preset::kFp16, 2),
                          Bytes(y)).ok());
  EXPECT_EQ(rpc::ProbeFidelity(*store_, "ns", {9, 9}, shape, Bytes(x)).status().code(),
            absl::StatusCode::kNotFound);
}

// --- gRPC health and reflection of the real daemon ----------------------------------------

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// grpc.health.v1.Health/Check with a hand-encoded HealthCheckRequest{service}; returns
// the encoded response (status SERVING = "\x08\x01").
absl::StatusOr<std::string> HealthCheck(grpc::GenericStub& stub, const std::string& service) {
  std::string request;
  if (!service.empty()) request = std::string("\x0a", 1) + static_cast<char>(service.size()) + service;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  const grpc::ByteBuffer req = ToBuffer(request);
  grpc::ByteBuffer resp;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) return absl::UnavailableError(status.error_message());
  return FromBuffer(resp);
}

TEST(DaemonHealthTest, ReportsServingAndListsServicesByReflection) {
  testing::DaemonProcess daemon;
  // Reflection is off unless asked for (docs/security.md).
  ASSERT_TRUE(daemon.Start(KVSTASHD_PATH, {"--host-capacity", "16MiB", "--reflection"}).ok())
      << daemon.Log();
  auto channel = grpc::CreateChannel(daemon.address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  const std::string kServing("\x08\x01", 2);
  absl::StatusOr<std::string> all = HealthCheck(stub, "");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, kServing);
  absl::StatusOr<std::string> kv = HealthCheck(stub, "kvstash.v1.KvStash");
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_EQ(*kv, kServing);

  // ServerReflectionInfo (bidi): one ServerReflectionRequest{list_services: "*"}.
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call = stub.PrepareCall(&context,
                               "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  ASSERT_NE(call, nullptr);
  void* tag;
  bool ok;
  const auto step = [&](int id) {
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(tag, reinterpret_cast<void*>(id));
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(1));
  call->Write(ToBuffer(std::string("\x3a\x01*", 3)), reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(2));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(3));
  call->WritesDone(reinterpret_cast<void*>(4));
  step(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  EXPECT_TRUE(status.ok()) << status.error_message();
  const std::string listed = FromBuffer(response);
  EXPECT_THAT(listed, HasSubstr("kvstash.v1.KvStash"));
  EXPECT_THAT(listed, HasSubstr("grpc.health.v1.Health"));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }

  EXPECT_EQ(daemon.Stop(), 0) << daemon.Log();
  EXPECT_THAT(daemon.Log(), HasSubstr("kvstashd metrics on 127.0.0.1:"));
}

}  // namespace
}  // namespace kvstash::metrics
