#include "server/rpc/region_registry.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace kvstash::rpc {
namespace {

using std::chrono::seconds;

// A file under /dev/shm owned by this process's user; removed by the destructor.
class ShmFile {
 public:
  explicit ShmFile(uint64_t size) {
    std::random_device rd;
    path_ = absl::StrCat("/dev/shm/kvstash-test-", getpid(), "-", rd(), rd());
    const int fd = open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    close(fd);
  }
  ~ShmFile() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }
  void Truncate(uint64_t size) { ASSERT_EQ(truncate(path_.c_str(), static_cast<off_t>(size)), 0); }

 private:
  std::string path_;
};

class RegionRegistryTest : public ::testing::Test {
 protected:
  RegionRegistry::Clock::time_point now_ = RegionRegistry::Clock::now();
  size_t reported_ = 0;
  RegionOptions options_;
  std::unique_ptr<RegionRegistry> Make() {
    return std::make_unique<RegionRegistry>(
        options_, nullptr, [this] { return now_; },
        [this](size_t shm, size_t cuda_ipc) { reported_ = shm + cuda_ipc; });
  }
};

TEST_F(RegionRegistryTest, RegistersMapsAndSharesBytesWithTheFile) {
  ShmFile f(8192);
  auto reg = Make();
  absl::StatusOr<RegionRegistry::Registered> r = reg->Register("ns", f.path(), 8192, 0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->size, 8192u);
  EXPECT_EQ(r->token.size(), 32u);
  EXPECT_EQ(r->lease_seconds, 300u);
  EXPECT_EQ(reported_, 1u);
  absl::StatusOr<RegionPin> pin = reg->Acquire("ns", r->region_id, r->token, 4096, 16, "x");
  ASSERT_TRUE(pin.ok()) << pin.status();
  std::memcpy(pin->data(), "hello", 5);
  const int fd = open(f.path().c_str(), O_RDONLY);
  char buf[5];
  ASSERT_EQ(pread(fd, buf, 5, 4096), 5);
  close(fd);
  EXPECT_EQ(std::string(buf, 5), "hello");
}

