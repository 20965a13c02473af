#include "server/config/config.h"

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>
#include <toml++/toml.h>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "server/auth/tokens.h"

#ifndef KVSTASH_VERSION
#define KVSTASH_VERSION "unknown"
#endif

namespace kvstash::config {

namespace {

constexpr uint64_t kKiB = 1ull << 10;
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kTiB = 1ull << 40;

// gRPC takes message limits as an int.
constexpr uint64_t kMaxMessageLimit = std::numeric_limits<int32_t>::max();
constexpr uint64_t kMinMessageLimit = 64 * kKiB;
constexpr uint32_t kMaxWorkerThreads = 1024;
constexpr uint32_t kMaxRegions = 65536;  // each holds a descriptor and a mapping
constexpr uint32_t kMaxShards = 4096;
constexpr uint64_t kMinPageBytes = 4 * kKiB;
constexpr uint64_t kMaxPageBytes = kGiB;
constexpr uint64_t kMaxShutdownDeadlineMs = 3600'000;  // one hour
constexpr const char* kDefaultMetricsListen = "127.0.0.1:7451";
constexpr uint32_t kMaxGpuStreams = 64;
constexpr uint64_t kMinGpuStaging = 64 * kKiB;
constexpr uint64_t kMaxGpuStaging = kGiB;
constexpr int kMaxGpuOrdinal = 1023;

constexpr const char* kLogLevels[] = {"trace", "debug", "info", "warn",
                                      "error", "critical", "off"};

std::string Lower(absl::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

absl::string_view Trim(absl::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// A TOML basic string literal.
std::string Quote(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

absl::Status Invalid(absl::string_view option, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(option, ": ", what));
}

absl::StatusOr<uint64_t> ParseUnsigned(absl::string_view text, uint64_t max) {
  const absl::string_view t = Trim(text);
  if (t.empty()) return absl::InvalidArgumentError("empty");
  uint64_t v = 0;
  for (char c : t) {
    if (c < '0' || c > '9') return absl::InvalidArgumentError("not a number");
    if (v > (std::numeric_limits<uint64_t>::max() - (c - '0')) / 10)
      return absl::InvalidArgumentError("too large");
    v = v * 10 + (c - '0');
  }
  if (v > max) return absl::InvalidArgumentError("too large");
  return v;
}

// --- The option table: one place that knows every key, flag and type ---------------------

enum class Kind { kString, kSize, kUint32, kBool, kDuration, kIntList };

struct Option {
  const char* table;  // TOML table
  const char* key;    // key in that table
  const char* flag;   // command-line flag
  Kind kind;
  const char* type_name;  // shown in --help
  const char* help;
};

constexpr Option kOptions[] = {
    {"server", "listen", "--listen", Kind::kString, "HOST:PORT",
     "HOST:PORT to serve gRPC on; port 0 picks a free port (default 127.0.0.1:7450)"},
    {"server", "worker_threads", "--worker-threads", Kind::kUint32, "N",
     "threads for Put/Get encode and decode; 0 = hardware threads (default 0)"},
    {"server", "max_message_bytes", "--max-message-bytes", Kind::kSize, "SIZE",
     "largest request or response, e.g. 256MiB (default 256MiB)"},
    {"server", "ready_file", "--ready-file", Kind::kString, "PATH",
     "write HOST:PORT here once serving (default none)"},
    {"server", "shutdown_deadline", "--shutdown-deadline", Kind::kDuration, "DURATION",
     "on SIGTERM, time in-flight requests get before they are cancelled, e.g. 10s, 500ms "
     "(default 10s)"},
    {"server", "max_regions", "--max-regions", Kind::kUint32, "N",
     "shared-memory regions registered at once, all clients (default 256)"},
    {"server", "unix_socket", "--unix-socket", Kind::kString, "PATH",
     "also serve gRPC on this Unix socket (clients: unix:PATH); default none"},
    {"server", "unix_socket_mode", "--unix-socket-mode", Kind::kString, "OCTAL",
     "permissions of the Unix socket file (default 0660)"},
    {"server", "reflection", "--reflection", Kind::kBool, "BOOL",
     "serve gRPC server reflection (default false)"},
    {"auth", "tokens_file", "--tokens-file", Kind::kString, "PATH",
     "tenants, token hashes and rights (docs/security.md); reloaded on SIGHUP; default "
     "none = authentication off (loopback only)"},
    {"auth", "insecure", "--insecure", Kind::kBool, "BOOL",
     "allow a non-loopback listen address without authentication (default false)"},
    {"tls", "cert_file", "--tls-cert", Kind::kString, "PATH",
     "PEM server certificate chain; with --tls-key turns TLS on (default none)"},
    {"tls", "key_file", "--tls-key", Kind::kString, "PATH", "PEM server private key"},
    {"tls", "client_ca_file", "--tls-client-ca", Kind::kString, "PATH",
     "PEM CA bundle for client certificates (mutual TLS; default none)"},
    {"tls", "require_client_cert", "--tls-require-client-cert", Kind::kBool, "BOOL",
     "refuse clients without a valid certificate (default false)"},
    {"tls", "reload_interval", "--tls-reload-interval", Kind::kDuration, "DURATION",
     "how often certificate files are re-read (default 60s)"},
    {"quotas", "namespace_bytes", "--namespace-quota", Kind::kSize, "SIZE",
     "pool bytes one namespace may hold; 0 = no limit (default 0)"},
    {"quotas", "namespace_regions", "--namespace-regions", Kind::kUint32, "N",
     "regions one namespace may register at once; 0 = no limit (default 0)"},
    {"metrics", "listen", "--metrics-listen", Kind::kString, "HOST:PORT",
     "HTTP endpoint for /metrics, /healthz, /readyz; port 0 picks a free port (default "
     "127.0.0.1:7451, or 127.0.0.1:0 when --listen has port 0)"},
    {"metrics", "bearer_token_sha256", "--metrics-token-sha256", Kind::kString, "HEX",
     "SHA-256 of a bearer token /metrics requires (default none)"},
    {"metrics", "basic_auth_user", "--metrics-basic-user", Kind::kString, "USER",
     "HTTP basic auth user for /metrics (default none)"},
    {"metrics", "basic_auth_password_sha256", "--metrics-basic-password-sha256", Kind::kString,
     "HEX", "SHA-256 of the basic auth password (default none)"},
    {"metrics", "tls_cert_file", "--metrics-tls-cert", Kind::kString, "PATH",
     "PEM certificate for HTTPS on the metrics port (default none)"},
    {"metrics", "tls_key_file", "--metrics-tls-key", Kind::kString, "PATH",
     "PEM key for HTTPS on the metrics port (default none)"},
    {"metrics", "top_namespaces", "--metrics-top-namespaces", Kind::kUint32, "N",
     "namespaces exported by name in per-namespace metrics (default 16)"},
    {"metrics", "fidelity_probe_every", "--fidelity-probe-every", Kind::kUint32, "N",
     "re-decode every Nth Put and record its relative error; 0 = never (default 64)"},
    {"host", "capacity", "--host-capacity", Kind::kSize, "SIZE",
     "host memory for chunks, e.g. 1GiB (default 1GiB)"},
    {"host", "page_bytes", "--page-bytes", Kind::kSize, "SIZE",
     "pool page size, a power of two (default 64KiB)"},
    {"host", "prefault", "--prefault", Kind::kBool, "BOOL",
     "touch every pool page at startup: true or false (default false)"},
    {"store", "shards", "--shards", Kind::kUint32, "N",
     "index shards, a power of two (default 16)"},
    {"log", "level", "--log-level", Kind::kString, "LEVEL",
     "trace, debug, info, warn, error, critical or off (default info)"},
    // [gpu]: the GPU tier (CUDA builds on hosts with devices; ignored otherwise).
    {"gpu", "enabled", "--gpu", Kind::kBool, "on|off",
     "use the GPUs as the first tier and for the codec (default on)"},
    {"gpu", "devices", "--gpu-devices", Kind::kIntList, "N,N,...",
     "CUDA ordinals to use, e.g. 0,1; empty = every visible device (default empty)"},
    {"gpu", "capacity", "--gpu-capacity", Kind::kSize, "SIZE",
     "device memory per device pool; 0 = a quarter of free memory (default 0)"},
    {"gpu", "streams", "--gpu-streams", Kind::kUint32, "N",
     "worker streams per device, 1..64 (default 4)"},
    {"gpu", "staging_bytes", "--gpu-staging-bytes", Kind::kSize, "SIZE",
     "each pinned host staging buffer, 64KiB..1GiB (default 4MiB)"},
    {"gpu", "promote_on_read", "--gpu-promote-on-read", Kind::kBool, "BOOL",
     "copy host-tier chunks to their device after a read (default false)"},
    {"gpu", "pin_host_pool", "--gpu-pin-host-pool", Kind::kBool, "BOOL",
     "register the host pool with CUDA for DMA restores; pins it in RAM (default true)"},
};

std::string Name(const Option& o) { return absl::StrCat(o.table, ".", o.key); }

// The field of `c` an option sets. Exactly one of the pointers is non-null.
struct Target {
  std::string* str = nullptr;
  uint64_t* size = nullptr;
  uint32_t* u32 = nullptr;
  bool* flag = nullptr;
  std::vector<int>* ints = nullptr;
};
Target TargetOf(const Option& o, DaemonConfig& c) {
  const std::string name = Name(o);
  if (name == "server.listen") return {.str = &c.listen};
  if (name == "server.worker_threads") return {.u32 = &c.worker_threads};
  if (name == "server.max_message_bytes") return {.size = &c.max_message_bytes};
  if (name == "server.ready_file") return {.str = &c.ready_file};
  if (name == "server.shutdown_deadline") return {.size = &c.shutdown_deadline_ms};
  if (name == "server.max_regions") return {.u32 = &c.max_regions};
  if (name == "server.unix_socket") return {.str = &c.unix_socket};
  if (name == "server.unix_socket_mode") return {.str = &c.unix_socket_mode};
  if (name == "server.reflection") return {.flag = &c.reflection};
  if (name == "auth.tokens_file") return {.str = &c.tokens_file};
  if (name == "auth.insecure") return {.flag = &c.insecure};
  if (name == "tls.cert_file") return {.str = &c.tls_cert_file};
  if (name == "tls.key_file") return {.str = &c.tls_key_file};
  if (name == "tls.client_ca_file") return {.str = &c.tls_client_ca_file};
  if (name == "tls.require_client_cert") return {.flag = &c.tls_require_client_cert};
  if (name == "tls.reload_interval") return {.size = &c.tls_reload_interval_ms};
  if (name == "quotas.namespace_bytes") return {.size = &c.namespace_quota_bytes};
  if (name == "quotas.namespace_regions") return {.u32 = &c.namespace_max_regions};
  if (name == "metrics.listen") return {.str = &c.metrics_listen};
  if (name == "metrics.bearer_token_sha256") return {.str = &c.metrics_bearer_token_sha256};
  if (name == "metrics.basic_auth_user") return {.str = &c.metrics_basic_auth_user};
  if (name == "metrics.basic_auth_password_sha256")
    return {.str = &c.metrics_basic_auth_password_sha256};
  if (name == "metrics.tls_cert_file") return {.str = &c.metrics_tls_cert_file};
  if (name == "metrics.tls_key_file") return {.str = &c.metrics_tls_key_file};
  if (name == "metrics.top_namespaces") return {.u32 = &c.metrics_top_namespaces};
  if (name == "metrics.fidelity_probe_every") return {.u32 = &c.fidelity_probe_every};
  if (name == "host.capacity") return {.size = &c.host_capacity_bytes};
  if (name == "host.page_bytes") return {.size = &c.page_bytes};
  if (name == "host.prefault") return {.flag = &c.prefault};
  if (name == "store.shards") return {.u32 = &c.shards};
  if (name == "log.level") return {.str = &c.log_level};
  if (name == "gpu.enabled") return {.flag = &c.use_gpu};
  if (name == "gpu.devices") return {.ints = &c.gpu_devices};
  if (name == "gpu.capacity") return {.size = &c.gpu_capacity_bytes};
  if (name == "gpu.streams") return {.u32 = &c.gpu_streams};
  if (name == "gpu.staging_bytes") return {.size = &c.gpu_staging_bytes};
  if (name == "gpu.promote_on_read") return {.flag = &c.gpu_promote_on_read};
  if (name == "gpu.pin_host_pool") return {.flag = &c.gpu_pin_host_pool};
  return {};
}

// Sets an option from its textual form (a flag, or a TOML string for sizes).
absl::Status SetFromText(const Option& o, absl::string_view label, absl::string_view text,
                         DaemonConfig& c) {
  const Target t = TargetOf(o, c);
  switch (o.kind) {
    case Kind::kString:
      *t.str = std::string(text);
      return absl::OkStatus();
    case Kind::kSize: {
      absl::StatusOr<uint64_t> v = ParseSize(text);
      if (!v.ok()) return Invalid(label, absl::StrCat(Quote(text), " is not a size"));
      *t.size = *v;
      return absl::OkStatus();
    }
    case Kind::kDuration: {
      absl::StatusOr<uint64_t> v = ParseDuration(text);
      if (!v.ok()) return Invalid(label, absl::StrCat(Quote(text), " is not a duration"));
      *t.size = *v;
      return absl::OkStatus();
    }
    case Kind::kUint32: {
      absl::StatusOr<uint64_t> v = ParseUnsigned(text, std::numeric_limits<uint32_t>::max());
      if (!v.ok())
        return Invalid(label, absl::StrCat(Quote(text), " is not a non-negative integer"));
      *t.u32 = static_cast<uint32_t>(*v);
      return absl::OkStatus();
    }
    case Kind::kBool: {
      const std::string v = Trim(text).empty() ? std::string("true") : Lower(Trim(text));
      if (v != "true" && v != "false" && v != "on" && v != "off")
        return Invalid(label, absl::StrCat(Quote(text), " is not true or false (or on, off)"));
      *t.flag = v == "true" || v == "on";
      return absl::OkStatus();
    }
    case Kind::kIntList: {
      // "0,1,3"; "" = empty list.
      std::vector<int> out;
      absl::string_view rest = Trim(text);
      while (!rest.empty()) {
        const size_t comma = rest.find(',');
        const absl::string_view item = Trim(rest.substr(0, comma));
        absl::StatusOr<uint64_t> v = ParseUnsigned(item, kMaxGpuOrdinal);
        if (!v.ok())
          return Invalid(label, absl::StrCat(Quote(text), " is not a list of device ordinals "
                                                          "in [0, ", kMaxGpuOrdinal, "]"));
        out.push_back(static_cast<int>(*v));
        if (comma == absl::string_view::npos) break;
        rest = rest.substr(comma + 1);
      }
      *t.ints = std::move(out);
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unreachable");
}

std::string NodeText(const toml::node& node) {
  if (const auto* s = node.as_string()) return Quote(s->get());
  std::ostringstream os;
  node.visit([&os](const auto& n) { os << n; });
  return os.str();
}

absl::Status SetFromToml(const Option& o, const toml::node& node, DaemonConfig& c) {
  const std::string name = Name(o);
  const Target t = TargetOf(o, c);
  switch (o.kind) {
    case Kind::kString:
      if (const auto* s = node.as_string()) {
        *t.str = s->get();
        return absl::OkStatus();
      }
      return Invalid(name, absl::StrCat(NodeText(node), " is not a string"));
    case Kind::kSize:
      if (const auto* s = node.as_string()) return SetFromText(o, name, s->get(), c);
      if (const auto* i = node.as_integer(); i && i->get() >= 0) {
        *t.size = static_cast<uint64_t>(i->get());
        return absl::OkStatus();
      }
      return Invalid(name, absl::StrCat(NodeText(node), " is not a size"));
    case Kind::kDuration:
      if (const auto* s = node.as_string()) return SetFromText(o, name, s->get(), c);
      if (const auto* i = node.as_integer();
          i && i->get() >= 0 && static_cast<uint64_t>(i->get()) <= kMaxShutdownDeadlineMs / 1000) {
        *t.size = static_cast<uint64_t>(i->get()) * 1000;  // whole seconds
        return absl::OkStatus();
      }
      return Invalid(name, absl::StrCat(NodeText(node), " is not a duration"));
    case Kind::kUint32:
      if (const auto* i = node.as_integer();
          i && i->get() >= 0 && i->get() <= std::numeric_limits<uint32_t>::max()) {
        *t.u32 = static_cast<uint32_t>(i->get());
        return absl::OkStatus();
      }
      return Invalid(name, absl::StrCat(NodeText(node), " is not a non-negative integer"));
    case Kind::kBool:
      if (const auto* b = node.as_boolean()) {
        *t.flag = b->get();
        return absl::OkStatus();
      }
      return Invalid(name, absl::StrCat(NodeText(node), " is not true or false"));
    case Kind::kIntList:
      if (const auto* s = node.as_string()) return SetFromText(o, name, s->get(), c);
      if (const auto* a = node.as_array()) {
        std::vector<int> out;
        for (const toml::node& e : *a) {
          const auto* i = e.as_integer();
          if (i == nullptr || i->get() < 0 || i->get() > kMaxGpuOrdinal)
            return Invalid(name, absl::StrCat(NodeText(node), " is not a list of device "
                                                              "ordinals in [0, ", kMaxGpuOrdinal, "]"));
          out.push_back(static_cast<int>(i->get()));
        }
        *t.ints = std::move(out);
        return absl::OkStatus();
      }
      return Invalid(name, absl::StrCat(NodeText(node), " is not a list of device ordinals"));
  }
  return absl::InternalError("unreachable");
}

const Option* FindOption(absl::string_view table, absl::string_view key) {
  for (const Option& o : kOptions)
    if (table == o.table && key == o.key) return &o;
  return nullptr;
}

std::string KnownKeys() {
  std::string out;
  for (const Option& o : kOptions) absl::StrAppend(&out, out.empty() ? "" : ", ", Name(o));
  return out;
}

// [quotas.namespaces]: "NAME" = { bytes = SIZE, regions = N }.
absl::Status ApplyNamespaceQuotas(const toml::node& node, DaemonConfig& c) {
  const toml::table* t = node.as_table();
  if (t == nullptr)
    return Invalid("quotas.namespaces",
                   "expected a table of \"NAME\" = { bytes = SIZE, regions = N }");
  for (const auto& [name_key, entry] : *t) {
    const std::string ns(name_key.str());
    const std::string where = absl::StrCat("quotas.namespaces.", Quote(ns));
    const toml::table* e = entry.as_table();
    if (e == nullptr) return Invalid(where, "expected { bytes = SIZE, regions = N }");
    NamespaceQuota q;
    for (const auto& [k, v] : *e) {
      if (k.str() == "bytes") {
        absl::StatusOr<uint64_t> b;
        if (const auto* str = v.as_string()) b = ParseSize(str->get());
        else if (const auto* i = v.as_integer(); i && i->get() >= 0) b = static_cast<uint64_t>(i->get());
        else b = absl::InvalidArgumentError("");
        if (!b.ok()) return Invalid(absl::StrCat(where, ".bytes"), absl::StrCat(NodeText(v), " is not a size"));
        q.bytes = *b;
      } else if (k.str() == "regions") {
        const auto* i = v.as_integer();
        if (i == nullptr || i->get() < 0 || i->get() > kMaxRegions)
          return Invalid(absl::StrCat(where, ".regions"),
                         absl::StrCat(NodeText(v), " is not an integer in [0, ", kMaxRegions, "]"));
        q.regions = static_cast<uint32_t>(i->get());
      } else {
        return Invalid(absl::StrCat(where, ".", std::string(k.str())),
                       "unknown key (known: bytes, regions)");
      }
    }
    c.namespace_quotas[ns] = q;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::InvalidArgumentError(
        absl::StrCat("--config: cannot read ", Quote(path), ": ", std::strerror(errno)));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

}  // namespace

// --- Sizes ------------------------------------------------------------------------------

absl::StatusOr<uint64_t> ParseSize(absl::string_view text) {
  const absl::string_view t = Trim(text);
  size_t digits = 0;
  while (digits < t.size() && t[digits] >= '0' && t[digits] <= '9') ++digits;
  if (digits == 0)
    return absl::InvalidArgumentError(absl::StrCat(Quote(text), " is not a size"));
  absl::StatusOr<uint64_t> number = ParseUnsigned(t.substr(0, digits),
                                                  std::numeric_limits<uint64_t>::max());
  if (!number.ok())
    return absl::InvalidArgumentError(absl::StrCat(Quote(text), " is too large"));
  const std::string suffix = Lower(Trim(t.substr(digits)));
  struct Unit {
    const char* name;
    uint64_t bytes;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},          {"b", 1},
      {"kib", kKiB},    {"mib", kMiB},         {"gib", kGiB},            {"tib", kTiB},
      {"kb", 1000ull},  {"mb", 1000ull * 1000}, {"gb", 1000ull * 1000 * 1000},
      {"tb", 1000ull * 1000 * 1000 * 1000},
  };
  for (const Unit& u : kUnits) {
    if (suffix != u.name) continue;
    if (*number > std::numeric_limits<uint64_t>::max() / u.bytes)
      return absl::InvalidArgumentError(absl::StrCat(Quote(text), " is too large"));
    return *number * u.bytes;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      Quote(text), " is not a size (want bytes, optionally with B, KiB, MiB, GiB, TiB, KB, "
                   "MB, GB or TB)"));
}

std::string FormatSize(uint64_t bytes) {
  if (bytes == 0) return "0";
  static constexpr std::pair<uint64_t, const char*> kUnits[] = {
      {kTiB, "TiB"}, {kGiB, "GiB"}, {kMiB, "MiB"}, {kKiB, "KiB"}};
  for (const auto& [unit, name] : kUnits)
    if (bytes % unit == 0) return absl::StrCat(bytes / unit, name);
  return absl::StrCat(bytes);
}

absl::StatusOr<uint64_t> ParseDuration(absl::string_view text) {
  const absl::string_view t = Trim(text);
  size_t digits = 0;
  while (digits < t.size() && t[digits] >= '0' && t[digits] <= '9') ++digits;
  const auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(text), " is not a duration (want e.g. 10s, 500ms, 2m, 1h)"));
  };
  if (digits == 0) return bad();
  absl::StatusOr<uint64_t> number = ParseUnsigned(t.substr(0, digits), 1ull << 40);
  if (!number.ok()) return bad();
  const std::string suffix = Lower(Trim(t.substr(digits)));
  uint64_t unit_ms = 0;
  if (suffix == "ms") unit_ms = 1;
  else if (suffix == "" || suffix == "s") unit_ms = 1000;
  else if (suffix == "m" || suffix == "min") unit_ms = 60'000;
  else if (suffix == "h") unit_ms = 3600'000;
  else return bad();
  return *number * unit_ms;
}

std::string FormatDuration(uint64_t ms) {
  if (ms == 0) return "0s";
  if (ms % 3600'000 == 0) return absl::StrCat(ms / 3600'000, "h");
  if (ms % 60'000 == 0) return absl::StrCat(ms / 60'000, "m");
  if (ms % 1000 == 0) return absl::StrCat(ms / 1000, "s");
  return absl::StrCat(ms, "ms");
}

absl::StatusOr<HostPort> SplitHostPort(absl::string_view address) {
  const auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(Quote(address), " ", why));
  };
  size_t colon;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find(']');
    if (close == absl::string_view::npos || close + 1 >= address.size() ||
        address[close + 1] != ':')
      return bad("is not HOST:PORT ([v6addr]:PORT for IPv6)");
    colon = close + 1;
  } else {
    colon = address.rfind(':');
    if (colon == absl::string_view::npos) return bad("is not HOST:PORT");
    if (address.substr(0, colon).find(':') != absl::string_view::npos)
      return bad("is not HOST:PORT (write IPv6 addresses as [v6addr]:PORT)");
  }
  HostPort out;
  out.host = std::string(address.substr(0, colon));
  if (out.host.empty()) return bad("has no host (use 0.0.0.0 for every interface)");
  absl::StatusOr<uint64_t> port = ParseUnsigned(address.substr(colon + 1), 65535);
  if (!port.ok() || address.substr(colon + 1).empty())
    return bad("has no valid port (0..65535; 0 picks a free one)");
  out.port = static_cast<uint32_t>(*port);
  return out;
}

