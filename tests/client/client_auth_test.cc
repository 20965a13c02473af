// Bearer tokens and TLS in the C++ client, the CLI/bench flags and the bench's gRPC
// transport, against an in-process gRPC server that implements Stats (loopback TCP, TLS,
// mutual TLS, a Unix socket). Certificates are made at test time with the openssl CLI.
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvstash/client/client.h"
#include "kvstash/client/grpc_channel.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "kvstash/v1/kvstash.pb.h"
#include "security_flags.h"
#if KVSTASH_TEST_HAVE_BENCH
#include "transport.h"
#endif

namespace kvstash::client {
namespace {

namespace fs = std::filesystem;
namespace pb = ::kvstash::v1;
using ::testing::HasSubstr;

constexpr char kToken[] = "tok-3f9a.B_7~x+/=";
constexpr char kDeniedToken[] = "read-only-token";

// Stats only. Records each call's authorization metadata; answers UNAUTHENTICATED without
// kToken (PERMISSION_DENIED for kDeniedToken) when tokens are required.
class FakeDaemon final : public pb::KvStash::CallbackService {
 public:
  explicit FakeDaemon(bool require_token) : require_token_(require_token) {}

  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx, const pb::StatsRequest*,
                                  pb::StatsResponse* resp) override {
    std::optional<std::string> auth;
    int count = 0;
    const auto range = ctx->client_metadata().equal_range("authorization");
    for (auto it = range.first; it != range.second; ++it, ++count) {
      auth = std::string(it->second.data(), it->second.size());
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      seen_.push_back(count > 1 ? std::optional<std::string>("<several>") : auth);
    }
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    if (require_token_ && auth == std::string("Bearer ") + kDeniedToken) {
      r->Finish(grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "token may not call Stats"));
    } else if (require_token_ && auth != std::string("Bearer ") + kToken) {
      r->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                             "authorization: missing or unknown bearer token"));
    } else {
      resp->set_version("fake");
      resp->set_used_bytes(42);
      r->Finish(grpc::Status::OK);
    }
    return r;
  }

  std::vector<std::optional<std::string>> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  const bool require_token_;
  std::mutex mu_;
  std::vector<std::optional<std::string>> seen_;
};

struct Server {
  std::unique_ptr<FakeDaemon> service;
  std::unique_ptr<grpc::Server> server;
  std::string target;  // what clients dial

  ~Server() {
    if (server) server->Shutdown(std::chrono::system_clock::now());
  }
};

