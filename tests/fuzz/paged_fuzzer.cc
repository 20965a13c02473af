// Fuzz target (c): the paged-layout checks (server/rpc/paged.h: ResolvePaged, Window,
// GatherHost/ScatterHost) and the byte-range checks of registered regions
// (RegionRegistry::Acquire).
//
// Two regions are registered at start-up in namespace "fuzz", over files in a private
// temporary directory: region A, 64 KiB (token placeholder "@TOKEN@"), and region B,
// 4 KiB + 16 bytes ("@TOKEN2@"). Input: byte 0 picks the mode.
//   mode 0 (even): bytes 1-7 give the geometry a Put or Get would pass (layers 1-4,
//     tokens 1-4096, heads 1-16, head_dim 32-512, a window split), the rest is a
//     v1::PagedLayout in protobuf wire format.
//   mode 1 (odd): region id, token choice, offset and length for Acquire (16-byte
//     little-endian fields, so lengths and offsets near 2^64 are reachable).
// Oracles besides the sanitizers: a resolved layout places every byte of every token of
// every plane inside that plane's pinned range, computed here token by token and head by
// head from the documented addressing (proto/kvstash/v1/kvstash.proto, PagedLayout), and a
// Window of any sub-range addresses the same bytes as the whole; an acquired range lies in
// its region, at the offset asked for.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "google/protobuf/stubs/logging.h"
#include "kvstash/v1/kvstash.pb.h"
#include "server/rpc/paged.h"
#include "server/rpc/region_registry.h"

namespace kvstash::fuzz {
namespace {

constexpr uint64_t kBytesA = 64 << 10;
constexpr uint64_t kBytesB = (4 << 10) + 16;

struct Env {
  std::string root;
  std::unique_ptr<rpc::RegionRegistry> regions;
  uint64_t id[2] = {0, 0};
  std::string token[2];
  uint64_t size[2] = {kBytesA, kBytesB};
  uint8_t* base[2] = {nullptr, nullptr};  // from a whole-region pin
  std::vector<rpc::RegionPin> keep;        // those pins
};
Env* env = nullptr;

void Setup() {
  // Parsing logs every string field that is not UTF-8; the fuzzer makes plenty.
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  env = new Env;
  char dir[] = "/tmp/kvstash-fuzz-paged-XXXXXX";
  if (mkdtemp(dir) == nullptr) std::abort();
  env->root = dir;
  std::atexit([] { std::error_code ec; std::filesystem::remove_all(env->root, ec); });
  rpc::RegionOptions o;
  o.root = env->root;
  const auto frozen = rpc::RegionRegistry::Clock::time_point(std::chrono::hours(1));
  env->regions = std::make_unique<rpc::RegionRegistry>(o, nullptr, [frozen] { return frozen; });
  for (int i = 0; i < 2; ++i) {
    const std::string path = env->root + (i == 0 ? "/a" : "/b");
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(env->size[i])) != 0) std::abort();
    close(fd);
    auto reg = env->regions->Register(kNamespace, path, env->size[i], 0);
    if (!reg.ok()) {
      std::fprintf(stderr, "paged_fuzzer setup: %s\n", std::string(reg.status().ToString()).c_str());
      std::abort();
    }
    env->id[i] = reg->region_id;
    env->token[i] = reg->token;
    auto pin = env->regions->Acquire(kNamespace, env->id[i], env->token[i], 0, env->size[i], "");
    if (!pin.ok()) std::abort();
    env->base[i] = pin->data();
    env->keep.push_back(*std::move(pin));
  }
}

