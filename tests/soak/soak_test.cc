// Soak test: a real kvstashd (started here, as tests/integration starts it) whose host pool
// holds half of the working set, under 8 client threads (C++ client library) that mix
// Puts, Gets (whole chunks, slices, dtype conversions, batches), Deletes, Lookups and
// shared-memory region traffic (RegisterRegion, Put from a region, Get into a region,
// Renew, Unregister and re-register) for a set time.
//
// Every byte read back is checked. Each thread owns its keys, so it knows which versions
// each key may hold: a Get must return exactly the codec's own decode of one of them
// (the payload itself for fp16, which is lossless; kernels::Decode(kernels::EncodeChunk)
// for the lossy presets, whose error is also bounded), or NOT_FOUND when the chunk was
// evicted; a deleted key must never come back. A few keys are shared by all threads:
// their payloads carry their version in their first two values, so a read must be one
// whole version, never a mix. At the end: 0 wrong bytes, every error code among the
// expected ones (NOT_FOUND for evicted or deleted chunks, RESOURCE_EXHAUSTED for a Put
// while every page is pinned, NOT_FOUND for a region used after it was unregistered), the
// daemon alive and healthy (Stats, /healthz), evictions > 0 (the pool really was
// over-subscribed), its RSS (VmRSS, sampled every 250 ms) below host capacity + a bound
// and not growing after warm-up, and a clean exit on SIGTERM.
//
//   soak_test [--seconds N] [--threads N] [--keys-per-thread N] [--daemon PATH]
//             [--rss-slack-mib N] [--rss-growth-mib N]
// KVSTASH_SOAK_SECONDS overrides the default duration (120 s; ctest label `soak`).
// Exit status 0 when every check holds; the summary goes to stdout either way.
#include <signal.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "cli_util.h"
#include "daemon_process.h"
#include "kvstash/client/client.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"

namespace kvstash::soak {
namespace {

using client::ChunkKey;
using kernels::ChunkShape;
using kernels::DType;
using kernels::Preset;
using Clock = std::chrono::steady_clock;

constexpr const char* kNamespace = "soak";
constexpr uint64_t kPageBytes = 16 << 10;

struct Options {
  int seconds = 120;
  int threads = 8;
  int keys_per_thread = 32;
  int shared_keys = 8;
  std::string daemon = KVSTASHD_PATH;
  uint64_t rss_slack_mib = 128;   // RSS may exceed the host pool by this much
  uint64_t rss_growth_mib = 32;   // and grow by at most this much after warm-up
};

// --- What happened -------------------------------------------------------------------------

enum Op {
  kPut, kPutBatch, kPutRegion, kGet, kGetBatch, kGetRegion, kDelete, kLookup, kRegister,
  kUnregister, kRenew, kStaleRegion, kStats, kSharedPut, kSharedGet, kOpCount
};
constexpr const char* kOpNames[kOpCount] = {
    "put", "put (batch)", "put from region", "get", "get (batch)", "get into region",
    "delete", "lookup", "register region", "unregister region", "renew region",
    "stale region use", "stats", "put (shared key)", "get (shared key)"};

struct Tally {
  std::array<std::atomic<uint64_t>, kOpCount> ops{};
  // [op][status code]
  std::array<std::array<std::atomic<uint64_t>, 17>, kOpCount> codes{};
  std::atomic<uint64_t> bytes_verified{0};
  std::atomic<uint64_t> wrong_bytes{0};
  std::atomic<uint64_t> chunks_verified{0};
  std::atomic<uint64_t> unexpected{0};
  std::atomic<uint64_t> failed_checks{0};
  std::mutex mu;
  std::vector<std::string> messages;  // the first few problems, for the log

