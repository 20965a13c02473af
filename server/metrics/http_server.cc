#include "server/metrics/http_server.h"

#include <civetweb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cstring>
#include <mutex>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/auth/tokens.h"
#include "server/metrics/metrics.h"

namespace kvstash::metrics {

namespace {

// civetweb keeps process-wide state (socket layer, TLS keys); initialize it once and never
// tear it down, since several servers (tests) may come and go. OpenSSL is loaded by
// civetweb when the first HTTPS server starts.
void InitCivetwebOnce() {
  static std::once_flag once;
  std::call_once(once, [] { mg_init_library(0); });
}

// Whether civetweb can do TLS in this process. Its OpenSSL loader (load_tls_dll: dlopen of
// libssl.so, then dlsym of every function it uses) fails on a library without a symbol it
// wants (Debian 12's civetweb 1.15 asks OpenSSL 3 for SSL_get_peer_certificate, a 1.1
// name), and a failed load still counts as initialized: the next HTTPS server would start
// with null function pointers and crash at its first connection. So after one failure
// every later TLS start is refused.
std::mutex tls_mu;
enum class TlsState { kUnknown, kWorks, kBroken };
TlsState tls_state = TlsState::kUnknown;  // guarded by tls_mu
std::string tls_broken_reason;            // guarded by tls_mu

// civetweb's messages logged by this thread while it runs mg_start2 (null otherwise).
thread_local std::string* start_log = nullptr;

// Secrets are handled as in the tokens file (server/auth/tokens.h): SHA-256 digests,
// compared in constant time.
auth::Sha256 Sha256(std::string_view data) {
  return auth::HashToken(absl::string_view(data.data(), data.size()));
}

bool ParseDigest(const std::string& hex, auth::Sha256* out) {
  const std::optional<auth::Sha256> d = auth::ParseSha256Hex(hex);
  if (d) *out = *d;
  return d.has_value();
}

using auth::SameDigest;

// The last OpenSSL error of this thread, for messages.
std::string OpenSslError() {
  char buf[256] = {0};
  const unsigned long e = ERR_get_error();
  if (e == 0) return "unknown error";
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

// Writes a complete response; Connection: close keeps the server's threads free of idle
// keep-alive connections from probes. `extra` are further header lines, each ending in
// "\r\n".
int Reply(mg_connection* conn, int code, std::string_view reason, std::string_view type,
          std::string_view body, std::string_view extra = {}) {
  const std::string head =
      absl::StrCat("HTTP/1.1 ", code, " ", std::string(reason),
                   "\r\nContent-Type: ", std::string(type),
                   "\r\nContent-Length: ", body.size(),
                   "\r\nCache-Control: no-store\r\nConnection: close\r\n", std::string(extra),
                   "\r\n");
  mg_write(conn, head.data(), head.size());
  const mg_request_info* info = mg_get_request_info(conn);
  if (info == nullptr || std::strcmp(info->request_method, "HEAD") != 0)
    mg_write(conn, body.data(), body.size());
  return code;
}

// Strips the brackets of "[v6addr]" for display; civetweb wants the "[v6]:port" spelling.
struct Listen {
  std::string host;  // as given, brackets kept
  std::string port;
};
bool SplitListen(const std::string& listen, Listen* out) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) return false;
  out->host = listen.substr(0, colon);
  out->port = listen.substr(colon + 1);
  return true;
}

}  // namespace

