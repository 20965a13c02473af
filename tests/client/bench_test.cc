// kvstash-bench's library: option parsing, the mixed-workload sequence, percentiles, the
// transport registry, the TCP baseline, and whole runs against an in-process fake daemon
// that encodes and decodes with the real codec.
#include "bench.h"

#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "tcp_baseline.h"
#include "transport.h"

namespace kvstash::bench {
namespace {

using client::ChunkKey;

// A daemon in memory: Put encodes with the CPU codec, Get decodes. Optionally corrupts
// every Get's data or fails every n-th call with a given status.
class FakeStore {
 public:
  absl::StatusOr<uint64_t> Put(const PutOp& op) {
    if (absl::Status st = MaybeFail(); !st.ok()) return st;
    const auto* in = reinterpret_cast<const uint16_t*>(op.data.data());
    absl::StatusOr<std::vector<uint8_t>> enc = kernels::EncodeChunk(
        op.shape, kernels::PresetConfig(op.preset, op.shape.num_layers),
        std::span<const uint16_t>(in, op.data.size() / 2));
    if (!enc.ok()) return enc.status();
    const uint64_t stored = enc->size();
    std::lock_guard<std::mutex> lock(mu_);
    chunks_[{op.key.hi, op.key.lo}] = {op.shape.dtype, std::move(*enc)};
    ++puts_;
    return stored;
  }
  absl::StatusOr<GetReply> Get(const ChunkKey& key) {
    if (absl::Status st = MaybeFail(); !st.ok()) return st;
    std::pair<kernels::DType, std::vector<uint8_t>> chunk;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = chunks_.find({key.hi, key.lo});
      if (it == chunks_.end()) return absl::NotFoundError("not found");
      chunk = it->second;
    }
    std::vector<uint16_t> out;
    if (absl::Status st = kernels::Decode(chunk.second.data(), chunk.second.size(), {},
                                          chunk.first, &out);
        !st.ok()) {
      return st;
    }
    GetReply r;
    r.stored_bytes = chunk.second.size();
    r.data.assign(reinterpret_cast<const char*>(out.data()), out.size() * 2);
    if (corrupt_ && !r.data.empty()) r.data[r.data.size() / 2] ^= 1;
    return r;
  }
  absl::StatusOr<uint32_t> Lookup(std::span<const ChunkKey> chain) {
    std::lock_guard<std::mutex> lock(mu_);
    uint32_t n = 0;
    while (n < chain.size() && chunks_.count({chain[n].hi, chain[n].lo})) ++n;
    return n;
  }
  absl::Status Delete(std::span<const ChunkKey> keys) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const ChunkKey& k : keys) chunks_.erase({k.hi, k.lo});
    return absl::OkStatus();
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return chunks_.size();
  }
  void set_corrupt(bool c) { corrupt_ = c; }
  void FailEvery(uint64_t n, absl::Status st) {
    fail_every_ = n;
    fail_status_ = std::move(st);
  }

 private:
  absl::Status MaybeFail() {
    if (fail_every_ == 0) return absl::OkStatus();
    std::lock_guard<std::mutex> lock(mu_);
    return ++calls_ % fail_every_ == 0 ? fail_status_ : absl::OkStatus();
  }

  std::mutex mu_;
  std::map<std::pair<uint64_t, uint64_t>, std::pair<kernels::DType, std::vector<uint8_t>>> chunks_;
  uint64_t puts_ = 0;
  bool corrupt_ = false;
  uint64_t fail_every_ = 0, calls_ = 0;
  absl::Status fail_status_;
};

class FakeTransport final : public Transport {
 public:
  explicit FakeTransport(FakeStore* store) : store_(store) {}
  absl::StatusOr<uint64_t> Put(std::string_view, const PutOp& op) override {
    return store_->Put(op);
  }
  absl::StatusOr<GetReply> Get(std::string_view, const ChunkKey& key) override {
    return store_->Get(key);
  }
  absl::StatusOr<uint32_t> Lookup(std::string_view, std::span<const ChunkKey> chain) override {
    return store_->Lookup(chain);
  }
  absl::Status Delete(std::string_view, std::span<const ChunkKey> keys) override {
    return store_->Delete(keys);
  }

