#include "transport.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "kvstash/client/client.h"
#include "kvstash/client/grpc_channel.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "kvstash/v1/kvstash.pb.h"
#include "cuda_ipc_transport.h"
#include "redis_transport.h"

namespace kvstash::bench {
namespace {

namespace pb = ::kvstash::v1;

// gRPC and absl share code numbers (google.rpc.Code): same code, same message.
absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

void ToProto(const client::ChunkKey& k, pb::ChunkKey* out) {
  out->set_hi(k.hi);
  out->set_lo(k.lo);
}

// The bench's gRPC path talks to the stub directly rather than through kvstash::Client:
// it needs one TCP connection per Transport, which the client library does not offer
// (gRPC shares a subchannel between channels of equal arguments), and it measures the
// same wire calls the client library makes.
class GrpcTransport final : public Transport {
 public:
  GrpcTransport(const TransportOptions& options, std::shared_ptr<grpc::Channel> channel)
      : options_(options),
        auth_(options.token),
        channel_(std::move(channel)),
        stub_(pb::KvStash::NewStub(channel_)) {}

  absl::StatusOr<uint64_t> Put(std::string_view ns, const PutOp& op) override {
    pb::PutRequest req;
    pb::PutChunk* c = req.add_chunks();
    c->set_namespace_(std::string(ns));
    ToProto(op.key, c->mutable_key());
    pb::Layout* l = c->mutable_layout();
    l->set_num_layers(op.shape.num_layers);
    l->set_num_tokens(op.shape.num_tokens);
    l->set_num_heads(op.shape.num_heads);
    l->set_head_dim(op.shape.head_dim);
    // kernels::DType / kernels::Preset values equal the proto's by design.
    c->set_dtype(static_cast<pb::DType>(static_cast<int>(op.shape.dtype)));
    c->mutable_codec()->set_preset(static_cast<pb::Preset>(static_cast<int>(op.preset)));
    c->set_data(op.data.data(), op.data.size());
    pb::PutResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    if (absl::Status s = FromGrpc(stub_->Put(&ctx, req, &resp)); !s.ok()) return s;
    if (resp.results_size() != 1) {
      return absl::InternalError(absl::StrCat("put: ", resp.results_size(), " results for 1 chunk"));
    }
    return resp.results(0).info().stored_bytes();
  }

  absl::StatusOr<GetReply> Get(std::string_view ns, const client::ChunkKey& key) override {
    pb::GetRequest req;
    req.set_namespace_(std::string(ns));
    ToProto(key, req.add_keys());
    pb::GetResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    if (absl::Status s = FromGrpc(stub_->Get(&ctx, req, &resp)); !s.ok()) return s;
    if (resp.results_size() != 1) {
      return absl::InternalError(absl::StrCat("get: ", resp.results_size(), " results for 1 key"));
    }
    pb::GetResult& r = *resp.mutable_results(0);
    if (!r.found()) return absl::NotFoundError("get: key not found");
    GetReply reply;
    reply.stored_bytes = r.info().stored_bytes();
    reply.data = std::move(*r.mutable_data());
    return reply;
  }

  absl::StatusOr<uint32_t> Lookup(std::string_view ns,
                                  std::span<const client::ChunkKey> chain) override {
    pb::LookupRequest req;
    req.set_namespace_(std::string(ns));
    for (const client::ChunkKey& k : chain) ToProto(k, req.add_keys());
    pb::LookupResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    if (absl::Status s = FromGrpc(stub_->Lookup(&ctx, req, &resp)); !s.ok()) return s;
    return resp.present_prefix();
  }

  absl::Status Delete(std::string_view ns, std::span<const client::ChunkKey> keys) override {
    pb::DeleteRequest req;
    req.set_namespace_(std::string(ns));
    for (const client::ChunkKey& k : keys) ToProto(k, req.add_keys());
    pb::DeleteResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    return FromGrpc(stub_->Delete(&ctx, req, &resp));
  }

  absl::StatusOr<uint64_t> ServerMemoryBytes() override {
    pb::StatsResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    if (absl::Status s = FromGrpc(stub_->Stats(&ctx, pb::StatsRequest(), &resp)); !s.ok()) {
      return s;
    }
    return resp.used_bytes();
  }

 private:
  // The deadline and the authorization metadata of one call.
  void SetDeadline(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
    auth_.AddToContext(ctx);
  }

