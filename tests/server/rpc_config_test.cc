// DaemonConfig: sizes, the TOML file, flags over the file, and refusal messages that name
// the option.
#include "server/config/config.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvstash::config {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// Runs ParseCommandLine on {"kvstashd", args...}.
absl::StatusOr<CommandLine> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "kvstashd");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    std::random_device rd;
    path_ = ::testing::TempDir() + "kvstashd_test_" + std::to_string(::getpid()) + "_" +
            std::to_string(rd()) + ".toml";
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(ParseSizeTest, AcceptsBinaryAndDecimalSuffixes) {
  EXPECT_EQ(*ParseSize("1GiB"), 1ull << 30);
  EXPECT_EQ(*ParseSize("64KiB"), 64ull << 10);
  EXPECT_EQ(*ParseSize("512MiB"), 512ull << 20);
  EXPECT_EQ(*ParseSize("2TiB"), 2ull << 40);
  EXPECT_EQ(*ParseSize("64 kib"), 64ull << 10);
  EXPECT_EQ(*ParseSize(" 4096 "), 4096u);
  EXPECT_EQ(*ParseSize("4096B"), 4096u);
  EXPECT_EQ(*ParseSize("2GB"), 2000000000u);
  EXPECT_EQ(*ParseSize("3KB"), 3000u);
  EXPECT_EQ(*ParseSize("0"), 0u);
}