// `listen` "127.0.0.1:0" (target 127.0.0.1:<port>) or "unix:/path" (target the same).
std::unique_ptr<Server> StartServer(std::shared_ptr<grpc::ServerCredentials> creds,
                                    const std::string& listen = "127.0.0.1:0",
                                    bool require_token = true) {
  auto s = std::make_unique<Server>();
  s->service = std::make_unique<FakeDaemon>(require_token);
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort(listen, std::move(creds), &port);
  b.RegisterService(s->service.get());
  s->server = b.BuildAndStart();
  if (!s->server) return nullptr;
  s->target = listen.rfind("unix:", 0) == 0 ? listen : "127.0.0.1:" + std::to_string(port);
  return s;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteAll(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

class ClientAuthTest : public ::testing::Test {
 protected:
  // One temporary directory and one set of certificates for the whole suite.
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/kvstash-auth-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = new fs::path(tmpl);
    have_openssl_ = std::system("command -v openssl >/dev/null 2>&1") == 0;
    if (!have_openssl_) return;
    const std::string d = dir_->string();
    const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    auto ca = [&](const std::string& name) {
      return "openssl req -x509 " + ec + " -keyout " + d + "/" + name + ".key -out " + d + "/" +
             name + ".pem -days 2 -subj '/CN=kvstash test " + name +
             "' -addext basicConstraints=critical,CA:TRUE"
             " -addext keyUsage=critical,keyCertSign,cRLSign";
    };
    auto leaf = [&](const std::string& name, const std::string& cn, const std::string& ext,
                    int serial) {
      WriteAll(*dir_ / (name + ".ext"), ext);
      return "openssl req " + ec + " -keyout " + d + "/" + name + ".key -out " + d + "/" + name +
             ".csr -subj '/CN=" + cn + "' && openssl x509 -req -in " + d + "/" + name +
             ".csr -CA " + d + "/ca.pem -CAkey " + d + "/ca.key -set_serial " +
             std::to_string(serial) + " -days 2 -out " + d + "/" + name + ".pem -extfile " + d +
             "/" + name + ".ext";
    };
    const std::string cmd =
        "(" + ca("ca") + " && " + ca("other-ca") + " && " +
        leaf("server", "localhost",
             "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", 2) +
        " && " + leaf("client", "kvstash test client", "extendedKeyUsage=clientAuth\n", 3) +
        ") >" + d + "/openssl.log 2>&1";
    openssl_ok_ = std::system(cmd.c_str()) == 0;
  }

  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
    dir_ = nullptr;
  }

  void SetUp() override {
    if (!have_openssl_) GTEST_SKIP() << "the openssl command is not installed";
    ASSERT_TRUE(openssl_ok_) << ReadAll(*dir_ / "openssl.log");
  }

  static std::string Path(const std::string& name) { return (*dir_ / name).string(); }

  static std::shared_ptr<grpc::ServerCredentials> ServerTls(bool require_client_cert) {
    grpc::SslServerCredentialsOptions o(
        require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                            : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    o.pem_root_certs = ReadAll(*dir_ / "ca.pem");
    o.pem_key_cert_pairs.push_back(
        {ReadAll(*dir_ / "server.key"), ReadAll(*dir_ / "server.pem")});
    return grpc::SslServerCredentials(o);
  }

  static ClientOptions Options(const std::string& target, const std::string& token = kToken) {
    ClientOptions o;
    o.target = target;
    o.token = token;
    o.default_timeout = std::chrono::seconds(5);
    return o;
  }

  static TlsOptions Tls(const std::string& ca = "ca.pem") {
    TlsOptions t;
    t.enabled = true;
    t.ca_file = Path(ca);
    return t;
  }

  // Connects and calls Stats once.
  static absl::Status StatsCall(const ClientOptions& o) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
    if (!c.ok()) return c.status();
    absl::StatusOr<StoreStats> s = (*c)->Stats();
    if (s.ok() && s->used_bytes != 42) return absl::InternalError("not the fake daemon");
    return s.status();
  }

  static fs::path* dir_;
  static bool have_openssl_;
  static bool openssl_ok_;
};

fs::path* ClientAuthTest::dir_ = nullptr;
bool ClientAuthTest::have_openssl_ = false;
bool ClientAuthTest::openssl_ok_ = false;

TEST_F(ClientAuthTest, TokenArrivesAsBearerMetadataOnEveryCall) {
  auto server = StartServer(grpc::InsecureServerCredentials());
  ASSERT_NE(server, nullptr);
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(Options(server->target));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE((*c)->Stats().ok());
  ASSERT_TRUE((*c)->Stats().ok());
  EXPECT_THAT(server->service->seen(),
              ::testing::ElementsAre(std::string("Bearer ") + kToken,
                                     std::string("Bearer ") + kToken));
}

TEST_F(ClientAuthTest, RefusedCallsKeepTheDaemonsCodeAndMessage) {
  auto server = StartServer(grpc::InsecureServerCredentials());
  ASSERT_NE(server, nullptr);
  const absl::Status none = StatsCall(Options(server->target, ""));
  EXPECT_EQ(none.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(none.message(), "authorization: missing or unknown bearer token");
  EXPECT_EQ(StatsCall(Options(server->target, "wrong")).code(),
            absl::StatusCode::kUnauthenticated);
  const absl::Status denied = StatsCall(Options(server->target, kDeniedToken));
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.message(), "token may not call Stats");
  // Without a token no authorization metadata is sent at all.
  EXPECT_FALSE(server->service->seen().front().has_value());
}

TEST_F(ClientAuthTest, TlsConnectsWithTheCaAndSendsTheToken) {
  auto server = StartServer(ServerTls(false));
  ASSERT_NE(server, nullptr);
  ClientOptions o = Options(server->target);
  o.tls = Tls();
  o.connect_timeout = std::chrono::seconds(5);
  EXPECT_TRUE(StatsCall(o).ok()) << StatsCall(o);
  EXPECT_EQ(server->service->seen().front(), std::string("Bearer ") + kToken);
}