  const TransportOptions options_;
  const client::CallAuth auth_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::KvStash::Stub> stub_;
};

// The shared-memory data path: one region per transport, cut into 64-byte-aligned slots,
// one per operation in flight. gRPC messages carry only RegionRefs.
class ShmTransport final : public Transport {
 public:
  ShmTransport(const TransportOptions& options, std::shared_ptr<grpc::Channel> channel,
               client::SharedRegion region, uint64_t slot_stride)
      : options_(options),
        auth_(options.token),
        channel_(channel),
        stub_(pb::KvStash::NewStub(channel)),
        control_(options, channel),
        region_(std::move(region)),
        stride_(slot_stride) {
    for (uint32_t i = 0; i < options.shm_slots; ++i) free_.push_back(i);
  }

  ~ShmTransport() override {
    if (id_ == 0) return;
    pb::UnregisterRegionRequest req;
    req.set_region_id(id_);
    req.set_token(token_);
    pb::UnregisterRegionResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    (void)stub_->UnregisterRegion(&ctx, req, &resp);  // the lease cleans up otherwise
  }

  absl::Status Register() {
    pb::RegisterRegionRequest req;
    req.set_namespace_(options_.ns);
    req.set_path(region_.path());
    req.set_size(region_.size());
    pb::RegisterRegionResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    if (absl::Status s = FromGrpc(stub_->RegisterRegion(&ctx, req, &resp)); !s.ok()) return s;
    id_ = resp.region_id();
    token_ = resp.token();
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Put(std::string_view ns, const PutOp& op) override {
    if (op.data.size() > options_.shm_slot_bytes) {
      return absl::InvalidArgumentError("put: payload larger than a region slot");
    }
    const uint32_t slot = Acquire();
    // The copy a worker makes into its region is part of what this transport costs.
    std::memcpy(region_.data() + slot * stride_, op.data.data(), op.data.size());
    pb::PutRequest req;
    pb::PutChunk* c = req.add_chunks();
    c->set_namespace_(std::string(ns));
    ToProto(op.key, c->mutable_key());
    pb::Layout* l = c->mutable_layout();
    l->set_num_layers(op.shape.num_layers);
    l->set_num_tokens(op.shape.num_tokens);
    l->set_num_heads(op.shape.num_heads);
    l->set_head_dim(op.shape.head_dim);
    c->set_dtype(static_cast<pb::DType>(static_cast<int>(op.shape.dtype)));
    c->mutable_codec()->set_preset(static_cast<pb::Preset>(static_cast<int>(op.preset)));
    pb::RegionRef* ref = c->mutable_data_region();
    ref->set_region_id(id_);
    ref->set_token(token_);
    ref->set_offset(slot * stride_);
    ref->set_length(op.data.size());
    pb::PutResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    absl::Status s = FromGrpc(stub_->Put(&ctx, req, &resp));
    Release(slot);
    if (!s.ok()) return s;
    if (resp.results_size() != 1) {
      return absl::InternalError(absl::StrCat("put: ", resp.results_size(), " results for 1 chunk"));
    }
    return resp.results(0).info().stored_bytes();
  }

  absl::StatusOr<GetReply> Get(std::string_view ns, const client::ChunkKey& key) override {
    const uint32_t slot = Acquire();
    auto hold = std::shared_ptr<void>(nullptr, [this, slot](void*) { Release(slot); });
    pb::GetRequest req;
    req.set_namespace_(std::string(ns));
    ToProto(key, req.add_keys());
    pb::RegionRef* ref = req.mutable_output_region();
    ref->set_region_id(id_);
    ref->set_token(token_);
    ref->set_offset(slot * stride_);
    ref->set_length(options_.shm_slot_bytes);
    pb::GetResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    if (absl::Status s = FromGrpc(stub_->Get(&ctx, req, &resp)); !s.ok()) return s;
    if (resp.results_size() != 1) {
      return absl::InternalError(absl::StrCat("get: ", resp.results_size(), " results for 1 key"));
    }
    const pb::GetResult& r = resp.results(0);
    if (!r.found()) return absl::NotFoundError("get: key not found");
    const uint64_t bytes = r.info().logical_bytes();  // whole chunk, own dtype
    if (r.region_offset() != slot * stride_ || bytes > options_.shm_slot_bytes) {
      return absl::InternalError("get: daemon wrote outside the requested slot");
    }
    GetReply reply;
    reply.stored_bytes = r.info().stored_bytes();
    reply.view = std::span<const uint8_t>(region_.data() + r.region_offset(), bytes);
    reply.hold = std::move(hold);
    return reply;
  }

  absl::StatusOr<uint32_t> Lookup(std::string_view ns,
                                  std::span<const client::ChunkKey> chain) override {
    return control_.Lookup(ns, chain);
  }
  absl::Status Delete(std::string_view ns, std::span<const client::ChunkKey> keys) override {
    return control_.Delete(ns, keys);
  }
  absl::StatusOr<uint64_t> ServerMemoryBytes() override { return control_.ServerMemoryBytes(); }

 private:
  uint32_t Acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !free_.empty(); });
    const uint32_t slot = free_.back();
    free_.pop_back();
    return slot;
  }
  void Release(uint32_t slot) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(slot);
    }
    cv_.notify_one();
  }
  // The deadline and the authorization metadata of one call.
  void SetDeadline(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
    auth_.AddToContext(ctx);
  }

  const TransportOptions options_;
  const client::CallAuth auth_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::KvStash::Stub> stub_;
  GrpcTransport control_;  // Lookup and Delete carry no payload
  client::SharedRegion region_;
  const uint64_t stride_;
  uint64_t id_ = 0;
  std::string token_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<uint32_t> free_;  // guarded by mu_
};

}  // namespace

