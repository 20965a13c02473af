#include "transport.h"

#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "kvstash/v1/kvstash.pb.h"

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
      : options_(options), channel_(std::move(channel)), stub_(pb::KvStash::NewStub(channel_)) {}

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

 private:
  void SetDeadline(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
  }

  const TransportOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::KvStash::Stub> stub_;
};

}  // namespace

absl::StatusOr<TransportKind> ParseTransport(std::string_view name) {
  if (name == "grpc") return TransportKind::kGrpc;
  if (name == "shm") return TransportKind::kShm;
  if (name == "cuda-ipc") return TransportKind::kCudaIpc;
  return absl::InvalidArgumentError(absl::StrCat(
      "--transport: unknown '", absl::string_view(name.data(), name.size()),
      "'; known: grpc, shm, cuda-ipc"));
}

std::string_view TransportName(TransportKind kind) {
  switch (kind) {
    case TransportKind::kGrpc: return "grpc";
    case TransportKind::kShm: return "shm";
    case TransportKind::kCudaIpc: return "cuda-ipc";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Transport>> OpenTransport(TransportKind kind,
                                                         const TransportOptions& options) {
  if (kind != TransportKind::kGrpc) {
    const std::string_view name = TransportName(kind);
    return absl::UnimplementedError(absl::StrCat(
        "--transport ", absl::string_view(name.data(), name.size()),
        ": not implemented yet; only grpc is available (docs/bench.md)"));
  }
  if (options.target.empty()) return absl::InvalidArgumentError("--addr: empty");
  if (options.timeout.count() <= 0) return absl::InvalidArgumentError("--timeout: must be positive");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  // A private subchannel pool: this channel gets its own TCP connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, grpc::InsecureChannelCredentials(), args);
  if (options.connect_timeout.count() > 0 &&
      !channel->WaitForConnected(std::chrono::system_clock::now() + options.connect_timeout)) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", options.target, " within ",
                                               options.connect_timeout.count(), " ms"));
  }
  return std::unique_ptr<Transport>(new GrpcTransport(options, std::move(channel)));
}

}  // namespace kvstash::bench