  void Problem(const std::string& what, std::atomic<uint64_t>* counter) {
    counter->fetch_add(1);
    std::lock_guard<std::mutex> lock(mu);
    if (messages.size() < 20) messages.push_back(what);
  }
};
Tally tally;

// Counts the call's outcome; an outcome outside `allowed` is an unexpected error.
bool Record(Op op, const absl::Status& s, std::initializer_list<absl::StatusCode> allowed) {
  tally.ops[op].fetch_add(1, std::memory_order_relaxed);
  const int code = static_cast<int>(s.code());
  tally.codes[op][code < 17 ? code : 2].fetch_add(1, std::memory_order_relaxed);
  if (s.ok()) return true;
  for (absl::StatusCode c : allowed)
    if (s.code() == c) return false;
  tally.Problem(std::string(kOpNames[op]) + ": unexpected " + std::string(s.ToString()),
                &tally.unexpected);
  return false;
}

// --- Chunks and what reading them must return ---------------------------------------------

struct KeySpec {
  ChunkKey key;
  ChunkShape shape;
  Preset preset;
};

// Shapes and presets by key index: every preset, both dtypes, tails and whole groups.
KeySpec SpecFor(uint64_t id) {
  static const ChunkShape kShapes[] = {
      {4, 64, 2, 64, DType::kF16}, {4, 40, 2, 128, DType::kF16}, {6, 96, 1, 64, DType::kF16},
      {2, 33, 4, 64, DType::kF16}, {3, 64, 2, 64, DType::kBF16}};
  static const Preset kPresets[] = {Preset::kFp16, Preset::kXQuant, Preset::kKivi2,
                                    Preset::kAsymKv15};
  KeySpec k;
  k.key = {0x50a4000000000000ull | id, id * 0x9E3779B97F4A7C15ull};
  k.shape = kShapes[id % 5];
  k.preset = kPresets[(id / 5 + id) % 4];
  return k;
}

std::vector<uint16_t> PayloadFor(const KeySpec& k, uint32_t version) {
  return cli::GeneratePayload(k.shape, k.key.lo ^ (uint64_t{version} << 40) ^ version);
}

std::vector<uint8_t> Encode(const KeySpec& k, const std::vector<uint16_t>& payload) {
  auto enc = kernels::EncodeChunk(k.shape, kernels::PresetConfig(k.preset, k.shape.num_layers),
                                  payload);
  if (!enc.ok()) {
    std::fprintf(stderr, "soak: local encode failed: %s\n", std::string(enc.status().ToString()).c_str());
    std::abort();
  }
  return *std::move(enc);
}

// What a Get of `slice` in `out` must return for a chunk encoded as `encoded`.
std::vector<uint16_t> Expected(const std::vector<uint8_t>& encoded, const kernels::Slice& slice,
                               DType out) {
  std::vector<uint16_t> v;
  const absl::Status s = kernels::Decode(encoded.data(), encoded.size(), slice, out, &v);
  if (!s.ok()) {
    std::fprintf(stderr, "soak: local decode failed: %s\n", std::string(s.ToString()).c_str());
    std::abort();
  }
  return v;
}

uint64_t DiffBytes(const uint8_t* a, const uint8_t* b, size_t n) {
  uint64_t d = 0;
  for (size_t i = 0; i < n; ++i) d += a[i] != b[i];
  return d;
}

std::string KeyName(const ChunkKey& k) { return client::KeyToHex(k); }

// --- The daemon's process ------------------------------------------------------------------

// DaemonProcess keeps its pid to itself: find the one child of ours that is kvstashd.
pid_t FindDaemonPid() {
  const pid_t self = getpid();
  DIR* d = opendir("/proc");
  if (d == nullptr) return -1;
  pid_t found = -1;
  while (dirent* e = readdir(d)) {
    const pid_t pid = static_cast<pid_t>(std::atol(e->d_name));
    if (pid <= 0) continue;
    std::ifstream in("/proc/" + std::string(e->d_name) + "/stat");
    std::string line;
    std::getline(in, line);
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    const std::string comm = line.substr(line.find('(') + 1, close - line.find('(') - 1);
    std::istringstream rest(line.substr(close + 2));
    char state;
    pid_t ppid;
    rest >> state >> ppid;
    if (ppid == self && comm.rfind("kvstashd", 0) == 0) found = pid;
  }
  closedir(d);
  return found;
}

// VmRSS in KiB, or 0 when the process is gone.
uint64_t RssKiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  return 0;
}

bool Alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const size_t close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

// GET http://HOST:PORT/healthz; returns the status line ("" when unreachable).
std::string HttpStatus(const std::string& host_port, const std::string& path) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(host_port.c_str() + colon + 1)));
  if (inet_pton(AF_INET, host_port.substr(0, colon).c_str(), &addr.sin_addr) != 1) return "";
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  std::string reply;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: x\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[512];
      ssize_t n;
      while ((n = read(fd, buf, sizeof buf)) > 0 && reply.size() < 4096) reply.append(buf, n);
    }
  }
  close(fd);
  return reply.substr(0, reply.find("\r\n"));
}

// --- One client thread -------------------------------------------------------------------

