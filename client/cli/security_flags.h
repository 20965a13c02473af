// The authentication and TLS flags shared by the kvstash CLI and kvstash-bench
// (docs/cli.md, "Authentication and TLS"): --token-file, --tls, --tls-ca, --tls-cert,
// --tls-key, --tls-server-name, and the KVSTASH_TOKEN / KVSTASH_TOKEN_FILE environment.
//
// There is deliberately no --token flag: a command line is visible to every user of the
// host (ps, /proc/PID/cmdline). Header-only, because both executables already link CLI11
// and kvstash_client. Pure functions: thread-safe.
#ifndef KVSTASH_CLIENT_CLI_SECURITY_FLAGS_H_
#define KVSTASH_CLIENT_CLI_SECURITY_FLAGS_H_

#include <cstdlib>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "kvstash/client/client.h"

namespace kvstash::cli {

struct SecurityFlags {
  std::string token_file;       // --token-file / $KVSTASH_TOKEN_FILE; empty: none
  bool tls = false;             // --tls
  std::string tls_ca;           // --tls-ca PEM; empty: the system's roots
  std::string tls_cert;         // --tls-cert PEM (mutual TLS, with --tls-key)
  std::string tls_key;          // --tls-key PEM
  std::string tls_server_name;  // --tls-server-name
};

// Registers the flags on `app` (their own group of --help). `flags` must outlive
// the parse.
inline void AddSecurityFlags(CLI::App& app, SecurityFlags* flags) {
  const std::string group = "Authentication and TLS";
  app.add_option("--token-file", flags->token_file,
                 "Read the bearer token from FILE (sent as 'authorization: Bearer ...'); "
                 "default: $KVSTASH_TOKEN")
      ->envname("KVSTASH_TOKEN_FILE")
      ->type_name("FILE")
      ->group(group);
  app.add_flag("--tls", flags->tls, "Connect with TLS (implied by any --tls-* option)")
      ->group(group);
  app.add_option("--tls-ca", flags->tls_ca,
                 "PEM CA bundle that verifies the daemon (default: the system's roots)")
      ->type_name("FILE")
      ->group(group);
  app.add_option("--tls-cert", flags->tls_cert,
                 "PEM client certificate for mutual TLS (with --tls-key)")
      ->type_name("FILE")
      ->group(group);
  app.add_option("--tls-key", flags->tls_key, "PEM private key of --tls-cert")
      ->type_name("FILE")
      ->group(group);
  app.add_option("--tls-server-name", flags->tls_server_name,
                 "Name the daemon's certificate must carry (default: the --addr host)")
      ->type_name("NAME")
      ->group(group);
}

// True when any TLS flag was given.
inline bool AnyTlsFlag(const SecurityFlags& f) {
  return f.tls || !f.tls_ca.empty() || !f.tls_cert.empty() || !f.tls_key.empty() ||
         !f.tls_server_name.empty();
}

// Sets options->token and options->tls from the flags. The token is the --token-file's
// (or $KVSTASH_TOKEN_FILE's) contents, else `env_token` ($KVSTASH_TOKEN; null or empty:
// no token). Any --tls-* flag turns TLS on. InvalidArgument naming the flag or variable:
// an unreadable or empty token file, a bad token, --tls-cert without --tls-key or the
// reverse. The TLS files themselves are read by Client::Connect / CreateChannel.
inline absl::Status ApplySecurityFlags(const SecurityFlags& f, client::ClientOptions* options,
                                       const char* env_token = std::getenv("KVSTASH_TOKEN")) {
  if (!f.token_file.empty()) {
    absl::StatusOr<std::string> token = client::LoadTokenFile(f.token_file);
    if (!token.ok()) return token.status();  // "token file: cannot read '<path>': ..."
    options->token = *std::move(token);
  } else if (env_token != nullptr && *env_token != '\0') {
    if (absl::Status s = client::ValidateToken(env_token, "KVSTASH_TOKEN"); !s.ok()) return s;
    options->token = env_token;
  }
  if (f.tls_cert.empty() != f.tls_key.empty()) {
    return absl::InvalidArgumentError(f.tls_cert.empty()
                                          ? "--tls-key: given without --tls-cert"
                                          : "--tls-cert: given without --tls-key");
  }
  options->tls.enabled = AnyTlsFlag(f);
  options->tls.ca_file = f.tls_ca;
  options->tls.cert_file = f.tls_cert;
  options->tls.key_file = f.tls_key;
  options->tls.server_name_override = f.tls_server_name;
  return absl::OkStatus();
}

}  // namespace kvstash::cli

#endif  // KVSTASH_CLIENT_CLI_SECURITY_FLAGS_H_