void FixToken(v1::RegionRef* ref) {
  if (ref->token() == kTokenPlaceholder) ref->set_token(env->token[0]);
  if (ref->token() == "@TOKEN2@") ref->set_token(env->token[1]);
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Byte offset of token t's head h in a plane, from the documented addressing.
uint64_t Address(const v1::PagedLayout& p, uint64_t token_stride, uint64_t head_stride,
                 uint64_t t, uint32_t h) {
  const uint64_t s = p.first_slot() + t;
  return uint64_t{p.block_ids(static_cast<int>(s / p.block_size()))} * p.block_stride() +
         s % p.block_size() * token_stride + uint64_t{h} * head_stride;
}

void RunPaged(const uint8_t* data, size_t size) {
  if (size < 8) return;
  const uint32_t layers = 1 + data[1] % 4;
  const uint64_t tokens = 1 + Load<uint16_t>(data + 2) % 4096;
  const uint32_t heads = 1 + data[4] % 16;
  const uint32_t head_dim = 32 * (1 + data[5] % 16);
  const uint64_t split = Load<uint16_t>(data + 6) % tokens;
  v1::PagedLayout paged;
  if (!paged.ParseFromArray(data + 8, static_cast<int>(size - 8))) return;
  for (v1::RegionRef& ref : *paged.mutable_planes()) FixToken(&ref);
  auto r = rpc::ResolvePaged(env->regions.get(), kNamespace, paged, layers, tokens, heads,
                             head_dim, "data_paged");
  if (!r.ok()) {
    const absl::StatusCode c = r.status().code();
    FUZZ_CHECK(c == absl::StatusCode::kInvalidArgument || c == absl::StatusCode::kNotFound ||
                   c == absl::StatusCode::kPermissionDenied,
               "ResolvePaged: %s", std::string(r.status().ToString()).c_str());
    return;
  }
  FUZZ_CHECK(r->planes.size() == 2ull * layers && r->pins.size() == r->planes.size(),
             "%zu planes for %u layers", r->planes.size(), layers);
  FUZZ_CHECK(!r->on_device(), "shared-memory planes resolved on a device");
  const uint64_t head_bytes = 2ull * head_dim;
  const uint64_t ts = paged.token_stride() != 0 ? paged.token_stride() : heads * head_bytes;
  const uint64_t hs = paged.head_stride() != 0 ? paged.head_stride() : head_bytes;
  FUZZ_CHECK(r->token_stride == ts && r->head_stride == hs, "resolved strides %llu/%llu",
             static_cast<unsigned long long>(r->token_stride),
             static_cast<unsigned long long>(r->head_stride));
  // Every byte the copies may touch, token by token and head by head, lies in every
  // plane's pinned range (the pin's size is the plane's length).
  uint64_t end = 0;
  for (uint64_t t = 0; t < tokens; ++t)
    for (uint32_t h = 0; h < heads; ++h)
      end = std::max(end, Address(paged, ts, hs, t, h) + head_bytes);
  for (size_t i = 0; i < r->pins.size(); ++i)
    FUZZ_CHECK(end <= r->pins[i].size(),
               "plane %zu: tokens reach byte %llu of a %llu-byte plane", i,
               static_cast<unsigned long long>(end),
               static_cast<unsigned long long>(r->pins[i].size()));
  // A window of any sub-range addresses the same bytes as the whole.
  for (const auto& [t0, n] : {std::pair<uint64_t, uint64_t>{0, tokens}, {0, split + 1},
                              {split, tokens - split}}) {
    const store::DeviceTensor w = r->Window(t0, n);
    for (uint64_t t = 0; t < n; ++t) {
      const uint64_t s = w.first_slot + t;
      FUZZ_CHECK(s / w.block_size < w.block_ids.size(), "window [%llu, +%llu) too short",
                 static_cast<unsigned long long>(t0), static_cast<unsigned long long>(n));
      const uint64_t at =
          uint64_t{w.block_ids[s / w.block_size]} * w.block_stride + s % w.block_size * ts;
      FUZZ_CHECK(at == Address(paged, ts, hs, t0 + t, 0),
                 "window [%llu, +%llu) moves token %llu", static_cast<unsigned long long>(t0),
                 static_cast<unsigned long long>(n), static_cast<unsigned long long>(t));
    }
  }
  // The host copies themselves, when the contiguous side is small enough to allocate.
  const uint64_t bytes = 2ull * layers * tokens * heads * head_bytes;
  if (bytes <= (16u << 20)) {
    const store::DeviceTensor w = r->Window(0, tokens);
    std::vector<uint8_t> buf(bytes);
    rpc::GatherHost(w, layers, static_cast<uint32_t>(tokens), buf.data());
    rpc::ScatterHost(w, layers, static_cast<uint32_t>(tokens), buf.data());
  }
}

void RunAcquire(const uint8_t* data, size_t size) {
  if (size < 1 + 1 + 16) return;
  const int which = data[1] & 1;
  const bool other_ns = data[1] & 2, wrong_token = data[1] & 4, other_id = data[1] & 8;
  const uint64_t offset = Load<uint64_t>(data + 2);
  const uint64_t length = Load<uint64_t>(data + 10);
  const uint64_t id = other_id ? env->id[which] + 7 : env->id[which];
  const std::string token = wrong_token ? env->token[1 - which] : env->token[which];
  auto pin = env->regions->Acquire(other_ns ? "fuzz2" : kNamespace, id, token, offset, length,
                                   "region");
  if (!pin.ok()) {
    FUZZ_CHECK(other_ns || wrong_token || other_id || offset > env->size[which] ||
                   length > env->size[which] - offset,
               "Acquire refused a valid range: %s", std::string(pin.status().ToString()).c_str());
    return;
  }
  FUZZ_CHECK(!other_ns && !wrong_token && !other_id, "Acquire accepted a wrong ns/token/id");
  FUZZ_CHECK(offset <= env->size[which] && length <= env->size[which] - offset,
             "Acquire accepted [%llu, +%llu) of a %llu-byte region",
             static_cast<unsigned long long>(offset), static_cast<unsigned long long>(length),
             static_cast<unsigned long long>(env->size[which]));
  FUZZ_CHECK(pin->data() == env->base[which] + offset && pin->size() == length,
             "pinned range differs from the one asked for");
  if (length > 0) {  // touch both ends: unmapped memory would fault here
    pin->data()[0] ^= 0;
    volatile uint8_t last = pin->data()[length - 1];
    (void)last;
  }
}

}  // namespace
}  // namespace kvstash::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash::fuzz;
  if (env == nullptr) Setup();
  if (size < 1) return 0;
  if (data[0] & 1) {
    RunAcquire(data, size);
  } else {
    RunPaged(data, size);
  }
  return 0;
}