struct SharedKeys {
  std::vector<KeySpec> specs;
  std::vector<std::atomic<uint32_t>> versions;  // highest version put (or being put)
  explicit SharedKeys(int n) : versions(n) {
    for (int i = 0; i < n; ++i) {
      specs.push_back(SpecFor(900000 + i));  // thread t owns ids t*1000+1 .. t*1000+999
      specs.back().shape = {2, 48, 2, 64, DType::kF16};
      specs.back().preset = Preset::kFp16;
    }
  }
};

// A shared key's payload: its version in values 0 and 1 (exact fp16 integers < 2048).
std::vector<uint16_t> SharedPayload(const KeySpec& k, uint32_t version) {
  std::vector<uint16_t> p = PayloadFor(k, version);
  p[0] = kernels::FloatToF16Finite(static_cast<float>(version / 2048));
  p[1] = kernels::FloatToF16Finite(static_cast<float>(version % 2048));
  return p;
}

class Worker {
 public:
  Worker(int index, const Options& o, const std::string& target, SharedKeys* shared)
      : options_(o), target_(target), shared_(shared), rng_(1234 + index) {
    for (int i = 0; i < o.keys_per_thread; ++i) {
      Key k;
      k.spec = SpecFor(uint64_t(index) * 1000 + i + 1);
      keys_.push_back(std::move(k));
    }
  }

  void Run(Clock::time_point deadline) {
    client::ClientOptions co;
    co.target = target_;
    co.connect_timeout = std::chrono::seconds(10);
    auto c = client::Client::Connect(co);
    if (!c.ok()) {
      tally.Problem("connect: " + std::string(c.status().ToString()), &tally.unexpected);
      return;
    }
    client_ = std::move(*c);
    auto shm = client::SharedRegion::Create(kRegionBytes);
    if (!shm.ok()) {
      tally.Problem("SharedRegion: " + std::string(shm.status().ToString()), &tally.unexpected);
      return;
    }
    shm_ = std::move(*shm);
    RegisterRegion();
    while (Clock::now() < deadline) Step();
    // A final sweep: every key reads back as what this thread last stored (or is absent).
    for (size_t i = 0; i < keys_.size(); ++i) GetOne(i, /*random_slice=*/false);
    if (region_) (void)client_->UnregisterRegion(*region_);
  }

 private:
  static constexpr uint64_t kRegionBytes = 512 << 10;  // two 160 KiB payloads and slack
  static constexpr uint64_t kRegionOut = 256 << 10;    // Gets into the region land here

  struct Key {
    KeySpec spec;
    std::vector<uint32_t> versions;  // what the store may hold (empty: nothing)
    std::map<uint32_t, std::vector<uint8_t>> encoded;
    std::map<uint32_t, std::vector<uint16_t>> payloads;
    uint32_t next = 1;
  };

  uint32_t Rand(uint32_t n) { return std::uniform_int_distribution<uint32_t>(0, n - 1)(rng_); }

  void Step() {
    const uint32_t r = Rand(100);
    if (r < 18) return PutKeys(1 + (Rand(4) == 0 ? Rand(3) : 0), /*from_region=*/false);
    if (r < 26) return PutKeys(1, /*from_region=*/true);
    if (r < 48) return GetOne(Rand(keys_.size()), /*random_slice=*/true);
    if (r < 56) return GetBatch();
    if (r < 64) return GetIntoRegion(Rand(keys_.size()));
    if (r < 70) return DeleteKeys();
    if (r < 77) return LookupKeys();
    if (r < 83) return SharedPut();
    if (r < 92) return SharedGet();
    if (r < 94) {
      auto s = client_->Stats();
      Record(kStats, s.status(), {});
      return;
    }
    if (r < 97 && region_) {
      Record(kRenew, client_->RenewRegion(*region_), {});
      return;
    }
    ChurnRegion();
  }

  void RegisterRegion() {
    auto reg = client_->RegisterRegion(kNamespace, shm_.path(), shm_.size());
    if (Record(kRegister, reg.status(), {})) region_ = *std::move(reg);
  }

  // Unregisters the region, checks that a stale reference is refused with NOT_FOUND, and
  // registers the same file again.
  void ChurnRegion() {
    if (!region_) return RegisterRegion();
    const client::Region old = *region_;
    Record(kUnregister, client_->UnregisterRegion(old), {});
    region_.reset();
    client::GetOptions g;
    g.output_region = &old;
    g.allow_missing = true;
    std::vector<ChunkKey> one = {keys_[0].spec.key};
    auto stale = client_->Get(kNamespace, one, g);
    Record(kStaleRegion, stale.status(), {absl::StatusCode::kNotFound});
    if (stale.ok())
      tally.Problem("a Get into an unregistered region succeeded", &tally.failed_checks);
    RegisterRegion();
  }

