// The daemon's configuration: defaults in the struct, then an optional TOML file, then
// command-line flags, validated once before anything is built. Every option, its key in
// the file, its flag and its default are listed in deploy/kvstashd.toml.
//
// Thread-compatible: plain data and pure functions.
#ifndef KVSTASH_SERVER_CONFIG_CONFIG_H_
#define KVSTASH_SERVER_CONFIG_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvstash::config {

// A namespace's own limits ([quotas.namespaces] in the file; 0 = the defaults).
struct NamespaceQuota {
  uint64_t bytes = 0;    // pool bytes (whole pages, every tier); 0 = quotas.namespace_bytes
  uint32_t regions = 0;  // regions registered at once; 0 = quotas.namespace_regions
  bool operator==(const NamespaceQuota&) const = default;
};

struct DaemonConfig {
  // [server] listen / --listen: HOST:PORT to serve gRPC on; port 0 picks a free port.
  // Default "127.0.0.1:7450".
  std::string listen = "127.0.0.1:7450";
  // [server] worker_threads / --worker-threads: threads that encode and decode for Put and
  // Get; 0 = one per hardware thread. Default 0.
  uint32_t worker_threads = 0;
  // [server] max_message_bytes / --max-message-bytes: largest request or response in bytes,
  // given to gRPC for both directions. Default 256 MiB.
  uint64_t max_message_bytes = 256ull << 20;
  // [server] ready_file / --ready-file: once serving, "HOST:PORT\n" is written here
  // atomically (temp file + rename); removed on clean shutdown. "" = none. Default "".
  std::string ready_file;
  // [server] shutdown_deadline / --shutdown-deadline: on SIGTERM/SIGINT, how long requests
  // already accepted may run before they are cancelled, in milliseconds (TOML and flag
  // take "10s", "500ms", "2m" or whole seconds). Default 10 s.
  uint64_t shutdown_deadline_ms = 10'000;
  // [server] max_regions / --max-regions: shared-memory regions registered at once, all
  // clients together (RegisterRegion; docs/api.md). 0 = none accepted. Default 256.
  uint32_t max_regions = 256;
  // [server] unix_socket / --unix-socket: also serve gRPC on this Unix domain socket
  // (clients use the target "unix:PATH"); each connection's peer uid (SO_PEERCRED) may
  // map to a tenant (docs/security.md). "" = none. Default "".
  std::string unix_socket;
  // [server] unix_socket_mode / --unix-socket-mode: octal permissions of the socket file.
  // Default "0660".
  std::string unix_socket_mode = "0660";
  // [server] reflection / --reflection: serve gRPC server reflection (for grpcurl). It
  // describes the API only, but is off unless asked for. Default false.
  bool reflection = false;
  // [auth] tokens_file / --tokens-file: the tenants, their token hashes, uids, certificate
  // names, namespaces and rights (docs/security.md); reloaded on SIGHUP. "" =
  // authentication off, allowed only when server.listen is a loopback address (or with
  // auth.insecure). Default "".
  std::string tokens_file;
  // [auth] insecure / --insecure: allow serving a non-loopback address without
  // authentication (logged as a warning). Default false.
  bool insecure = false;
  // [tls] cert_file, key_file / --tls-cert, --tls-key: PEM server certificate chain and
  // private key; both set = TLS on the gRPC port. Files are re-read every
  // tls.reload_interval, so renewed certificates need no restart. Default "" (no TLS).
  std::string tls_cert_file;
  std::string tls_key_file;
  // [tls] client_ca_file / --tls-client-ca: PEM CA bundle that client certificates must
  // chain to (mutual TLS); a verified client certificate's CN or SAN may map to a tenant.
  // Default "" (client certificates not requested).
  std::string tls_client_ca_file;
  // [tls] require_client_cert / --tls-require-client-cert: refuse TLS handshakes without
  // a valid client certificate. Needs client_ca_file. Default false.
  bool tls_require_client_cert = false;
  // [tls] reload_interval / --tls-reload-interval: how often the certificate files are
  // checked for changes. Default 60s.
  uint64_t tls_reload_interval_ms = 60'000;
  // [quotas] namespace_bytes / --namespace-quota: pool bytes (whole pages, every tier) one
  // namespace may hold; at its quota a namespace evicts its own chunks, and a chunk that
  // cannot fit is RESOURCE_EXHAUSTED. 0 = no per-namespace limit. Default 0.
  uint64_t namespace_quota_bytes = 0;
  // [quotas] namespace_regions / --namespace-regions: regions one namespace may have
  // registered at once. 0 = only server.max_regions applies. Default 0.
  uint32_t namespace_max_regions = 0;
  // [quotas.namespaces] "NAME" = { bytes = SIZE, regions = N }: per-namespace overrides
  // (file only). Default none.
  std::map<std::string, NamespaceQuota> namespace_quotas;
  // [metrics] listen / --metrics-listen: HOST:PORT of the HTTP endpoint (/metrics,
  // /healthz, /readyz); port 0 picks a free port, printed as "kvstashd metrics on
  // HOST:PORT". When neither the file nor a flag sets it, "127.0.0.1:7451", or
  // "127.0.0.1:0" when server.listen has port 0 (so that ephemeral daemons never collide).
  std::string metrics_listen = "127.0.0.1:7451";
  // [metrics] bearer_token_sha256 / --metrics-token-sha256: hex SHA-256 of a bearer token
  // that /metrics then requires ("Authorization: Bearer <token>"); /healthz and /readyz
  // stay open for probes. "" = none. Default "".
  std::string metrics_bearer_token_sha256;
  // [metrics] basic_auth_user, basic_auth_password_sha256 / --metrics-basic-user,
  // --metrics-basic-password-sha256: HTTP basic authentication of /metrics (the password
  // as hex SHA-256); both or neither. Default "".
  std::string metrics_basic_auth_user;
  std::string metrics_basic_auth_password_sha256;
  // [metrics] tls_cert_file, tls_key_file / --metrics-tls-cert, --metrics-tls-key: serve
  // the HTTP endpoint over TLS (needs a civetweb that can load OpenSSL 3; Debian 12's
  // cannot, and the daemon then refuses to start: see docs/security.md). Default "".
  std::string metrics_tls_cert_file;
  std::string metrics_tls_key_file;
  // [metrics] top_namespaces / --metrics-top-namespaces: namespaces exported by name in the
  // per-namespace metrics (largest first); the rest are summed as "__other__". Default 16.
  uint32_t metrics_top_namespaces = 16;
  // [metrics] fidelity_probe_every / --fidelity-probe-every: decode every Nth successful
  // Put again after replying and record its relative error; 0 = never. Default 64.
  uint32_t fidelity_probe_every = 64;
  // [host] capacity / --host-capacity: bytes of host memory for chunks, allocated up front.
  // Default 1 GiB.
  uint64_t host_capacity_bytes = 1ull << 30;
  // [host] page_bytes / --page-bytes: pool page size, a power of two in [4 KiB, 1 GiB].
  // Default 64 KiB.
  uint64_t page_bytes = 64ull << 10;
  // [host] prefault / --prefault: touch every pool page at startup, so a host short of
  // memory fails at startup instead of under load. Default false.
  bool prefault = false;
  // [store] shards / --shards: index shards, a power of two in [1, 4096]. Default 16.
  uint32_t shards = 16;
  // --- [gpu]: the GPU tier (docs/store.md, "GPU tier"). Used only by a CUDA build on a
  // host whose CUDA runtime reports devices; otherwise the daemon is host-only.
  // [gpu] enabled / --gpu on|off: use the GPUs as the first tier and for the codec.
  // Default on.
  bool use_gpu = true;
  // [gpu] devices / --gpu-devices: CUDA ordinals, e.g. [0, 1] / "0,1"; empty = every
  // visible device. Default empty.
  std::vector<int> gpu_devices;
  // [gpu] capacity / --gpu-capacity: device memory each device pool takes up front;
  // 0 = a quarter of the device's free memory at startup. Default 0.
  uint64_t gpu_capacity_bytes = 0;
  // [gpu] streams / --gpu-streams: worker streams per device, in [1, 64]. Default 4.
  uint32_t gpu_streams = 4;
  // [gpu] staging_bytes / --gpu-staging-bytes: each of a worker's two pinned staging
  // buffers, in [64 KiB, 1 GiB]. Default 4 MiB.
  uint64_t gpu_staging_bytes = 4ull << 20;
  // [gpu] promote_on_read / --gpu-promote-on-read: copy a host-tier chunk to its device
  // after a read when the device has free pages. Default false.
  bool gpu_promote_on_read = false;
  // [gpu] pin_host_pool / --gpu-pin-host-pool: cudaHostRegister the host pool, so restores
  // of host-tier chunks to a GPU are DMA from its pages (pins host.capacity in RAM).
  // Default true.
  bool gpu_pin_host_pool = true;
  // [log] level / --log-level: trace, debug, info, warn, error, critical or off.
  // Default "info".
  std::string log_level = "info";
};

