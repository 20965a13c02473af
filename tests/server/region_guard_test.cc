// Hostile uses of RegionRegistry (issue 12): a region's file truncated under the daemon
// (SIGBUS caught, the region marked faulted and refused), pages reserved at registration,
// paths that leave /dev/shm through a symlinked directory, path edge cases answered
// without touching the file system, and the per-namespace region limit.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc/region_registry.h"

namespace kvstash::rpc {
namespace {

using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

std::string FreshName(const std::string& what) {
  static std::random_device rd;
  return absl::StrCat("/dev/shm/kvstash-guard-", what, "-", getpid(), "-", rd(), rd());
}

// A sparse file under /dev/shm (ftruncate, as the C++ client used to make regions),
// filled with random bytes when `fill`; removed by the destructor.
class ShmFile {
 public:
  explicit ShmFile(uint64_t size, bool fill = false, std::string path = FreshName("file"))
      : path_(std::move(path)) {
    const int fd = open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    EXPECT_GE(fd, 0) << path_;
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    if (fill) {
      std::mt19937 rng(std::random_device{}());
      std::vector<char> bytes(size);
      for (char& b : bytes) b = static_cast<char>(rng());
      EXPECT_EQ(pwrite(fd, bytes.data(), size, 0), static_cast<ssize_t>(size));
    }
    close(fd);
  }
  ~ShmFile() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }
  void Truncate(uint64_t size) { ASSERT_EQ(truncate(path_.c_str(), static_cast<off_t>(size)), 0); }
  uint64_t AllocatedBytes() const {
    struct stat st;
    EXPECT_EQ(stat(path_.c_str(), &st), 0);
    return uint64_t(st.st_blocks) * 512;
  }

 private:
  std::string path_;
};

// A directory under /dev/shm and everything made in it; removed by the destructor.
class ShmDir {
 public:
  ShmDir() : path_(FreshName("dir")) { EXPECT_EQ(mkdir(path_.c_str(), 0700), 0); }
  ~ShmDir() {
    for (auto it = made_.rbegin(); it != made_.rend(); ++it) {
      if (unlink(it->c_str()) != 0) rmdir(it->c_str());
    }
    rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) {
    made_.push_back(absl::StrCat(path_, "/", name));
    return made_.back();
  }

 private:
  std::string path_;
  std::vector<std::string> made_;
};

class RegionGuardTest : public ::testing::Test {
 protected:
  std::unique_ptr<RegionRegistry> Make() { return std::make_unique<RegionRegistry>(options_); }
  RegionOptions options_;
};

// --- SIGBUS -------------------------------------------------------------------------------

TEST_F(RegionGuardTest, TruncatedUnderAReadSurvivesMarksFaultedAndIsRefusedAfter) {
  ShmFile f(64 << 10, /*fill=*/true);
  auto reg = Make();
  auto r = reg->Register("ns", f.path(), 64 << 10, 0);
  ASSERT_TRUE(r.ok()) << r.status();
  auto pin = reg->Acquire("ns", r->region_id, r->token, 0, 64 << 10, "chunks[0].data_region");
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_FALSE(pin->faulted());
  EXPECT_TRUE(pin->CheckNotFaulted("chunks[0].data_region").ok());

  // Pinned (checked), then truncated: the next access has no page behind it.
  f.Truncate(0);
  std::vector<uint8_t> copy(64 << 10, 0xAA);
  std::memcpy(copy.data(), pin->data(), copy.size());  // SIGBUS without the guard
  EXPECT_TRUE(pin->faulted());
  for (uint8_t b : copy) ASSERT_EQ(b, 0);  // the lost pages read as zeros
  const absl::Status s = pin->CheckNotFaulted("chunks[0].data_region");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(s), HasSubstr("chunks[0].data_region: the file of the region"));
  EXPECT_THAT(Msg(s), HasSubstr("SIGBUS"));

