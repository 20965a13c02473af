// The HTTP endpoint under hostile or careful clients, over real sockets: slow clients that
// never finish their headers (finding 5), authentication of /metrics, and TLS with a
// certificate made by `openssl req` at test time.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics/http_server.h"
#include "server/metrics/metrics.h"

namespace kvstash::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{.tv_sec = 10, .tv_usec = 0};  // no test hangs on a silent server
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

struct HttpReply {
  int status = 0;
  std::string head;
  std::string body;
};

HttpReply Parse(const std::string& raw) {
  HttpReply reply;
  if (raw.size() > 12 && raw.compare(0, 5, "HTTP/") == 0) {
    reply.status = std::stoi(raw.substr(9, 3));
  }
  const size_t body = raw.find("\r\n\r\n");
  reply.head = raw.substr(0, body);
  if (body != std::string::npos) reply.body = raw.substr(body + 4);
  return reply;
}

// One plain HTTP/1.0 GET with extra header lines (each ending in "\r\n").
HttpReply Get(int port, const std::string& path, const std::string& headers = "") {
  const int fd = Connect(port);
  if (fd < 0) return {};
  const std::string request =
      "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n" + headers + "\r\n";
  (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string raw;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) raw.append(buf, n);
  ::close(fd);
  return Parse(raw);
}

// A client that connects and sends an unfinished request head, then (optionally) one more
// header byte every `trickle`, never the blank line.
class SlowClient {
 public:
  SlowClient(int port, std::chrono::milliseconds trickle = {})
      : fd_(Connect(port)), trickle_(trickle) {
    const std::string start = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    if (fd_ >= 0) (void)::send(fd_, start.data(), start.size(), MSG_NOSIGNAL);
    if (trickle_.count() > 0) {
      thread_ = std::thread([this] {
        while (!stop_.load()) {
          if (::send(fd_, "a", 1, MSG_NOSIGNAL) != 1) return;
          std::this_thread::sleep_for(trickle_);
        }
      });
    }
  }
  ~SlowClient() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return fd_ >= 0; }
  // Waits up to `limit` for the server to close the connection (recv returns 0 or an
  // error other than a timeout); true if it did.
  bool ClosedByServerWithin(std::chrono::milliseconds limit) {
    pollfd p{.fd = fd_, .events = POLLIN, .revents = 0};
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (::poll(&p, 1, static_cast<int>(left.count()) + 1) <= 0) continue;
      char buf[512];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return true;
    }
    return false;
  }

 private:
  const int fd_;
  const std::chrono::milliseconds trickle_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