TEST_F(ClientAuthTest, TlsWithTheWrongCaIsUnavailable) {
  auto server = StartServer(ServerTls(false));
  ASSERT_NE(server, nullptr);
  ClientOptions o = Options(server->target);
  o.tls = Tls("other-ca.pem");
  EXPECT_EQ(StatsCall(o).code(), absl::StatusCode::kUnavailable);
  o.connect_timeout = std::chrono::milliseconds(500);
  const absl::Status s = StatsCall(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("tls.ca_file"));
  EXPECT_TRUE(server->service->seen().empty());
}

TEST_F(ClientAuthTest, ServerNameOverrideIsWhatTheCertificateMustCarry) {
  auto server = StartServer(ServerTls(false));
  ASSERT_NE(server, nullptr);
  ClientOptions o = Options(server->target);
  o.tls = Tls();
  o.tls.server_name_override = "localhost";  // a DNS SAN of the certificate
  EXPECT_TRUE(StatsCall(o).ok()) << StatsCall(o);
  o.tls.server_name_override = "kvstash.example";  // not one
  EXPECT_EQ(StatsCall(o).code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientAuthTest, PlaintextClientCannotTalkToATlsServer) {
  auto server = StartServer(ServerTls(false));
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(StatsCall(Options(server->target)).code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientAuthTest, MutualTlsRejectsAClientWithoutACertificateAndAcceptsOneWithIt) {
  auto server = StartServer(ServerTls(true));
  ASSERT_NE(server, nullptr);
  ClientOptions o = Options(server->target);
  o.tls = Tls();
  EXPECT_EQ(StatsCall(o).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(server->service->seen().empty());
  o.tls.cert_file = Path("client.pem");
  o.tls.key_file = Path("client.key");
  EXPECT_TRUE(StatsCall(o).ok()) << StatsCall(o);
  EXPECT_EQ(server->service->seen().size(), 1u);
}

TEST_F(ClientAuthTest, UnixSocketTargetWorksWithAToken) {
  const std::string target = "unix:" + Path("kvstash.sock");
  auto server = StartServer(grpc::InsecureServerCredentials(), target);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(Options(target));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->target(), target);
  EXPECT_TRUE((*c)->Stats().ok());
  EXPECT_EQ(server->service->seen().front(), std::string("Bearer ") + kToken);
}

TEST_F(ClientAuthTest, UnixSocketTargetWorksWithTls) {
  // Without an override, a unix: target verifies "localhost", a SAN of the certificate.
  const std::string target = "unix:" + Path("kvstash-tls.sock");
  auto server = StartServer(ServerTls(false), target);
  ASSERT_NE(server, nullptr);
  ClientOptions o = Options(target);
  o.tls = Tls();
  EXPECT_TRUE(StatsCall(o).ok()) << StatsCall(o);
}

TEST_F(ClientAuthTest, BadOptionsAreInvalidArgumentNamingTheOption) {
  auto expect = [](const ClientOptions& o, const std::string& field) {
    const absl::Status s = Client::Connect(o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(s.message(), HasSubstr(field)) << s;
  };
  ClientOptions o = Options("127.0.0.1:1");
  o.token = "two words";
  expect(o, "token: byte 3 (0x20)");
  o.token = "ctl\n";
  expect(o, "token: byte 3 (0x0a)");

  o = Options("127.0.0.1:1");
  o.tls = Tls("missing.pem");
  expect(o, "tls.ca_file: cannot read '" + Path("missing.pem") + "': No such file");
  o.tls = Tls("server.key");  // a key is not a certificate
  expect(o, "tls.ca_file: '" + Path("server.key") + "' holds no PEM CERTIFICATE");
  o.tls = Tls();
  o.tls.cert_file = Path("client.pem");
  expect(o, "tls.cert_file: given without tls.key_file");
  o.tls.key_file = Path("client.pem");  // a certificate is not a key
  expect(o, "tls.key_file: '" + Path("client.pem") + "' holds no PEM PRIVATE KEY");
  o.tls.cert_file.clear();
  expect(o, "tls.key_file: given without tls.cert_file");
  o.tls = TlsOptions{};
  o.tls.ca_file = Path("ca.pem");  // TLS files without TLS: refused, not plaintext
  expect(o, "tls.ca_file: set, but tls.enabled is false");
}

TEST_F(ClientAuthTest, LoadTokenFileTrimsWhitespaceAndRejectsBadFiles) {
  WriteAll(*dir_ / "token", std::string("  ") + kToken + "\r\n");
  absl::StatusOr<std::string> t = LoadTokenFile(Path("token"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, kToken);

  WriteAll(*dir_ / "empty-token", " \n");
  EXPECT_EQ(LoadTokenFile(Path("empty-token")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(LoadTokenFile(Path("empty-token")).status().message(), HasSubstr("is empty"));
  WriteAll(*dir_ / "two-tokens", "a b\n");
  EXPECT_THAT(LoadTokenFile(Path("two-tokens")).status().message(),
              HasSubstr("token file '" + Path("two-tokens") + "': byte 1 (0x20)"));
  const absl::Status missing = LoadTokenFile(Path("no-such-token")).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.message(), HasSubstr("token file: cannot read '" + Path("no-such-token")));
}

// --- The CLI / bench flags -------------------------------------------------------------

TEST_F(ClientAuthTest, FlagsFillTheTokenAndTlsOptions) {
  unsetenv("KVSTASH_TOKEN_FILE");
  WriteAll(*dir_ / "flag-token", std::string(kToken) + "\n");
  CLI::App app;
  cli::SecurityFlags f;
  cli::AddSecurityFlags(app, &f);
  app.parse("--token-file " + Path("flag-token") + " --tls-ca " + Path("ca.pem") +
                " --tls-cert " + Path("client.pem") + " --tls-key " + Path("client.key") +
                " --tls-server-name localhost",
            false);
  ClientOptions o;
  // The token file wins over $KVSTASH_TOKEN; any --tls-* turns TLS on.
  ASSERT_TRUE(cli::ApplySecurityFlags(f, &o, "env-token").ok());
  EXPECT_EQ(o.token, kToken);
  EXPECT_TRUE(o.tls.enabled);
  EXPECT_EQ(o.tls.ca_file, Path("ca.pem"));
  EXPECT_EQ(o.tls.cert_file, Path("client.pem"));
  EXPECT_EQ(o.tls.key_file, Path("client.key"));
  EXPECT_EQ(o.tls.server_name_override, "localhost");

  // The flags reach a real mutual-TLS server.
  auto server = StartServer(ServerTls(true));
  ASSERT_NE(server, nullptr);
  o.target = server->target;
  EXPECT_TRUE(StatsCall(o).ok()) << StatsCall(o);
}

TEST_F(ClientAuthTest, FlagsFallBackToTheEnvironmentAndNameTheBadOne) {
  unsetenv("KVSTASH_TOKEN_FILE");
  cli::SecurityFlags none;
  ClientOptions o;
  ASSERT_TRUE(cli::ApplySecurityFlags(none, &o, "env-token").ok());
  EXPECT_EQ(o.token, "env-token");
  EXPECT_FALSE(o.tls.enabled);
  ClientOptions empty;
  ASSERT_TRUE(cli::ApplySecurityFlags(none, &empty, "").ok());
  EXPECT_EQ(empty.token, "");
  ASSERT_TRUE(cli::ApplySecurityFlags(none, &empty, nullptr).ok());
  EXPECT_EQ(empty.token, "");

  EXPECT_THAT(cli::ApplySecurityFlags(none, &o, "bad token").message(),
              HasSubstr("KVSTASH_TOKEN: byte 3"));
  cli::SecurityFlags cert_only;
  cert_only.tls_cert = Path("client.pem");
  EXPECT_EQ(cli::ApplySecurityFlags(cert_only, &o, nullptr).message(),
            "--tls-cert: given without --tls-key");
  cli::SecurityFlags just_tls;
  just_tls.tls = true;
  ASSERT_TRUE(cli::ApplySecurityFlags(just_tls, &o, nullptr).ok());
  EXPECT_TRUE(o.tls.enabled);
  EXPECT_TRUE(o.tls.ca_file.empty());  // the system's roots

  // The environment variable names the token file too.
  WriteAll(*dir_ / "env-token-file", "from-file\n");
  setenv("KVSTASH_TOKEN_FILE", Path("env-token-file").c_str(), 1);
  CLI::App app;
  cli::SecurityFlags f;
  cli::AddSecurityFlags(app, &f);
  app.parse("", false);
  unsetenv("KVSTASH_TOKEN_FILE");
  ClientOptions from_env;
  ASSERT_TRUE(cli::ApplySecurityFlags(f, &from_env, "env-token").ok());
  EXPECT_EQ(from_env.token, "from-file");
}

#ifdef KVSTASH_CLI_PATH
struct CliRun {
  int exit_code = -1;
  std::string out;
};

// Runs `env_prefix kvstash args` through the shell; exit status and stdout.
CliRun RunCli(const std::string& env_prefix, const std::string& args) {
  CliRun r;
  const std::string cmd = env_prefix + " " + KVSTASH_CLI_PATH + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST_F(ClientAuthTest, CliSendsTheTokenFileOverMutualTlsAndExitsSixWhenRefused) {
  auto server = StartServer(ServerTls(true));
  ASSERT_NE(server, nullptr);
  WriteAll(*dir_ / "cli-token", std::string(kToken) + "\n");
  const std::string env = "env -u KVSTASH_TOKEN -u KVSTASH_TOKEN_FILE -u KVSTASH_ADDR";
  const std::string tls = " --tls-ca " + Path("ca.pem") + " --tls-cert " + Path("client.pem") +
                          " --tls-key " + Path("client.key");
  CliRun ok = RunCli(env, "--addr " + server->target + tls + " --token-file " +
                           Path("cli-token") + " --json stats");
  EXPECT_EQ(ok.exit_code, 0) << ok.out;
  EXPECT_THAT(ok.out, HasSubstr("\"used_bytes\":42"));
  EXPECT_EQ(server->service->seen().back(), std::string("Bearer ") + kToken);

  // $KVSTASH_TOKEN when there is no token file; a refused token exits 6 with the code.
  CliRun denied = RunCli(env + " KVSTASH_TOKEN=" + kDeniedToken,
                      "--addr " + server->target + tls + " stats");
  EXPECT_EQ(denied.exit_code, 6) << denied.out;
  EXPECT_THAT(denied.out, HasSubstr("PERMISSION_DENIED: token may not call Stats"));
  EXPECT_EQ(server->service->seen().back(), std::string("Bearer ") + kDeniedToken);

  CliRun missing = RunCli(env, "--addr " + server->target + tls + " --token-file " +
                                Path("no-such-token") + " stats");
  EXPECT_EQ(missing.exit_code, 2) << missing.out;
  EXPECT_THAT(missing.out, HasSubstr("token file: cannot read"));
}

TEST_F(ClientAuthTest, CliReachesAUnixSocket) {
  const std::string target = "unix:" + Path("cli.sock");
  auto server = StartServer(grpc::InsecureServerCredentials(), target);
  ASSERT_NE(server, nullptr);
  CliRun r = RunCli(std::string("env -u KVSTASH_TOKEN_FILE KVSTASH_TOKEN=") + kToken,
                 "--addr " + target + " stats");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr(target));  // the "address" row
}
#endif

#if KVSTASH_TEST_HAVE_BENCH
// kvstash-bench's gRPC transport dials through the same channel and metadata code.
TEST_F(ClientAuthTest, BenchGrpcTransportSendsTheTokenOverTls) {
  auto server = StartServer(ServerTls(true));
  ASSERT_NE(server, nullptr);
  bench::TransportOptions t;
  t.target = server->target;
  t.token = kToken;
  t.tls = Tls();
  t.tls.cert_file = Path("client.pem");
  t.tls.key_file = Path("client.key");
  t.timeout = std::chrono::seconds(5);
  t.connect_timeout = std::chrono::seconds(5);
  absl::StatusOr<std::unique_ptr<bench::Transport>> tr =
      bench::OpenTransport(bench::TransportKind::kGrpc, t);
  ASSERT_TRUE(tr.ok()) << tr.status();
  absl::StatusOr<uint64_t> used = (*tr)->ServerMemoryBytes();  // Stats
  ASSERT_TRUE(used.ok()) << used.status();
  EXPECT_EQ(*used, 42u);
  EXPECT_EQ(server->service->seen().front(), std::string("Bearer ") + kToken);

  t.token = "wrong";
  tr = bench::OpenTransport(bench::TransportKind::kGrpc, t);
  ASSERT_TRUE(tr.ok()) << tr.status();
  EXPECT_EQ((*tr)->ServerMemoryBytes().status().code(), absl::StatusCode::kUnauthenticated);

  t.tls.ca_file = Path("other-ca.pem");
  t.connect_timeout = std::chrono::milliseconds(500);
  EXPECT_EQ(bench::OpenTransport(bench::TransportKind::kGrpc, t).status().code(),
            absl::StatusCode::kUnavailable);
}
#endif

}  // namespace
}  // namespace kvstash::client