  // Refused from then on, even when the file gets its size back.
  f.Truncate(64 << 10);
  auto again = reg->Acquire("ns", r->region_id, r->token, 0, 16, "output_region");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(again.status()), HasSubstr("output_region.region_id:"));
  EXPECT_THAT(Msg(again.status()), HasSubstr("SIGBUS"));
}

TEST_F(RegionGuardTest, TruncatedUnderAWriteSurvivesAndOtherRegionsAreUnaffected) {
  ShmFile a(32 << 10), b(32 << 10);
  auto reg = Make();
  auto ra = reg->Register("ns", a.path(), 32 << 10, 0);
  auto rb = reg->Register("ns", b.path(), 32 << 10, 0);
  ASSERT_TRUE(ra.ok() && rb.ok());
  auto pa = reg->Acquire("ns", ra->region_id, ra->token, 0, 32 << 10, "a");
  auto pb = reg->Acquire("ns", rb->region_id, rb->token, 0, 32 << 10, "b");
  ASSERT_TRUE(pa.ok() && pb.ok());
  a.Truncate(4096);  // the first page stays, the rest go
  std::memset(pa->data(), 0x5C, 32 << 10);
  std::memset(pb->data(), 0x5C, 32 << 10);
  EXPECT_TRUE(pa->faulted());
  EXPECT_FALSE(pb->faulted());
  EXPECT_EQ(pa->CheckNotFaulted("output_region").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(pb->CheckNotFaulted("output_region").ok());
  // The page the file kept got the write.
  const int fd = open(a.path().c_str(), O_RDONLY);
  uint8_t first = 0;
  ASSERT_EQ(pread(fd, &first, 1, 100), 1);
  close(fd);
  EXPECT_EQ(first, 0x5C);
}

TEST_F(RegionGuardTest, SlotOfAnUnregisteredRegionIsReusedClean) {
  auto reg = Make();
  for (int round = 0; round < 3; ++round) {
    ShmFile f(8192);
    auto r = reg->Register("ns", f.path(), 8192, 0);
    ASSERT_TRUE(r.ok()) << r.status();
    {
      auto pin = reg->Acquire("ns", r->region_id, r->token, 0, 8192, "f");
      ASSERT_TRUE(pin.ok()) << pin.status() << " round " << round;
      EXPECT_FALSE(pin->faulted()) << "round " << round;
      f.Truncate(0);
      volatile uint8_t sink = pin->data()[5000];
      (void)sink;
      EXPECT_TRUE(pin->faulted());
    }
    ASSERT_TRUE(reg->Unregister(r->region_id, r->token).ok());
  }
}

// A SIGBUS outside every registered mapping keeps its default action: the process dies.
TEST(RegionGuardDeathTest, SigbusElsewhereStillKillsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  RegionRegistry reg{RegionOptions{}};  // installs the handler
  const std::string path = FreshName("death");
  EXPECT_EXIT(
      {
        const int fd = open(path.c_str(), O_RDWR | O_CREAT, 0600);
        if (fd < 0 || ftruncate(fd, 8192) != 0) _exit(3);
        void* p = mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) _exit(4);
        if (ftruncate(fd, 0) != 0) _exit(5);
        unlink(path.c_str());
        volatile uint8_t sink = static_cast<uint8_t*>(p)[100];
        (void)sink;
        _exit(0);
      },
      ::testing::KilledBySignal(SIGBUS), "");
  unlink(path.c_str());
}

// --- Reservation --------------------------------------------------------------------------