 private:
  FakeStore* store_;
};

class BenchRunTest : public ::testing::Test {
 protected:
  BenchRunTest() {
    std::mt19937_64 rng(std::random_device{}());
    o_.shape = kernels::ChunkShape{2, 32, 2, 64, kernels::DType::kF16};
    o_.seed = rng() % 1000 + 1;  // fresh payloads every run
    o_.connections = 2;
    o_.inflight = 2;
    o_.keys = 6;
    o_.payloads = 3;
    o_.count = 40;
  }
  absl::StatusOr<BenchReport> Run() {
    return RunBench(o_, [this](uint32_t) -> absl::StatusOr<std::unique_ptr<Transport>> {
      return std::unique_ptr<Transport>(new FakeTransport(&store_));
    }, "fake", "memory");
  }
  BenchOptions o_;
  FakeStore store_;
};

TEST(BenchParseTest, RatioIsPutsOverAll) {
  EXPECT_DOUBLE_EQ(*ParseRatio("1:3"), 0.25);
  EXPECT_DOUBLE_EQ(*ParseRatio("1:0"), 1.0);
  EXPECT_DOUBLE_EQ(*ParseRatio("0:5"), 0.0);
  EXPECT_DOUBLE_EQ(*ParseRatio("0.5:1.5"), 0.25);
  for (const char* bad : {"", "1", "1:", ":3", "a:b", "0:0", "-1:2", "1:2:3"}) {
    EXPECT_EQ(ParseRatio(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(BenchParseTest, WorkloadNamesRoundTrip) {
  for (Workload w : {Workload::kPut, Workload::kGet, Workload::kMixed, Workload::kLookup}) {
    EXPECT_EQ(*ParseWorkload(WorkloadName(w)), w);
  }
  EXPECT_EQ(ParseWorkload("scan").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BenchParseTest, MixedSequenceHoldsTheRatioInEveryPrefix) {
  for (double f : {0.0, 0.1, 0.25, 0.5, 0.9, 1.0}) {
    uint64_t puts = 0;
    for (uint64_t i = 0; i < 1000; ++i) {
      puts += MixedIsPut(i, f);
      EXPECT_NEAR(static_cast<double>(puts), f * (i + 1), 1.0) << f << " " << i;
    }
  }
}

TEST(BenchParseTest, PercentileIsNearestRank) {
  const std::vector<uint64_t> v = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(Percentile(v, 0.5), 5u);
  EXPECT_EQ(Percentile(v, 0.9), 9u);
  EXPECT_EQ(Percentile(v, 0.99), 10u);
  EXPECT_EQ(Percentile(v, 1.0), 10u);
  EXPECT_EQ(Percentile(v, 0.0), 1u);
  EXPECT_EQ(Percentile(std::vector<uint64_t>{}, 0.5), 0u);
}

TEST(BenchParseTest, StoredPrefixRounds) {
  EXPECT_EQ(StoredPrefix(0.5, 8), 4u);
  EXPECT_EQ(StoredPrefix(0.0, 8), 0u);
  EXPECT_EQ(StoredPrefix(1.0, 8), 8u);
  EXPECT_EQ(StoredPrefix(0.3, 10), 3u);
}

TEST(BenchParseTest, ValidateNamesTheFlag) {
  BenchOptions o;
  o.connections = 0;
  EXPECT_EQ(ValidateOptions(o).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ValidateOptions(o).message().find("--connections"), std::string::npos);
  o = BenchOptions();
  o.hit_rate = 1.5;
  EXPECT_NE(ValidateOptions(o).message().find("--hit-rate"), std::string::npos);
  o = BenchOptions();
  o.shape.head_dim = 100;
  EXPECT_EQ(ValidateOptions(o).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateOptions(BenchOptions()).ok());
}

TEST(BenchTransportTest, CudaIpcNeedsCudaAndADeviceAndShmNeedsSlotSizes) {
  EXPECT_EQ(*ParseTransport("grpc"), TransportKind::kGrpc);
  EXPECT_EQ(*ParseTransport("shm"), TransportKind::kShm);
  EXPECT_EQ(ParseTransport("rdma").status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<TransportKind> k = ParseTransport("cuda-ipc");
  ASSERT_TRUE(k.ok());
  TransportOptions o;
  o.shm_slot_bytes = 4096;
  o.cuda_device = 4096;  // no machine has it
  absl::StatusOr<std::unique_ptr<Transport>> t = OpenTransport(*k, o);
  // Unimplemented in a build without CUDA, FailedPrecondition (no such device) with it.
  EXPECT_TRUE(t.status().code() == absl::StatusCode::kUnimplemented ||
              t.status().code() == absl::StatusCode::kFailedPrecondition)
      << t.status();
  EXPECT_NE(t.status().message().find("cuda-ipc"), std::string::npos) << t.status();
  // cuda-ipc and shm without slot sizes are refused before connecting.
  t = OpenTransport(TransportKind::kShm, TransportOptions());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
}

TEST(BenchMemcpyBaselineTest, CountsCopiesAndReportsThroughput) {
  MemcpyResult m = RunMemcpyBaseline(1 << 20, 2, 0, 10);
  EXPECT_EQ(m.copies, 10u);
  EXPECT_EQ(m.latency_ns.size(), 10u);
  EXPECT_GT(m.gbps(1 << 20), 0.0);
}

TEST(BenchTransportTest, GrpcWithNoDaemonIsUnavailable) {
  TransportOptions o;
  o.target = "127.0.0.1:1";  // nothing listens on port 1
  o.connect_timeout = std::chrono::milliseconds(300);
  EXPECT_EQ(OpenTransport(TransportKind::kGrpc, o).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(TcpBaselineTest, MovesTheRequestedTransfersBothWays) {
  TcpBaselineOptions o;
  o.payload_bytes = 3 << 20;
  o.streams = 3;
  o.count = 12;
  absl::StatusOr<TcpBaselineResult> r = RunTcpBaseline(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->upload.ops, 12u);
  EXPECT_EQ(r->download.ops, 12u);
  EXPECT_EQ(r->upload.latency_ns.size(), 12u);
  EXPECT_GT(r->upload.gbps(o.payload_bytes), 0);
  EXPECT_GT(r->download.gbps(o.payload_bytes), 0);
}

TEST(TcpBaselineTest, RejectsEmptyPayload) {
  EXPECT_EQ(RunTcpBaseline(TcpBaselineOptions{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(BenchRunTest, PutWorkloadCountsEveryOperation) {
  o_.workload = Workload::kPut;
  absl::StatusOr<BenchReport> r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  const OpReport& put = r->ops[static_cast<int>(Op::kPut)];
  EXPECT_EQ(put.ops, 40u);
  EXPECT_EQ(put.latency_ns.size(), 40u);
  EXPECT_EQ(put.logical_bytes, 40 * o_.shape.payload_bytes());
  EXPECT_GT(put.stored_bytes, 0u);
  EXPECT_LT(put.stored_bytes, put.logical_bytes);
  EXPECT_EQ(r->error_count(), 0u);
  EXPECT_EQ(store_.size(), 0u) << "cleanup deletes the bench keys";
}

TEST_F(BenchRunTest, GetWorkloadVerifiesEveryGet) {
  o_.workload = Workload::kGet;
  o_.verify = true;
  o_.cleanup = false;
  absl::StatusOr<BenchReport> r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ops[static_cast<int>(Op::kGet)].ops, 40u);
  EXPECT_EQ(r->verify_checked, 40u);
  EXPECT_EQ(r->verify_mismatches, 0u);
  EXPECT_EQ(store_.size(), 6u) << "--keep leaves the keys";
}

TEST_F(BenchRunTest, VerifyCatchesAFlippedBit) {
  o_.workload = Workload::kGet;
  o_.verify = true;
  store_.set_corrupt(true);
  absl::StatusOr<BenchReport> r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->verify_mismatches, 40u);
  EXPECT_EQ(r->ops[static_cast<int>(Op::kGet)].errors.at("VERIFY_MISMATCH"), 40u);
  EXPECT_EQ(r->error_count(), 40u);
  EXPECT_NE(r->Json().find("\"ok\":false"), std::string::npos);
}

TEST_F(BenchRunTest, MixedWorkloadFollowsTheRatio) {
  o_.workload = Workload::kMixed;
  o_.put_fraction = 0.25;
  o_.verify = true;
  absl::StatusOr<BenchReport> r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ops[static_cast<int>(Op::kPut)].ops, 10u);
  EXPECT_EQ(r->ops[static_cast<int>(Op::kGet)].ops, 30u);
  EXPECT_EQ(r->verify_mismatches, 0u);
}

TEST_F(BenchRunTest, LookupReportsTheConfiguredHitRate) {
  o_.workload = Workload::kLookup;
  o_.chains = 3;
  o_.chain_length = 8;
  o_.hit_rate = 0.25;
  o_.verify = true;
  absl::StatusOr<BenchReport> r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ops[static_cast<int>(Op::kLookup)].ops, 40u);
  EXPECT_EQ(r->lookup_keys, 40u * 8);
  EXPECT_EQ(r->lookup_present, 40u * 2);
  EXPECT_EQ(r->verify_mismatches, 0u);
  EXPECT_NE(r->Json().find("\"hit_rate\":0.25"), std::string::npos) << r->Json();
}

TEST_F(BenchRunTest, ErrorsAreCountedByStatusCode) {
  o_.workload = Workload::kPut;
  store_.FailEvery(4, absl::ResourceExhaustedError("full"));
  absl::StatusOr<BenchReport> r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  const OpReport& put = r->ops[static_cast<int>(Op::kPut)];
  EXPECT_EQ(put.errors.at("RESOURCE_EXHAUSTED"), 10u);
  EXPECT_EQ(put.ops, 30u);
  EXPECT_NE(r->Json().find("\"RESOURCE_EXHAUSTED\":10"), std::string::npos) << r->Json();
  EXPECT_NE(r->Text().find("RESOURCE_EXHAUSTED: 10"), std::string::npos) << r->Text();
}

TEST_F(BenchRunTest, DurationRunsWarmupThenMeasures) {
  o_.workload = Workload::kPut;
  o_.count = 0;
  o_.duration_s = 0.3;
  o_.warmup_s = 0.1;
  absl::StatusOr<BenchReport> r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(r->seconds, 0.3);
  EXPECT_GT(r->ops[0].ops, 0u);
}

TEST_F(BenchRunTest, BaselineIsReportedAsAFraction) {
  o_.workload = Workload::kPut;
  o_.tcp_baseline = true;
  o_.count = 8;
  absl::StatusOr<BenchReport> r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->baseline.has_value());
  EXPECT_EQ(r->baseline->upload.ops, 8u);
  const std::string json = r->Json();
  EXPECT_NE(json.find("\"grpc_fraction\":{\"put\":"), std::string::npos) << json;
  EXPECT_NE(r->Text().find("loopback TCP baseline"), std::string::npos);
}

TEST_F(BenchRunTest, OpenFailureIsReturned) {
  absl::StatusOr<BenchReport> r = RunBench(o_, [](uint32_t) {
    return absl::StatusOr<std::unique_ptr<Transport>>(absl::UnavailableError("down"));
  });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace kvstash::bench