  Key& PrepareVersion(size_t i, uint32_t* version) {
    Key& k = keys_[i];
    *version = k.next++;
    k.payloads[*version] = PayloadFor(k.spec, *version);
    k.encoded[*version] = Encode(k.spec, k.payloads[*version]);
    return k;
  }

  // After a Put of versions `v` of keys `idx`: on success each key holds exactly its new
  // version; on failure (RESOURCE_EXHAUSTED) either the old or the new one (a batch keeps
  // the chunks before the failing one).
  void Settle(const std::vector<size_t>& idx, const std::vector<uint32_t>& v, bool ok) {
    for (size_t j = 0; j < idx.size(); ++j) {
      Key& k = keys_[idx[j]];
      if (ok) k.versions = {v[j]};
      else k.versions.push_back(v[j]);
      // Forget versions the store can no longer hold.
      for (auto it = k.encoded.begin(); it != k.encoded.end();) {
        if (std::find(k.versions.begin(), k.versions.end(), it->first) == k.versions.end()) {
          k.payloads.erase(it->first);
          it = k.encoded.erase(it);
        } else {
          ++it;
        }
      }
    }
  }

  void PutKeys(size_t n, bool from_region) {
    if (from_region && !region_) return;
    std::vector<size_t> idx;
    while (idx.size() < n) {
      const size_t i = Rand(keys_.size());
      if (std::find(idx.begin(), idx.end(), i) == idx.end()) idx.push_back(i);
    }
    std::vector<uint32_t> v(n);
    std::vector<client::PutChunk> chunks;
    for (size_t j = 0; j < n; ++j) {
      Key& k = PrepareVersion(idx[j], &v[j]);
      client::PutChunk c;
      c.key = k.spec.key;
      c.shape = k.spec.shape;
      c.codec = client::Codec::FromPreset(k.spec.preset);
      const std::vector<uint16_t>& p = k.payloads[v[j]];
      if (from_region) {
        std::memcpy(shm_.data(), p.data(), p.size() * 2);
        c.region = &*region_;
        c.region_offset = 0;
      } else {
        c.data = {reinterpret_cast<const uint8_t*>(p.data()), p.size() * 2};
      }
      chunks.push_back(c);
    }
    auto put = client_->Put(kNamespace, chunks);
    const Op op = from_region ? kPutRegion : n > 1 ? kPutBatch : kPut;
    const bool ok = Record(op, put.status(), {absl::StatusCode::kResourceExhausted});
    if (ok && put->size() != n)
      tally.Problem("put: wrong number of results", &tally.failed_checks);
    Settle(idx, v, ok);
  }

  // Checks `got` (a Get of key i's slice in `out`) against every version the key may hold.
  void Verify(size_t i, const kernels::Slice& slice, DType out, const uint8_t* got,
              size_t got_bytes, const char* what) {
    Key& k = keys_[i];
    if (k.versions.empty()) {
      tally.Problem(std::string(what) + ": key " + KeyName(k.spec.key) +
                        " was deleted but reads back", &tally.failed_checks);
      tally.wrong_bytes.fetch_add(got_bytes);
      return;
    }
    uint64_t best = UINT64_MAX;
    for (uint32_t v : k.versions) {
      const std::vector<uint16_t> want = Expected(k.encoded[v], slice, out);
      if (want.size() * 2 != got_bytes) continue;
      best = std::min(best, DiffBytes(got, reinterpret_cast<const uint8_t*>(want.data()), got_bytes));
      if (best == 0) {
        CheckFidelity(k, v, slice, out, want);
        break;
      }
    }
    tally.bytes_verified.fetch_add(got_bytes, std::memory_order_relaxed);
    tally.chunks_verified.fetch_add(1, std::memory_order_relaxed);
    if (best != 0) {
      tally.wrong_bytes.fetch_add(best == UINT64_MAX ? got_bytes : best);
      tally.Problem(std::string(what) + ": key " + KeyName(k.spec.key) + " returned " +
                        std::to_string(got_bytes) + " bytes, " +
                        (best == UINT64_MAX ? std::string("a wrong size")
                                            : std::to_string(best) + " of them wrong"),
                    &tally.failed_checks);
    }
  }