// --- TOML -------------------------------------------------------------------------------

absl::StatusOr<DaemonConfig> ApplyToml(const DaemonConfig& base, absl::string_view text,
                                       absl::string_view origin) {
  const auto fail = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(origin, ": ", s.message()));
  };
  toml::table root;
  try {
    root = toml::parse(std::string_view(text.data(), text.size()),
                       std::string_view(origin.data(), origin.size()));
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return absl::InvalidArgumentError(absl::StrCat(origin, ":", where.line, ":", where.column,
                                                   ": not valid TOML: ", std::string(e.description())));
  }
  DaemonConfig c = base;
  for (const auto& [table_key, table_node] : root) {
    const absl::string_view table(table_key.str().data(), table_key.str().size());
    const toml::table* t = table_node.as_table();
    bool known_table = false;
    for (const Option& o : kOptions) known_table |= table == o.table;
    if (!known_table)
      return fail(Invalid(table, absl::StrCat("unknown option (known: ", KnownKeys(), ")")));
    if (t == nullptr) return fail(Invalid(table, "expected a table, e.g. [" + std::string(table) + "]"));
    for (const auto& [key, node] : *t) {
      const absl::string_view key_name(key.str().data(), key.str().size());
      if (table == "quotas" && key_name == "namespaces") {
        if (absl::Status s = ApplyNamespaceQuotas(node, c); !s.ok()) return fail(s);
        continue;
      }
      const Option* o = FindOption(table, key_name);
      if (o == nullptr)
        return fail(Invalid(absl::StrCat(table, ".", key_name),
                            absl::StrCat("unknown option (known: ", KnownKeys(), ")")));
      if (absl::Status s = SetFromToml(*o, node, c); !s.ok()) return fail(s);
    }
  }
  return c;
}