TEST_F(RegionRegistryTest, RejectsRangesOutsideTheRegionNamingTheField) {
  ShmFile f(4096);
  auto reg = Make();
  auto r = reg->Register("ns", f.path(), 4096, 0);
  ASSERT_TRUE(r.ok());
  auto past = reg->Acquire("ns", r->region_id, r->token, 4097, 0, "chunks[1].data_region");
  EXPECT_EQ(past.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(past.status().message().find("chunks[1].data_region.offset"), std::string::npos);
  auto longer = reg->Acquire("ns", r->region_id, r->token, 4000, 97, "chunks[1].data_region");
  EXPECT_EQ(longer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(longer.status().message().find("chunks[1].data_region.length"), std::string::npos);
  // Overflowing offset + length is caught too.
  auto wrap = reg->Acquire("ns", r->region_id, r->token, 1, UINT64_MAX, "f");
  EXPECT_EQ(wrap.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(reg->Acquire("ns", r->region_id, r->token, 0, 4096, "f").ok());
}

TEST_F(RegionRegistryTest, WrongTokenOrNamespaceIsPermissionDeniedUnknownIdNotFound) {
  ShmFile f(4096);
  auto reg = Make();
  auto r = reg->Register("a", f.path(), 4096, 0);
  ASSERT_TRUE(r.ok());
  std::string bad = r->token;
  bad[0] = bad[0] == '0' ? '1' : '0';
  EXPECT_EQ(reg->Acquire("a", r->region_id, bad, 0, 1, "f").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(reg->Acquire("b", r->region_id, r->token, 0, 1, "f").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(reg->Acquire("a", r->region_id + 1, r->token, 0, 1, "f").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(reg->Unregister(r->region_id, bad).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(reg->Renew(r->region_id, bad).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(RegionRegistryTest, TruncatedFileIsFailedPreconditionBeforeAnyByteIsTouched) {
  ShmFile f(8192);
  auto reg = Make();
  auto r = reg->Register("ns", f.path(), 8192, 0);
  ASSERT_TRUE(r.ok());
  f.Truncate(4096);
  auto pin = reg->Acquire("ns", r->region_id, r->token, 0, 16, "output_region");
  EXPECT_EQ(pin.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(pin.status().message().find("truncated"), std::string::npos) << pin.status();
}

TEST_F(RegionRegistryTest, UnlinkedFileStillWorksThroughTheOpenDescriptor) {
  auto reg = Make();
  absl::StatusOr<RegionRegistry::Registered> r;
  {
    ShmFile f(4096);
    r = reg->Register("ns", f.path(), 4096, 0);
    ASSERT_TRUE(r.ok());
  }  // unlinked: the daemon's descriptor and mapping keep the memory
  auto pin = reg->Acquire("ns", r->region_id, r->token, 0, 4096, "f");
  ASSERT_TRUE(pin.ok()) << pin.status();
  pin->data()[4095] = 7;
  EXPECT_EQ(pin->data()[4095], 7);
}

TEST_F(RegionRegistryTest, RefusesBadFilesWithExactCodes) {
  auto reg = Make();
  ShmFile f(4096);
  EXPECT_EQ(reg->Register("ns", f.path(), 8192, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);  // shorter than asked
  EXPECT_EQ(reg->Register("ns", "/dev/shm/kvstash-does-not-exist-x", 16, 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(reg->Register("ns", "relative/path", 16, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reg->Register("ns", "/etc/hostname", 1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);  // outside /dev/shm
  EXPECT_EQ(reg->Register("ns", "/dev/shm", 1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);  // the root itself is not under it
  EXPECT_EQ(reg->Register("ns", f.path(), 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reg->Register("", f.path(), 16, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::string link = f.path() + "-link";
  ASSERT_EQ(symlink(f.path().c_str(), link.c_str()), 0);
  EXPECT_EQ(reg->Register("ns", link, 16, 0).status().code(),
            absl::StatusCode::kInvalidArgument);  // O_NOFOLLOW
  unlink(link.c_str());
}

TEST(CheckRegionFileTest, AnotherUsersFileIsPermissionDenied) {
  struct stat st {};
  st.st_mode = S_IFREG | 0600;
  st.st_uid = 1234;
  st.st_size = 4096;
  EXPECT_EQ(CheckRegionFile(st, 1234, 4096, "/dev/shm/x").code(), absl::StatusCode::kOk);
  EXPECT_EQ(CheckRegionFile(st, 0, 4096, "/dev/shm/x").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckRegionFile(st, 1234, 4097, "/dev/shm/x").code(),
            absl::StatusCode::kFailedPrecondition);
  st.st_mode = S_IFDIR | 0700;
  EXPECT_EQ(CheckRegionFile(st, 1234, 1, "/dev/shm/x").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(RegionRegistryTest, LeaseExpiresUnlessRenewed) {
  ShmFile f(4096);
  auto reg = Make();
  auto r = reg->Register("ns", f.path(), 4096, 10);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->lease_seconds, 10u);
  now_ += seconds(9);
  ASSERT_TRUE(reg->Renew(r->region_id, r->token).ok());
  now_ += seconds(9);
  EXPECT_TRUE(reg->Acquire("ns", r->region_id, r->token, 0, 1, "f").ok());
  now_ += seconds(2);
  EXPECT_EQ(reg->Acquire("ns", r->region_id, r->token, 0, 1, "f").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(reg->size(), 0u);
  EXPECT_EQ(reported_, 0u);
}

TEST_F(RegionRegistryTest, UnregisterWhileInUseDefersUnmapping) {
  ShmFile f(4096);
  auto reg = Make();
  auto r = reg->Register("ns", f.path(), 4096, 0);
  ASSERT_TRUE(r.ok());
  auto pin = reg->Acquire("ns", r->region_id, r->token, 0, 4096, "f");
  ASSERT_TRUE(pin.ok());
  ASSERT_TRUE(reg->Unregister(r->region_id, r->token).ok());
  EXPECT_EQ(reg->size(), 0u);
  // The pinned mapping is still valid (a use-after-unmap would fault here).
  std::memset(pin->data(), 0xab, 4096);
  EXPECT_EQ(pin->data()[100], 0xab);
  EXPECT_EQ(reg->Unregister(r->region_id, r->token).code(), absl::StatusCode::kNotFound);
}

TEST_F(RegionRegistryTest, MaxRegionsIsResourceExhausted) {
  options_.max_regions = 2;
  ShmFile f(4096);
  auto reg = Make();
  auto a = reg->Register("ns", f.path(), 4096, 0);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(reg->Register("ns", f.path(), 4096, 0).ok());
  EXPECT_EQ(reg->Register("ns", f.path(), 4096, 0).status().code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(reg->Unregister(a->region_id, a->token).ok());
  EXPECT_TRUE(reg->Register("ns", f.path(), 4096, 0).ok());
}

}  // namespace
}  // namespace kvstash::rpc
