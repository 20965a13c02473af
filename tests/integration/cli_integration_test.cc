// Drives the real kvstashd binary through the `kvstash` CLI (popen), checking output,
// --json objects and exit codes.
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli_util.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "kvstash/client/chunk_key.h"
#include "kvstash/client/client.h"
#include "kvstash/kernels/codec.h"
#include "npy.h"

namespace kvstash::cli {
namespace {

struct CliResult {
  int code = -1;
  std::string out;
  std::string err;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The value of "key" in a flat-ish JSON object: a string without its quotes, or the raw
// number/bool text. Empty when absent.
std::string JsonField(const std::string& json, const std::string& key) {
  const std::string needle = "\"" + key + "\":";
  size_t p = json.find(needle);
  if (p == std::string::npos) return "";
  p += needle.size();
  if (json[p] == '"') {
    const size_t e = json.find('"', p + 1);
    return json.substr(p + 1, e - p - 1);
  }
  const size_t e = json.find_first_of(",}", p);
  return json.substr(p, e - p);
}

class CliIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const absl::Status st =
        daemon_.Start(KVSTASHD_PATH, {"--host-capacity", "64MiB", "--log-level", "warn"});
    ASSERT_TRUE(st.ok()) << st;
  }
  void TearDown() override {
    if (daemon_.running()) {
      EXPECT_EQ(daemon_.Stop(), 0) << daemon_.Log();
    }
  }

  std::string Path(const std::string& name) const { return daemon_.dir() + "/" + name; }

  // Runs `kvstash --addr ADDR <args>`; `prefix` goes before the binary (environment).
  CliResult Run(const std::string& args, bool with_addr = true, const std::string& prefix = "") {
    const std::string err = Path("cli.stderr");
    const std::string cmd = absl::StrCat(prefix, " ", KVSTASH_CLI_PATH, " ",
                                         with_addr ? "--addr " + daemon_.address() + " " : "",
                                         args, " 2>", err);
    CliResult r;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) return r;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
    const int st = ::pclose(p);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r.err = ReadAll(err);
    return r;
  }

  testing::DaemonProcess daemon_;
};

#define EXPECT_CLI(result, expected_code)                                              \
  EXPECT_EQ((result).code, expected_code) << "stdout:\n" << (result).out << "stderr:\n" \
                                          << (result).err