std::string ConfigToToml(const DaemonConfig& c) {
  std::string out = "# kvstashd configuration (see deploy/kvstashd.toml for every option)\n";
  absl::StrAppend(&out, "\n[server]\n");
  absl::StrAppend(&out, "listen = ", Quote(c.listen), "\n");
  absl::StrAppend(&out, "worker_threads = ", c.worker_threads, "\n");
  absl::StrAppend(&out, "max_message_bytes = ", Quote(FormatSize(c.max_message_bytes)), "\n");
  absl::StrAppend(&out, "ready_file = ", Quote(c.ready_file), "\n");
  absl::StrAppend(&out, "shutdown_deadline = ", Quote(FormatDuration(c.shutdown_deadline_ms)),
                  "\n");
  absl::StrAppend(&out, "max_regions = ", c.max_regions, "\n");
  absl::StrAppend(&out, "unix_socket = ", Quote(c.unix_socket), "\n");
  absl::StrAppend(&out, "unix_socket_mode = ", Quote(c.unix_socket_mode), "\n");
  absl::StrAppend(&out, "reflection = ", c.reflection ? "true" : "false", "\n");
  absl::StrAppend(&out, "\n[auth]\n");
  absl::StrAppend(&out, "tokens_file = ", Quote(c.tokens_file), "\n");
  absl::StrAppend(&out, "insecure = ", c.insecure ? "true" : "false", "\n");
  absl::StrAppend(&out, "\n[tls]\n");
  absl::StrAppend(&out, "cert_file = ", Quote(c.tls_cert_file), "\n");
  absl::StrAppend(&out, "key_file = ", Quote(c.tls_key_file), "\n");
  absl::StrAppend(&out, "client_ca_file = ", Quote(c.tls_client_ca_file), "\n");
  absl::StrAppend(&out, "require_client_cert = ", c.tls_require_client_cert ? "true" : "false",
                  "\n");
  absl::StrAppend(&out, "reload_interval = ", Quote(FormatDuration(c.tls_reload_interval_ms)),
                  "\n");
  absl::StrAppend(&out, "\n[quotas]\n");
  absl::StrAppend(&out, "namespace_bytes = ", Quote(FormatSize(c.namespace_quota_bytes)), "\n");
  absl::StrAppend(&out, "namespace_regions = ", c.namespace_max_regions, "\n");
  if (!c.namespace_quotas.empty()) {
    absl::StrAppend(&out, "\n[quotas.namespaces]\n");
    for (const auto& [ns, q] : c.namespace_quotas)
      absl::StrAppend(&out, Quote(ns), " = { bytes = ", Quote(FormatSize(q.bytes)),
                      ", regions = ", q.regions, " }\n");
  }
  absl::StrAppend(&out, "\n[metrics]\n");
  absl::StrAppend(&out, "listen = ", Quote(c.metrics_listen), "\n");
  absl::StrAppend(&out, "bearer_token_sha256 = ", Quote(c.metrics_bearer_token_sha256), "\n");
  absl::StrAppend(&out, "basic_auth_user = ", Quote(c.metrics_basic_auth_user), "\n");
  absl::StrAppend(&out, "basic_auth_password_sha256 = ",
                  Quote(c.metrics_basic_auth_password_sha256), "\n");
  absl::StrAppend(&out, "tls_cert_file = ", Quote(c.metrics_tls_cert_file), "\n");
  absl::StrAppend(&out, "tls_key_file = ", Quote(c.metrics_tls_key_file), "\n");
  absl::StrAppend(&out, "top_namespaces = ", c.metrics_top_namespaces, "\n");
  absl::StrAppend(&out, "fidelity_probe_every = ", c.fidelity_probe_every, "\n");
  absl::StrAppend(&out, "\n[host]\n");
  absl::StrAppend(&out, "capacity = ", Quote(FormatSize(c.host_capacity_bytes)), "\n");
  absl::StrAppend(&out, "page_bytes = ", Quote(FormatSize(c.page_bytes)), "\n");
  absl::StrAppend(&out, "prefault = ", c.prefault ? "true" : "false", "\n");
  absl::StrAppend(&out, "\n[store]\n");
  absl::StrAppend(&out, "shards = ", c.shards, "\n");
  absl::StrAppend(&out, "\n[log]\n");
  absl::StrAppend(&out, "level = ", Quote(c.log_level), "\n");
  absl::StrAppend(&out, "\n[gpu]\n");
  absl::StrAppend(&out, "enabled = ", c.use_gpu ? "true" : "false", "\n");
  absl::StrAppend(&out, "devices = [");
  for (size_t i = 0; i < c.gpu_devices.size(); ++i)
    absl::StrAppend(&out, i == 0 ? "" : ", ", c.gpu_devices[i]);
  absl::StrAppend(&out, "]\n");
  absl::StrAppend(&out, "capacity = ", Quote(FormatSize(c.gpu_capacity_bytes)), "\n");
  absl::StrAppend(&out, "streams = ", c.gpu_streams, "\n");
  absl::StrAppend(&out, "staging_bytes = ", Quote(FormatSize(c.gpu_staging_bytes)), "\n");
  absl::StrAppend(&out, "promote_on_read = ", c.gpu_promote_on_read ? "true" : "false", "\n");
  absl::StrAppend(&out, "pin_host_pool = ", c.gpu_pin_host_pool ? "true" : "false", "\n");
  return out;
}