TEST(ParseSizeTest, RejectsNonSizes) {
  for (const char* bad : {"", "GiB", "12 potatoes", "1.5GiB", "-1", "1 GiB x", "0x100",
                          "99999999999999999999", "17179869184GiB"}) {
    absl::StatusOr<uint64_t> v = ParseSize(bad);
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(FormatSizeTest, PicksTheLargestExactUnit) {
  EXPECT_EQ(FormatSize(1ull << 30), "1GiB");
  EXPECT_EQ(FormatSize(64ull << 10), "64KiB");
  EXPECT_EQ(FormatSize(1536ull << 20), "1536MiB");
  EXPECT_EQ(FormatSize(1000), "1000");
  EXPECT_EQ(FormatSize(0), "0");
  for (uint64_t v : {1ull, 4095ull, 4096ull, 3ull << 40, 123456789ull})
    EXPECT_EQ(*ParseSize(FormatSize(v)), v);
}

TEST(SplitHostPortTest, SplitsV4V6AndNames) {
  EXPECT_EQ(SplitHostPort("127.0.0.1:7450")->host, "127.0.0.1");
  EXPECT_EQ(SplitHostPort("127.0.0.1:7450")->port, 7450u);
  EXPECT_EQ(SplitHostPort("[::1]:0")->host, "[::1]");
  EXPECT_EQ(SplitHostPort("localhost:65535")->port, 65535u);
  for (const char* bad : {"127.0.0.1", ":7450", "host:", "host:65536", "host:http", "::1:80",
                          "[::1]7450"})
    EXPECT_EQ(SplitHostPort(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
}

TEST(DaemonConfigTest, DefaultsWorkWithNoFileAndNoFlags) {
  absl::StatusOr<CommandLine> cli = Parse({});
  ASSERT_TRUE(cli.ok()) << cli.status();
  const DaemonConfig& c = cli->config;
  EXPECT_EQ(c.listen, "127.0.0.1:7450");
  EXPECT_EQ(c.host_capacity_bytes, 1ull << 30);
  EXPECT_EQ(c.page_bytes, 64ull << 10);
  EXPECT_EQ(c.shards, 16u);
  EXPECT_EQ(c.worker_threads, 0u);
  EXPECT_EQ(c.max_message_bytes, 256ull << 20);
  EXPECT_EQ(c.log_level, "info");
  EXPECT_EQ(c.ready_file, "");
  EXPECT_FALSE(c.prefault);
  EXPECT_EQ(c.shutdown_deadline_ms, 10'000u);
  EXPECT_EQ(c.metrics_listen, "127.0.0.1:7451");
  EXPECT_EQ(c.fidelity_probe_every, 64u);
  EXPECT_FALSE(cli->print_config);
  EXPECT_TRUE(cli->help.empty());
  EXPECT_TRUE(ValidateConfig(DaemonConfig{}).ok());
}

TEST(DaemonConfigTest, FileSetsEveryOption) {
  TempFile f(R"(
[server]
listen = "0.0.0.0:9000"
worker_threads = 3
max_message_bytes = "64MiB"
ready_file = "/tmp/ready"
shutdown_deadline = "1500ms"
[metrics]
listen = "0.0.0.0:9100"
fidelity_probe_every = 0
[host]
capacity = "2GiB"
page_bytes = 16384
prefault = true
[store]
shards = 4
[log]
level = "debug"
[auth]
tokens_file = "/etc/kvstash/tokens.toml"
)");
  absl::StatusOr<CommandLine> cli = Parse({"--config", f.path()});
  ASSERT_TRUE(cli.ok()) << cli.status();
  const DaemonConfig& c = cli->config;
  EXPECT_EQ(c.listen, "0.0.0.0:9000");
  EXPECT_EQ(c.worker_threads, 3u);
  EXPECT_EQ(c.max_message_bytes, 64ull << 20);
  EXPECT_EQ(c.ready_file, "/tmp/ready");
  EXPECT_EQ(c.shutdown_deadline_ms, 1500u);
  EXPECT_EQ(c.metrics_listen, "0.0.0.0:9100");
  EXPECT_EQ(c.fidelity_probe_every, 0u);
  EXPECT_EQ(c.host_capacity_bytes, 2ull << 30);
  EXPECT_EQ(c.page_bytes, 16384u);
  EXPECT_TRUE(c.prefault);
  EXPECT_EQ(c.shards, 4u);
  EXPECT_EQ(c.log_level, "debug");
}

TEST(DaemonConfigTest, FlagOverridesFile) {
  TempFile f("[host]\ncapacity = \"2GiB\"\npage_bytes = \"16KiB\"\n[store]\nshards = 4\n");
  absl::StatusOr<CommandLine> cli =
      Parse({"--config", f.path(), "--host-capacity", "512MiB", "--shards=8"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->config.host_capacity_bytes, 512ull << 20);  // flag
  EXPECT_EQ(cli->config.shards, 8u);                         // flag
  EXPECT_EQ(cli->config.page_bytes, 16ull << 10);            // file
}

TEST(DaemonConfigTest, RefusesUnknownKeyNamingIt) {
  TempFile f("[host]\ncapcity = \"1GiB\"\n");
  absl::StatusOr<CommandLine> cli = Parse({"--config", f.path()});
  EXPECT_EQ(cli.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(cli.status()), HasSubstr("host.capcity: unknown option"));
  EXPECT_THAT(Msg(cli.status()), HasSubstr(f.path()));

  absl::StatusOr<DaemonConfig> top = ApplyToml({}, "listen = \"x:1\"\n", "f.toml");
  EXPECT_EQ(top.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(top.status()), HasSubstr("f.toml: listen: unknown option"));

  absl::StatusOr<DaemonConfig> table = ApplyToml({}, "[hots]\ncapacity = 1\n", "f.toml");
  EXPECT_THAT(Msg(table.status()), HasSubstr("hots: unknown option"));
}

TEST(DaemonConfigTest, RefusesBadValuesNamingTheOption) {
  struct Case {
    const char* toml;
    const char* expected;
  };
  const Case kCases[] = {
      {"[host]\ncapacity = \"12 potatoes\"\n", "host.capacity: \"12 potatoes\" is not a size"},
      {"[host]\ncapacity = -5\n", "host.capacity: -5 is not a size"},
      {"[host]\npage_bytes = 1.5\n", "host.page_bytes: 1.5 is not a size"},
      {"[host]\nprefault = \"yes\"\n", "host.prefault: \"yes\" is not true or false"},
      {"[server]\nworker_threads = \"four\"\n",
       "server.worker_threads: \"four\" is not a non-negative integer"},
      {"[store]\nshards = -1\n", "store.shards: -1 is not a non-negative integer"},
      {"[server]\nlisten = 7450\n", "server.listen: 7450 is not a string"},
      {"[server]\nshutdown_deadline = \"soon\"\n",
       "server.shutdown_deadline: \"soon\" is not a duration"},
      {"[server]\nshutdown_deadline = -1\n", "server.shutdown_deadline: -1 is not a duration"},
      {"[metrics]\nfidelity_probe_every = \"often\"\n",
       "metrics.fidelity_probe_every: \"often\" is not a non-negative integer"},
      {"[metrics]\nlisten = 7451\n", "metrics.listen: 7451 is not a string"},
      {"[host]\n", ""},  // an empty table is fine
  };
  for (const Case& c : kCases) {
    absl::StatusOr<DaemonConfig> got = ApplyToml({}, c.toml, "f.toml");
    if (c.expected[0] == '\0') {
      EXPECT_TRUE(got.ok()) << c.toml << got.status();
      continue;
    }
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << c.toml;
    EXPECT_EQ(Msg(got.status()), std::string("f.toml: ") + c.expected);
  }
  absl::StatusOr<DaemonConfig> syntax = ApplyToml({}, "[host\n", "f.toml");
  EXPECT_EQ(syntax.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(syntax.status()), StartsWith("f.toml:1:"));
}

TEST(DaemonConfigTest, RefusesBadFlagsNamingTheFlag) {
  absl::StatusOr<CommandLine> cli = Parse({"--host-capacity", "12 potatoes"});
  EXPECT_EQ(cli.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(cli.status()), "--host-capacity: \"12 potatoes\" is not a size");

  cli = Parse({"--shards", "many"});
  EXPECT_EQ(Msg(cli.status()), "--shards: \"many\" is not a non-negative integer");

  cli = Parse({"--no-such-flag"});
  EXPECT_EQ(cli.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(cli.status()), HasSubstr("--no-such-flag"));

  cli = Parse({"--config", "/nonexistent/kvstashd.toml"});
  EXPECT_EQ(cli.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(cli.status()), HasSubstr("--config: cannot read"));
}

TEST(DaemonConfigTest, RefusesOutOfRangeValuesNamingOptionAndFlag) {
  struct Case {
    std::vector<std::string> args;
    const char* prefix;
  };
  const Case kCases[] = {
      {{"--page-bytes", "3000"}, "host.page_bytes (--page-bytes): 3000 is not a power of two"},
      {{"--page-bytes", "2KiB"}, "host.page_bytes (--page-bytes): 2048 is not a power of two"},
      {{"--host-capacity", "1KiB"}, "host.capacity (--host-capacity): 1024 bytes is less"},
      {{"--shards", "3"}, "store.shards (--shards): 3 is not a power of two"},
      {{"--shards", "0"}, "store.shards (--shards): 0 is not a power of two"},
      {{"--worker-threads", "5000"}, "server.worker_threads (--worker-threads): 5000"},
      {{"--max-message-bytes", "4GiB"}, "server.max_message_bytes (--max-message-bytes): "},
      {{"--max-message-bytes", "1KiB"}, "server.max_message_bytes (--max-message-bytes): "},
      {{"--listen", "7450"}, "server.listen (--listen): \"7450\" is not HOST:PORT"},
      {{"--listen", "localhost:99999"}, "server.listen (--listen): "},
      {{"--log-level", "loud"}, "log.level (--log-level): \"loud\" is not one of"},
      {{"--metrics-listen", "7451"}, "metrics.listen (--metrics-listen): \"7451\" is not HOST:PORT"},
      {{"--shutdown-deadline", "2h"}, "server.shutdown_deadline (--shutdown-deadline): 2h is longer"},
  };
  for (const Case& c : kCases) {
    absl::StatusOr<CommandLine> cli = Parse(c.args);
    EXPECT_EQ(cli.status().code(), absl::StatusCode::kInvalidArgument) << c.args[0];
    EXPECT_THAT(Msg(cli.status()), StartsWith(c.prefix));
  }
}

TEST(DaemonConfigTest, ParsesDurations) {
  EXPECT_EQ(*ParseDuration("10s"), 10'000u);
  EXPECT_EQ(*ParseDuration("500ms"), 500u);
  EXPECT_EQ(*ParseDuration("2m"), 120'000u);
  EXPECT_EQ(*ParseDuration("1h"), 3'600'000u);
  EXPECT_EQ(*ParseDuration("7"), 7'000u);
  EXPECT_EQ(*ParseDuration(" 0 "), 0u);
  for (const char* bad : {"", "s", "1.5s", "-1s", "10 fortnights", "ms10"})
    EXPECT_EQ(ParseDuration(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  for (uint64_t ms : {0ull, 1ull, 1500ull, 10'000ull, 120'000ull, 3'600'000ull})
    EXPECT_EQ(*ParseDuration(FormatDuration(ms)), ms);
  EXPECT_EQ(FormatDuration(10'000), "10s");
  EXPECT_EQ(FormatDuration(1500), "1500ms");
}

TEST(DaemonConfigTest, MetricsPortIsEphemeralWhenGrpcPortIsAndNothingSetsIt) {
  absl::StatusOr<CommandLine> cli = Parse({"--listen", "127.0.0.1:0"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->config.metrics_listen, "127.0.0.1:0");
  cli = Parse({"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:9999"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->config.metrics_listen, "127.0.0.1:9999");
  TempFile f("[metrics]\nlisten = \"0.0.0.0:7451\"\n");
  cli = Parse({"--config", f.path(), "--listen", "127.0.0.1:0"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->config.metrics_listen, "0.0.0.0:7451");
  cli = Parse({"--listen", "127.0.0.1:7000"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->config.metrics_listen, "127.0.0.1:7451");
}

TEST(DaemonConfigTest, PrintedConfigReadsBackToTheSameValues) {
  absl::StatusOr<CommandLine> cli =
      Parse({"--print-config", "--listen", "[::1]:0", "--host-capacity", "3GiB",
             "--page-bytes", "8KiB", "--shards", "32", "--worker-threads", "7",
             "--max-message-bytes", "100000000", "--ready-file", "/run/kv \"ready\"",
             "--log-level", "warn", "--prefault", "true", "--shutdown-deadline", "2500ms",
             "--metrics-listen", "[::1]:0", "--fidelity-probe-every", "7"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_TRUE(cli->print_config);
  const std::string toml = ConfigToToml(cli->config);
  absl::StatusOr<DaemonConfig> back = ApplyToml(DaemonConfig{}, toml, "printed");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << toml;
  EXPECT_EQ(back->listen, "[::1]:0");
  EXPECT_EQ(back->host_capacity_bytes, 3ull << 30);
  EXPECT_EQ(back->page_bytes, 8ull << 10);
  EXPECT_EQ(back->shards, 32u);
  EXPECT_EQ(back->worker_threads, 7u);
  EXPECT_EQ(back->max_message_bytes, 100000000u);
  EXPECT_EQ(back->ready_file, "/run/kv \"ready\"");
  EXPECT_EQ(back->log_level, "warn");
  EXPECT_TRUE(back->prefault);
  EXPECT_EQ(back->shutdown_deadline_ms, 2500u);
  EXPECT_EQ(back->metrics_listen, "[::1]:0");
  EXPECT_EQ(back->fidelity_probe_every, 7u);
  EXPECT_THAT(toml, HasSubstr("capacity = \"3GiB\""));
}

TEST(DaemonConfigTest, ShippedExampleFileHoldsTheDefaults) {
  const std::string path = std::string(KVSTASH_SOURCE_DIR) + "/deploy/kvstashd.toml";
  absl::StatusOr<CommandLine> cli = Parse({"--config", path});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(ConfigToToml(cli->config), ConfigToToml(DaemonConfig{}));
}

TEST(DaemonConfigTest, HelpAndVersionAskToExit) {
  absl::StatusOr<CommandLine> cli = Parse({"--help"});
  ASSERT_TRUE(cli.ok());
  EXPECT_THAT(cli->help, HasSubstr("--host-capacity"));
  cli = Parse({"--version"});
  ASSERT_TRUE(cli.ok());
  EXPECT_THAT(cli->help, StartsWith("kvstashd "));
}

}  // namespace
}  // namespace kvstash::config
