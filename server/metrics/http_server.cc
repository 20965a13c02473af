#include "server/metrics/http_server.h"

#include <civetweb.h>

#include <cstring>
#include <mutex>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "server/metrics/metrics.h"

namespace kvstash::metrics {

namespace {

// civetweb keeps process-wide state (socket layer, TLS keys); initialize it once and never
// tear it down, since several servers (tests) may come and go.
void InitCivetwebOnce() {
  static std::once_flag once;
  std::call_once(once, [] { mg_init_library(0); });
}

// Writes a complete response; Connection: close keeps the server's threads free of idle
// keep-alive connections from probes.
int Reply(mg_connection* conn, int code, std::string_view reason, std::string_view type,
          std::string_view body) {
  const std::string head =
      absl::StrCat("HTTP/1.1 ", code, " ", std::string(reason),
                   "\r\nContent-Type: ", std::string(type),
                   "\r\nContent-Length: ", body.size(),
                   "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n");
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

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const HttpServerOptions& options,
    std::vector<std::shared_ptr<prometheus::Collectable>> collectables) {
  Listen listen;
  if (!SplitListen(options.listen, &listen))
    return absl::InvalidArgumentError(
        absl::StrCat("metrics.listen: \"", options.listen, "\" is not HOST:PORT"));
  InitCivetwebOnce();
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->collectables_ = std::move(collectables);

  // civetweb binds "HOST:PORT" (IPv4) or "[v6]:PORT"; a host name is not accepted, so
  // "localhost" is spelled out as the loopback address.
  std::string bind = options.listen;
  if (listen.host == "localhost") bind = "127.0.0.1:" + listen.port;
  const std::string threads = absl::StrCat(options.threads < 1 ? 1 : options.threads);
  const char* config[] = {"listening_ports", bind.c_str(),
                          "num_threads", threads.c_str(),
                          "request_timeout_ms", "10000",
                          "enable_keep_alive", "no",
                          nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  // civetweb logs to stderr by default; its messages are in the error text below instead.
  callbacks.log_message = [](const mg_connection*, const char*) { return 1; };
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
  server->ctx_ = mg_start2(&init, &error);
  if (server->ctx_ == nullptr)
    return absl::UnavailableError(absl::StrCat("metrics.listen: cannot listen on ",
                                               options.listen, ": ",
                                               error_text[0] ? error_text : "unknown error"));
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
