// kvstashd: the composition root. Builds config -> store -> metrics -> HTTP endpoint ->
// service -> gRPC server, serves until SIGTERM/SIGINT, then drains and tears down in
// reverse order (docs/api.md, "Shutdown"; docs/operators.md).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <prometheus/counter.h>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include <openssl/rand.h>
#include "server/auth/tokens.h"
#include "server/config/config.h"
#include "server/metrics/http_server.h"
#include "server/metrics/metrics.h"
#include "server/rpc/auth.h"
#include "server/rpc/service.h"
#include "server/store/store.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

using kvstash::config::DaemonConfig;

#ifndef KVSTASH_VERSION
#define KVSTASH_VERSION "unknown"
#endif
#ifndef KVSTASH_GIT_COMMIT
#define KVSTASH_GIT_COMMIT "unknown"
#endif
#ifndef KVSTASH_WITH_CUDA
#define KVSTASH_WITH_CUDA 0
#endif

// The service name gRPC health checks report besides the server-wide "".
constexpr const char* kServiceName = "kvstash.v1.KvStash";

std::string_view View(absl::string_view s) { return std::string_view(s.data(), s.size()); }

// Writes `text` to `path` so that readers see either no file or the whole text.
absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out)
      return absl::UnavailableError(
          absl::StrCat("server.ready_file: cannot write ", tmp, ": ", std::strerror(errno)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat("server.ready_file: cannot rename ", tmp, " to ", path, ": ",
                     std::strerror(err)));
  }
  return absl::OkStatus();
}

