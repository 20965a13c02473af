#include "kvstash/client/client.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "kvstash/client/grpc_channel.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "kvstash/v1/kvstash.pb.h"
#include "status.h"

namespace kvstash::client {
namespace {

namespace pb = ::kvstash::v1;

// --- Conversions between the public structs and the wire messages. The enum values of
// kernels::DType / kernels::Preset equal the proto's by design (both start at 1 for fp16).

void ToProto(const ChunkKey& k, pb::ChunkKey* out) {
  out->set_hi(k.hi);
  out->set_lo(k.lo);
}
ChunkKey FromProto(const pb::ChunkKey& k) { return ChunkKey{k.hi(), k.lo()}; }

pb::DType ToProto(kernels::DType d) { return static_cast<pb::DType>(static_cast<int>(d)); }
kernels::DType FromProto(pb::DType d) {
  switch (d) {
    case pb::DTYPE_FP16: return kernels::DType::kF16;
    case pb::DTYPE_BF16: return kernels::DType::kBF16;
    default: return kernels::DType::kUnspecified;
  }
}

kernels::Preset FromProto(pb::Preset p) {
  switch (p) {
    case pb::PRESET_FP16: return kernels::Preset::kFp16;
    case pb::PRESET_KIVI_2: return kernels::Preset::kKivi2;
    case pb::PRESET_ASYMKV_1_5: return kernels::Preset::kAsymKv15;
    case pb::PRESET_XQUANT: return kernels::Preset::kXQuant;
    default: return kernels::Preset::kCustom;
  }
}

void ToProto(const kernels::ChunkShape& s, pb::Layout* out) {
  out->set_num_layers(s.num_layers);
  out->set_num_tokens(s.num_tokens);
  out->set_num_heads(s.num_heads);
  out->set_head_dim(s.head_dim);
}

absl::Status ToProto(const Codec& c, pb::Codec* out) {
  if (c.preset != kernels::Preset::kCustom) {
    out->set_preset(static_cast<pb::Preset>(static_cast<int>(c.preset)));
    return absl::OkStatus();
  }
  if (c.config.raw) {
    return absl::InvalidArgumentError(
        "codec.config.raw: a custom configuration cannot be raw; use the fp16 preset");
  }
  pb::CodecConfig* cc = out->mutable_custom();
  cc->set_k_q(c.config.k_q);
  cc->set_v_q(c.config.v_q);
  cc->set_k_m(c.config.k_m);
  cc->set_v_m(c.config.v_m);
  cc->set_eta1(c.config.eta1);
  cc->set_eta2(c.config.eta2);
  return absl::OkStatus();
}

ChunkInfo FromProto(const pb::ChunkInfo& in) {
  ChunkInfo info;
  info.shape.num_layers = in.layout().num_layers();
  info.shape.num_tokens = in.layout().num_tokens();
  info.shape.num_heads = in.layout().num_heads();
  info.shape.head_dim = in.layout().head_dim();
  info.shape.dtype = FromProto(in.dtype());
  info.preset = FromProto(in.preset());
  info.config.raw = info.preset == kernels::Preset::kFp16;
  info.config.k_q = in.config().k_q();
  info.config.v_q = in.config().v_q();
  info.config.k_m = in.config().k_m();
  info.config.v_m = in.config().v_m();
  info.config.eta1 = in.config().eta1();
  info.config.eta2 = in.config().eta2();
  info.config.preset = info.preset;
  info.logical_bytes = in.logical_bytes();
  info.stored_bytes = in.stored_bytes();
  info.equivalent_bits = in.equivalent_bits();
  info.true_bits = in.true_bits();
  return info;
}

void ToProto(uint32_t begin, uint32_t end, pb::Range* out) {
  out->set_begin(begin);
  out->set_end(end);
}

absl::Status ToProto(const PagedCache& p, pb::PagedLayout* out) {
  for (size_t i = 0; i < p.planes.size(); ++i) {
    const PagedPlane& plane = p.planes[i];
    if (plane.region == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("planes[", i, "].region: null"));
    }
    if (plane.offset > plane.region->size) {
      return absl::InvalidArgumentError(
          absl::StrCat("planes[", i, "].offset: past the end of the region"));
    }
    pb::RegionRef* ref = out->add_planes();
    ref->set_region_id(plane.region->id);
    ref->set_token(plane.region->token);
    ref->set_offset(plane.offset);
    ref->set_length(plane.length != 0 ? plane.length : plane.region->size - plane.offset);
  }
  out->set_block_size(p.block_size);
  out->set_block_stride(p.block_stride);
  out->mutable_block_ids()->Add(p.block_ids.begin(), p.block_ids.end());
  out->set_first_slot(p.first_slot);
  out->set_token_stride(p.token_stride);
  out->set_head_stride(p.head_stride);
  return absl::OkStatus();
}

class GrpcClient final : public Client {
 public:
  GrpcClient(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel)
      : options_(options),
        auth_(options.token),
        channel_(std::move(channel)),
        stub_(pb::KvStash::NewStub(channel_)) {}

