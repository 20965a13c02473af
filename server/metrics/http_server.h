// The operators' HTTP endpoint, on its own port (metrics.listen):
//   GET /metrics  every family of the given collectables, Prometheus text format 0.0.4
//   GET /healthz  200 "ok" while the process serves HTTP at all (liveness)
//   GET /readyz   200 "ready" while SetReady(true), else 503 "not ready" (readiness)
// Anything else is 404. Served by civetweb, one connection per thread; a scrape collects
// at request time, so the store's gauges are never stale. /metrics can require a bearer
// token or HTTP basic credentials (401 otherwise); the probes never do. With a certificate
// the port speaks HTTPS only. docs/operators.md, "Securing the metrics endpoint".
//
// Thread-safe: SetReady and port may be called from any thread.
#ifndef KVSTASH_SERVER_METRICS_HTTP_SERVER_H_
#define KVSTASH_SERVER_METRICS_HTTP_SERVER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <prometheus/collectable.h>

#include "absl/status/statusor.h"

struct mg_context;
struct mg_connection;

namespace kvstash::metrics {

struct HttpServerOptions {
  // HOST:PORT to listen on ("[v6addr]:PORT" for IPv6); port 0 picks a free port.
  std::string listen = "127.0.0.1:7451";
  // Threads serving connections; each holds one connection from accept to answer, so a
  // client that sends its request slowly occupies a thread for up to request_timeout_ms.
  // Keep it above the number of concurrent scrapers and probes. Default 16.
  int threads = 16;
  // Limit on receiving a request (TLS handshake and headers, from accept), and on each
  // response write, in milliseconds; slower clients are disconnected, so connections that
  // never finish their headers cannot hold the threads and starve /healthz. In
  // [100, 60000]. Default 2000.
  int request_timeout_ms = 2000;

  // --- Authentication of /metrics (never of /healthz and /readyz). Secrets are given as
  // the lowercase or uppercase hex SHA-256 of their bytes (Sha256Hex), never in clear.
  // "Authorization: Bearer <token>" is accepted when SHA-256(token) matches; empty = no
  // bearer token.
  std::string bearer_token_sha256_hex;
  // HTTP basic authentication: "Authorization: Basic base64(user:password)" is accepted
  // when user equals basic_auth_user and SHA-256(password) matches. Both empty = none;
  // set both or neither.
  std::string basic_auth_user;
  std::string basic_auth_password_sha256_hex;

  // --- TLS: PEM files of the server certificate (chain, leaf first) and of its private key
  // (unencrypted). Both set = the port serves HTTPS only (TLS 1.2 and later); both empty =
  // plain HTTP. Read at Start.
  std::string tls_cert_file;
  std::string tls_key_file;
};

// Hex SHA-256 of `data` (64 lowercase digits): what HttpServerOptions wants for a secret.
std::string Sha256Hex(std::string_view data);

class HttpServer {
 public:
  // Starts listening. The collectables are shared with the caller; each must stay usable
  // until the server is destroyed (StoreCollector: its store must outlive the server).
  // InvalidArgument naming the option (metrics.<field>) for bad options or unreadable TLS
  // files; Unavailable naming the address when it cannot listen (in use, not local);
  // FailedPrecondition for TLS when civetweb cannot load OpenSSL (then for every later
  // TLS start in the process: Debian 12's civetweb 1.15 cannot use its OpenSSL 3;
  // docs/operators.md).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const HttpServerOptions& options,
      std::vector<std::shared_ptr<prometheus::Collectable>> collectables);
  // Stops listening and waits for requests in progress.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The port actually bound (the chosen one when options.listen had port 0).
  int port() const { return port_; }
  // "HOST:PORT" with the bound port.
  const std::string& address() const { return address_; }
  // Whether the port serves HTTPS.
  bool tls() const { return tls_; }

  void SetReady(bool ready) { ready_.store(ready, std::memory_order_release); }
  bool ready() const { return ready_.load(std::memory_order_acquire); }

 private:
  using Digest = std::array<uint8_t, 32>;  // auth::Sha256

  HttpServer() = default;
  static int HandleMetrics(mg_connection* conn, void* self);
  static int HandleHealthz(mg_connection* conn, void* self);
  static int HandleReadyz(mg_connection* conn, void* self);
  static int HandleRequest(mg_connection* conn, void* self);
  static int InitTls(void* ssl_ctx, void* self);
  // Whether the request's Authorization header passes (always, without credentials set).
  bool Authorized(mg_connection* conn) const;

  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  std::atomic<bool> ready_{false};
  mg_context* ctx_ = nullptr;
  int port_ = 0;
  std::string address_;
  bool tls_ = false;
  // Credentials, as digests; compared in constant time.
  bool bearer_ = false;
  Digest bearer_digest_{};
  bool basic_ = false;
  Digest basic_user_digest_{};
  Digest basic_password_digest_{};
  // TLS setup for InitTls (called inside Start) and its outcome.
  std::string tls_cert_file_;
  std::string tls_key_file_;
  std::string tls_error_;
  bool tls_initialized_ = false;  // InitTls ran: civetweb loaded OpenSSL
};

}  // namespace kvstash::metrics

#endif  // KVSTASH_SERVER_METRICS_HTTP_SERVER_H_
