// The operators' HTTP endpoint, on its own port (metrics.listen):
//   GET /metrics  every family of the given collectables, Prometheus text format 0.0.4
//   GET /healthz  200 "ok" while the process serves HTTP at all (liveness)
//   GET /readyz   200 "ready" while SetReady(true), else 503 "not ready" (readiness)
// Anything else is 404. Served by civetweb with a few threads of its own; a scrape
// collects at request time, so the store's gauges are never stale.
//
// Thread-safe: SetReady and port may be called from any thread.
#ifndef KVSTASH_SERVER_METRICS_HTTP_SERVER_H_
#define KVSTASH_SERVER_METRICS_HTTP_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <prometheus/collectable.h>

#include "absl/status/statusor.h"

struct mg_context;
struct mg_connection;

namespace kvstash::metrics {

struct HttpServerOptions {
  // HOST:PORT to listen on ("[v6addr]:PORT" for IPv6); port 0 picks a free port.
  std::string listen = "127.0.0.1:7451";
  // Threads serving requests; scrapes are rare, probes tiny. Default 2.
  int threads = 2;
};

class HttpServer {
 public:
  // Starts listening. The collectables are shared with the caller; each must stay usable
  // until the server is destroyed (StoreCollector: its store must outlive the server).
  // Unavailable naming the address when it cannot listen (in use, not local).
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

  void SetReady(bool ready) { ready_.store(ready, std::memory_order_release); }
  bool ready() const { return ready_.load(std::memory_order_acquire); }

 private:
  HttpServer() = default;
  static int HandleMetrics(mg_connection* conn, void* self);
  static int HandleHealthz(mg_connection* conn, void* self);
  static int HandleReadyz(mg_connection* conn, void* self);
  static int HandleRequest(mg_connection* conn, void* self);

  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  std::atomic<bool> ready_{false};
  mg_context* ctx_ = nullptr;
  int port_ = 0;
  std::string address_;
};

}  // namespace kvstash::metrics

#endif  // KVSTASH_SERVER_METRICS_HTTP_SERVER_H_