  using Client::Get;
  using Client::Put;

  absl::StatusOr<std::vector<PutResult>> Put(std::string_view ns,
                                             std::span<const PutChunk> chunks,
                                             const CallOptions& call) override {
    pb::PutRequest req;
    req.mutable_chunks()->Reserve(static_cast<int>(chunks.size()));
    for (const PutChunk& c : chunks) {
      pb::PutChunk* out = req.add_chunks();
      out->set_namespace_(std::string(ns));
      ToProto(c.key, out->mutable_key());
      ToProto(c.shape, out->mutable_layout());
      out->set_dtype(ToProto(c.shape.dtype));
      if (absl::Status s = ToProto(c.codec, out->mutable_codec()); !s.ok()) return s;
      if (c.paged != nullptr) {
        if (!c.data.empty() || c.region != nullptr) {
          return absl::InvalidArgumentError("paged: set together with data or region (give one)");
        }
        if (absl::Status s = ToProto(*c.paged, out->mutable_data_paged()); !s.ok()) return s;
      } else if (c.region != nullptr) {
        if (!c.data.empty()) {
          return absl::InvalidArgumentError("data: set together with region (give one)");
        }
        pb::RegionRef* ref = out->mutable_data_region();
        ref->set_region_id(c.region->id);
        ref->set_token(c.region->token);
        ref->set_offset(c.region_offset);
        ref->set_length(c.shape.payload_bytes());
      } else {
        out->set_data(c.data.data(), c.data.size());
      }
    }
    pb::PutResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(call, &ctx);
    if (absl::Status s = internal::FromGrpcStatus(stub_->Put(&ctx, req, &resp)); !s.ok()) {
      return s;
    }
    std::vector<PutResult> results;
    results.reserve(resp.results_size());
    for (const pb::PutResult& r : resp.results()) {
      results.push_back(PutResult{FromProto(r.key()), FromProto(r.info()), r.replaced()});
    }
    return results;
  }