TEST_F(RegionGuardTest, RegisterReservesTheRegionsPagesOfASparseFile) {
  ShmFile f(1 << 20);
  ASSERT_LT(f.AllocatedBytes(), uint64_t{1} << 20);  // sparse: nothing allocated yet
  auto reg = Make();
  auto r = reg->Register("ns", f.path(), 1 << 20, 0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(f.AllocatedBytes(), uint64_t{1} << 20);
}

// --- Paths --------------------------------------------------------------------------------

TEST_F(RegionGuardTest, SymlinkedDirectoryComponentIsRefused) {
  ShmDir inside;
  const std::string file = inside.Sub("region");
  ShmFile f(4096, false, file);
  auto reg = Make();
  ASSERT_TRUE(reg->Register("ns", file, 4096, 0).ok());  // the real path works

  // /dev/shm/<link>/region, <link> -> the real directory: a directory component swapped
  // for a symlink is refused whatever it points to.
  const std::string link = FreshName("link");
  ASSERT_EQ(symlink(inside.path().c_str(), link.c_str()), 0);
  auto via_link = reg->Register("ns", link + "/region", 4096, 0);
  EXPECT_EQ(via_link.status().code(), absl::StatusCode::kInvalidArgument) << via_link.status();
  EXPECT_THAT(Msg(via_link.status()), HasSubstr("symbolic link"));
  unlink(link.c_str());

  // A link out of /dev/shm, to a directory holding a file of ours.
  char tmpl[] = "/tmp/kvstash-guard-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string outside = absl::StrCat(tmpl, "/region");
  close(open(outside.c_str(), O_RDWR | O_CREAT, 0600));
  ASSERT_EQ(truncate(outside.c_str(), 4096), 0);
  ASSERT_EQ(symlink(tmpl, link.c_str()), 0);
  auto escaped = reg->Register("ns", link + "/region", 4096, 0);
  EXPECT_EQ(escaped.status().code(), absl::StatusCode::kInvalidArgument) << escaped.status();
  unlink(link.c_str());
  // ".." out of the root too.
  auto dotdot = reg->Register("ns", absl::StrCat("/dev/shm/..", outside), 4096, 0);
  EXPECT_EQ(dotdot.status().code(), absl::StatusCode::kInvalidArgument) << dotdot.status();
  unlink(outside.c_str());
  rmdir(tmpl);
}

TEST_F(RegionGuardTest, OpenBeneathRefusesSymlinksWithAndWithoutOpenat2) {
  ShmDir d;
  const std::string sub = d.Sub("sub");
  ASSERT_EQ(mkdir(sub.c_str(), 0700), 0);
  const std::string file = d.Sub("sub/f");
  close(open(file.c_str(), O_RDWR | O_CREAT, 0600));
  ASSERT_EQ(symlink(sub.c_str(), d.Sub("linkdir").c_str()), 0);
  ASSERT_EQ(symlink(file.c_str(), d.Sub("linkfile").c_str()), 0);
  const int root = open(d.path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(root, 0);
  for (bool openat2 : {true, false}) {
    SCOPED_TRACE(openat2 ? "openat2" : "component walk");
    const int fd = OpenBeneath(root, "sub/f", O_RDWR, openat2);
    EXPECT_GE(fd, 0) << std::strerror(-fd);
    if (fd >= 0) close(fd);
    const int fd2 = OpenBeneath(root, "./sub//f", O_RDWR, openat2);
    EXPECT_GE(fd2, 0) << std::strerror(-fd2);
    if (fd2 >= 0) close(fd2);
    EXPECT_EQ(OpenBeneath(root, "linkdir/f", O_RDWR, openat2), -ELOOP);
    EXPECT_EQ(OpenBeneath(root, "linkfile", O_RDWR, openat2), -ELOOP);
    EXPECT_EQ(OpenBeneath(root, "../x", O_RDWR, openat2), -EXDEV);
    EXPECT_EQ(OpenBeneath(root, "nope/f", O_RDWR, openat2), -ENOENT);
    EXPECT_EQ(OpenBeneath(root, "sub/f/x", O_RDWR, openat2), -ENOTDIR);
    EXPECT_EQ(OpenBeneath(root, "sub", O_RDWR, openat2), -EISDIR);
  }
  close(root);
}

TEST_F(RegionGuardTest, PathEdgeCasesHaveExactCodes) {
  auto reg = Make();
  // Outside the root: InvalidArgument whether or not the path exists (it is not looked at).
  for (const char* p : {"/etc/hostname", "/etc/kvstash-no-such-file", "/dev/shmx/a", "/dev/shm",
                        "/dev/shm/", "/dev/shm//"}) {
    auto r = reg->Register("ns", p, 16, 0);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << p << ": " << r.status();
  }
  EXPECT_THAT(Msg(reg->Register("ns", "/etc/kvstash-no-such-file", 16, 0).status()),
              HasSubstr("is not under /dev/shm"));
  // A NUL byte is refused, not cut at.
  ShmFile f(4096);
  const std::string with_nul = f.path() + std::string("\0/../etc/passwd", 15);
  auto nul = reg->Register("ns", with_nul, 16, 0);
  EXPECT_EQ(nul.status().code(), absl::StatusCode::kInvalidArgument) << nul.status();
  EXPECT_THAT(Msg(nul.status()), HasSubstr("NUL"));
  // A directory under the root is not a regular file.
  ShmDir d;
  auto dir = reg->Register("ns", d.path(), 16, 0);
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kFailedPrecondition) << dir.status();
  // Under the root but missing: NotFound.
  EXPECT_EQ(reg->Register("ns", FreshName("missing"), 16, 0).status().code(),
            absl::StatusCode::kNotFound);
  // Doubled slashes after the root are fine.
  auto slashes = reg->Register("ns", "/dev/shm//" + f.path().substr(9), 4096, 0);
  EXPECT_TRUE(slashes.ok()) << slashes.status();
}

// --- Per-namespace limit ------------------------------------------------------------------

TEST_F(RegionGuardTest, PerNamespaceLimitIsResourceExhaustedNamingTheNamespace) {
  options_.max_regions = 10;
  options_.max_regions_per_namespace = 2;
  options_.namespace_max_regions = {{"big", 3}, {"free", 0}};
  ShmFile f(4096);
  auto reg = Make();
  auto a1 = reg->Register("a", f.path(), 4096, 0);
  ASSERT_TRUE(a1.ok()) << a1.status();
  ASSERT_TRUE(reg->Register("a", f.path(), 4096, 0).ok());
  auto a3 = reg->Register("a", f.path(), 4096, 0);
  EXPECT_EQ(a3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(a3.status()), HasSubstr("'a' has 2 regions registered, its limit (2)"));
  // Other namespaces have their own count; "big" its own limit; "free" none but the total.
  ASSERT_TRUE(reg->Register("b", f.path(), 4096, 0).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reg->Register("big", f.path(), 4096, 0).ok()) << i;
  auto big4 = reg->Register("big", f.path(), 4096, 0);
  EXPECT_EQ(big4.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(big4.status()), HasSubstr("'big' has 3 regions registered, its limit (3)"));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(reg->Register("free", f.path(), 4096, 0).ok()) << i;
  auto total = reg->Register("free", f.path(), 4096, 0);  // 10 registered: the daemon's limit
  EXPECT_EQ(total.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(total.status()), HasSubstr("the daemon's limit (10)"));
  // Unregistering gives the namespace its room back.
  ASSERT_TRUE(reg->Unregister(a1->region_id, a1->token).ok());
  EXPECT_TRUE(reg->Register("a", f.path(), 4096, 0).ok());
}

TEST_F(RegionGuardTest, ExpiredRegionsLeaveTheirNamespacesCount) {
  options_.max_regions_per_namespace = 1;
  RegionRegistry::Clock::time_point now = RegionRegistry::Clock::now();
  RegionRegistry reg(options_, nullptr, [&] { return now; });
  ShmFile f(4096);
  ASSERT_TRUE(reg.Register("a", f.path(), 4096, 10).ok());
  EXPECT_EQ(reg.Register("a", f.path(), 4096, 10).status().code(),
            absl::StatusCode::kResourceExhausted);
  now += std::chrono::seconds(11);
  EXPECT_TRUE(reg.Register("a", f.path(), 4096, 10).ok());
}

}  // namespace
}  // namespace kvstash::rpc
