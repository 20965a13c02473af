// The shared-memory data path through the real kvstashd: RegisterRegion, Put from a region,
// Get into a region, every refusal with its exact code, and a client that dies mid-session.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cli_util.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "kvstash/client/client.h"
#include "kvstash/kernels/codec.h"
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

// kernels::Decode(kernels::EncodeChunk(x)): the bytes the daemon must write.
std::string Oracle(const ChunkShape& shape, Preset preset, const std::vector<uint16_t>& in) {
  auto enc = kernels::EncodeChunk(shape, kernels::PresetConfig(preset, shape.num_layers), in);
  EXPECT_TRUE(enc.ok()) << enc.status();
  if (!enc.ok()) return {};
  std::vector<uint16_t> out;
  EXPECT_TRUE(kernels::Decode(enc->data(), enc->size(), kernels::Slice{}, shape.dtype, &out).ok());
  return std::string(reinterpret_cast<const char*>(out.data()), out.size() * 2);
}

const ChunkShape kShape{4, 64, 2, 128, DType::kF16};

class ShmIntegrationTest : public ::testing::Test {
 protected:
  void StartDaemon() {
    const absl::Status st =
        daemon_.Start(KVSTASHD_PATH, {"--host-capacity", "64MiB", "--log-level", "warn"});
    ASSERT_TRUE(st.ok()) << st;
  }
  void Connect() {
    ClientOptions o;
    o.target = daemon_.address();
    o.connect_timeout = std::chrono::seconds(10);
    auto c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }
  void TearDown() override {
    client_.reset();
    if (daemon_.running()) EXPECT_EQ(daemon_.Stop(), 0) << daemon_.Log();
  }

  testing::DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
  std::mt19937_64 rng_{FreshSeed()};
};

TEST_F(ShmIntegrationTest, PutFromRegionAndGetIntoRegionMatchTheCodecExactly) {
  StartDaemon();
  Connect();
  const uint64_t payload = kShape.payload_bytes();
  auto shm = SharedRegion::Create(4 * payload + 4096);
  ASSERT_TRUE(shm.ok()) << shm.status();
  auto region = client_->RegisterRegion("ns", shm->path(), shm->size());
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_EQ(region->size, shm->size());

  std::vector<std::vector<uint16_t>> in;
  std::vector<ChunkKey> keys;
  for (int i = 0; i < 2; ++i) {
    in.push_back(cli::GeneratePayload(kShape, FreshSeed()));
    keys.push_back(ChunkKey{rng_(), rng_()});
    std::memcpy(shm->data() + i * payload, in[i].data(), payload);
  }
  std::vector<PutChunk> chunks;
  for (int i = 0; i < 2; ++i) {
    PutChunk c{keys[i], kShape, Codec::FromPreset(Preset::kXQuant), {}, &*region, i * payload};
    chunks.push_back(c);
  }
  auto put = client_->Put("ns", chunks);
  ASSERT_TRUE(put.ok()) << put.status();

  GetOptions g;
  g.output_region = &*region;
  g.output_offset = 2 * payload + 64;
  auto got = client_->Get("ns", keys, g);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 2u);
  uint64_t expect_offset = g.output_offset;
  for (int i = 0; i < 2; ++i) {
    const GetResult& r = (*got)[i];
    EXPECT_TRUE(r.found);
    EXPECT_TRUE(r.data.empty());
    EXPECT_EQ(r.region_offset, expect_offset);
    expect_offset += (payload + 63) / 64 * 64;
    const std::string oracle = Oracle(kShape, Preset::kXQuant, in[i]);
    ASSERT_EQ(oracle.size(), payload);
    EXPECT_EQ(std::memcmp(shm->data() + r.region_offset, oracle.data(), payload), 0) << i;
    // And the same bytes as the gRPC path.
    auto plain = client_->Get("ns", keys[i]);
    ASSERT_TRUE(plain.ok());
    EXPECT_EQ(plain->data, oracle);
  }
  EXPECT_TRUE(client_->RenewRegion(*region).ok());
  EXPECT_TRUE(client_->UnregisterRegion(*region).ok());
  EXPECT_EQ(client_->UnregisterRegion(*region).code(), absl::StatusCode::kNotFound);
}

