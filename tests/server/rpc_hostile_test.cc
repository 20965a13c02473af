// Hostile and racing requests against the handler logic (issue 12), each asserting its
// exact code: paged layouts naming huge chunks, regions whose files are truncated under a
// request (SIGBUS caught), a Get racing a re-put of another dtype, output_paged checked
// when no key is found, and the exact response-size pre-check.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstash/kernels/half.h"
#include "server/rpc/service.h"
#include "server/store/store.h"

namespace kvstash::rpc {
namespace {

using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// Random finite 16-bit values of `dtype`, fresh per call.
std::string RandomPayload(uint64_t bytes, v1::DType dtype, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<uint16_t> v(bytes / 2);
  for (uint16_t& x : v) x = kernels::FloatToHalfSat(normal(rng), static_cast<int>(dtype));
  return std::string(reinterpret_cast<const char*>(v.data()), bytes);
}

v1::Layout MakeLayout(uint32_t L, uint32_t T, uint32_t H, uint32_t D) {
  v1::Layout l;
  l.set_num_layers(L);
  l.set_num_tokens(T);
  l.set_num_heads(H);
  l.set_head_dim(D);
  return l;
}

uint64_t PayloadBytes(const v1::Layout& l) {
  return 4ull * l.num_layers() * l.num_tokens() * l.num_heads() * l.head_dim();
}

v1::ChunkKey Key(uint64_t lo) {
  v1::ChunkKey k;
  k.set_hi(0x1234);
  k.set_lo(lo);
  return k;
}

// A file under /dev/shm; removed by the destructor.
class ShmFile {
 public:
  explicit ShmFile(uint64_t size) : size_(size) {
    std::random_device rd;
    path_ = absl::StrCat("/dev/shm/kvstash-hostile-", getpid(), "-", rd(), rd());
    fd_ = open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(ftruncate(fd_, static_cast<off_t>(size)), 0);
  }
  ~ShmFile() {
    close(fd_);
    unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  void Write(uint64_t at, const std::string& bytes) {
    ASSERT_EQ(pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(at)),
              static_cast<ssize_t>(bytes.size()));
  }
  std::string Read(uint64_t at, uint64_t n) {
    std::string out(n, '\0');
    EXPECT_EQ(pread(fd_, out.data(), n, static_cast<off_t>(at)), static_cast<ssize_t>(n));
    return out;
  }
  void Truncate(uint64_t size) { ASSERT_EQ(ftruncate(fd_, static_cast<off_t>(size)), 0); }

 private:
  std::string path_;
  uint64_t size_;
  int fd_ = -1;
};

// The real store with hooks: `before_get` runs (once) at the start of the next Get, and
// `on_stats` (once) at the next Stats, which HandlePut asks before it reads a payload out
// of shared memory. They truncate a region's file between the handler's checks and its
// access, or replace a chunk between a Get's two passes.
class HookStore final : public store::Store {
 public:
  explicit HookStore(store::Store* inner) : inner_(inner) {}
  std::function<void()> before_get;
  mutable std::function<void()> on_stats;

  absl::StatusOr<store::ChunkInfo> Put(std::string_view ns, const store::ChunkKey& key,
                                       const kernels::ChunkShape& shape,
                                       const kernels::CodecConfig& config,
                                       std::span<const uint8_t> payload) override {
    return inner_->Put(ns, key, shape, config, payload);
  }
  absl::StatusOr<store::ChunkInfo> Put(std::string_view ns, const store::ChunkKey& key,
                                       const kernels::ChunkShape& shape,
                                       const kernels::CodecConfig& config,
                                       std::span<const uint8_t> payload,
                                       const store::PutOptions& options) override {
    return inner_->Put(ns, key, shape, config, payload, options);
  }
  absl::StatusOr<store::ChunkInfo> Get(std::string_view ns, const store::ChunkKey& key,
                                       const kernels::Slice& slice, kernels::DType out_dtype,
                                       const store::OutputAllocator& alloc) override {
    if (before_get) std::exchange(before_get, nullptr)();
    return inner_->Get(ns, key, slice, out_dtype, alloc);
  }
  uint64_t Lookup(std::string_view ns, std::span<const store::ChunkKey> chain) override {
    return inner_->Lookup(ns, chain);
  }
  absl::StatusOr<store::ChunkInfo> Describe(std::string_view ns,
                                            const store::ChunkKey& key) override {
    return inner_->Describe(ns, key);
  }
  absl::Status Delete(std::string_view ns, const store::ChunkKey& key) override {
    return inner_->Delete(ns, key);
  }
  store::StoreStats Stats() const override {
    if (on_stats) std::exchange(on_stats, nullptr)();
    return inner_->Stats();
  }