std::unique_ptr<HttpServer> StartOrDie(HttpServerOptions options) {
  auto metrics = std::make_shared<Metrics>(BuildInfo{});
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start(options, {metrics->registry()});
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

TEST(HttpServerSlowClientsTest, HealthzAnswersAtOnceWhileSlowClientsHoldConnections) {
  // Finding 5: two clients that never finish their headers held both server threads for
  // the 10 s request timeout. With the defaults, far more than two cannot.
  auto server = StartOrDie({.listen = "127.0.0.1:0"});
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<SlowClient>> slow;
  for (int i = 0; i < 8; ++i) {
    slow.push_back(std::make_unique<SlowClient>(server->port()));
    ASSERT_TRUE(slow.back()->connected());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let them take threads
  for (int i = 0; i < 5; ++i) {
    const auto t = Clock::now();
    EXPECT_EQ(Get(server->port(), "/healthz").status, 200);
    EXPECT_LT(SecondsSince(t), 0.5);
  }
}

TEST(HttpServerSlowClientsTest, SlowClientsAreDroppedAfterTheRequestTimeout) {
  // More slow clients than threads, trickling a byte every 50 ms so that no single read
  // waits long: the timeout counts from the request's start, so they are dropped anyway
  // and /healthz is served within about one timeout.
  auto server = StartOrDie({.listen = "127.0.0.1:0", .threads = 2, .request_timeout_ms = 300});
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<SlowClient>> slow;
  for (int i = 0; i < 4; ++i) {
    slow.push_back(std::make_unique<SlowClient>(server->port(), std::chrono::milliseconds(50)));
    ASSERT_TRUE(slow.back()->connected());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto t = Clock::now();
  EXPECT_EQ(Get(server->port(), "/healthz").status, 200);
  // Two rounds of two slow connections at most, then this one.
  EXPECT_LT(SecondsSince(t), 2.0);
  for (auto& c : slow) EXPECT_TRUE(c->ClosedByServerWithin(std::chrono::milliseconds(2000)));
}

TEST(HttpServerOptionsTest, RejectsBadOptionsNamingThem) {
  const auto code_and_message = [](HttpServerOptions o) {
    absl::Status st = HttpServer::Start(o, {}).status();
    return std::make_pair(st.code(), std::string(st.message()));
  };
  auto [code, msg] = code_and_message({.listen = "127.0.0.1:0", .request_timeout_ms = 10});
  EXPECT_EQ(code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(msg, HasSubstr("metrics.request_timeout_ms"));
  std::tie(code, msg) =
      code_and_message({.listen = "127.0.0.1:0", .bearer_token_sha256_hex = "abc"});
  EXPECT_EQ(code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(msg, HasSubstr("metrics.bearer_token_sha256_hex"));
  std::tie(code, msg) = code_and_message({.listen = "127.0.0.1:0", .basic_auth_user = "u"});
  EXPECT_EQ(code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(msg, HasSubstr("metrics.basic_auth_user"));
  std::tie(code, msg) = code_and_message({.listen = "127.0.0.1:0", .tls_cert_file = "/x"});
  EXPECT_EQ(code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(msg, HasSubstr("metrics.tls_key_file"));
}

TEST(HttpServerAuthTest, Sha256HexIsTheStandardDigest) {
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(HttpServerAuthTest, MetricsNeedTheBearerTokenProbesDoNot) {
  auto server = StartOrDie({.listen = "127.0.0.1:0",
                            .bearer_token_sha256_hex = Sha256Hex("s3cret-token")});
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  HttpReply none = Get(port, "/metrics");
  EXPECT_EQ(none.status, 401);
  EXPECT_THAT(none.head, HasSubstr("WWW-Authenticate: Bearer realm=\"kvstash metrics\""));
  EXPECT_THAT(none.body, Not(HasSubstr("kvstash_")));
  EXPECT_EQ(Get(port, "/metrics", "Authorization: Bearer wrong\r\n").status, 401);
  EXPECT_EQ(Get(port, "/metrics", "Authorization: Bearer s3cret-tokenX\r\n").status, 401);
  EXPECT_EQ(Get(port, "/metrics", "Authorization: Basic czNjcmV0LXRva2Vu\r\n").status, 401);
  HttpReply ok = Get(port, "/metrics", "Authorization: Bearer s3cret-token\r\n");
  EXPECT_EQ(ok.status, 200);
  EXPECT_THAT(ok.body, HasSubstr("# TYPE kvstash_build_info gauge"));
  EXPECT_EQ(Get(port, "/metrics", "Authorization: bearer s3cret-token\r\n").status, 200);
  // Probes carry no credentials.
  EXPECT_EQ(Get(port, "/healthz").status, 200);
  EXPECT_EQ(Get(port, "/readyz").status, 503);
  EXPECT_EQ(Get(port, "/nothing").status, 404);
}

TEST(HttpServerAuthTest, MetricsAcceptBasicCredentialsOrTheToken) {
  auto server = StartOrDie({.listen = "127.0.0.1:0",
                            .bearer_token_sha256_hex = Sha256Hex("tok"),
                            .basic_auth_user = "prometheus",
                            .basic_auth_password_sha256_hex = Sha256Hex("pa:ss")});
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  const auto basic = [](const std::string& user_pass) {
    return "Authorization: Basic " + absl::Base64Escape(user_pass) + "\r\n";
  };
  HttpReply none = Get(port, "/metrics");
  EXPECT_EQ(none.status, 401);
  EXPECT_THAT(none.head, HasSubstr("WWW-Authenticate: Bearer"));
  EXPECT_THAT(none.head, HasSubstr("WWW-Authenticate: Basic realm=\"kvstash metrics\""));
  EXPECT_EQ(Get(port, "/metrics", basic("prometheus:pa:ss")).status, 200);
  EXPECT_EQ(Get(port, "/metrics", basic("prometheus:pa:sS")).status, 401);
  EXPECT_EQ(Get(port, "/metrics", basic("Prometheus:pa:ss")).status, 401);
  EXPECT_EQ(Get(port, "/metrics", basic("prometheuspa:ss")).status, 401);
  EXPECT_EQ(Get(port, "/metrics", "Authorization: Basic !!notbase64\r\n").status, 401);
  EXPECT_EQ(Get(port, "/metrics", "Authorization: Bearer tok\r\n").status, 200);
  EXPECT_EQ(Get(port, "/healthz").status, 200);
}

// --- TLS ------------------------------------------------------------------------------------

class HttpServerTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvstash-tls-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    cert_ = dir_ + "/cert.pem";
    key_ = dir_ + "/key.pem";
    const std::string cmd =
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
        "-addext subjectAltName=IP:127.0.0.1 -keyout " + key_ + " -out " + cert_ +
        " >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "openssl req failed: no openssl CLI";
    other_key_ = dir_ + "/other.pem";
    ASSERT_EQ(std::system(("openssl genrsa -out " + other_key_ + " 2048 >/dev/null 2>&1").c_str()),
              0);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Starts an HTTPS server, or skips the test where civetweb cannot do TLS (Debian 12's
  // civetweb 1.15 with OpenSSL 3: TlsIsServedOrRefusedEveryTime pins that down).
  std::unique_ptr<HttpServer> StartTls(HttpServerOptions o) {
    auto metrics = std::make_shared<Metrics>(BuildInfo{});
    absl::StatusOr<std::unique_ptr<HttpServer>> server =
        HttpServer::Start(o, {metrics->registry()});
    if (absl::IsFailedPrecondition(server.status())) {
      skipped_ = std::string(server.status().message());
      return nullptr;
    }
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }

  // GET over TLS, verifying the server against the test's certificate.
  HttpReply GetTls(int port, const std::string& path, const std::string& headers = "") {
    HttpReply reply;
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                          &SSL_CTX_free);
    if (!ctx || SSL_CTX_load_verify_locations(ctx.get(), cert_.c_str(), nullptr) != 1) {
      ADD_FAILURE() << "client TLS context";
      return reply;
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    const int fd = Connect(port);
    if (fd < 0) return reply;
    std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), &SSL_free);
    SSL_set_fd(ssl.get(), fd);
    SSL_set1_host(ssl.get(), "127.0.0.1");
    if (SSL_connect(ssl.get()) != 1) {
      ERR_clear_error();
      ::close(fd);
      return reply;  // status 0: no TLS session
    }
    const std::string request =
        "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n" + headers + "\r\n";
    SSL_write(ssl.get(), request.data(), static_cast<int>(request.size()));
    std::string raw;
    char buf[4096];
    for (int n; (n = SSL_read(ssl.get(), buf, sizeof(buf))) > 0;) raw.append(buf, n);
    SSL_shutdown(ssl.get());
    ::close(fd);
    ERR_clear_error();
    return Parse(raw);
  }

  std::string dir_, cert_, key_, other_key_;
  std::string skipped_;  // why TLS is unavailable, when it is
};

TEST_F(HttpServerTlsTest, TlsIsServedOrRefusedEveryTime) {
  // Either HTTPS works, or every attempt is refused with the reason, never half-started:
  // civetweb counts a failed OpenSSL load as done, and a second server would crash.
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto metrics = std::make_shared<Metrics>(BuildInfo{});
    absl::StatusOr<std::unique_ptr<HttpServer>> server = HttpServer::Start(
        {.listen = "127.0.0.1:0", .tls_cert_file = cert_, .tls_key_file = key_},
        {metrics->registry()});
    if (server.ok()) {
      EXPECT_EQ(GetTls((*server)->port(), "/healthz").status, 200);
      continue;
    }
    EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(server.status().message()), HasSubstr("metrics.tls_cert_file"));
    EXPECT_THAT(std::string(server.status().message()), HasSubstr("OpenSSL"));
    std::printf("TLS unavailable here: %s\n", std::string(server.status().message()).c_str());
  }
  // Plain HTTP servers are unaffected.
  auto plain = StartOrDie({.listen = "127.0.0.1:0"});
  ASSERT_NE(plain, nullptr);
  EXPECT_EQ(Get(plain->port(), "/healthz").status, 200);
}

TEST_F(HttpServerTlsTest, ServesHttpsOnlyWithAuthOnMetrics) {
  auto server = StartTls({.listen = "127.0.0.1:0",
                          .bearer_token_sha256_hex = Sha256Hex("tok"),
                          .tls_cert_file = cert_,
                          .tls_key_file = key_});
  if (!skipped_.empty()) GTEST_SKIP() << skipped_;
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(server->tls());
  const int port = server->port();
  EXPECT_EQ(GetTls(port, "/healthz").status, 200);
  EXPECT_EQ(GetTls(port, "/metrics").status, 401);
  HttpReply m = GetTls(port, "/metrics", "Authorization: Bearer tok\r\n");
  EXPECT_EQ(m.status, 200);
  EXPECT_THAT(m.body, HasSubstr("# TYPE kvstash_build_info gauge"));
  // Plain HTTP on the HTTPS port gets no HTTP answer.
  EXPECT_EQ(Get(port, "/healthz").status, 0);
}

TEST_F(HttpServerTlsTest, SilentTlsClientsDoNotBlockProbes) {
  auto server = StartTls({.listen = "127.0.0.1:0",
                          .threads = 4,
                          .request_timeout_ms = 500,
                          .tls_cert_file = cert_,
                          .tls_key_file = key_});
  if (!skipped_.empty()) GTEST_SKIP() << skipped_;
  ASSERT_NE(server, nullptr);
  std::vector<int> silent;
  for (int i = 0; i < 6; ++i) silent.push_back(Connect(server->port()));  // no ClientHello
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto t = Clock::now();
  EXPECT_EQ(GetTls(server->port(), "/healthz").status, 200);
  EXPECT_LT(SecondsSince(t), 2.5);
  for (int fd : silent) ::close(fd);
}

TEST_F(HttpServerTlsTest, BadKeyOrCertificateIsInvalidArgumentNamingTheFile) {
  absl::Status st = HttpServer::Start({.listen = "127.0.0.1:0",
                                       .tls_cert_file = cert_,
                                       .tls_key_file = other_key_},
                                      {})
                        .status();
  if (absl::IsFailedPrecondition(st)) GTEST_SKIP() << st.message();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("metrics.tls_key_file"));
  st = HttpServer::Start({.listen = "127.0.0.1:0",
                          .tls_cert_file = dir_ + "/missing.pem",
                          .tls_key_file = key_},
                         {})
           .status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("metrics.tls_cert_file"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("missing.pem"));
}

}  // namespace
}  // namespace kvstash::metrics