std::string Sha256Hex(std::string_view data) { return auth::ToHex(Sha256(data)); }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const HttpServerOptions& options,
    std::vector<std::shared_ptr<prometheus::Collectable>> collectables) {
  Listen listen;
  if (!SplitListen(options.listen, &listen))
    return absl::InvalidArgumentError(
        absl::StrCat("metrics.listen: \"", options.listen, "\" is not HOST:PORT"));
  if (options.request_timeout_ms < 100 || options.request_timeout_ms > 60000)
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics.request_timeout_ms: ", options.request_timeout_ms, " is not in [100, 60000]"));
  std::unique_ptr<HttpServer> server(new HttpServer());
  if (!options.bearer_token_sha256_hex.empty()) {
    if (!ParseDigest(options.bearer_token_sha256_hex, &server->bearer_digest_))
      return absl::InvalidArgumentError(
          "metrics.bearer_token_sha256_hex: not 64 hex digits (a SHA-256 of the token)");
    server->bearer_ = true;
  }
  if (options.basic_auth_user.empty() != options.basic_auth_password_sha256_hex.empty())
    return absl::InvalidArgumentError(
        "metrics.basic_auth_user and metrics.basic_auth_password_sha256_hex: set both or "
        "neither");
  if (!options.basic_auth_user.empty()) {
    if (options.basic_auth_user.find(':') != std::string::npos)
      return absl::InvalidArgumentError(
          "metrics.basic_auth_user: must not contain ':' (RFC 7617)");
    if (!ParseDigest(options.basic_auth_password_sha256_hex, &server->basic_password_digest_))
      return absl::InvalidArgumentError(
          "metrics.basic_auth_password_sha256_hex: not 64 hex digits (a SHA-256 of the "
          "password)");
    server->basic_user_digest_ = Sha256(options.basic_auth_user);
    server->basic_ = true;
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty())
    return absl::InvalidArgumentError(
        "metrics.tls_cert_file and metrics.tls_key_file: set both or neither");
  server->tls_ = !options.tls_cert_file.empty();
  if (server->tls_ && mg_check_feature(MG_FEATURES_TLS) == 0)
    return absl::FailedPreconditionError(
        "metrics.tls_cert_file: this civetweb library was built without TLS support");
  server->tls_cert_file_ = options.tls_cert_file;
  server->tls_key_file_ = options.tls_key_file;
  std::unique_lock<std::mutex> tls_lock(tls_mu, std::defer_lock);
  if (server->tls_) {
    tls_lock.lock();  // held across mg_start2: one TLS start at a time learns the state
    if (tls_state == TlsState::kBroken) return absl::FailedPreconditionError(tls_broken_reason);
  }
  InitCivetwebOnce();
  server->collectables_ = std::move(collectables);

  // civetweb binds "HOST:PORT" (IPv4) or "[v6]:PORT"; a host name is not accepted, so
  // "localhost" is spelled out as the loopback address. A trailing "s" makes it HTTPS.
  std::string bind = options.listen;
  if (listen.host == "localhost") bind = "127.0.0.1:" + listen.port;
  if (server->tls_) bind += "s";
  const std::string threads = absl::StrCat(options.threads < 1 ? 1 : options.threads);
  const std::string timeout = absl::StrCat(options.request_timeout_ms);
  // request_timeout_ms bounds, from accept, the TLS handshake and the whole request head
  // (civetweb's read_message measures from the request's start, so trickling bytes does
  // not extend it), and each write. Without keep-alive a thread never idles on a
  // connection after its answer.
  const char* config[] = {"listening_ports", bind.c_str(),
                          "num_threads", threads.c_str(),
                          "request_timeout_ms", timeout.c_str(),
                          "enable_keep_alive", "no",
                          "ssl_protocol_version", "4",  // TLS 1.2 and later
                          nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  // civetweb logs to stderr by default; its messages at startup go into the error below.
  callbacks.log_message = [](const mg_connection*, const char* message) {
    if (start_log != nullptr) {
      absl::StrAppend(start_log, start_log->empty() ? "" : "; ", message);
    }
    return 1;
  };
  callbacks.init_ssl = &HttpServer::InitTls;
  mg_init_data init;
  std::memset(&init, 0, sizeof(init));
  init.callbacks = &callbacks;
  init.user_data = server.get();
  init.configuration_options = config;
  char error_text[256] = {0};
  unsigned error_code = 0;
  mg_error_data error;
  std::memset(&error, 0, sizeof(error));
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);
  std::string log;
  start_log = &log;
  server->ctx_ = mg_start2(&init, &error);
  start_log = nullptr;
  if (server->tls_) {
    // InitTls runs once civetweb has loaded OpenSSL and made a context.
    if (server->tls_initialized_) {
      tls_state = TlsState::kWorks;
    } else if (server->ctx_ == nullptr) {
      tls_state = TlsState::kBroken;
      tls_broken_reason = absl::StrCat(
          "metrics.tls_cert_file: TLS is unavailable: civetweb ", mg_version(),
          " could not load OpenSSL at run time (", log.empty() ? error_text : log,
          "); it dlopens libssl.so and libcrypto.so and needs every OpenSSL function it "
          "was built against. Serve /metrics over HTTPS through a TLS-terminating proxy "
          "instead, or build against a civetweb that supports this OpenSSL");
      return absl::FailedPreconditionError(tls_broken_reason);
    }
  }
  if (server->ctx_ == nullptr) {
    if (!server->tls_error_.empty()) return absl::InvalidArgumentError(server->tls_error_);
    return absl::UnavailableError(absl::StrCat("metrics.listen: cannot listen on ",
                                               options.listen, ": ",
                                               error_text[0] ? error_text : "unknown error"));
  }
  mg_server_port ports[4];
  std::memset(ports, 0, sizeof(ports));
  const int n = mg_get_server_ports(server->ctx_, 4, ports);
  if (n < 1 || ports[0].port <= 0)
    return absl::UnavailableError(absl::StrCat("metrics.listen: cannot tell the port bound for ",
                                               options.listen));
  server->port_ = ports[0].port;
  server->address_ = absl::StrCat(listen.host, ":", server->port_);
  // One handler for every path: civetweb matches handlers by prefix, so dispatching here
  // keeps /metricsfoo and /healthz/x out of the real handlers.
  mg_set_request_handler(server->ctx_, "/", &HttpServer::HandleRequest, server.get());
  return server;
}

HttpServer::~HttpServer() {
  if (ctx_ != nullptr) mg_stop(ctx_);
}