  absl::StatusOr<std::vector<GetResult>> Get(std::string_view ns, std::span<const ChunkKey> keys,
                                             const GetOptions& options,
                                             const CallOptions& call) override {
    pb::GetRequest req;
    req.set_namespace_(std::string(ns));
    for (const ChunkKey& k : keys) ToProto(k, req.add_keys());
    const kernels::Slice& s = options.slice;
    if (s.layer_begin != 0 || s.layer_end != 0) {
      ToProto(s.layer_begin, s.layer_end, req.mutable_layers());
    }
    if (s.head_begin != 0 || s.head_end != 0) {
      ToProto(s.head_begin, s.head_end, req.mutable_heads());
    }
    req.set_output_dtype(ToProto(options.output_dtype));
    req.set_allow_missing(options.allow_missing);
    if (options.output_paged != nullptr) {
      if (options.output_region != nullptr) {
        return absl::InvalidArgumentError("output_paged: set together with output_region");
      }
      if (absl::Status s = ToProto(*options.output_paged, req.mutable_output_paged()); !s.ok()) {
        return s;
      }
    }
    if (options.output_region != nullptr) {
      const Region& r = *options.output_region;
      if (options.output_offset > r.size) {
        return absl::InvalidArgumentError("output_offset: past the end of the region");
      }
      pb::RegionRef* ref = req.mutable_output_region();
      ref->set_region_id(r.id);
      ref->set_token(r.token);
      ref->set_offset(options.output_offset);
      ref->set_length(options.output_length != 0 ? options.output_length
                                                 : r.size - options.output_offset);
    }
    pb::GetResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(call, &ctx);
    if (absl::Status st = internal::FromGrpcStatus(stub_->Get(&ctx, req, &resp)); !st.ok()) {
      return st;
    }
    std::vector<GetResult> results;
    results.reserve(resp.results_size());
    for (pb::GetResult& r : *resp.mutable_results()) {
      GetResult out;
      out.key = FromProto(r.key());
      out.found = r.found();
      if (out.found) out.info = FromProto(r.info());
      out.dtype = FromProto(r.dtype());
      out.data = std::move(*r.mutable_data());  // the response is heap-allocated: no copy
      out.region_offset = r.region_offset();
      out.first_token = r.first_token();
      results.push_back(std::move(out));
    }
    return results;
  }

  absl::StatusOr<uint32_t> Lookup(std::string_view ns, std::span<const ChunkKey> chain,
                                  const CallOptions& call) override {
    pb::LookupRequest req;
    req.set_namespace_(std::string(ns));
    for (const ChunkKey& k : chain) ToProto(k, req.add_keys());
    pb::LookupResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(call, &ctx);
    if (absl::Status s = internal::FromGrpcStatus(stub_->Lookup(&ctx, req, &resp)); !s.ok()) {
      return s;
    }
    return resp.present_prefix();
  }

  absl::StatusOr<DeleteResult> Delete(std::string_view ns, std::span<const ChunkKey> keys,
                                      const CallOptions& call) override {
    pb::DeleteRequest req;
    req.set_namespace_(std::string(ns));
    for (const ChunkKey& k : keys) ToProto(k, req.add_keys());
    pb::DeleteResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(call, &ctx);
    if (absl::Status s = internal::FromGrpcStatus(stub_->Delete(&ctx, req, &resp)); !s.ok()) {
      return s;
    }
    return DeleteResult{resp.deleted(), resp.not_found()};
  }

  absl::StatusOr<StoreStats> Stats(const CallOptions& call) override {
    pb::StatsRequest req;
    pb::StatsResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(call, &ctx);
    if (absl::Status s = internal::FromGrpcStatus(stub_->Stats(&ctx, req, &resp)); !s.ok()) {
      return s;
    }
    StoreStats out;
    out.capacity_bytes = resp.capacity_bytes();
    out.used_bytes = resp.used_bytes();
    out.page_bytes = resp.page_bytes();
    out.chunks = resp.chunks();
    out.logical_bytes = resp.logical_bytes();
    out.stored_bytes = resp.stored_bytes();
    out.hits = resp.hits();
    out.misses = resp.misses();
    out.evictions = resp.evictions();
    out.puts = resp.puts();
    out.gets = resp.gets();
    out.deletes = resp.deletes();
    out.equivalent_bits = resp.equivalent_bits();
    out.true_bits = resp.true_bits();
    out.version = resp.version();
    out.codec_path = resp.codec_path();
    out.max_message_bytes = resp.max_message_bytes();
    out.quota_evictions = resp.quota_evictions();
    out.namespaces_omitted = resp.namespaces_omitted();
    for (const v1::NamespaceStats& n : resp.namespaces())
      out.namespaces.push_back({n.namespace_(), n.chunks(), n.allocated_bytes(), n.stored_bytes(),
                                n.logical_bytes(), n.quota_evictions(), n.capacity_evictions(),
                                n.quota_bytes()});
    return out;
  }