TEST_F(CliIntegrationTest, PutGetLookupRmStatsSession) {
  // put: key derived from tokens 0..31 in namespace "demo"; geometry from a model plus
  // overrides; the payload also saved for --compare.
  const std::string raw = Path("orig.raw");
  CliResult r = Run("-n demo put --generate llama-3-8b --layers 4 --heads 2 --head-dim 64 "
                    "--tokens 0-31 --seed 7 --save " + raw + " --json");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  std::vector<int32_t> tokens(32);
  for (int i = 0; i < 32; ++i) tokens[i] = i;
  const client::ChunkKey k0 = client::ChainKey({}, tokens, "demo");
  const std::string k0hex = client::KeyToHex(k0);
  EXPECT_EQ(JsonField(r.out, "key"), k0hex) << r.out;
  EXPECT_EQ(JsonField(r.out, "ok"), "true");
  EXPECT_EQ(JsonField(r.out, "preset"), "xquant");
  EXPECT_EQ(JsonField(r.out, "num_tokens"), "32");
  EXPECT_EQ(JsonField(r.out, "logical_bytes"), std::to_string(4 * 2 * 32 * 2 * 64 * 2));
  EXPECT_EQ(JsonField(r.out, "equivalent_bits"), "1.375");
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "one JSON object, one line";
  EXPECT_EQ(ReadAll(raw).size(), 4u * 2 * 32 * 2 * 64 * 2);

  // The same put in human form, replacing it.
  r = Run("-n demo put --generate llama-3-8b --layers 4 --heads 2 --head-dim 64 --tokens 0-31 "
          "--seed 7");
  EXPECT_CLI(r, 0);
  EXPECT_NE(r.out.find(k0hex), std::string::npos);
  EXPECT_NE(r.out.find("B_eq"), std::string::npos);
  EXPECT_NE(r.out.find("replaced           yes"), std::string::npos) << r.out;

  // lookup over 3 chunks of 32 tokens: one present.
  r = Run("-n demo lookup --tokens 0-95 --chunk-tokens 32");
  EXPECT_CLI(r, 0);
  EXPECT_NE(r.out.find("present prefix: 1 of 3 chunks (32 tokens)"), std::string::npos) << r.out;

  // The second chunk chained with --prev, fp16 preset, as .npy input.
  const std::string npy = Path("c1.npy");
  r = Run("-n demo put --generate llama-3-8b --layers 4 --heads 2 --head-dim 64 --num-tokens 32 "
          "--seed 8 --key 0123456789abcdef0123456789abcdef --save " + npy);
  EXPECT_CLI(r, 0);
  r = Run("-n demo --json put --npy " + npy + " --tokens 32-63 --prev " + k0hex + " --preset fp16");
  EXPECT_CLI(r, 0);
  std::vector<int32_t> t1(32);
  for (int i = 0; i < 32; ++i) t1[i] = 32 + i;
  const std::string k1hex = client::KeyToHex(client::ChainKey(k0, t1, "demo"));
  EXPECT_EQ(JsonField(r.out, "key"), k1hex);
  EXPECT_EQ(JsonField(r.out, "equivalent_bits"), "16");
  r = Run("--json -n demo lookup --tokens 0-95 --chunk-tokens 32");
  EXPECT_CLI(r, 0);
  EXPECT_EQ(JsonField(r.out, "present_prefix"), "2");
  EXPECT_EQ(JsonField(r.out, "keys"), "3");
  r = Run("-n demo lookup " + k0hex + " " + k1hex);
  EXPECT_CLI(r, 0);
  EXPECT_NE(r.out.find("present prefix: 2 of 2"), std::string::npos) << r.out;
  // A miss is not an error.
  r = Run("-n other lookup " + k0hex);
  EXPECT_CLI(r, 0);
  EXPECT_NE(r.out.find("present prefix: 0 of 1"), std::string::npos) << r.out;

  // get: .npy output of a slice, and --compare against the saved original.
  const std::string out_npy = Path("out.npy");
  r = Run("-n demo get --key " + k0hex + " --layers 1:3 --heads 1: -o " + out_npy + " --compare " +
          raw);
  EXPECT_CLI(r, 0);
  EXPECT_NE(r.out.find("max abs error"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rel RMS error"), std::string::npos) << r.out;
  const std::string file = ReadAll(out_npy);
  auto h = ParseNpyHeader(file);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->descr, "<f2");
  EXPECT_EQ(h->shape, (std::vector<uint64_t>{2, 2, 32, 1, 64}));
  EXPECT_EQ(file.size() - h->data_offset, 2u * 2 * 32 * 1 * 64 * 2);

  // The whole chunk, raw, compared in JSON: xquant is lossy but close.
  const std::string out_raw = Path("out.raw");
  r = Run("--json -n demo get --key " + k0hex + " -o " + out_raw + " --compare " + raw);
  EXPECT_CLI(r, 0);
  const double rel = std::stod(JsonField(r.out, "rel_rms_error"));
  EXPECT_GT(rel, 0.0);
  EXPECT_LT(rel, 1.0);  // 1-bit values on Gaussian data: roughly 0.5
  // What the CLI wrote is exactly what the codec decodes from the saved input.
  {
    const std::string in_bytes = ReadAll(raw);
    std::vector<uint16_t> in(in_bytes.size() / 2);
    std::memcpy(in.data(), in_bytes.data(), in_bytes.size());
    const kernels::ChunkShape shape{4, 32, 2, 64, kernels::DType::kF16};
    auto enc = kernels::EncodeChunk(shape, kernels::PresetConfig(kernels::Preset::kXQuant, 4), in);
    ASSERT_TRUE(enc.ok()) << enc.status();
    std::vector<uint16_t> dec;
    ASSERT_TRUE(kernels::Decode(enc->data(), enc->size(), {}, kernels::DType::kF16, &dec).ok());
    EXPECT_TRUE(ReadAll(out_raw) ==
                std::string(reinterpret_cast<const char*>(dec.data()), dec.size() * 2));
  }
  // fp16 chunk: compare gives zero error; bf16 output works.
  r = Run("--json -n demo get --key " + k1hex + " --compare " + npy);
  EXPECT_CLI(r, 0);
  EXPECT_EQ(JsonField(r.out, "max_abs_error"), "0");
  r = Run("--json -n demo get --key " + k1hex + " --dtype bf16");
  EXPECT_CLI(r, 0);
  EXPECT_EQ(JsonField(r.out, "dtype"), "bf16");

  // stats, human and JSON.
  r = Run("stats");
  EXPECT_CLI(r, 0);
  for (const char* row : {"capacity", "used", "chunks", "logical", "stored", "compression",
                          "B_eq", "true bits", "hits", "misses", "evictions"}) {
    EXPECT_NE(r.out.find(row), std::string::npos) << row << " in\n" << r.out;
  }
  r = Run("--json stats");
  EXPECT_CLI(r, 0);
  EXPECT_EQ(JsonField(r.out, "chunks"), "3");  // k0, k1 and the 0123... chunk
  EXPECT_EQ(JsonField(r.out, "capacity_bytes"), std::to_string(64u << 20));
  EXPECT_EQ(JsonField(r.out, "evictions"), "0");

  // rm: present → 0, then missing → 3; get of the missing key → 3.
  r = Run("-n demo rm " + k0hex);
  EXPECT_CLI(r, 0);
  EXPECT_NE(r.out.find("deleted 1, not found 0"), std::string::npos) << r.out;
  r = Run("--json -n demo rm " + k0hex + " " + k1hex);
  EXPECT_CLI(r, 3);
  EXPECT_EQ(JsonField(r.out, "deleted"), "1");
  EXPECT_EQ(JsonField(r.out, "not_found"), "1");
  r = Run("-n demo get --key " + k0hex);
  EXPECT_CLI(r, 3);
  r = Run("--json -n demo get --key " + k0hex);
  EXPECT_CLI(r, 3);
  EXPECT_EQ(JsonField(r.out, "code"), "NOT_FOUND");
  r = Run("-n demo lookup --tokens 0-95 --chunk-tokens 32");
  EXPECT_CLI(r, 0);
  EXPECT_NE(r.out.find("present prefix: 0 of 3"), std::string::npos);
}

TEST_F(CliIntegrationTest, ExitCodesForUsageInvalidUnavailableAndExhausted) {
  // Usage errors: no subcommand, unknown flag, no data source, bad key, bad range.
  EXPECT_CLI(Run(""), 2);
  EXPECT_CLI(Run("put --bogus"), 2);
  EXPECT_CLI(Run("put --key 0123456789abcdef0123456789abcdef"), 2);
  EXPECT_CLI(Run("get --key xyz"), 2);
  EXPECT_CLI(Run("get --key 0123456789abcdef0123456789abcdef --layers 3:1"), 2);
  EXPECT_CLI(Run("put --generate gpt-9 --key 0123456789abcdef0123456789abcdef"), 2);
  // The daemon's InvalidArgument: head_dim 100, empty namespace.
  CliResult r = Run("--json put --generate qwen2.5-7b --layers 2 --head-dim 100 --num-tokens 8 "
                    "--key 0123456789abcdef0123456789abcdef");
  EXPECT_CLI(r, 2);
  EXPECT_EQ(JsonField(r.out, "code"), "INVALID_ARGUMENT");
  EXPECT_CLI(Run("-n '' put --generate qwen2.5-7b --layers 2 --num-tokens 8 "
                 "--key 0123456789abcdef0123456789abcdef"), 2);
  // A raw file of the wrong size.
  {
    std::ofstream(Path("short.raw"), std::ios::binary) << std::string(1000, '\0');
    EXPECT_CLI(Run("put --file " + Path("short.raw") +
                   " --layout 1,8,1,32 --key 0123456789abcdef0123456789abcdef"), 2);
  }
  // Help is not an error and documents the exit codes.
  r = Run("--help");
  EXPECT_CLI(r, 0);
  EXPECT_NE(r.out.find("Exit codes"), std::string::npos);
  EXPECT_NE(r.out.find("resource exhausted"), std::string::npos);
  // Resource exhausted: a 64 MiB fp16 chunk (plus its header) in a 64 MiB pool.
  r = Run("put --generate llama-3-8b --num-tokens 512 --preset fp16 "
          "--key 0123456789abcdef0123456789abcdef");
  EXPECT_CLI(r, 5);
  // Unavailable: nothing listens on port 1.
  r = Run("--addr 127.0.0.1:1 --timeout 5 stats", /*with_addr=*/false);
  EXPECT_CLI(r, 4);
  r = Run("--json stats", /*with_addr=*/false, "KVSTASH_ADDR=127.0.0.1:1");
  EXPECT_CLI(r, 4);
  EXPECT_EQ(JsonField(r.out, "code"), "UNAVAILABLE");
  // KVSTASH_ADDR reaches the daemon.
  r = Run("stats", /*with_addr=*/false, "KVSTASH_ADDR=" + daemon_.address());
  EXPECT_CLI(r, 0);
  // And the daemon is still fine.
  EXPECT_CLI(Run("put --generate qwen2.5-7b --layers 2 --num-tokens 8 "
                 "--key 0123456789abcdef0123456789abcdef"), 0);
}

TEST_F(CliIntegrationTest, DaemonPrintsServingLineAndStopsCleanly) {
  EXPECT_NE(daemon_.Stdout().find("kvstashd serving on " + daemon_.address()), std::string::npos)
      << daemon_.Log();
  EXPECT_EQ(daemon_.Stop(), 0) << daemon_.Log();
  // After shutdown the CLI reports unavailable.
  EXPECT_CLI(Run("--timeout 3 stats"), 4);
}

}  // namespace
}  // namespace kvstash::cli
