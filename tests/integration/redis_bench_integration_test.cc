// kvstash-bench's redis transport against a real redis-server (Debian's, installed by
// scripts/install-deps.sh) started on a free loopback port without persistence: the
// binary with --verify and --json, and the Transport itself (a missing key is NotFound).
// Skips when redis-server is not installed.
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "redis_transport.h"
#include "transport.h"

namespace kvstash::bench {
namespace {

// The raw text of `"key":` in `json` after the first occurrence of `"after":` (or from the
// start). Empty when absent.
std::string Field(const std::string& json, const std::string& key, const std::string& after = "") {
  size_t p = after.empty() ? 0 : json.find("\"" + after + "\":");
  if (p == std::string::npos) return "";
  const std::string needle = "\"" + key + "\":";
  p = json.find(needle, p);
  if (p == std::string::npos) return "";
  p += needle.size();
  if (json[p] == '"') return json.substr(p + 1, json.find('"', p + 1) - p - 1);
  return json.substr(p, json.find_first_of(",}", p) - p);
}

std::string FindRedisServer() {
  for (const char* dir : {"/usr/bin", "/usr/local/bin", "/usr/sbin"}) {
    const std::string path = absl::StrCat(dir, "/redis-server");
    if (::access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

// A port nothing listens on right now (bound, read back, closed).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

TransportOptions Options(const std::string& addr, uint32_t sockets = 1) {
  TransportOptions t;
  t.target = addr;
  t.timeout = std::chrono::seconds(10);
  t.connect_timeout = std::chrono::seconds(2);
  t.redis_connections = sockets;
  return t;
}

class RedisBenchIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string binary = FindRedisServer();
    if (binary.empty()) GTEST_SKIP() << "redis-server is not installed (scripts/install-deps.sh)";
    std::string templ = (std::filesystem::temp_directory_path() / "kvstash-redis-XXXXXX").string();
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    // The port is free when chosen but may be taken before redis binds it: try a few.
    for (int attempt = 0; attempt < 5 && addr_.empty(); ++attempt) {
      const int port = FreePort();
      ASSERT_GT(port, 0);
      std::vector<std::string> args = {binary, "--port", std::to_string(port),
                                       "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", dir_,
                                       "--logfile", dir_ + "/redis.log", "--daemonize", "no"};
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      pid_ = ::fork();
      ASSERT_GE(pid_, 0);
      if (pid_ == 0) {
        ::execv(argv[0], argv.data());
        ::_exit(127);
      }
      const std::string addr = absl::StrCat("127.0.0.1:", port);
      for (int i = 0; i < 100; ++i) {
        int st = 0;
        if (::waitpid(pid_, &st, WNOHANG) == pid_) {
          pid_ = -1;
          break;
        }
        absl::StatusOr<std::unique_ptr<Transport>> t = OpenRedisTransport(Options(addr));
        if (t.ok() && (*t)->ServerMemoryBytes().ok()) {
          addr_ = addr;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (addr_.empty()) StopServer();
    }
    ASSERT_FALSE(addr_.empty()) << "redis-server did not start; log:\n" << Log();
  }

  void TearDown() override {
    StopServer();
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  void StopServer() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }

  std::string Log() const {
    std::ifstream in(dir_ + "/redis.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Runs kvstash-bench --transport redis --addr <server> <args>; exit status and stdout.
  std::pair<int, std::string> Bench(const std::string& args) {
    const std::string cmd = absl::StrCat(KVSTASH_BENCH_PATH, " --transport redis --addr ", addr_,
                                         " ", args, " 2>", dir_, "/bench.stderr");
    std::string out;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) return {-1, out};
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    const int st = ::pclose(p);
    std::ifstream in(dir_ + "/bench.stderr");
    std::stringstream ss;
    ss << in.rdbuf();
    return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out + ss.str()};
  }

  pid_t pid_ = -1;
  std::string dir_;
  std::string addr_;
};

// A small custom geometry: 4 · 2 · 64 · 2 · 128 · 2 bytes = 256 KiB per chunk.
constexpr char kSmall[] = "--model llama-3-8b --layers 4 --heads 2 --head-dim 128 --tokens 64";
constexpr uint64_t kSmallBytes = 4 * 2 * 64 * 2 * 128 * 2;

TEST_F(RedisBenchIntegrationTest, VerifiedMixedRunReportsMemoryPerToken) {
  const auto [code, out] =
      Bench(absl::StrCat("--workload mixed --ratio 1:1 --count 24 -c 2 -i 2 --keys 6 --verify ",
                         "--json ", kSmall));
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(Field(out, "ok"), "true") << out;
  EXPECT_EQ(Field(out, "transport"), "redis");
  EXPECT_EQ(Field(out, "codec", "chunk"), "none");
  EXPECT_EQ(Field(out, "ops", "put"), "12");
  EXPECT_EQ(Field(out, "ops", "get"), "12");
  EXPECT_EQ(Field(out, "error_count"), "0");
  EXPECT_EQ(Field(out, "checked", "verify"), "12");
  EXPECT_EQ(Field(out, "mismatches", "verify"), "0");
  // Redis stores the payload as given: stored bytes are logical bytes.
  EXPECT_EQ(Field(out, "stored_bytes", "get"), Field(out, "logical_bytes", "get"));
  EXPECT_EQ(Field(out, "keys_stored", "server_memory"), "6") << out;
  EXPECT_EQ(Field(out, "tokens_stored", "server_memory"), "384");
  EXPECT_EQ(Field(out, "raw_bytes_per_token", "server_memory"), std::to_string(kSmallBytes / 64));
  // used_memory holds every value, so per token it is at least the raw bytes.
  const std::string per_token = Field(out, "bytes_per_token", "server_memory");
  ASSERT_FALSE(per_token.empty()) << out;
  EXPECT_GE(std::stod(per_token), static_cast<double>(kSmallBytes / 64)) << out;
}

TEST_F(RedisBenchIntegrationTest, PutWorkloadCountsDistinctKeysAndLookupFindsPrefix) {
  auto [code, out] = Bench(absl::StrCat("--workload put --count 20 --keys 8 --json ", kSmall));
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(Field(out, "ops", "put"), "20");
  EXPECT_EQ(Field(out, "keys_stored", "server_memory"), "8") << out;

  std::tie(code, out) = Bench(absl::StrCat("--workload lookup --chains 2 --chain-length 4 ",
                                           "--hit-rate 0.75 --count 10 --verify --json ", kSmall));
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(Field(out, "ops", "lookup"), "10");
  EXPECT_EQ(Field(out, "hit_rate", "lookup"), "0.75") << out;
  EXPECT_EQ(Field(out, "mismatches", "verify"), "0");
  EXPECT_EQ(Field(out, "keys_stored", "server_memory"), "6");
}

TEST_F(RedisBenchIntegrationTest, GetOfMissingKeyIsNotFoundAndPutRoundTrips) {
  absl::StatusOr<std::unique_ptr<Transport>> t = OpenRedisTransport(Options(addr_, 2));
  ASSERT_TRUE(t.ok()) << t.status();
  std::mt19937_64 rng(std::random_device{}());
  const client::ChunkKey key{rng(), rng()};
  const std::string ns = "redis-test";

  absl::StatusOr<GetReply> missing = (*t)->Get(ns, key);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();

  std::vector<uint8_t> payload(4096 + rng() % 4096);
  for (uint8_t& b : payload) b = static_cast<uint8_t>(rng());
  payload[7] = 0;  // binary-safe: NUL and CR/LF inside the value
  payload[8] = '\r';
  payload[9] = '\n';
  PutOp op{key, kernels::ChunkShape{}, kernels::Preset::kXQuant, payload};
  absl::StatusOr<uint64_t> stored = (*t)->Put(ns, op);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(*stored, payload.size());

  absl::StatusOr<GetReply> got = (*t)->Get(ns, key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->stored_bytes, payload.size());
  ASSERT_EQ(got->bytes().size(), payload.size());
  EXPECT_EQ(std::memcmp(got->bytes().data(), payload.data(), payload.size()), 0);

  const client::ChunkKey absent{rng(), rng()};
  const std::vector<client::ChunkKey> chain = {key, absent, key};
  absl::StatusOr<uint32_t> prefix = (*t)->Lookup(ns, chain);
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_EQ(*prefix, 1u);  // the present key after the gap does not count

  absl::StatusOr<uint64_t> memory = (*t)->ServerMemoryBytes();
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_GT(*memory, payload.size());

  ASSERT_TRUE((*t)->Delete(ns, chain).ok());
  EXPECT_EQ((*t)->Get(ns, key).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RedisBenchIntegrationTest, StoppedServerIsUnavailable) {
  const std::string addr = addr_;
  StopServer();
  absl::StatusOr<std::unique_ptr<Transport>> t = OpenRedisTransport(Options(addr));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable) << t.status();
  const auto [code, out] = Bench(absl::StrCat("--count 1 --json ", kSmall));
  EXPECT_EQ(code, 4) << out;
  EXPECT_EQ(Field(out, "code"), "UNAVAILABLE") << out;
}

TEST(RedisReplyTest, ErrorRepliesMapToChosenCodes) {
  EXPECT_EQ(RedisErrorStatus("OOM command not allowed when used memory > 'maxmemory'.").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RedisErrorStatus("LOADING Redis is loading the dataset in memory").code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(RedisErrorStatus("NOAUTH Authentication required.").code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(RedisErrorStatus("WRONGTYPE Operation against a key holding the wrong kind").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(RedisErrorStatus("ERR unknown command").code(), absl::StatusCode::kInternal);
}

TEST(RedisReplyTest, ParsesUsedMemoryNotItsNeighbours) {
  const std::string info =
      "# Memory\r\nused_memory_human:1.02M\r\nused_memory:1068544\r\nused_memory_rss:9000000\r\n";
  absl::StatusOr<uint64_t> v = ParseRedisUsedMemory(info);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, 1068544u);
  EXPECT_EQ(ParseRedisUsedMemory("# Memory\r\nused_memory_rss:1\r\n").status().code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(RedisKey("ns", client::ChunkKey{0x1, 0xabc}),
            "ns:00000000000000010000000000000abc");
}

TEST(RedisReplyTest, RejectsBadAddress) {
  EXPECT_EQ(OpenRedisTransport(Options("no-port")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenRedisTransport(Options("127.0.0.1:70000")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvstash::bench