// --- Validation -------------------------------------------------------------------------

bool IsLoopback(absl::string_view host) {
  if (host == "localhost" || host == "[::1]" || host == "::1") return true;
  return host.size() > 4 && host.substr(0, 4) == "127." &&
         host.find_first_not_of("0123456789.") == absl::string_view::npos;
}

absl::StatusOr<uint32_t> ParseMode(absl::string_view text) {
  const absl::string_view t = Trim(text);
  if (t.empty() || t.size() > 4) return absl::InvalidArgumentError("not an octal mode");
  uint32_t mode = 0;
  for (char ch : t) {
    if (ch < '0' || ch > '7') return absl::InvalidArgumentError("not an octal mode");
    mode = mode * 8 + static_cast<uint32_t>(ch - '0');
  }
  if (mode > 0777) return absl::InvalidArgumentError("not an octal mode");
  return mode;
}

absl::Status ValidateConfig(const DaemonConfig& c) {
  if (absl::StatusOr<HostPort> hp = SplitHostPort(c.listen); !hp.ok())
    return Invalid("server.listen (--listen)",
                   hp.status().message());
  if (c.worker_threads > kMaxWorkerThreads)
    return Invalid("server.worker_threads (--worker-threads)",
                   absl::StrCat(c.worker_threads, " is above ", kMaxWorkerThreads,
                                " (0 = one per hardware thread)"));
  if (c.max_regions > kMaxRegions)
    return Invalid("server.max_regions (--max-regions)",
                   absl::StrCat(c.max_regions, " is above ", kMaxRegions));
  if (c.max_message_bytes < kMinMessageLimit || c.max_message_bytes > kMaxMessageLimit)
    return Invalid("server.max_message_bytes (--max-message-bytes)",
                   absl::StrCat(c.max_message_bytes, " is outside [",
                                FormatSize(kMinMessageLimit), ", ", kMaxMessageLimit,
                                "] (gRPC limits messages to 2 GiB - 1)"));
  if (c.shutdown_deadline_ms > kMaxShutdownDeadlineMs)
    return Invalid("server.shutdown_deadline (--shutdown-deadline)",
                   absl::StrCat(FormatDuration(c.shutdown_deadline_ms),
                                " is longer than 1h"));
  if (absl::StatusOr<HostPort> hp = SplitHostPort(c.metrics_listen); !hp.ok())
    return Invalid("metrics.listen (--metrics-listen)", hp.status().message());
  if (!IsPowerOfTwo(c.page_bytes) || c.page_bytes < kMinPageBytes || c.page_bytes > kMaxPageBytes)
    return Invalid("host.page_bytes (--page-bytes)",
                   absl::StrCat(c.page_bytes, " is not a power of two in [",
                                FormatSize(kMinPageBytes), ", ", FormatSize(kMaxPageBytes), "]"));
  if (c.host_capacity_bytes < c.page_bytes)
    return Invalid("host.capacity (--host-capacity)",
                   absl::StrCat(c.host_capacity_bytes, " bytes is less than one page (",
                                c.page_bytes, " bytes)"));
  if (!IsPowerOfTwo(c.shards) || c.shards > kMaxShards)
    return Invalid("store.shards (--shards)",
                   absl::StrCat(c.shards, " is not a power of two in [1, ", kMaxShards, "]"));
  if (c.gpu_streams < 1 || c.gpu_streams > kMaxGpuStreams)
    return Invalid("gpu.streams (--gpu-streams)",
                   absl::StrCat(c.gpu_streams, " is outside [1, ", kMaxGpuStreams, "]"));
  if (c.gpu_staging_bytes < kMinGpuStaging || c.gpu_staging_bytes > kMaxGpuStaging)
    return Invalid("gpu.staging_bytes (--gpu-staging-bytes)",
                   absl::StrCat(c.gpu_staging_bytes, " is outside [", FormatSize(kMinGpuStaging),
                                ", ", FormatSize(kMaxGpuStaging), "]"));
  if (c.gpu_capacity_bytes != 0 && c.gpu_capacity_bytes < c.page_bytes)
    return Invalid("gpu.capacity (--gpu-capacity)",
                   absl::StrCat(c.gpu_capacity_bytes, " bytes is less than one page (",
                                c.page_bytes, " bytes); 0 = a quarter of free memory"));
  for (size_t i = 0; i < c.gpu_devices.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (c.gpu_devices[i] == c.gpu_devices[j])
        return Invalid("gpu.devices (--gpu-devices)",
                       absl::StrCat("device ", c.gpu_devices[i], " is listed twice"));
  if (!c.unix_socket.empty() && (c.unix_socket.front() != '/' || c.unix_socket.size() > 107))
    return Invalid("server.unix_socket (--unix-socket)",
                   absl::StrCat(Quote(c.unix_socket),
                                " is not an absolute path of at most 107 bytes"));
  if (!ParseMode(c.unix_socket_mode).ok())
    return Invalid("server.unix_socket_mode (--unix-socket-mode)",
                   absl::StrCat(Quote(c.unix_socket_mode), " is not an octal mode like 0660"));
  if (c.tls_cert_file.empty() != c.tls_key_file.empty())
    return Invalid(c.tls_cert_file.empty() ? "tls.cert_file (--tls-cert)" : "tls.key_file (--tls-key)",
                   "TLS needs both the certificate and the key");
  if (!c.tls_client_ca_file.empty() && c.tls_cert_file.empty())
    return Invalid("tls.client_ca_file (--tls-client-ca)",
                   "client certificates need TLS: set tls.cert_file and tls.key_file too");
  if (c.tls_require_client_cert && c.tls_client_ca_file.empty())
    return Invalid("tls.require_client_cert (--tls-require-client-cert)",
                   "needs tls.client_ca_file to verify client certificates against");
  if (c.tls_reload_interval_ms < 1000 || c.tls_reload_interval_ms > kMaxShutdownDeadlineMs * 24)
    return Invalid("tls.reload_interval (--tls-reload-interval)",
                   absl::StrCat(FormatDuration(c.tls_reload_interval_ms),
                                " is outside [1s, 24h]"));
  if (c.namespace_max_regions > kMaxRegions)
    return Invalid("quotas.namespace_regions (--namespace-regions)",
                   absl::StrCat(c.namespace_max_regions, " is above ", kMaxRegions));
  for (const auto& [ns, q] : c.namespace_quotas) {
    if (ns.empty() || ns.size() > 256)
      return Invalid("quotas.namespaces", absl::StrCat(Quote(ns), " is not a namespace (1 to 256 bytes)"));
    if (q.bytes != 0 && q.bytes < c.page_bytes)
      return Invalid(absl::StrCat("quotas.namespaces.", Quote(ns), ".bytes"),
                     absl::StrCat(q.bytes, " bytes is less than one page (", c.page_bytes, ")"));
  }
  if (c.namespace_quota_bytes != 0 && c.namespace_quota_bytes < c.page_bytes)
    return Invalid("quotas.namespace_bytes (--namespace-quota)",
                   absl::StrCat(c.namespace_quota_bytes, " bytes is less than one page (",
                                c.page_bytes, "); 0 = no limit"));
  for (const auto& [value, option] :
       {std::pair{&c.metrics_bearer_token_sha256, "metrics.bearer_token_sha256 (--metrics-token-sha256)"},
        {&c.metrics_basic_auth_password_sha256,
         "metrics.basic_auth_password_sha256 (--metrics-basic-password-sha256)"}}) {
    if (!value->empty() && !auth::ParseSha256Hex(*value))
      return Invalid(option, "not 64 hex digits (a SHA-256: printf %s \"$SECRET\" | sha256sum)");
  }
  if (c.metrics_basic_auth_user.empty() != c.metrics_basic_auth_password_sha256.empty())
    return Invalid("metrics.basic_auth_user (--metrics-basic-user)",
                   "basic authentication needs both the user and the password hash");
  if (c.metrics_tls_cert_file.empty() != c.metrics_tls_key_file.empty())
    return Invalid("metrics.tls_cert_file (--metrics-tls-cert)",
                   "TLS needs both the certificate and the key");
  if (c.metrics_top_namespaces > 1024)
    return Invalid("metrics.top_namespaces (--metrics-top-namespaces)",
                   absl::StrCat(c.metrics_top_namespaces, " is above 1024"));
  if (c.tokens_file.empty() && !c.insecure) {
    if (absl::StatusOr<HostPort> hp = SplitHostPort(c.listen); hp.ok() && !IsLoopback(hp->host))
      return Invalid("server.listen (--listen)",
                     absl::StrCat(Quote(c.listen),
                                  " is reachable from other hosts and authentication is off: "
                                  "set auth.tokens_file (docs/security.md), listen on "
                                  "127.0.0.1 or a Unix socket, or pass --insecure"));
  }
  bool level_ok = false;
  for (const char* l : kLogLevels) level_ok |= c.log_level == l;
  if (!level_ok)
    return Invalid("log.level (--log-level)",
                   absl::StrCat(Quote(c.log_level),
                                " is not one of trace, debug, info, warn, error, critical, off"));
  return absl::OkStatus();
}

// --- Command line -----------------------------------------------------------------------

absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv) {
  CLI::App app{"kvstashd: a KV-cache store for LLM inference, serving kvstash.v1 over gRPC.\n"
               "Options come from the defaults, then --config FILE, then flags.",
               "kvstashd"};
  app.set_version_flag("--version", std::string("kvstashd ") + KVSTASH_VERSION);
  std::string config_path;
  bool print_config = false;
  app.add_option("--config", config_path, "TOML file with options (see deploy/kvstashd.toml)")
      ->type_name("PATH");
  app.add_flag("--print-config", print_config, "print the effective configuration and exit");
  bool new_token = false;
  app.add_flag("--new-token", new_token,
               "print a new random bearer token and the token_sha256 line for the tokens "
               "file, and exit");
  std::string values[std::size(kOptions)];
  CLI::Option* flags[std::size(kOptions)];
  for (size_t i = 0; i < std::size(kOptions); ++i) {
    flags[i] = app.add_option(kOptions[i].flag, values[i], kOptions[i].help)
                   ->type_name(kOptions[i].type_name);
    // "--insecure" alone means "--insecure true".
    if (kOptions[i].kind == Kind::kBool) flags[i]->expected(0, 1);
  }

  CommandLine out;
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out.help = app.help();
    return out;
  } catch (const CLI::CallForAllHelp&) {
    out.help = app.help("", CLI::AppFormatMode::All);
    return out;
  } catch (const CLI::CallForVersion&) {
    out.help = std::string("kvstashd ") + KVSTASH_VERSION + "\n";
    return out;
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(absl::StrCat("command line: ", e.what(),
                                                   " (see --help)"));
  }

  if (new_token) {
    out.new_token = true;
    return out;
  }
  DaemonConfig config;
  // Unset until the file or a flag sets it; then resolved against server.listen below.
  config.metrics_listen.clear();
  if (!config_path.empty()) {
    absl::StatusOr<std::string> text = ReadFile(config_path);
    if (!text.ok()) return text.status();
    absl::StatusOr<DaemonConfig> from_file = ApplyToml(config, *text, config_path);
    if (!from_file.ok()) return from_file.status();
    config = *std::move(from_file);
  }
  for (size_t i = 0; i < std::size(kOptions); ++i) {
    if (flags[i]->count() == 0) continue;
    if (absl::Status s = SetFromText(kOptions[i], kOptions[i].flag, values[i], config); !s.ok())
      return s;
  }
  if (config.metrics_listen.empty()) {
    absl::StatusOr<HostPort> grpc = SplitHostPort(config.listen);
    config.metrics_listen =
        grpc.ok() && grpc->port == 0 ? std::string("127.0.0.1:0") : kDefaultMetricsListen;
  }
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  out.config = std::move(config);
  out.print_config = print_config;
  return out;
}

}  // namespace kvstash::config