  absl::StatusOr<Region> RegisterRegion(std::string_view ns, std::string_view path,
                                        uint64_t size, uint32_t lease_seconds,
                                        const CallOptions& call) override {
    pb::RegisterRegionRequest req;
    req.set_path(std::string(path));
    return Register(ns, size, lease_seconds, call, &req);
  }

  absl::StatusOr<Region> RegisterCudaIpc(std::string_view ns, std::string_view handle,
                                         std::string_view device_uuid, uint64_t size,
                                         uint32_t lease_seconds,
                                         const CallOptions& call) override {
    pb::RegisterRegionRequest req;
    req.mutable_cuda_ipc()->set_handle(std::string(handle));
    req.mutable_cuda_ipc()->set_device_uuid(std::string(device_uuid));
    return Register(ns, size, lease_seconds, call, &req);
  }

  absl::Status UnregisterRegion(const Region& region, const CallOptions& call) override {
    pb::UnregisterRegionRequest req;
    req.set_region_id(region.id);
    req.set_token(region.token);
    pb::UnregisterRegionResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(call, &ctx);
    return internal::FromGrpcStatus(stub_->UnregisterRegion(&ctx, req, &resp));
  }

  absl::Status RenewRegion(const Region& region, const CallOptions& call) override {
    pb::RenewRegionRequest req;
    req.set_region_id(region.id);
    req.set_token(region.token);
    pb::RenewRegionResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(call, &ctx);
    return internal::FromGrpcStatus(stub_->RenewRegion(&ctx, req, &resp));
  }

  const std::string& target() const override { return options_.target; }

 private:
  // RegisterRegion with `req`'s region (path or cuda_ipc) already set.
  absl::StatusOr<Region> Register(std::string_view ns, uint64_t size, uint32_t lease_seconds,
                                  const CallOptions& call, pb::RegisterRegionRequest* req) {
    req->set_namespace_(std::string(ns));
    req->set_size(size);
    req->set_lease_seconds(lease_seconds);
    pb::RegisterRegionResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(call, &ctx);
    if (absl::Status s = internal::FromGrpcStatus(stub_->RegisterRegion(&ctx, *req, &resp));
        !s.ok()) {
      return s;
    }
    return Region{resp.region_id(), resp.token(), resp.size(), resp.lease_seconds(),
                  resp.pinned()};
  }

  // The deadline and the authorization metadata of one call.
  void PrepareContext(const CallOptions& call, grpc::ClientContext* ctx) const {
    const std::chrono::milliseconds timeout = call.timeout.value_or(options_.default_timeout);
    ctx->set_deadline(std::chrono::system_clock::now() + timeout);
    auth_.AddToContext(ctx);
  }

  const ClientOptions options_;
  const CallAuth auth_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::KvStash::Stub> stub_;
};

// --- Token and TLS files ----------------------------------------------------------------

// The whole file at `path`; InvalidArgument "<field>: cannot read '<path>': <why>".
absl::StatusOr<std::string> ReadOptionFile(absl::string_view field, const std::string& path) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int e = errno;  // libstdc++ opens with open(2): errno says why
    return absl::InvalidArgumentError(absl::StrCat(field, ": cannot read '", path, "': ",
                                                   e != 0 ? std::strerror(e) : "cannot open"));
  }
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": cannot read '", path, "'"));
  }
  return data;
}