// The gRPC port's credentials: TLS (mutual when a client CA is given) with certificate
// files re-read every reload interval, or plaintext.
std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const DaemonConfig& config) {
  if (config.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  const auto refresh = static_cast<unsigned>(config.tls_reload_interval_ms / 1000);
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      config.tls_key_file, config.tls_cert_file, config.tls_client_ca_file, refresh);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (config.tls_client_ca_file.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(config.tls_require_client_cert
                                      ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                      : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

// Reads a file the daemon needs at startup so that a missing or unreadable one is a clear
// startup error naming the option, not a failed handshake later.
absl::Status CheckReadable(const std::string& path, const char* option) {
  if (path.empty()) return absl::OkStatus();
  std::ifstream in(path, std::ios::binary);
  if (!in || in.peek() == std::ifstream::traits_type::eof())
    return absl::InvalidArgumentError(
        absl::StrCat(option, ": cannot read ", path, in ? " (empty)" : ""));
  return absl::OkStatus();
}

int Run(const DaemonConfig& config) {
  // Block the shutdown signals before any thread exists so that every thread (gRPC's,
  // the workers, the codec's) inherits the mask and only sigwait below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);  // reloads the tokens file
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  for (const auto& [path, option] :
       {std::pair{config.tls_cert_file, "tls.cert_file"}, {config.tls_key_file, "tls.key_file"},
        {config.tls_client_ca_file, "tls.client_ca_file"}}) {
    if (absl::Status s = CheckReadable(path, option); !s.ok()) {
      spdlog::critical("{}", View(s.message()));
      return 1;
    }
  }

  kvstash::store::StoreOptions store_options;
  store_options.host_capacity_bytes = config.host_capacity_bytes;
  store_options.page_bytes = static_cast<uint32_t>(config.page_bytes);
  store_options.num_shards = config.shards;
  store_options.prefault = config.prefault;
  store_options.use_gpu = config.use_gpu;
  store_options.gpu_devices = config.gpu_devices;
  store_options.gpu_capacity_bytes = config.gpu_capacity_bytes;
  store_options.gpu_streams = config.gpu_streams;
  store_options.gpu_staging_bytes = config.gpu_staging_bytes;
  store_options.gpu_promote_on_read = config.gpu_promote_on_read;
  store_options.gpu_pin_host_pool = config.gpu_pin_host_pool;
  store_options.namespace_quota_bytes = config.namespace_quota_bytes;
  for (const auto& [ns, quota] : config.namespace_quotas) {
    // In the file 0 means "the default"; in the store an override of 0 means "no limit".
    if (quota.bytes != 0) store_options.namespace_quota_overrides[ns] = quota.bytes;
  }
  absl::StatusOr<std::unique_ptr<kvstash::store::Store>> store =
      kvstash::store::Store::Create(store_options);
  if (!store.ok()) {
    spdlog::critical("cannot create the store: {}", View(store.status().message()));
    return 1;
  }
  {
    const kvstash::store::StoreStats st = (*store)->Stats();
    spdlog::info("codec {}; {} GPU device pool(s), {} of device memory (gpu {})",
                 st.codec_path, st.gpus.size(),
                 kvstash::config::FormatSize(st.gpu_capacity_bytes),
                 config.use_gpu ? "on" : "off");
  }

  kvstash::metrics::BuildInfo build;
  build.version = KVSTASH_VERSION;
  build.git_commit = KVSTASH_GIT_COMMIT;
  build.cuda = KVSTASH_WITH_CUDA != 0;
  if (const kvstash::store::StoreStats stats = (*store)->Stats(); !stats.gpus.empty())
    build.gpu = stats.gpus.front().name;
  auto metrics = std::make_unique<kvstash::metrics::Metrics>(build);

  // Authentication: refusals are counted by reason, never logged with a secret.
  prometheus::Family<prometheus::Counter>& refusals =
      prometheus::BuildCounter()
          .Name("kvstash_auth_refusals_total")
          .Help("Calls refused by authentication or authorization, by reason")
          .Register(*metrics->registry());
  for (auto r : {kvstash::auth::Refusal::kMissingCredentials, kvstash::auth::Refusal::kBadToken,
                 kvstash::auth::Refusal::kNamespace, kvstash::auth::Refusal::kRight})
    refusals.Add({{"reason", std::string(kvstash::auth::RefusalName(r))}});
  absl::StatusOr<std::unique_ptr<kvstash::auth::Authenticator>> authenticator =
      kvstash::auth::Authenticator::Create(
          config.tokens_file, [&refusals](kvstash::auth::Refusal r) {
            refusals.Add({{"reason", std::string(kvstash::auth::RefusalName(r))}}).Increment();
          });
  if (!authenticator.ok()) {
    spdlog::critical("{}", View(authenticator.status().message()));
    return 1;
  }
  if ((*authenticator)->enabled()) {
    spdlog::info("authentication on: {} tenant(s) from {}", (*authenticator)->tenants(),
                 config.tokens_file);
  } else if (config.insecure) {
    spdlog::warn("authentication is OFF on {} (--insecure): anyone who reaches the port can "
                 "read, overwrite and delete every namespace",
                 config.listen);
  }
  std::unique_ptr<kvstash::rpc::UnixSocketListener> unix_listener;
  if (!config.unix_socket.empty()) {
    absl::StatusOr<std::unique_ptr<kvstash::rpc::UnixSocketListener>> l =
        kvstash::rpc::UnixSocketListener::Create(
            config.unix_socket, *kvstash::config::ParseMode(config.unix_socket_mode));
    if (!l.ok()) {
      spdlog::critical("{}", View(l.status().message()));
      return 1;
    }
    unix_listener = *std::move(l);
  }
  const kvstash::rpc::CallAuthenticator call_auth(authenticator->get(), unix_listener.get());

  // The HTTP endpoint comes up first and not ready, so that probes see the daemon
  // starting rather than nothing.
  kvstash::metrics::HttpServerOptions http_options;
  http_options.listen = config.metrics_listen;
  http_options.bearer_token_sha256_hex = config.metrics_bearer_token_sha256;
  http_options.basic_auth_user = config.metrics_basic_auth_user;
  http_options.basic_auth_password_sha256_hex = config.metrics_basic_auth_password_sha256;
  http_options.tls_cert_file = config.metrics_tls_cert_file;
  http_options.tls_key_file = config.metrics_tls_key_file;
  kvstash::metrics::StoreCollectorOptions collector_options;
  collector_options.top_namespaces = config.metrics_top_namespaces;
  if (absl::StatusOr<kvstash::config::HostPort> hp =
          kvstash::config::SplitHostPort(config.metrics_listen);
      hp.ok() && !kvstash::config::IsLoopback(hp->host) &&
      config.metrics_bearer_token_sha256.empty() && config.metrics_basic_auth_user.empty())
    spdlog::warn("metrics on {} without authentication: anyone who reaches it reads the "
                 "store's figures and the largest namespaces' names (set "
                 "metrics.bearer_token_sha256 or basic auth; docs/security.md)",
                 config.metrics_listen);
  absl::StatusOr<std::unique_ptr<kvstash::metrics::HttpServer>> http =
      kvstash::metrics::HttpServer::Start(
          http_options, {metrics->registry(),
                         std::make_shared<kvstash::metrics::StoreCollector>(store->get(), collector_options)});
  if (!http.ok()) {
    spdlog::critical("{}", View(http.status().message()));
    return 1;
  }

  kvstash::rpc::ServiceOptions service_options;
  service_options.worker_threads = config.worker_threads;
  service_options.max_message_bytes = config.max_message_bytes;
  service_options.max_namespace_bytes = store_options.max_namespace_bytes;
  service_options.fidelity_probe_every = config.fidelity_probe_every;
  service_options.regions.max_regions = config.max_regions;
  service_options.regions.max_regions_per_namespace = config.namespace_max_regions;
  for (const auto& [ns, quota] : config.namespace_quotas)
    if (quota.regions != 0) service_options.regions.namespace_max_regions[ns] = quota.regions;
  auto service = std::make_unique<kvstash::rpc::KvStashService>(store->get(), service_options,
                                                                metrics.get(), &call_auth);

  const int max_message = static_cast<int>(config.max_message_bytes);  // validated <= INT_MAX
  int selected_port = 0;
  // grpc.health.v1.Health and server reflection, for load balancers, Kubernetes gRPC
  // probes and grpcurl. Both must be enabled before the builder exists.
  grpc::EnableDefaultHealthCheckService(true);
  if (config.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen, ServerCredentials(config), &selected_port);
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  // gRPC sets SO_REUSEPORT by default, which would let a second daemon on the same port
  // start "successfully" and split the traffic. A taken port must be a startup error.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected_port == 0) {
    spdlog::critical("cannot listen on {} (address in use or not local?)", config.listen);
    if (server) server->Shutdown();
    return 1;
  }

  if (unix_listener) unix_listener->Start(server.get());
  const kvstash::config::HostPort host_port = *kvstash::config::SplitHostPort(config.listen);
  const std::string address = absl::StrCat(host_port.host, ":", selected_port);
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus("", true);
    health->SetServingStatus(kServiceName, true);
  }
  (*http)->SetReady(true);
  metrics->SetReady(true);
  spdlog::info("serving on {}{}{}{}: capacity {}, page {}, {} shards, max message {}", address,
               config.tls_cert_file.empty() ? "" : " (TLS",
               config.tls_cert_file.empty() ? ""
               : config.tls_client_ca_file.empty() ? ")"
                                                   : ", client certificates)",
               unix_listener ? absl::StrCat(" and unix:", config.unix_socket) : "",
               kvstash::config::FormatSize(config.host_capacity_bytes),
               kvstash::config::FormatSize(config.page_bytes), config.shards,
               kvstash::config::FormatSize(config.max_message_bytes));
  spdlog::info("metrics on http://{}/metrics (also /healthz, /readyz); fidelity probe {}",
               (*http)->address(),
               config.fidelity_probe_every == 0
                   ? std::string("off")
                   : absl::StrCat("every ", config.fidelity_probe_every, " Puts"));

  // Ready file first: a daemon that cannot announce itself fully announces nothing.
  int exit_code = 0;
  bool wrote_ready_file = false;
  if (!config.ready_file.empty()) {
    if (absl::Status s = WriteFileAtomically(config.ready_file, address + "\n"); !s.ok()) {
      spdlog::critical("{}", View(s.message()));
      exit_code = 1;
    } else {
      wrote_ready_file = true;
    }
  }
  if (exit_code == 0) {
    std::printf("kvstashd serving on %s\nkvstashd metrics on %s\n", address.c_str(),
                (*http)->address().c_str());
    std::fflush(stdout);
  }

  if (exit_code == 0) {
    int sig = 0;
    for (;;) {
      sigwait(&signals, &sig);
      if (sig != SIGHUP) break;
      if (absl::Status s = (*authenticator)->Reload(); s.ok())
        spdlog::info("SIGHUP: reloaded {}: {} tenant(s)", config.tokens_file,
                     (*authenticator)->tenants());
      else
        spdlog::error("SIGHUP: kept the previous tenants: {}", View(s.message()));
    }
    spdlog::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  }

  // Reverse order of construction. Turn not-ready first (/readyz 503, gRPC health
  // NOT_SERVING) so balancers stop sending; refuse new calls; let gRPC finish the
  // in-flight ones (cancelling what is left after the deadline); the service's destructor
  // drains its worker pool (probes included); then the HTTP endpoint, whose collector
  // reads the store; the store goes last.
  const auto drain_start = std::chrono::steady_clock::now();
  (*http)->SetReady(false);
  metrics->SetReady(false);
  if (health != nullptr) {
    health->SetServingStatus("", false);
    health->SetServingStatus(kServiceName, false);
  }
  if (wrote_ready_file) std::remove(config.ready_file.c_str());
  service->StartDraining();
  if (unix_listener) unix_listener->Stop();
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(config.shutdown_deadline_ms));
  server->Wait();
  server.reset();
  service.reset();
  http->reset();
  metrics.reset();
  store->reset();
  spdlog::info("stopped after draining for {} ms",
               std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - drain_start)
                   .count());
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<kvstash::config::CommandLine> cli =
      kvstash::config::ParseCommandLine(argc, argv);
  if (!cli.ok()) {
    std::fprintf(stderr, "kvstashd: %s\n", std::string(View(cli.status().message())).c_str());
    return 2;
  }
  if (!cli->help.empty()) {
    std::fputs(cli->help.c_str(), stdout);
    return 0;
  }
  if (cli->new_token) {
    // 32 random bytes, base64url without padding: a token that survives shells and headers.
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
      std::fprintf(stderr, "kvstashd: no randomness for a token\n");
      return 1;
    }
    std::string token;
    absl::WebSafeBase64Escape(absl::string_view(reinterpret_cast<const char*>(raw), sizeof(raw)),
                              &token);
    std::printf("token = %s\ntoken_sha256 = \"%s\"\n", token.c_str(),
                kvstash::auth::ToHex(kvstash::auth::HashToken(token)).c_str());
    return 0;
  }
  if (cli->print_config) {
    std::fputs(kvstash::config::ConfigToToml(cli->config).c_str(), stdout);
    return 0;
  }
  // Logs go to stderr; stdout carries only the "serving on" line.
  spdlog::set_default_logger(spdlog::stderr_color_mt("kvstashd"));
  spdlog::set_level(spdlog::level::from_str(cli->config.log_level));
  return Run(cli->config);
}