TEST_F(ShmIntegrationTest, RefusesEveryBadUseWithItsExactCodeAndKeepsServing) {
  StartDaemon();
  Connect();
  const uint64_t payload = kShape.payload_bytes();
  auto shm = SharedRegion::Create(2 * payload);
  ASSERT_TRUE(shm.ok());
  auto region = client_->RegisterRegion("a", shm->path(), shm->size());
  ASSERT_TRUE(region.ok()) << region.status();
  const std::vector<uint16_t> in = cli::GeneratePayload(kShape, FreshSeed());
  std::memcpy(shm->data(), in.data(), payload);
  const ChunkKey key{rng_(), rng_()};
  auto put_with = [&](const Region& r, const std::string& ns, uint64_t offset) {
    return client_->Put(ns, PutChunk{key, kShape, Codec::FromPreset(Preset::kXQuant), {}, &r,
                                     offset})
        .status();
  };

  Region wrong_token = *region;
  wrong_token.token[0] = wrong_token.token[0] == 'a' ? 'b' : 'a';
  EXPECT_EQ(put_with(wrong_token, "a", 0).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(put_with(*region, "b", 0).code(), absl::StatusCode::kPermissionDenied);
  Region unknown = *region;
  unknown.id += 1000;
  EXPECT_EQ(put_with(unknown, "a", 0).code(), absl::StatusCode::kNotFound);
  const absl::Status past = put_with(*region, "a", payload + 1);
  EXPECT_EQ(past.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(past.message().find("chunks[0].data_region.length"), std::string::npos) << past;

  // Output that does not fit in the given length.
  ASSERT_TRUE(put_with(*region, "a", 0).ok());
  GetOptions small;
  small.output_region = &*region;
  small.output_length = payload - 1;
  const absl::Status too_small = client_->Get("a", key, small).status();
  EXPECT_EQ(too_small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_small.message().find("output_region.length"), std::string::npos) << too_small;

  // Files the daemon must not map.
  EXPECT_EQ(client_->RegisterRegion("a", "/etc/hostname", 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->RegisterRegion("a", "/dev/shm/kvstash-no-such-file", 1).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->RegisterRegion("a", shm->path(), shm->size() + 1).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // Truncated after registration: refused before a byte is touched (no SIGBUS).
  ASSERT_EQ(truncate(shm->path().c_str(), 4096), 0);
  const absl::Status truncated = put_with(*region, "a", 0);
  EXPECT_EQ(truncated.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(truncated.message().find("truncated"), std::string::npos) << truncated;

  // The daemon is healthy: the gRPC path works.
  auto plain = client_->Put("a", PutChunk{ChunkKey{rng_(), rng_()}, kShape,
                                          Codec::FromPreset(Preset::kXQuant),
                                          {reinterpret_cast<const uint8_t*>(in.data()), payload}});
  EXPECT_TRUE(plain.ok()) << plain.status();
}

// A worker that dies mid-session: its in-flight Put either stored a whole chunk or none,
// the daemon keeps serving, and its region goes when the lease runs out.
TEST_F(ShmIntegrationTest, ClientKilledMidSessionLeavesDaemonHealthyAndRegionExpires) {
  StartDaemon();
  // Fork before this process starts gRPC, so the child owns a clean gRPC runtime.
  const std::vector<uint16_t> in = cli::GeneratePayload(kShape, FreshSeed());
  const ChunkKey key{rng_(), rng_()};
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(pipefd[0]);
    ClientOptions o;
    o.target = daemon_.address();
    auto c = Client::Connect(o);
    auto shm = SharedRegion::Create(kShape.payload_bytes());
    if (!c.ok() || !shm.ok()) _exit(2);
    auto region = (*c)->RegisterRegion("dies", shm->path(), shm->size(), /*lease_seconds=*/2);
    if (!region.ok()) _exit(3);
    std::memcpy(shm->data(), in.data(), shm->size());
    const std::string msg = std::to_string(region->id) + " " + region->token + " " + shm->path();
    if (write(pipefd[1], msg.data(), msg.size()) != static_cast<ssize_t>(msg.size())) _exit(4);
    close(pipefd[1]);
    std::thread([&] {
      for (;;)
        (void)(*c)->Put("dies", PutChunk{key, kShape, Codec::FromPreset(Preset::kXQuant), {},
                                         &*region, 0});
    }).detach();
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    _exit(0);  // no destructors: the region stays registered, the file stays
  }
  close(pipefd[1]);
  std::string msg(512, '\0');
  const ssize_t n = read(pipefd[0], msg.data(), msg.size());
  close(pipefd[0]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus));
  ASSERT_EQ(WEXITSTATUS(wstatus), 0);
  ASSERT_GT(n, 0);
  msg.resize(n);
  Region region;
  char token[64], path[256];
  ASSERT_EQ(std::sscanf(msg.c_str(), "%lu %63s %255s", &region.id, token, path), 3);
  region.token = token;

  Connect();
  ASSERT_TRUE(client_->Stats().ok());
  // All or nothing: whatever the child got stored is the whole chunk.
  GetOptions any;
  any.allow_missing = true;
  auto got = client_->Get("dies", std::span<const ChunkKey>(&key, 1), any);
  ASSERT_TRUE(got.ok()) << got.status();
  if ((*got)[0].found) EXPECT_EQ((*got)[0].data, Oracle(kShape, Preset::kXQuant, in));
  // The region still works for its token until the lease runs out...
  EXPECT_TRUE(client_->RenewRegion(region).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  // ...then it is gone.
  EXPECT_EQ(client_->RenewRegion(region).code(), absl::StatusCode::kNotFound);
  unlink(path);
  // And a later request works.
  auto put = client_->Put("dies", PutChunk{ChunkKey{rng_(), rng_()}, kShape,
                                           Codec::FromPreset(Preset::kXQuant),
                                           {reinterpret_cast<const uint8_t*>(in.data()),
                                            kShape.payload_bytes()}});
  EXPECT_TRUE(put.ok()) << put.status();
}

}  // namespace
}  // namespace kvstash::client