  // fp16 is lossless; the lossy presets stay within a generous relative RMS error of the
  // payload (the presets measure 0.27-0.69 on this kind of data: README).
  void CheckFidelity(Key& k, uint32_t v, const kernels::Slice& slice, DType out,
                     const std::vector<uint16_t>& got) {
    if (slice.layer_begin != 0 || slice.layer_end != 0 || slice.head_begin != 0 ||
        slice.head_end != 0 || out != k.spec.shape.dtype)
      return;
    const std::vector<uint16_t>& in = k.payloads[v];
    if (k.spec.preset == Preset::kFp16) {
      if (got != in) tally.Problem("fp16 chunk is not lossless", &tally.failed_checks);
      return;
    }
    const int dt = static_cast<int>(out);
    double err = 0, norm = 0;
    for (size_t e = 0; e < in.size(); ++e) {
      const double x = kernels::HalfToFloat(in[e], dt), y = kernels::HalfToFloat(got[e], dt);
      err += (x - y) * (x - y);
      norm += x * x;
    }
    if (!(std::sqrt(err / norm) < 0.9))
      tally.Problem("lossy round trip error " + std::to_string(std::sqrt(err / norm)),
                    &tally.failed_checks);
  }

  kernels::Slice RandomSlice(const ChunkShape& s) {
    if (Rand(3) != 0) return {};
    kernels::Slice sl;
    sl.layer_begin = Rand(s.num_layers);
    sl.layer_end = sl.layer_begin + 1 + Rand(s.num_layers - sl.layer_begin);
    sl.head_begin = Rand(s.num_heads);
    sl.head_end = sl.head_begin + 1 + Rand(s.num_heads - sl.head_begin);
    return sl;
  }

  DType RandomOut(const ChunkShape& s, client::GetOptions* g) {
    if (Rand(5) == 0) {
      g->output_dtype = s.dtype == DType::kF16 ? DType::kBF16 : DType::kF16;
      return g->output_dtype;
    }
    return s.dtype;  // unspecified: the chunk's own
  }

  void GetOne(size_t i, bool random_slice) {
    Key& k = keys_[i];
    client::GetOptions g;
    g.slice = random_slice ? RandomSlice(k.spec.shape) : kernels::Slice{};
    const DType out = random_slice ? RandomOut(k.spec.shape, &g) : k.spec.shape.dtype;
    auto got = client_->Get(kNamespace, k.spec.key, g);
    if (!Record(kGet, got.status(), {absl::StatusCode::kNotFound})) return;
    Verify(i, g.slice, out, reinterpret_cast<const uint8_t*>(got->data.data()), got->data.size(),
           "get");
  }

  void GetBatch() {
    std::vector<size_t> idx;
    const size_t n = 2 + Rand(4);
    for (size_t j = 0; j < n; ++j) idx.push_back(Rand(keys_.size()));
    std::vector<ChunkKey> keys;
    for (size_t i : idx) keys.push_back(keys_[i].spec.key);
    client::GetOptions g;
    g.allow_missing = true;
    auto got = client_->Get(kNamespace, keys, g);
    if (!Record(kGetBatch, got.status(), {})) return;
    if (got->size() != n) return tally.Problem("get batch: wrong result count", &tally.failed_checks);
    for (size_t j = 0; j < n; ++j) {
      const client::GetResult& r = (*got)[j];
      if (!r.found) continue;
      Verify(idx[j], {}, keys_[idx[j]].spec.shape.dtype,
             reinterpret_cast<const uint8_t*>(r.data.data()), r.data.size(), "get batch");
    }
  }

  void GetIntoRegion(size_t i) {
    if (!region_) return;
    Key& k = keys_[i];
    client::GetOptions g;
    g.slice = RandomSlice(k.spec.shape);
    const DType out = RandomOut(k.spec.shape, &g);
    g.output_region = &*region_;
    g.output_offset = kRegionOut;
    std::memset(shm_.data() + kRegionOut, 0xA5, kRegionBytes - kRegionOut);
    auto got = client_->Get(kNamespace, k.spec.key, g);
    if (!Record(kGetRegion, got.status(), {absl::StatusCode::kNotFound})) return;
    if (!got->data.empty() || got->region_offset < kRegionOut)
      return tally.Problem("get into region: data in the reply or a wrong offset",
                           &tally.failed_checks);
    const uint64_t bytes = kernels::DecodedBytes(
        k.spec.shape, *kernels::ResolveSlice(k.spec.shape, g.slice));
    if (got->region_offset + bytes > kRegionBytes)
      return tally.Problem("get into region: result past the range", &tally.failed_checks);
    Verify(i, g.slice, out, shm_.data() + got->region_offset, bytes, "get into region");
  }

