// Hostile shared-memory use against the real kvstashd (issue 12): region files truncated
// while the daemon writes into them (SIGBUS: the daemon must survive and answer
// FAILED_PRECONDITION), paths through symlinked directories or outside /dev/shm, and the
// client reserving its regions' pages.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli_util.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "kvstash/client/client.h"
#include "kvstash/kernels/format.h"

namespace kvstash::client {
namespace {

using kernels::ChunkShape;
using kernels::DType;
using kernels::Preset;

uint64_t FreshSeed() {
  static std::random_device rd;
  return (uint64_t{rd()} << 32) | rd();
}

class ShmFaultIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const absl::Status st =
        daemon_.Start(KVSTASHD_PATH, {"--host-capacity", "64MiB", "--log-level", "warn"});
    ASSERT_TRUE(st.ok()) << st;
    ClientOptions o;
    o.target = daemon_.address();
    o.connect_timeout = std::chrono::seconds(10);
    auto c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }
  void TearDown() override {
    client_.reset();
    if (daemon_.running()) {
      EXPECT_EQ(daemon_.Stop(), 0) << daemon_.Log();
    }
  }

  testing::DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
  std::mt19937_64 rng_{FreshSeed()};
};

TEST_F(ShmFaultIntegrationTest, SharedRegionReservesItsPages) {
  auto shm = SharedRegion::Create(1 << 20);
  ASSERT_TRUE(shm.ok()) << shm.status();
  struct stat st;
  ASSERT_EQ(stat(shm->path().c_str(), &st), 0);
  EXPECT_GE(uint64_t(st.st_blocks) * 512, uint64_t{1} << 20) << "not a sparse file";
}

// The file is truncated at a random moment while the daemon decodes into it. Whatever the
// timing, the daemon answers OK (done before) or FAILED_PRECONDITION (truncated before the
// request's check, or under it: SIGBUS caught) and keeps serving.
TEST_F(ShmFaultIntegrationTest, DaemonSurvivesRegionsTruncatedUnderAGet) {
  const ChunkShape shape{4, 256, 8, 128, DType::kF16};  // 4 MiB decoded
  const ChunkKey key{rng_(), rng_()};
  const std::vector<uint16_t> in = cli::GeneratePayload(shape, FreshSeed());
  auto put = client_->Put("ns", PutChunk{key, shape, Codec::FromPreset(Preset::kXQuant),
                                         {reinterpret_cast<const uint8_t*>(in.data()),
                                          shape.payload_bytes()}});
  ASSERT_TRUE(put.ok()) << put.status();

  int ok = 0, refused = 0, caught = 0;
  std::uniform_int_distribution<int> delay_us(0, 4000);
  for (int i = 0; i < 60 && caught < 3; ++i) {
    auto shm = SharedRegion::Create(shape.payload_bytes());
    ASSERT_TRUE(shm.ok()) << shm.status();
    auto region = client_->RegisterRegion("ns", shm->path(), shm->size());
    ASSERT_TRUE(region.ok()) << region.status();
    const std::string path = shm->path();
    const int wait = delay_us(rng_);
    std::thread truncator([&] {
      std::this_thread::sleep_for(std::chrono::microseconds(wait));
      ASSERT_EQ(truncate(path.c_str(), 0), 0);
    });
    GetOptions g;
    g.output_region = &*region;
    auto got = client_->Get("ns", std::span<const ChunkKey>(&key, 1), g);
    truncator.join();
    if (got.ok()) {
      ++ok;
    } else {
      ASSERT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition) << got.status();
      ++refused;
      if (got.status().message().find("SIGBUS") != std::string::npos) ++caught;
    }
    // Whatever happened, the region is refused now (truncated), and the daemon serves.
    auto after = client_->Get("ns", std::span<const ChunkKey>(&key, 1), g);
    EXPECT_EQ(after.status().code(), absl::StatusCode::kFailedPrecondition) << after.status();
    EXPECT_TRUE(client_->UnregisterRegion(*region).ok());
    auto stats = client_->Stats();
    ASSERT_TRUE(stats.ok()) << "the daemon died: " << stats.status() << "\n" << daemon_.Log();
  }
  std::printf("ok %d, refused %d (of which SIGBUS caught %d)\n", ok, refused, caught);
  auto plain = client_->Get("ns", key);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->data.size(), shape.payload_bytes());
}

TEST_F(ShmFaultIntegrationTest, PathsOutsideTheRootOrThroughSymlinksAreRefused) {
  std::random_device rd;
  const std::string dir = absl::StrCat("/dev/shm/kvstash-fault-dir-", getpid(), "-", rd());
  const std::string link = absl::StrCat("/dev/shm/kvstash-fault-link-", getpid(), "-", rd());
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  const std::string file = dir + "/region";
  close(open(file.c_str(), O_RDWR | O_CREAT, 0600));
  ASSERT_EQ(truncate(file.c_str(), 4096), 0);
  ASSERT_EQ(symlink(dir.c_str(), link.c_str()), 0);

  auto direct = client_->RegisterRegion("ns", file, 4096);
  EXPECT_TRUE(direct.ok()) << direct.status();
  EXPECT_EQ(client_->RegisterRegion("ns", link + "/region", 4096).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->RegisterRegion("ns", dir, 4096).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client_->RegisterRegion("ns", "/etc/kvstash-no-such-file", 16).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->RegisterRegion("ns", file + std::string("\0x", 2), 16).status().code(),
            absl::StatusCode::kInvalidArgument);

  unlink(link.c_str());
  unlink(file.c_str());
  rmdir(dir.c_str());
}

}  // namespace
}  // namespace kvstash::client