// Reads a PEM file of a TLS option and checks that it holds a block of `kind`
// ("CERTIFICATE", "PRIVATE KEY"), so a wrong file fails here and not as a handshake error.
absl::StatusOr<std::string> ReadPem(absl::string_view field, const std::string& path,
                                    absl::string_view kind) {
  absl::StatusOr<std::string> pem = ReadOptionFile(field, path);
  if (!pem.ok()) return pem.status();
  // "-----BEGIN CERTIFICATE-----"; keys may be "PRIVATE KEY", "RSA PRIVATE KEY", "EC ...".
  const size_t begin = pem->find("-----BEGIN ");
  if (begin == std::string::npos ||
      pem->find(absl::StrCat(kind, "-----"), begin) == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", path, "' holds no PEM ", kind));
  }
  return pem;
}

}  // namespace

// A bearer token goes into an HTTP/2 header: visible ASCII, no spaces (RFC 6750 allows
// less, but the daemon compares bytes, so anything visible is accepted here).
absl::Status ValidateToken(std::string_view token, std::string_view field) {
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          absl::string_view(field.data(), field.size()), ": byte ", i, " (0x",
          absl::Hex(static_cast<unsigned>(c), absl::kZeroPad2),
          ") is not visible ASCII; a bearer token cannot hold spaces or control characters"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> LoadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> data = ReadOptionFile("token file", path);
  if (!data.ok()) return data.status();
  std::string_view t = *data;
  constexpr std::string_view kSpace = " \t\r\n\v\f";
  const size_t first = t.find_first_not_of(kSpace);
  if (first == std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("token file: '", path, "' is empty"));
  }
  t = t.substr(first, t.find_last_not_of(kSpace) - first + 1);
  if (absl::Status s = ValidateToken(t, absl::StrCat("token file '", path, "'")); !s.ok()) {
    return s;
  }
  return std::string(t);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const ClientOptions& options,
                                                             grpc::ChannelArguments args) {
  if (options.target.empty()) return absl::InvalidArgumentError("target: empty address");
  if (absl::Status s = ValidateToken(options.token, "token"); !s.ok()) return s;
  const TlsOptions& tls = options.tls;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (!tls.enabled) {
    // Silently sending plaintext when TLS files were given would be worse than refusing.
    for (const auto& [field, value] :
         {std::pair<const char*, const std::string*>{"tls.ca_file", &tls.ca_file},
          {"tls.cert_file", &tls.cert_file},
          {"tls.key_file", &tls.key_file},
          {"tls.server_name_override", &tls.server_name_override}}) {
      if (!value->empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": set, but tls.enabled is false"));
      }
    }
    creds = grpc::InsecureChannelCredentials();
  } else {
    if (tls.cert_file.empty() != tls.key_file.empty()) {
      return absl::InvalidArgumentError(
          tls.cert_file.empty()
              ? "tls.key_file: given without tls.cert_file (mutual TLS needs both)"
              : "tls.cert_file: given without tls.key_file (mutual TLS needs both)");
    }
    grpc::SslCredentialsOptions ssl;
    if (!tls.ca_file.empty()) {
      absl::StatusOr<std::string> ca = ReadPem("tls.ca_file", tls.ca_file, "CERTIFICATE");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *std::move(ca);
    }
    if (!tls.cert_file.empty()) {
      absl::StatusOr<std::string> cert = ReadPem("tls.cert_file", tls.cert_file, "CERTIFICATE");
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadPem("tls.key_file", tls.key_file, "PRIVATE KEY");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *std::move(cert);
      ssl.pem_private_key = *std::move(key);
    }
    // gRPC's default name for a unix: target was "localhost" and is the path in later
    // versions; a certificate names a host, so keep "localhost".
    const bool unix_target = options.target.rfind("unix", 0) == 0;  // unix:, unix-abstract:
    if (!tls.server_name_override.empty() || unix_target) {
      args.SetSslTargetNameOverride(
          tls.server_name_override.empty() ? "localhost" : tls.server_name_override);
    }
    creds = grpc::SslCredentials(ssl);
  }
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, creds, args);
  if (!channel) {
    return absl::InvalidArgumentError(absl::StrCat("target: cannot use '", options.target, "'"));
  }
  return channel;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("target: empty address");
  if (options.default_timeout.count() <= 0) {
    return absl::InvalidArgumentError("default_timeout: must be positive");
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("max_message_bytes: must be positive");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CreateChannel(options, args);
  if (!channel.ok()) return channel.status();
  if (options.connect_timeout.count() > 0 &&
      !(*channel)->WaitForConnected(std::chrono::system_clock::now() +
                                    options.connect_timeout)) {
    return absl::UnavailableError(absl::StrCat(
        "cannot connect to ", options.target, " within ", options.connect_timeout.count(),
        " ms", options.tls.enabled ? " (TLS: also check tls.ca_file and the server name)" : ""));
  }
  return std::unique_ptr<Client>(new GrpcClient(options, *std::move(channel)));
}