  void DeleteKeys() {
    std::vector<size_t> idx = {Rand(keys_.size())};
    if (Rand(2) == 0) idx.push_back(Rand(keys_.size()));
    std::vector<ChunkKey> keys;
    for (size_t i : idx) keys.push_back(keys_[i].spec.key);
    auto del = client_->Delete(kNamespace, keys);
    if (!Record(kDelete, del.status(), {})) return;
    if (del->deleted + del->not_found != keys.size())
      tally.Problem("delete: counts do not add up", &tally.failed_checks);
    for (size_t i : idx) {  // absent now, until this thread puts it again
      keys_[i].versions.clear();
      keys_[i].encoded.clear();
      keys_[i].payloads.clear();
    }
  }

  void LookupKeys() {
    const size_t start = Rand(keys_.size());
    const size_t n = 1 + Rand(4);
    std::vector<ChunkKey> chain;
    for (size_t j = 0; j < n; ++j) chain.push_back(keys_[(start + j) % keys_.size()].spec.key);
    auto present = client_->Lookup(kNamespace, chain);
    if (!Record(kLookup, present.status(), {})) return;
    if (*present > n) tally.Problem("lookup: prefix longer than the chain", &tally.failed_checks);
    // A key this thread deleted (and did not put again) cannot be present.
    if (*present > 0 && keys_[start].versions.empty())
      tally.Problem("lookup: a deleted key is present", &tally.failed_checks);
  }

  void SharedPut() {
    const size_t i = Rand(shared_->specs.size());
    const KeySpec& k = shared_->specs[i];
    const uint32_t v = shared_->versions[i].fetch_add(1) + 1;
    const std::vector<uint16_t> p = SharedPayload(k, v);
    client::PutChunk c;
    c.key = k.key;
    c.shape = k.shape;
    c.codec = client::Codec::FromPreset(Preset::kFp16);
    c.data = {reinterpret_cast<const uint8_t*>(p.data()), p.size() * 2};
    Record(kSharedPut, client_->Put(kNamespace, c).status(), {absl::StatusCode::kResourceExhausted});
  }

  void SharedGet() {
    const size_t i = Rand(shared_->specs.size());
    const KeySpec& k = shared_->specs[i];
    auto got = client_->Get(kNamespace, k.key);
    if (!Record(kSharedGet, got.status(), {absl::StatusCode::kNotFound})) return;
    const size_t bytes = k.shape.payload_bytes();
    tally.bytes_verified.fetch_add(got->data.size(), std::memory_order_relaxed);
    tally.chunks_verified.fetch_add(1, std::memory_order_relaxed);
    if (got->data.size() != bytes) {
      tally.wrong_bytes.fetch_add(got->data.size());
      return tally.Problem("shared get: wrong size", &tally.failed_checks);
    }
    uint16_t v0, v1;
    std::memcpy(&v0, got->data.data(), 2);
    std::memcpy(&v1, got->data.data() + 2, 2);
    const float hi = kernels::F16ToFloat(v0), lo = kernels::F16ToFloat(v1);
    const uint32_t v = static_cast<uint32_t>(hi) * 2048 + static_cast<uint32_t>(lo);
    if (hi < 0 || lo < 0 || lo >= 2048 || v == 0 || v > shared_->versions[i].load()) {
      tally.wrong_bytes.fetch_add(bytes);
      return tally.Problem("shared get: no version " + std::to_string(v) + " was put",
                           &tally.failed_checks);
    }
    const std::vector<uint16_t> want = SharedPayload(k, v);
    const uint64_t d = DiffBytes(reinterpret_cast<const uint8_t*>(got->data.data()),
                                 reinterpret_cast<const uint8_t*>(want.data()), bytes);
    if (d != 0) {
      tally.wrong_bytes.fetch_add(d);
      tally.Problem("shared get: version " + std::to_string(v) + " with " + std::to_string(d) +
                        " wrong bytes (a torn read?)", &tally.failed_checks);
    }
  }

  const Options options_;
  const std::string target_;
  SharedKeys* const shared_;
  std::mt19937_64 rng_;
  std::vector<Key> keys_;
  std::unique_ptr<client::Client> client_;
  client::SharedRegion shm_;
  std::optional<client::Region> region_;
};

