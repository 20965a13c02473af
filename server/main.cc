// kvstashd: the composition root. Builds config -> store -> service -> gRPC server, serves
// until SIGTERM/SIGINT, then tears down in reverse order (docs/api.md, "Shutdown").
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/config/config.h"
#include "server/rpc/service.h"
#include "server/store/store.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

using kvstash::config::DaemonConfig;

constexpr auto kShutdownGrace = std::chrono::seconds(5);

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

int Run(const DaemonConfig& config) {
  // Block the shutdown signals before any thread exists so that every thread (gRPC's,
  // the workers, the codec's) inherits the mask and only sigwait below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  kvstash::store::StoreOptions store_options;
  store_options.host_capacity_bytes = config.host_capacity_bytes;
  store_options.page_bytes = static_cast<uint32_t>(config.page_bytes);
  store_options.num_shards = config.shards;
  store_options.prefault = config.prefault;
  absl::StatusOr<std::unique_ptr<kvstash::store::Store>> store =
      kvstash::store::Store::Create(store_options);
  if (!store.ok()) {
    spdlog::critical("cannot create the store: {}", View(store.status().message()));
    return 1;
  }

  kvstash::rpc::ServiceOptions service_options;
  service_options.worker_threads = config.worker_threads;
  service_options.max_message_bytes = config.max_message_bytes;
  service_options.max_namespace_bytes = store_options.max_namespace_bytes;
  auto service = std::make_unique<kvstash::rpc::KvStashService>(store->get(), service_options);

  const int max_message = static_cast<int>(config.max_message_bytes);  // validated <= INT_MAX
  int selected_port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &selected_port);
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

  const kvstash::config::HostPort host_port = *kvstash::config::SplitHostPort(config.listen);
  const std::string address = absl::StrCat(host_port.host, ":", selected_port);
  spdlog::info("serving on {}: capacity {}, page {}, {} shards, max message {}", address,
               kvstash::config::FormatSize(config.host_capacity_bytes),
               kvstash::config::FormatSize(config.page_bytes), config.shards,
               kvstash::config::FormatSize(config.max_message_bytes));

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
    std::printf("kvstashd serving on %s\n", address.c_str());
    std::fflush(stdout);
  }

  if (exit_code == 0) {
    int sig = 0;
    sigwait(&signals, &sig);
    spdlog::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  }

  // Reverse order of construction. Refuse new calls first, then let gRPC finish the
  // in-flight ones (cancelling what is left after the grace period); the service's
  // destructor drains its worker pool; the store goes last.
  if (wrote_ready_file) std::remove(config.ready_file.c_str());
  service->StartDraining();
  server->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
  server->Wait();
  server.reset();
  service.reset();
  store->reset();
  spdlog::info("stopped");
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
  if (cli->print_config) {
    std::fputs(kvstash::config::ConfigToToml(cli->config).c_str(), stdout);
    return 0;
  }
  // Logs go to stderr; stdout carries only the "serving on" line.
  spdlog::set_default_logger(spdlog::stderr_color_mt("kvstashd"));
  spdlog::set_level(spdlog::level::from_str(cli->config.log_level));
  return Run(cli->config);
}