absl::StatusOr<PutResult> Client::Put(std::string_view ns, const PutChunk& chunk,
                                      const CallOptions& call) {
  absl::StatusOr<std::vector<PutResult>> r = Put(ns, std::span<const PutChunk>(&chunk, 1), call);
  if (!r.ok()) return r.status();
  if (r->size() != 1) {
    return absl::InternalError(absl::StrCat("put: daemon returned ", r->size(),
                                            " results for 1 chunk"));
  }
  return std::move(r->front());
}

absl::StatusOr<GetResult> Client::Get(std::string_view ns, const ChunkKey& key,
                                      const GetOptions& options, const CallOptions& call) {
  GetOptions one = options;
  one.allow_missing = false;
  absl::StatusOr<std::vector<GetResult>> r = Get(ns, std::span<const ChunkKey>(&key, 1), one, call);
  if (!r.ok()) return r.status();
  if (r->size() != 1 || !r->front().found) {
    return absl::InternalError(absl::StrCat("get: daemon returned ", r->size(),
                                            " results for 1 key"));
  }
  return std::move(r->front());
}

// --- SharedRegion ---------------------------------------------------------------------

absl::StatusOr<SharedRegion> SharedRegion::Create(uint64_t size) {
  if (size == 0) return absl::InvalidArgumentError("size: must be positive");
  std::random_device rd;
  SharedRegion r;
  r.path_ = absl::StrCat("/dev/shm/kvstash-", getpid(), "-", absl::Hex(rd(), absl::kZeroPad8),
                         absl::Hex(rd(), absl::kZeroPad8));
  // O_EXCL: never adopt someone else's file; mode 0600: only this user (the daemon's) maps it.
  r.fd_ = open(r.path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (r.fd_ < 0) {
    const int e = errno;
    r.path_.clear();
    return absl::InternalError(absl::StrCat("create shared region: ", std::strerror(e)));
  }
  // Reserve the pages up front (not ftruncate's sparse file): a /dev/shm without room
  // fails here with ENOSPC instead of with SIGBUS in this process or the daemon later.
  if (const int e = posix_fallocate(r.fd_, 0, static_cast<off_t>(size)); e != 0) {
    return absl::InternalError(
        absl::StrCat("reserve ", size, " bytes of ", r.path_, ": ", std::strerror(e)));
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd_, 0);
  if (p == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("mmap ", r.path_, ": ", std::strerror(errno)));
  }
  r.data_ = static_cast<uint8_t*>(p);
  r.size_ = size;
  return r;
}

SharedRegion::SharedRegion(SharedRegion&& other) noexcept { *this = std::move(other); }

SharedRegion& SharedRegion::operator=(SharedRegion&& other) noexcept {
  if (this != &other) {
    Reset();
    path_ = std::move(other.path_);
    other.path_.clear();
    fd_ = std::exchange(other.fd_, -1);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SharedRegion::~SharedRegion() { Reset(); }

void SharedRegion::Reset() {
  if (data_ != nullptr) munmap(data_, size_);
  if (fd_ >= 0) close(fd_);
  if (!path_.empty()) unlink(path_.c_str());
  path_.clear();
  fd_ = -1;
  data_ = nullptr;
  size_ = 0;
}

}  // namespace kvstash::client
