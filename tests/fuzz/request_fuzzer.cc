// Fuzz target (a): every RPC's request message, parsed from the input, through the daemon's
// own Validate*/Handle* functions (server/rpc/service.h) against a small host-only store
// and a RegionRegistry rooted in a private temporary directory. No network.
//
// Input: byte 0 picks the RPC (fuzz_common.h, Rpc, modulo kRpcCount); the rest is that
// request's protobuf wire bytes. Placeholders make the shared-memory paths reachable: a
// RegionRef token "@TOKEN@" becomes the token of region 1 (ROOT/r0, 64 KiB, namespace
// "fuzz", registered at start-up), and a RegisterRegion path starting with "@ROOT@" starts
// with the root directory instead. ROOT also holds a short file, a directory, a FIFO and
// symbolic links into and out of it.
//
// Oracles besides the sanitizers: no handler answers Internal, Unknown or DataLoss (a host
// store whose pages nobody corrupts has no reason to); a Put's results name its keys, and
// each chunk it stored reads back as the codec's reference decode of its payload (exactly
// the payload for fp16); a Get of the fixed chunks returns the reference decode of the
// requested slice, inline or in region 1, and its response fits max_message_bytes; a
// region that registers resolves under the root; Delete counts every key; Stats stay
// within capacity.
//
// Every input starts from the same state: chunks a Put stored are deleted, the fixed
// chunks (fuzz_common.h) are put again, regions the input registered are unregistered,
// region 1's bytes are restored, and leases never expire (the registry's clock is frozen).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "fuzz_common.h"
#include "kvstash/kernels/codec.h"
#include "google/protobuf/stubs/logging.h"
#include "kvstash/v1/kvstash.pb.h"
#include "server/rpc/region_registry.h"
#include "server/rpc/service.h"
#include "server/store/store.h"