// What the command line asks for.
struct CommandLine {
  DaemonConfig config;          // defaults <- file (--config) <- flags, validated
  bool print_config = false;    // --print-config: print ConfigToToml(config), exit 0
  bool new_token = false;       // --new-token: print a random token and its hash, exit 0
  std::string help;             // --help/--version: print this, exit 0 (empty otherwise)
};

// Parses argv (flags documented in --help). InvalidArgument naming the option for an
// unreadable or malformed file, an unknown key, a bad value or an unknown flag.
absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv);

// Applies the TOML document `text` on top of `base`. `origin` (a path) prefixes messages.
// Unknown keys and values of the wrong type or form are InvalidArgument naming the key.
absl::StatusOr<DaemonConfig> ApplyToml(const DaemonConfig& base, absl::string_view text,
                                       absl::string_view origin);

// Whether `host` (as in SplitHostPort) is a loopback address: 127.0.0.0/8, ::1, localhost.
bool IsLoopback(absl::string_view host);
// An octal permission mode such as "0660"; InvalidArgument otherwise.
absl::StatusOr<uint32_t> ParseMode(absl::string_view text);

// InvalidArgument naming the first option outside its allowed range.
absl::Status ValidateConfig(const DaemonConfig& config);

// "10s", "500ms", "2m", "1h" or a whole number of seconds, as milliseconds.
absl::StatusOr<uint64_t> ParseDuration(absl::string_view text);
// The shortest exact spelling: "10s", "1500ms", "2m".
std::string FormatDuration(uint64_t ms);

// The config as a TOML document that ApplyToml reads back to the same values.
std::string ConfigToToml(const DaemonConfig& config);

// "1073741824", "1GiB", "64 KiB", "512MiB", "2GB" (decimal SI), "4096B". Suffixes are
// case-insensitive; the value must be a whole number of bytes that fits in 64 bits.
absl::StatusOr<uint64_t> ParseSize(absl::string_view text);
// The shortest exact spelling: "1GiB", "64KiB", "1000".
std::string FormatSize(uint64_t bytes);

// Splits "HOST:PORT" ("[::1]:0" for IPv6). InvalidArgument unless the port is 0..65535.
struct HostPort {
  std::string host;
  uint32_t port = 0;
};
absl::StatusOr<HostPort> SplitHostPort(absl::string_view address);

}  // namespace kvstash::config

#endif  // KVSTASH_SERVER_CONFIG_CONFIG_H_