// --- The run -------------------------------------------------------------------------------

int Run(const Options& o) {
  // The working set: every key's pages; the host pool gets half of it.
  uint64_t working_set = 0, largest = 0, logical = 0;
  auto add = [&](const KeySpec& k) {
    auto lay = kernels::MakeLayout(k.shape, kernels::PresetConfig(k.preset, k.shape.num_layers));
    const uint64_t pages = (lay->total_bytes + kPageBytes - 1) / kPageBytes * kPageBytes;
    working_set += pages;
    largest = std::max(largest, pages);
    logical += k.shape.payload_bytes();
  };
  SharedKeys shared(o.shared_keys);
  for (int t = 0; t < o.threads; ++t)
    for (int i = 0; i < o.keys_per_thread; ++i) add(SpecFor(uint64_t(t) * 1000 + i + 1));
  for (const KeySpec& k : shared.specs) add(k);
  const uint64_t capacity = std::max(working_set / 2 / kPageBytes * kPageBytes, 4 * largest);

  testing::DaemonProcess daemon;
  const absl::Status started = daemon.Start(
      o.daemon, {"--host-capacity", std::to_string(capacity), "--page-bytes",
                 std::to_string(kPageBytes), "--log-level", "warn", "--worker-threads", "4",
                 "--fidelity-probe-every", "16"});
  if (!started.ok()) {
    std::printf("soak: the daemon did not start: %s\n", std::string(started.ToString()).c_str());
    return 1;
  }
  const pid_t pid = FindDaemonPid();
  std::string metrics;
  {
    const std::string out = daemon.Stdout();
    const std::string tag = "kvstashd metrics on ";
    const size_t at = out.find(tag);
    if (at != std::string::npos)
      metrics = out.substr(at + tag.size(), out.find('\n', at) - at - tag.size());
  }
  std::printf("soak: kvstashd pid %d at %s (metrics %s), host pool %.1f MiB for a working set "
              "of %.1f MiB stored (%.1f MiB logical), %d threads, %d s\n",
              static_cast<int>(pid), daemon.address().c_str(), metrics.c_str(),
              capacity / 1048576.0, working_set / 1048576.0, logical / 1048576.0, o.threads,
              o.seconds);
  std::fflush(stdout);

  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::seconds(o.seconds);
  // RSS, every 250 ms: the peak, and after warm-up (the first quarter: the pool's pages
  // get touched, gRPC and the workers reach their steady state) the growth from the first
  // sample after it to the peak after it.
  std::atomic<bool> done{false};
  uint64_t max_rss = 0, warm_rss = 0, late_max = 0, end_rss = 0, samples = 0;
  std::thread monitor([&] {
    const Clock::time_point warm = start + std::chrono::seconds(o.seconds) / 4;
    while (!done.load()) {
      const uint64_t rss = RssKiB(pid);
      max_rss = std::max(max_rss, rss);
      if (Clock::now() >= warm) {
        if (warm_rss == 0) warm_rss = rss;
        late_max = std::max(late_max, rss);
      }
      end_rss = rss;
      ++samples;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  });
  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < o.threads; ++t)
    workers.push_back(std::make_unique<Worker>(t, o, daemon.address(), &shared));
  std::vector<std::thread> threads;
  for (auto& w : workers) threads.emplace_back([&w, deadline] { w->Run(deadline); });
  for (std::thread& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  done = true;
  monitor.join();

  // The daemon after the load: alive, serving, healthy.
  std::vector<std::string> failures;
  const bool alive = pid > 0 && Alive(pid);
  if (!alive) failures.push_back("the daemon died");
  client::ClientOptions co;
  co.target = daemon.address();
  co.connect_timeout = std::chrono::seconds(10);
  uint64_t evictions = 0, chunks = 0, used = 0;
  if (auto c = client::Client::Connect(co); c.ok()) {
    auto st = (*c)->Stats();
    if (st.ok()) {
      evictions = st->evictions, chunks = st->chunks, used = st->used_bytes;
    } else {
      failures.push_back("Stats after the run: " + std::string(st.status().ToString()));
    }
  } else {
    failures.push_back("connect after the run: " + std::string(c.status().ToString()));
  }
  const std::string health = metrics.empty() ? "" : HttpStatus(metrics, "/healthz");
  if (health.find(" 200") == std::string::npos)
    failures.push_back("/healthz answered '" + health + "'");
  if (evictions == 0) failures.push_back("no evictions: the pool was not over-subscribed");

  // The summary.
  std::printf("\n%-22s %10s  %s\n", "operation", "count", "status codes");
  uint64_t total = 0;
  std::map<std::string, uint64_t> by_code;
  for (int op = 0; op < kOpCount; ++op) {
    const uint64_t n = tally.ops[op].load();
    total += n;
    std::string codes;
    for (int c = 0; c < 17; ++c) {
      const uint64_t k = tally.codes[op][c].load();
      if (k == 0) continue;
      const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(c));
      by_code[name] += k;
      codes += (codes.empty() ? "" : ", ") + name + " " + std::to_string(k);
    }
    std::printf("%-22s %10" PRIu64 "  %s\n", kOpNames[op], n, codes.c_str());
  }
  std::printf("%-22s %10" PRIu64 "  (%.0f ops/s)\n", "all", total, total / elapsed);
  std::printf("\nerrors by code:");
  for (const auto& [name, n] : by_code)
    if (name != "OK") std::printf(" %s %" PRIu64 ";", name.c_str(), n);
  std::printf("\nchunks verified %" PRIu64 " (%.1f MiB), wrong bytes %" PRIu64
              ", failed checks %" PRIu64 ", unexpected errors %" PRIu64 "\n",
              tally.chunks_verified.load(), tally.bytes_verified.load() / 1048576.0,
              tally.wrong_bytes.load(), tally.failed_checks.load(), tally.unexpected.load());
  std::printf("daemon: %s, healthz '%s', evictions %" PRIu64 ", chunks %" PRIu64
              ", pool used %.1f of %.1f MiB\n",
              alive ? "alive" : "DEAD", health.c_str(), evictions, chunks, used / 1048576.0,
              capacity / 1048576.0);
  const uint64_t growth = late_max > warm_rss ? late_max - warm_rss : 0;
  std::printf("daemon RSS: max %.1f MiB, %.1f MiB after warm-up growing by %.1f MiB to at "
              "most %.1f, %.1f MiB at the end (%" PRIu64 " samples)\n",
              max_rss / 1024.0, warm_rss / 1024.0, growth / 1024.0, late_max / 1024.0,
              end_rss / 1024.0, samples);
  for (const std::string& m : tally.messages) std::printf("  problem: %s\n", m.c_str());

  if (tally.wrong_bytes.load() != 0) failures.push_back("wrong bytes read back");
  if (tally.failed_checks.load() != 0) failures.push_back("failed checks");
  if (tally.unexpected.load() != 0) failures.push_back("unexpected error codes");
  const uint64_t rss_bound = capacity / 1024 + o.rss_slack_mib * 1024;
  if (max_rss > rss_bound)
    failures.push_back("daemon RSS " + std::to_string(max_rss / 1024) + " MiB above the bound " +
                       std::to_string(rss_bound / 1024) + " MiB");
  if (growth > o.rss_growth_mib * 1024)
    failures.push_back("daemon RSS grew by " + std::to_string(growth / 1024) +
                       " MiB after warm-up (bound " + std::to_string(o.rss_growth_mib) + " MiB)");
  const int status = daemon.Stop();
  if (status != 0) failures.push_back("kvstashd exited with " + std::to_string(status) +
                                      " on SIGTERM:\n" + daemon.Log());
  std::printf("daemon exit on SIGTERM: %d\n", status);
  if (failures.empty()) {
    std::printf("SOAK PASSED\n");
    return 0;
  }
  for (const std::string& f : failures) std::printf("FAILED: %s\n", f.c_str());
  return 1;
}

}  // namespace
}  // namespace kvstash::soak

int main(int argc, char** argv) {
  kvstash::soak::Options o;
  if (const char* s = std::getenv("KVSTASH_SOAK_SECONDS")) o.seconds = std::atoi(s);
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--seconds") o.seconds = std::stoi(value);
    else if (flag == "--threads") o.threads = std::stoi(value);
    else if (flag == "--keys-per-thread") o.keys_per_thread = std::stoi(value);
    else if (flag == "--daemon") o.daemon = value;
    else if (flag == "--rss-slack-mib") o.rss_slack_mib = std::stoull(value);
    else if (flag == "--rss-growth-mib") o.rss_growth_mib = std::stoull(value);
    else {
      std::fprintf(stderr, "soak_test: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (o.seconds <= 0 || o.threads <= 0 || o.keys_per_thread <= 0) return 2;
  signal(SIGPIPE, SIG_IGN);
  return kvstash::soak::Run(o);
}