namespace kvstash::fuzz {
namespace {

using kernels::ChunkShape;
using kernels::DType;

struct Fixed {
  store::ChunkKey key;
  ChunkShape shape;
  kernels::CodecConfig config;
  std::vector<uint16_t> payload;
  std::vector<uint8_t> encoded;  // the reference encoding: the decode oracle
};

struct Env {
  std::string root;
  std::unique_ptr<store::Store> store;
  rpc::ServiceOptions options;
  std::unique_ptr<rpc::RegionRegistry> regions;
  uint64_t region_id = 0;
  std::string token;
  uint8_t* region = nullptr;  // the harness's own mapping of ROOT/r0
  std::vector<uint8_t> region_bytes;
  std::vector<Fixed> fixed;
};

Env* env = nullptr;

void Die(const char* what, const absl::Status& s) {
  std::fprintf(stderr, "request_fuzzer setup: %s: %s\n", what, std::string(s.ToString()).c_str());
  std::abort();
}

void WriteFile(const std::string& path, size_t bytes) {
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) std::abort();
  close(fd);
}

void PutFixed() {
  for (const Fixed& f : env->fixed) {
    auto info = env->store->Put(kNamespace, f.key, f.shape, f.config,
                                {reinterpret_cast<const uint8_t*>(f.payload.data()),
                                 f.payload.size() * 2});
    if (!info.ok()) Die("put of a fixed chunk", info.status());
  }
}

void Setup() {
  // Parsing logs every string field that is not UTF-8; the fuzzer makes plenty.
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  env = new Env;
  char dir[] = "/tmp/kvstash-fuzz-request-XXXXXX";
  if (mkdtemp(dir) == nullptr) std::abort();
  env->root = dir;
  // Removed at exit so that fuzzing runs leave nothing behind.
  std::atexit([] { std::error_code ec; std::filesystem::remove_all(env->root, ec); });
  const std::string r0 = env->root + "/r0";
  WriteFile(r0, kRegionBytes);
  WriteFile(env->root + "/small", 100);
  mkdir((env->root + "/dir").c_str(), 0700);
  WriteFile(env->root + "/dir/inner", 4096);
  mkfifo((env->root + "/fifo").c_str(), 0600);
  (void)!symlink(r0.c_str(), (env->root + "/link").c_str());
  (void)!symlink("/etc/passwd", (env->root + "/escape").c_str());

  store::StoreOptions so;
  so.host_capacity_bytes = 1 << 20;
  so.page_bytes = 4096;
  so.num_shards = 4;
  so.use_gpu = false;
  so.max_namespace_bytes = 64;
  auto store = store::Store::Create(so);
  if (!store.ok()) Die("Store::Create", store.status());
  env->store = *std::move(store);

  env->options.worker_threads = 1;
  env->options.max_message_bytes = 1 << 20;
  env->options.max_namespace_bytes = 64;
  env->options.fidelity_probe_every = 0;
  env->options.regions.max_regions = 4;
  env->options.regions.root = env->root;
  const auto frozen = rpc::RegionRegistry::Clock::time_point(std::chrono::hours(1));
  env->regions = std::make_unique<rpc::RegionRegistry>(
      env->options.regions, env->store.get(), [frozen] { return frozen; });
  auto reg = env->regions->Register(kNamespace, r0, kRegionBytes, 0);
  if (!reg.ok()) Die("Register", reg.status());
  env->region_id = reg->region_id;
  env->token = reg->token;
  const int fd = open(r0.c_str(), O_RDWR);
  void* map = mmap(nullptr, kRegionBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (fd < 0 || map == MAP_FAILED) std::abort();
  close(fd);
  env->region = static_cast<uint8_t*>(map);
  env->region_bytes = RegionBytes();
  std::memcpy(env->region, env->region_bytes.data(), kRegionBytes);

  for (const FixedChunk& fc : kFixedChunks) {
    Fixed f;
    f.key = {0, fc.key_lo};
    f.shape = fc.shape;
    f.config = kernels::PresetConfig(fc.preset, fc.shape.num_layers);
    f.payload = Payload(fc.shape, fc.key_lo);
    auto enc = kernels::EncodeChunk(f.shape, f.config, f.payload, kernels::Impl::kReference);
    if (!enc.ok()) Die("EncodeChunk", enc.status());
    f.encoded = *std::move(enc);
    env->fixed.push_back(std::move(f));
  }
  PutFixed();
}

void FixToken(v1::RegionRef* ref) {
  if (ref->token() == kTokenPlaceholder) ref->set_token(env->token);
}
void FixPaged(v1::PagedLayout* paged) {
  for (v1::RegionRef& ref : *paged->mutable_planes()) FixToken(&ref);
}

// Codes no request may produce from a host-only store. KVSTASH_FUZZ_VERBOSE=1 prints every
// outcome (for replaying an input by hand).
void CheckCode(const char* rpc, const absl::Status& s) {
  static const bool verbose = std::getenv("KVSTASH_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%s: %s\n", rpc, std::string(s.ToString()).c_str());
  const absl::StatusCode c = s.code();
  FUZZ_CHECK(c != absl::StatusCode::kInternal && c != absl::StatusCode::kUnknown &&
                 c != absl::StatusCode::kDataLoss && c != absl::StatusCode::kUnimplemented,
             "%s answered %s", rpc, std::string(s.ToString()).c_str());
}

std::vector<uint16_t> Oracle(const std::vector<uint8_t>& encoded, const kernels::Slice& slice,
                             DType out) {
  std::vector<uint16_t> v;
  const absl::Status s =
      kernels::Decode(encoded.data(), encoded.size(), slice, out, &v, kernels::Impl::kReference);
  FUZZ_CHECK(s.ok(), "reference decode of a stored chunk: %s", std::string(s.ToString()).c_str());
  return v;
}

void RunPut(v1::PutRequest& req) {
  for (v1::PutChunk& c : *req.mutable_chunks()) {
    if (c.has_data_region()) FixToken(c.mutable_data_region());
    if (c.has_data_paged()) FixPaged(c.mutable_data_paged());
  }
  v1::PutResponse resp;
  const absl::Status s = rpc::HandlePut(*env->store, env->options, req, &resp, env->regions.get());
  CheckCode("Put", s);
  if (s.ok()) {
    const int n = req.chunks_size();
    FUZZ_CHECK(resp.results_size() == n, "%d results for %d chunks", resp.results_size(), n);
    for (int i = 0; i < n; ++i) {
      const v1::PutChunk& c = req.chunks(i);
      FUZZ_CHECK(resp.results(i).key().hi() == c.key().hi() &&
                     resp.results(i).key().lo() == c.key().lo(),
                 "result %d names another key", i);
      if (c.has_data_paged()) continue;  // gathered: the oracle would be a second gather
      bool later = false;                // a later chunk of the same key replaced it
      for (int j = i + 1; j < n; ++j)
        later |= req.chunks(j).namespace_() == c.namespace_() &&
                 req.chunks(j).key().hi() == c.key().hi() &&
                 req.chunks(j).key().lo() == c.key().lo();
      if (later) continue;
      const ChunkShape shape{c.layout().num_layers(), c.layout().num_tokens(),
                             c.layout().num_heads(), c.layout().head_dim(),
                             static_cast<DType>(c.dtype())};
      const uint8_t* payload = c.has_data_region()
                                   ? env->region + c.data_region().offset()
                                   : reinterpret_cast<const uint8_t*>(c.data().data());
      std::vector<uint16_t> in(shape.elements());
      std::memcpy(in.data(), payload, in.size() * 2);
      const kernels::CodecConfig config =
          c.codec().kind_case() == v1::Codec::kPreset
              ? kernels::PresetConfig(static_cast<kernels::Preset>(c.codec().preset()),
                                      shape.num_layers)
              : kernels::CodecConfig{false, c.codec().custom().k_q(), c.codec().custom().v_q(),
                                     c.codec().custom().k_m(), c.codec().custom().v_m(),
                                     c.codec().custom().eta1(), c.codec().custom().eta2(),
                                     kernels::Preset::kCustom};
      auto enc = kernels::EncodeChunk(shape, config, in, kernels::Impl::kReference);
      FUZZ_CHECK(enc.ok(), "chunk %d stored, but the reference encoder refuses it: %s", i,
                 std::string(enc.status().ToString()).c_str());
      const std::vector<uint16_t> want = Oracle(*enc, {}, shape.dtype);
      std::vector<uint8_t> got;
      auto info = env->store->Get(c.namespace_(), {c.key().hi(), c.key().lo()}, {}, shape.dtype,
                                  [&](uint64_t b) { got.resize(b); return got.data(); });
      if (!info.ok() && info.status().code() == absl::StatusCode::kNotFound && n > 1)
        continue;  // evicted by a later chunk of this request
      FUZZ_CHECK(info.ok(), "chunk %d stored but Get answers %s", i,
                 std::string(info.status().ToString()).c_str());
      FUZZ_CHECK(got.size() == want.size() * 2 && std::memcmp(got.data(), want.data(), got.size()) == 0,
                 "chunk %d reads back other bytes than the reference decode", i);
      if (config.raw)
        FUZZ_CHECK(std::memcmp(got.data(), payload, got.size()) == 0,
                   "fp16 chunk %d reads back other bytes than were put", i);
    }
  }
}

void RunGet(v1::GetRequest& req) {
  if (req.has_output_region()) FixToken(req.mutable_output_region());
  if (req.has_output_paged()) FixPaged(req.mutable_output_paged());
  v1::GetResponse resp;
  const absl::Status s = rpc::HandleGet(*env->store, env->options, req, &resp, env->regions.get());
  CheckCode("Get", s);
  if (!s.ok()) return;
  FUZZ_CHECK(resp.ByteSizeLong() <= env->options.max_message_bytes, "response of %zu bytes",
             resp.ByteSizeLong());
  FUZZ_CHECK(resp.results_size() == req.keys_size(), "%d results for %d keys",
             resp.results_size(), req.keys_size());
  if (req.namespace_() != kNamespace || req.has_output_paged()) return;
  const kernels::Slice slice{req.layers().begin(), req.layers().end(), req.heads().begin(),
                             req.heads().end()};
  for (const v1::GetResult& r : resp.results()) {
    if (!r.found()) continue;
    for (const Fixed& f : env->fixed) {
      if (r.key().hi() != f.key.hi || r.key().lo() != f.key.lo) continue;
      const DType out = static_cast<DType>(r.dtype());
      const std::vector<uint16_t> want = Oracle(f.encoded, slice, out);
      const uint8_t* got = reinterpret_cast<const uint8_t*>(r.data().data());
      if (req.has_output_region()) {
        FUZZ_CHECK(r.data().empty(), "data set with output_region");
        FUZZ_CHECK(r.region_offset() >= req.output_region().offset() &&
                       r.region_offset() + want.size() * 2 <=
                           req.output_region().offset() + req.output_region().length(),
                   "result at region offset %llu outside the output range",
                   static_cast<unsigned long long>(r.region_offset()));
        got = env->region + r.region_offset();
      } else {
        FUZZ_CHECK(r.data().size() == want.size() * 2, "result of %zu bytes, want %zu",
                   r.data().size(), want.size() * 2);
      }
      FUZZ_CHECK(std::memcmp(got, want.data(), want.size() * 2) == 0,
                 "Get of fixed chunk %llu returned other bytes than the reference decode",
                 static_cast<unsigned long long>(f.key.lo));
    }
  }
}

void RunRegister(v1::RegisterRegionRequest& req, std::vector<std::pair<uint64_t, std::string>>* added) {
  if (req.path().rfind(kRootPlaceholder, 0) == 0)
    req.set_path(env->root + req.path().substr(std::strlen(kRootPlaceholder)));
  v1::RegisterRegionResponse resp;
  const absl::Status s = rpc::HandleRegisterRegion(*env->regions, env->options, req, &resp);
  CheckCode("RegisterRegion", s);
  if (!s.ok()) return;
  added->push_back({resp.region_id(), resp.token()});
  FUZZ_CHECK(resp.size() == req.size(), "registered %llu bytes, asked for %llu",
             static_cast<unsigned long long>(resp.size()),
             static_cast<unsigned long long>(req.size()));
  char resolved[PATH_MAX];
  FUZZ_CHECK(realpath(req.path().c_str(), resolved) != nullptr &&
                 std::string(resolved).rfind(env->root + "/", 0) == 0,
             "registered '%s', which is not under the root", req.path().c_str());
}

}  // namespace
}  // namespace kvstash::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash;
  using namespace kvstash::fuzz;
  if (env == nullptr) Setup();
  if (size < 1) return 0;
  const uint8_t rpc = data[0] % kRpcCount;
  const uint8_t* msg = data + 1;
  const int len = static_cast<int>(size - 1);
  std::vector<std::pair<uint64_t, std::string>> added;  // regions to unregister
  bool refill = false;
  switch (rpc) {
    case kPut: {
      v1::PutRequest req;
      if (!req.ParseFromArray(msg, len)) return 0;
      RunPut(req);
      for (const v1::PutChunk& c : req.chunks())
        (void)env->store->Delete(c.namespace_(), {c.key().hi(), c.key().lo()});
      refill = true;
      break;
    }
    case kGet: {
      v1::GetRequest req;
      if (!req.ParseFromArray(msg, len)) return 0;
      RunGet(req);
      break;
    }
    case kLookup: {
      v1::LookupRequest req;
      if (!req.ParseFromArray(msg, len)) return 0;
      v1::LookupResponse resp;
      const absl::Status s = rpc::HandleLookup(*env->store, env->options, req, &resp);
      CheckCode("Lookup", s);
      if (s.ok())
        FUZZ_CHECK(resp.present_prefix() <= static_cast<uint32_t>(req.keys_size()),
                   "present prefix %u of %d keys", resp.present_prefix(), req.keys_size());
      break;
    }
    case kDelete: {
      v1::DeleteRequest req;
      if (!req.ParseFromArray(msg, len)) return 0;
      v1::DeleteResponse resp;
      const absl::Status s = rpc::HandleDelete(*env->store, env->options, req, &resp);
      CheckCode("Delete", s);
      if (s.ok())
        FUZZ_CHECK(resp.deleted() + resp.not_found() == static_cast<uint32_t>(req.keys_size()),
                   "deleted %u + not found %u != %d keys", resp.deleted(), resp.not_found(),
                   req.keys_size());
      refill = true;
      break;
    }
    case kRegisterRegion: {
      v1::RegisterRegionRequest req;
      if (!req.ParseFromArray(msg, len)) return 0;
      RunRegister(req, &added);
      break;
    }
    case kUnregisterRegion:
    case kRenewRegion: {
      v1::UnregisterRegionRequest req;  // the same fields as RenewRegionRequest
      if (!req.ParseFromArray(msg, len)) return 0;
      if (req.token() == kTokenPlaceholder) req.set_token(env->token);
      // Region 1 stays: unregistering it would change every later input's state.
      const bool keep = req.region_id() == env->region_id;
      const absl::Status s = rpc == kUnregisterRegion && !keep
                                 ? env->regions->Unregister(req.region_id(), req.token())
                                 : env->regions->Renew(req.region_id(), req.token()).status();
      CheckCode("Unregister/RenewRegion", s);
      break;
    }
    case kStats:
      break;
  }
  v1::StatsResponse stats;
  rpc::HandleStats(*env->store, env->options, &stats);
  FUZZ_CHECK(stats.used_bytes() <= stats.capacity_bytes(), "used %llu of %llu bytes",
             static_cast<unsigned long long>(stats.used_bytes()),
             static_cast<unsigned long long>(stats.capacity_bytes()));

  for (const auto& [id, token] : added) (void)env->regions->Unregister(id, token);
  if (refill) PutFixed();
  std::memcpy(env->region, env->region_bytes.data(), kRegionBytes);
  return 0;
}