absl::StatusOr<TransportKind> ParseTransport(std::string_view name) {
  if (name == "grpc") return TransportKind::kGrpc;
  if (name == "shm") return TransportKind::kShm;
  if (name == "cuda-ipc") return TransportKind::kCudaIpc;
  if (name == "redis") return TransportKind::kRedis;
  return absl::InvalidArgumentError(absl::StrCat(
      "--transport: unknown '", absl::string_view(name.data(), name.size()),
      "'; known: grpc, shm, cuda-ipc, redis"));
}

std::string_view TransportName(TransportKind kind) {
  switch (kind) {
    case TransportKind::kGrpc: return "grpc";
    case TransportKind::kShm: return "shm";
    case TransportKind::kCudaIpc: return "cuda-ipc";
    case TransportKind::kRedis: return "redis";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Transport>> OpenTransport(TransportKind kind,
                                                         const TransportOptions& options) {
  if (kind == TransportKind::kRedis) return OpenRedisTransport(options);
  if (kind == TransportKind::kCudaIpc) return OpenCudaIpcTransport(options);
  if (kind == TransportKind::kShm && (options.shm_slot_bytes == 0 || options.shm_slots == 0)) {
    return absl::InvalidArgumentError("shm: slot bytes and slots must be positive");
  }
  if (options.target.empty()) return absl::InvalidArgumentError("--addr: empty");
  if (options.timeout.count() <= 0) return absl::InvalidArgumentError("--timeout: must be positive");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  // A private subchannel pool: this channel gets its own TCP connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // The client library's channel: the same TLS and token checks as client::Client.
  client::ClientOptions co;
  co.target = options.target;
  co.token = options.token;
  co.tls = options.tls;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> made = client::CreateChannel(co, args);
  if (!made.ok()) return made.status();
  std::shared_ptr<grpc::Channel> channel = *std::move(made);
  if (options.connect_timeout.count() > 0 &&
      !channel->WaitForConnected(std::chrono::system_clock::now() + options.connect_timeout)) {
    return absl::UnavailableError(absl::StrCat(
        "cannot connect to ", options.target, " within ", options.connect_timeout.count(),
        " ms", options.tls.enabled ? " (TLS: also check --tls-ca and the server name)" : ""));
  }
  if (kind == TransportKind::kGrpc) {
    return std::unique_ptr<Transport>(new GrpcTransport(options, std::move(channel)));
  }
  const uint64_t stride = (options.shm_slot_bytes + 63) & ~uint64_t{63};
  absl::StatusOr<client::SharedRegion> region =
      client::SharedRegion::Create(stride * options.shm_slots);
  if (!region.ok()) return region.status();
  auto t = std::make_unique<ShmTransport>(options, std::move(channel), std::move(*region), stride);
  if (absl::Status s = t->Register(); !s.ok()) return s;
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace kvstash::bench