 private:
  store::Store* const inner_;
};

class RpcHostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rng_.seed(std::random_device{}());
    store::StoreOptions o;
    o.host_capacity_bytes = 64ull << 20;
    o.page_bytes = 16 << 10;
    o.num_shards = 4;
    absl::StatusOr<std::unique_ptr<store::Store>> s = store::Store::Create(o);
    ASSERT_TRUE(s.ok()) << s.status();
    real_ = *std::move(s);
    store_ = std::make_unique<HookStore>(real_.get());
    regions_ = std::make_unique<RegionRegistry>(options_.regions);
  }

  struct Region {
    std::unique_ptr<ShmFile> file;
    uint64_t id = 0;
    std::string token;
    v1::RegionRef Ref(uint64_t offset, uint64_t length) const {
      v1::RegionRef r;
      r.set_region_id(id);
      r.set_token(token);
      r.set_offset(offset);
      r.set_length(length);
      return r;
    }
  };
  Region Register(uint64_t size, const std::string& ns = "m") {
    Region r;
    r.file = std::make_unique<ShmFile>(size);
    auto reg = regions_->Register(ns, r.file->path(), size, 0);
    EXPECT_TRUE(reg.ok()) << reg.status();
    if (reg.ok()) {
      r.id = reg->region_id;
      r.token = reg->token;
    }
    return r;
  }

  v1::PutChunk Chunk(uint64_t id, const v1::Layout& layout,
                     v1::Preset preset = v1::PRESET_XQUANT, v1::DType dtype = v1::DTYPE_FP16) {
    v1::PutChunk c;
    c.set_namespace_("m");
    *c.mutable_key() = Key(id);
    *c.mutable_layout() = layout;
    c.set_dtype(dtype);
    c.mutable_codec()->set_preset(preset);
    return c;
  }
  absl::Status Put(const v1::PutRequest& req) {
    v1::PutResponse resp;
    return HandlePut(*store_, options_, req, &resp, regions_.get());
  }
  absl::Status PutOne(const v1::PutChunk& c) {
    v1::PutRequest req;
    *req.add_chunks() = c;
    return Put(req);
  }
  absl::Status Get(const v1::GetRequest& req, v1::GetResponse* resp) {
    return HandleGet(*store_, options_, req, resp, regions_.get());
  }
  v1::GetRequest GetOf(std::initializer_list<uint64_t> ids) {
    v1::GetRequest g;
    g.set_namespace_("m");
    for (uint64_t id : ids) *g.add_keys() = Key(id);
    return g;
  }
  bool Stored(uint64_t id) { return real_->Describe("m", {0x1234, id}).ok(); }

  std::mt19937 rng_;
  ServiceOptions options_;
  std::unique_ptr<store::Store> real_;
  std::unique_ptr<HookStore> store_;
  std::unique_ptr<RegionRegistry> regions_;
};

// A paged layout for a chunk of L layers of `tokens` tokens of H heads of D, one token per
// block and every block id 0: each plane needs to hold a single row, whatever T is.
v1::PagedLayout OneRowPaged(const std::vector<v1::RegionRef>& planes, uint32_t tokens) {
  v1::PagedLayout p;
  for (const v1::RegionRef& r : planes) *p.add_planes() = r;
  p.set_block_size(1);
  for (uint32_t t = 0; t < tokens; ++t) p.add_block_ids(0);
  return p;
}

// --- Item 1: sizes a paged layout chooses -------------------------------------------------