int HttpServer::InitTls(void* ssl_ctx, void* self) {
  // civetweb's own ssl_certificate wants key and certificate in one file; loading them
  // here takes them apart and names the file at fault. civetweb has already restricted
  // the protocol versions (ssl_protocol_version) before calling this.
  auto* server = static_cast<HttpServer*>(self);
  auto* ctx = static_cast<SSL_CTX*>(ssl_ctx);
  server->tls_initialized_ = true;
  ERR_clear_error();
  if (SSL_CTX_use_certificate_chain_file(ctx, server->tls_cert_file_.c_str()) != 1) {
    server->tls_error_ = absl::StrCat("metrics.tls_cert_file: cannot load \"",
                                      server->tls_cert_file_, "\": ", OpenSslError());
    return -1;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, server->tls_key_file_.c_str(), SSL_FILETYPE_PEM) != 1) {
    server->tls_error_ = absl::StrCat("metrics.tls_key_file: cannot load \"",
                                      server->tls_key_file_, "\": ", OpenSslError());
    return -1;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    server->tls_error_ = absl::StrCat("metrics.tls_key_file: \"", server->tls_key_file_,
                                      "\" is not the key of \"", server->tls_cert_file_,
                                      "\": ", OpenSslError());
    return -1;
  }
  return 1;  // certificate and key set up: civetweb loads nothing itself
}

bool HttpServer::Authorized(mg_connection* conn) const {
  if (!bearer_ && !basic_) return true;
  const char* header = mg_get_header(conn, "Authorization");
  if (header == nullptr) return false;
  std::string_view h(header);
  const size_t space = h.find(' ');
  if (space == std::string_view::npos) return false;
  const std::string_view scheme = h.substr(0, space);
  std::string_view credentials = h.substr(space + 1);
  while (!credentials.empty() && credentials.front() == ' ') credentials.remove_prefix(1);
  while (!credentials.empty() && credentials.back() == ' ') credentials.remove_suffix(1);
  // Every comparison is of SHA-256 digests in constant time, so neither the length nor
  // the bytes of a secret leak through timing.
  if (bearer_ && absl::EqualsIgnoreCase(absl::string_view(scheme.data(), scheme.size()),
                                        "Bearer")) {
    return SameDigest(Sha256(credentials), bearer_digest_);
  }
  if (basic_ && absl::EqualsIgnoreCase(absl::string_view(scheme.data(), scheme.size()),
                                       "Basic")) {
    std::string decoded;
    if (!absl::Base64Unescape(absl::string_view(credentials.data(), credentials.size()),
                              &decoded))
      return false;
    const size_t colon = decoded.find(':');
    if (colon == std::string::npos) return false;
    const bool user_ok =
        SameDigest(Sha256(std::string_view(decoded).substr(0, colon)), basic_user_digest_);
    const bool password_ok =
        SameDigest(Sha256(std::string_view(decoded).substr(colon + 1)), basic_password_digest_);
    return user_ok & password_ok;
  }
  return false;
}

int HttpServer::HandleRequest(mg_connection* conn, void* self) {
  const mg_request_info* info = mg_get_request_info(conn);
  const std::string_view path = info->local_uri ? info->local_uri : "";
  const std::string_view method = info->request_method ? info->request_method : "";
  if (method != "GET" && method != "HEAD")
    return Reply(conn, 405, "Method Not Allowed", "text/plain; charset=utf-8",
                 "only GET and HEAD\n");
  if (path == "/metrics") return HandleMetrics(conn, self);
  if (path == "/healthz") return HandleHealthz(conn, self);
  if (path == "/readyz") return HandleReadyz(conn, self);
  return Reply(conn, 404, "Not Found", "text/plain; charset=utf-8",
               "not found; try /metrics, /healthz or /readyz\n");
}

int HttpServer::HandleMetrics(mg_connection* conn, void* self) {
  const auto* server = static_cast<const HttpServer*>(self);
  if (!server->Authorized(conn)) {
    std::string challenge;
    if (server->bearer_)
      absl::StrAppend(&challenge, "WWW-Authenticate: Bearer realm=\"kvstash metrics\"\r\n");
    if (server->basic_)
      absl::StrAppend(&challenge,
                      "WWW-Authenticate: Basic realm=\"kvstash metrics\", charset=\"UTF-8\"\r\n");
    return Reply(conn, 401, "Unauthorized", "text/plain; charset=utf-8",
                 "credentials required for /metrics\n", challenge);
  }
  const std::string body = SerializeText(server->collectables_);
  return Reply(conn, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body);
}

int HttpServer::HandleHealthz(mg_connection* conn, void* /*self*/) {
  return Reply(conn, 200, "OK", "text/plain; charset=utf-8", "ok\n");
}

int HttpServer::HandleReadyz(mg_connection* conn, void* self) {
  const auto* server = static_cast<const HttpServer*>(self);
  if (server->ready())
    return Reply(conn, 200, "OK", "text/plain; charset=utf-8", "ready\n");
  return Reply(conn, 503, "Service Unavailable", "text/plain; charset=utf-8", "not ready\n");
}

}  // namespace kvstash::metrics
