// Runs the real kvstash-bench binary against the real kvstashd (popen), with --verify so
// every Get is compared byte for byte with kernels::Decode(kernels::EncodeChunk(input)),
// and checks the --json report and the exit codes.
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "daemon_process.h"
#include "gtest/gtest.h"

namespace kvstash::bench {
namespace {

struct BenchResult {
  int code = -1;
  std::string out;
  std::string err;
};

// The raw text of `"key":` in `json` after the first occurrence of `after` (a string
// without quotes, or the number/bool/object-start). Empty when absent.
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

class BenchIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const absl::Status st =
        daemon_.Start(KVSTASHD_PATH, {"--host-capacity", "256MiB", "--log-level", "warn"});
    ASSERT_TRUE(st.ok()) << st;
  }
  void TearDown() override {
    if (daemon_.running()) {
      EXPECT_EQ(daemon_.Stop(), 0) << daemon_.Log();
    }
  }

  BenchResult Run(const std::string& args, bool with_addr = true) {
    const std::string err = daemon_.dir() + "/bench.stderr";
    const std::string cmd = absl::StrCat(
        KVSTASH_BENCH_PATH, " ", with_addr ? "--addr " + daemon_.address() + " " : "", args,
        " 2>", err);
    BenchResult r;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) return r;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
    const int st = ::pclose(p);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    std::ifstream in(err);
    std::stringstream ss;
    ss << in.rdbuf();
    r.err = ss.str();
    return r;
  }

  testing::DaemonProcess daemon_;
};

// A small custom geometry keeps the test fast on a loaded 2-core machine.
constexpr char kSmall[] = "--model llama-3-8b --layers 4 --heads 2 --head-dim 128 --tokens 64";

TEST_F(BenchIntegrationTest, PutThenVerifiedGetsMatchTheCodec) {
  BenchResult r = Run(absl::StrCat("--workload put --count 12 -c 2 -i 2 --json ", kSmall));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(Field(r.out, "ok"), "true");
  EXPECT_EQ(Field(r.out, "transport"), "grpc");
  EXPECT_EQ(Field(r.out, "ops", "put"), "12") << r.out;
  EXPECT_EQ(Field(r.out, "error_count", "put"), "0");
  EXPECT_EQ(Field(r.out, "logical_bytes", "chunk"), std::to_string(4 * 2 * 64 * 2 * 128 * 2));
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "one JSON object, one line";

  for (const char* codec : {"xquant", "fp16", "kivi-2"}) {
    r = Run(absl::StrCat("--workload get --count 10 -c 2 -i 1 --verify --dtype bf16 --json ",
                         "--codec ", codec, " ", kSmall));
    ASSERT_EQ(r.code, 0) << codec << "\n" << r.out << r.err;
    EXPECT_EQ(Field(r.out, "ops", "get"), "10") << r.out;
    EXPECT_EQ(Field(r.out, "enabled", "verify"), "true");
    EXPECT_EQ(Field(r.out, "checked", "verify"), "10");
    EXPECT_EQ(Field(r.out, "mismatches", "verify"), "0");
    EXPECT_EQ(Field(r.out, "codec", "chunk"), codec);
  }
}

TEST_F(BenchIntegrationTest, MixedAndLookupWithBaseline) {
  BenchResult r = Run(absl::StrCat("--workload mixed --ratio 1:3 --count 16 --verify --json ",
                                   "--baseline tcp ", kSmall));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(Field(r.out, "ops", "put"), "4") << r.out;
  EXPECT_EQ(Field(r.out, "ops", "get"), "12");
  EXPECT_EQ(Field(r.out, "mismatches", "verify"), "0");
  EXPECT_EQ(Field(r.out, "kind", "baseline"), "tcp");
  EXPECT_EQ(Field(r.out, "ops", "upload"), "16");
  EXPECT_NE(Field(r.out, "put", "grpc_fraction"), "");

  r = Run(absl::StrCat("--workload lookup --chains 2 --chain-length 4 --hit-rate 0.75 ",
                       "--count 20 --verify --json ", kSmall));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(Field(r.out, "ops", "lookup"), "20") << r.out;
  EXPECT_EQ(Field(r.out, "hit_rate"), "0.75") << r.out;
  EXPECT_EQ(Field(r.out, "mismatches", "verify"), "0");
}

TEST_F(BenchIntegrationTest, ShmTransportVerifiesAndReportsMemcpyBaseline) {
  BenchResult r = Run(absl::StrCat("--transport shm --workload mixed --ratio 1:1 --count 16 ",
                                   "-c 2 -i 2 --verify --json ", kSmall));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(Field(r.out, "transport"), "shm") << r.out;
  EXPECT_EQ(Field(r.out, "ops", "put"), "8") << r.out;
  EXPECT_EQ(Field(r.out, "ops", "get"), "8");
  EXPECT_EQ(Field(r.out, "mismatches", "verify"), "0");
  EXPECT_EQ(Field(r.out, "copies", "memcpy_baseline"), "16") << r.out;
}

TEST_F(BenchIntegrationTest, TextReportAndUsageErrors) {
  BenchResult r = Run(absl::StrCat("--workload put --count 3 ", kSmall));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("logical GB/s"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("put "), std::string::npos);

  // cuda-ipc: usage error without CUDA, a clear refusal without a device (CI), and a run
  // on a GPU machine.
  r = Run("--transport cuda-ipc --cuda-device 4096 --count 1 --json");
  const std::string code = Field(r.out, "code");
  if (code == "UNIMPLEMENTED") {
    EXPECT_EQ(r.code, 2) << r.out << r.err;
    EXPECT_NE(r.err.find("built without CUDA"), std::string::npos) << r.err;
  } else {
    EXPECT_EQ(code, "FAILED_PRECONDITION") << r.out;
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("no CUDA device 4096"), std::string::npos) << r.err;
  }

  r = Run("--workload scan");
  EXPECT_EQ(r.code, 2) << r.err;
  r = Run("--model gpt-5");
  EXPECT_EQ(r.code, 2) << r.err;

  r = Run("--addr 127.0.0.1:1 --count 1 --timeout 1", /*with_addr=*/false);
  EXPECT_EQ(r.code, 4) << r.out << r.err;
}

}  // namespace
}  // namespace kvstash::bench