TEST_F(RpcHostileTest, PagedPutNamingAHugeChunkIsResourceExhaustedBeforeAllocating) {
  const v1::Layout layout = MakeLayout(8, 1 << 20, 64, 128);  // 256 GiB of 16-bit payload
  const uint64_t row = 64 * 128 * 2;
  Region r = Register(row);
  v1::PutChunk c = Chunk(1, layout, v1::PRESET_FP16);
  *c.mutable_data_paged() = OneRowPaged(std::vector<v1::RegionRef>(16, r.Ref(0, row)), 1 << 20);
  const absl::Status s = PutOne(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(Msg(s), HasSubstr("chunks[0]: the chunk encodes to"));
  EXPECT_THAT(Msg(s), HasSubstr("more than the store holds"));
  EXPECT_FALSE(Stored(1));
}

TEST_F(RpcHostileTest, PagedPutOverThePerRequestBudgetIsResourceExhausted) {
  options_.max_message_bytes = 1 << 20;
  const v1::Layout layout = MakeLayout(2, 64, 32, 128);  // 2 MiB, ~0.3 MiB encoded
  const uint64_t row = 32 * 128 * 2;
  Region r = Register(row);
  v1::PutChunk c = Chunk(1, layout);
  *c.mutable_data_paged() = OneRowPaged(std::vector<v1::RegionRef>(4, r.Ref(0, row)), 64);
  const absl::Status s = PutOne(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(Msg(s), HasSubstr("per-request budget"));
  // The same chunk from a contiguous region is not copied (the encoder reads the mapping
  // and the store checks for a fault before publishing), so no budget applies to it.
  Region whole = Register(PayloadBytes(layout));
  whole.file->Write(0, RandomPayload(PayloadBytes(layout), v1::DTYPE_FP16, rng_));
  v1::PutChunk d = Chunk(2, layout);
  *d.mutable_data_region() = whole.Ref(0, PayloadBytes(layout));
  EXPECT_TRUE(PutOne(d).ok());
  // Within the budget it is stored, and reads back as the repeated row.
  options_.max_message_bytes = 4 << 20;
  const std::string row_bytes = RandomPayload(row, v1::DTYPE_FP16, rng_);
  r.file->Write(0, row_bytes);
  v1::PutChunk lossless = Chunk(3, layout, v1::PRESET_FP16);
  *lossless.mutable_data_paged() = c.data_paged();
  ASSERT_TRUE(PutOne(lossless).ok());
  v1::GetResponse got;
  ASSERT_TRUE(Get(GetOf({3}), &got).ok());
  ASSERT_EQ(got.results(0).data().size(), PayloadBytes(layout));
  for (uint64_t at = 0; at < PayloadBytes(layout); at += row)
    ASSERT_EQ(got.results(0).data().substr(at, row), row_bytes) << at;
}

TEST_F(RpcHostileTest, PagedGetIntoSharedMemoryOverThePerRequestBudgetIsResourceExhausted) {
  const v1::Layout layout = MakeLayout(2, 64, 4, 128);  // 256 KiB decoded
  v1::PutChunk c = Chunk(1, layout);
  c.set_data(RandomPayload(PayloadBytes(layout), v1::DTYPE_FP16, rng_));
  ASSERT_TRUE(PutOne(c).ok());
  const uint64_t plane = 64 * 4 * 128 * 2;
  Region r = Register(4 * plane);
  v1::GetRequest g = GetOf({1});
  v1::PagedLayout* pl = g.mutable_output_paged();
  for (int i = 0; i < 4; ++i) *pl->add_planes() = r.Ref(i * plane, plane);
  pl->set_block_size(64);
  pl->add_block_ids(0);
  options_.max_message_bytes = 128 << 10;  // the staging of one result is bounded by it
  v1::GetResponse over;
  const absl::Status s = Get(g, &over);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(Msg(s), HasSubstr("output_paged: a result decodes to 262144 bytes"));
  options_.max_message_bytes = 256 << 10;
  v1::GetResponse fits;
  EXPECT_TRUE(Get(g, &fits).ok());
}

// --- Item 2: a region's file truncated under a request ------------------------------------

TEST_F(RpcHostileTest, GetIntoARegionTruncatedMidRequestIsFailedPreconditionAndSurvives) {
  const v1::Layout layout = MakeLayout(2, 64, 4, 128);
  v1::PutChunk c = Chunk(1, layout);
  c.set_data(RandomPayload(PayloadBytes(layout), v1::DTYPE_FP16, rng_));
  ASSERT_TRUE(PutOne(c).ok());
  Region r = Register(PayloadBytes(layout));
  v1::GetRequest g = GetOf({1});
  *g.mutable_output_region() = r.Ref(0, PayloadBytes(layout));
  // Checked (pinned, size verified), then truncated before the decoder writes a byte.
  store_->before_get = [&] { r.file->Truncate(0); };
  v1::GetResponse resp;
  const absl::Status s = Get(g, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(Msg(s), HasSubstr("output_region: the file of the region"));
  EXPECT_THAT(Msg(s), HasSubstr("SIGBUS"));
  // Refused from now on, with the same code, even at its old size.
  r.file->Truncate(PayloadBytes(layout));
  v1::GetResponse again;
  const absl::Status refused = Get(g, &again);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  // Everything else keeps working: a fresh region gets the data.
  Region fresh = Register(PayloadBytes(layout));
  *g.mutable_output_region() = fresh.Ref(0, PayloadBytes(layout));
  v1::GetResponse ok;
  ASSERT_TRUE(Get(g, &ok).ok());
  v1::GetResponse plain;
  ASSERT_TRUE(Get(GetOf({1}), &plain).ok());
  EXPECT_EQ(fresh.file->Read(0, PayloadBytes(layout)), plain.results(0).data());
}

TEST_F(RpcHostileTest, PutFromARegionTruncatedMidRequestStoresNothing) {
  const v1::Layout layout = MakeLayout(2, 64, 4, 128);
  const uint64_t bytes = PayloadBytes(layout);
  // An older version of the key, which must survive the failed re-put.
  v1::PutChunk old = Chunk(1, layout, v1::PRESET_FP16);
  old.set_data(RandomPayload(bytes, v1::DTYPE_FP16, rng_));
  ASSERT_TRUE(PutOne(old).ok());

  Region r = Register(bytes);
  r.file->Write(0, RandomPayload(bytes, v1::DTYPE_FP16, rng_));
  v1::PutChunk c = Chunk(1, layout, v1::PRESET_FP16);
  *c.mutable_data_region() = r.Ref(0, bytes);
  store_->on_stats = [&] { r.file->Truncate(4096); };  // after the checks, before the copy
  const absl::Status s = PutOne(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(Msg(s), HasSubstr("chunks[0].data_region: the file of the region"));
  v1::GetResponse got;
  ASSERT_TRUE(Get(GetOf({1}), &got).ok());
  EXPECT_EQ(got.results(0).data(), old.data()) << "the old version stays";

  // Two chunks, the second from a paged cache: its fault is seen by the pre-scan, before
  // the first is stored.
  Region planes = Register(bytes);
  planes.file->Write(0, RandomPayload(bytes, v1::DTYPE_FP16, rng_));
  const uint64_t row = 4 * 128 * 2;
  v1::PutRequest req;
  v1::PutChunk first = Chunk(7, layout);
  first.set_data(RandomPayload(bytes, v1::DTYPE_FP16, rng_));
  *req.add_chunks() = first;
  v1::PutChunk p = Chunk(8, layout);
  v1::PagedLayout* pl = p.mutable_data_paged();
  for (int plane = 0; plane < 4; ++plane) *pl->add_planes() = planes.Ref(0, bytes);
  pl->set_block_size(16);
  pl->set_block_stride(4 * 16 * row);  // blocks 0..3 at 0, 64, 128, 192 KiB of the file
  for (uint32_t b = 0; b < 4; ++b) pl->add_block_ids(b);
  *req.add_chunks() = p;
  store_->on_stats = [&] { planes.file->Truncate(0); };
  const absl::Status sp = Put(req);
  EXPECT_EQ(sp.code(), absl::StatusCode::kFailedPrecondition) << sp;
  EXPECT_THAT(Msg(sp), HasSubstr("chunks[1].data_paged: the file of the region"));
  EXPECT_FALSE(Stored(7));
  EXPECT_FALSE(Stored(8));
}

TEST_F(RpcHostileTest, GetIntoAPagedCacheTruncatedMidRequestIsFailedPrecondition) {
  const v1::Layout layout = MakeLayout(1, 32, 2, 64);
  v1::PutChunk c = Chunk(1, layout);
  c.set_data(RandomPayload(PayloadBytes(layout), v1::DTYPE_FP16, rng_));
  ASSERT_TRUE(PutOne(c).ok());
  const uint64_t plane = 32 * 2 * 64 * 2;
  Region r = Register(2 * plane);
  v1::GetRequest g = GetOf({1});
  v1::PagedLayout* pl = g.mutable_output_paged();
  *pl->add_planes() = r.Ref(0, plane);
  *pl->add_planes() = r.Ref(plane, plane);
  pl->set_block_size(32);
  pl->add_block_ids(0);
  store_->before_get = [&] { r.file->Truncate(0); };
  v1::GetResponse resp;
  const absl::Status s = Get(g, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(Msg(s), HasSubstr("output_paged: the file of the region"));
}

// --- Item 4: a Get racing a re-put of another dtype ---------------------------------------

TEST_F(RpcHostileTest, GetWithoutDtypeNeverMixesVersionsUnderConcurrentReputs) {
  const v1::Layout layout = MakeLayout(1, 32, 2, 64);
  const uint64_t bytes = PayloadBytes(layout);
  // Lossless chunks, so a result's bytes say which version and which dtype they are.
  v1::PutChunk as_f16 = Chunk(1, layout, v1::PRESET_FP16, v1::DTYPE_FP16);
  as_f16.set_data(RandomPayload(bytes, v1::DTYPE_FP16, rng_));
  v1::PutChunk as_bf16 = Chunk(1, layout, v1::PRESET_FP16, v1::DTYPE_BF16);
  as_bf16.set_data(RandomPayload(bytes, v1::DTYPE_BF16, rng_));
  ASSERT_TRUE(PutOne(as_f16).ok());

  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 0; !stop.load(); ++i) {
      v1::PutRequest req;
      *req.add_chunks() = i % 2 == 0 ? as_bf16 : as_f16;
      v1::PutResponse resp;
      ASSERT_TRUE(HandlePut(*real_, options_, req, &resp).ok());
    }
  });
  // The key asked for many times in one Get: the later results are read long after the
  // sizing pass described them, a wide window for a re-put to land in.
  v1::GetRequest g = GetOf({1});
  for (int i = 1; i < 64; ++i) *g.add_keys() = Key(1);
  int seen[2] = {0, 0};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < deadline) {
    v1::GetResponse resp;
    ASSERT_TRUE(HandleGet(*real_, options_, g, &resp).ok());
    for (const v1::GetResult& r : resp.results()) {
      ASSERT_EQ(r.dtype(), r.info().dtype());
      const std::string& expect = r.dtype() == v1::DTYPE_FP16 ? as_f16.data() : as_bf16.data();
      ASSERT_EQ(r.data(), expect) << "the bytes are of another version than info says";
      ++seen[r.dtype() == v1::DTYPE_FP16 ? 0 : 1];
    }
  }
  stop = true;
  writer.join();
  EXPECT_GT(seen[0] + seen[1], 0);
}

// --- Item 5 -------------------------------------------------------------------------------

TEST_F(RpcHostileTest, OutputPagedIsCheckedEvenWhenNoKeyIsFound) {
  Region r = Register(1 << 16);
  Region other = Register(1 << 16, "another-namespace");
  auto get = [&](const v1::PagedLayout& pl) {
    v1::GetRequest g = GetOf({404, 405});
    g.set_allow_missing(true);
    *g.mutable_output_paged() = pl;
    v1::GetResponse resp;
    return Get(g, &resp);
  };
  v1::PagedLayout good;
  *good.add_planes() = r.Ref(0, 1 << 15);
  *good.add_planes() = r.Ref(1 << 15, 1 << 15);
  good.set_block_size(16);
  EXPECT_TRUE(get(good).ok());

  v1::PagedLayout bad_token = good;
  bad_token.mutable_planes(1)->set_token(std::string(32, '0'));
  EXPECT_EQ(get(bad_token).code(), absl::StatusCode::kPermissionDenied);
  v1::PagedLayout foreign = good;
  *foreign.mutable_planes(0) = other.Ref(0, 1 << 15);
  EXPECT_EQ(get(foreign).code(), absl::StatusCode::kPermissionDenied);
  v1::PagedLayout unknown = good;
  unknown.mutable_planes(0)->set_region_id(r.id + 1000);
  EXPECT_EQ(get(unknown).code(), absl::StatusCode::kNotFound);
  v1::PagedLayout odd = good;
  odd.mutable_planes()->RemoveLast();
  const absl::Status s = get(odd);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("output_paged.planes:"));
  v1::PagedLayout no_block = good;
  no_block.set_block_size(0);
  EXPECT_EQ(get(no_block).code(), absl::StatusCode::kInvalidArgument);
  v1::PagedLayout misaligned = good;
  misaligned.set_block_stride(8);
  EXPECT_EQ(get(misaligned).code(), absl::StatusCode::kInvalidArgument);
  v1::PagedLayout past = good;
  past.mutable_planes(0)->set_length(1 << 20);
  EXPECT_EQ(get(past).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RpcHostileTest, HundredThousandMissingKeysFitASmallResponseLimit) {
  options_.max_message_bytes = 4 << 20;  // 1e5 results of ~24 bytes: ~2.4 MB
  v1::GetRequest g;
  g.set_namespace_("m");
  g.set_allow_missing(true);
  for (uint64_t i = 0; i < 100000; ++i) *g.add_keys() = Key(rng_() | 1);
  v1::GetResponse resp;
  const absl::Status s = Get(g, &resp);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(resp.results_size(), 100000);
  EXPECT_LE(resp.ByteSizeLong(), options_.max_message_bytes);
  // Past the limit whatever is stored: refused before any key is looked up.
  options_.max_message_bytes = resp.ByteSizeLong() - 1;
  v1::GetResponse over;
  const absl::Status refused = Get(g, &over);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(Msg(refused), HasSubstr("response would be at least"));
}

TEST_F(RpcHostileTest, ResponseSizePreCheckIsExact) {
  const v1::Layout layout = MakeLayout(2, 40, 4, 64);
  for (uint64_t id : {1, 2, 3}) {
    v1::PutChunk c = Chunk(id, layout, id == 2 ? v1::PRESET_KIVI_2 : v1::PRESET_XQUANT,
                           id == 3 ? v1::DTYPE_BF16 : v1::DTYPE_FP16);
    c.set_data(RandomPayload(PayloadBytes(layout), c.dtype(), rng_));
    ASSERT_TRUE(PutOne(c).ok());
  }
  v1::GetRequest g = GetOf({1, 2, 999, 3});
  g.set_allow_missing(true);
  g.mutable_layers()->set_begin(1);
  v1::GetResponse full;
  ASSERT_TRUE(Get(g, &full).ok());
  const uint64_t exact = full.ByteSizeLong();
  options_.max_message_bytes = exact;
  v1::GetResponse fits;
  EXPECT_TRUE(Get(g, &fits).ok());
  options_.max_message_bytes = exact - 1;
  v1::GetResponse over;
  const absl::Status s = Get(g, &over);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(Msg(s), HasSubstr(absl::StrCat("response would be ", exact, " bytes")));
}

TEST_F(RpcHostileTest, ChunkGrownBetweenThePassesGetsNoAllocation) {
  const v1::Layout small = MakeLayout(1, 32, 2, 64);
  v1::PutChunk c = Chunk(1, small);
  c.set_data(RandomPayload(PayloadBytes(small), v1::DTYPE_FP16, rng_));
  ASSERT_TRUE(PutOne(c).ok());
  options_.max_message_bytes = 64 << 10;  // the small one fits, the large one would not
  const v1::Layout large = MakeLayout(4, 256, 4, 64);
  v1::PutChunk big = Chunk(1, large);
  big.set_data(RandomPayload(PayloadBytes(large), v1::DTYPE_FP16, rng_));
  store_->before_get = [&] {
    v1::PutRequest req;
    *req.add_chunks() = big;
    v1::PutResponse resp;
    ServiceOptions roomy;
    ASSERT_TRUE(HandlePut(*real_, roomy, req, &resp).ok());
  };
  v1::GetResponse resp;
  const absl::Status s = Get(GetOf({1}), &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_TRUE(resp.results_size() == 0 || resp.results(0).data().empty());
}

}  // namespace
}  // namespace kvstash::rpc
