// Tenants and their credentials: the tokens file, and the decision "may this principal do
// this to this namespace". No gRPC here; server/rpc/auth.h adapts it to calls.
// docs/security.md has the file format, the threat model and how to deploy it.
//
// A tenant is named in the tokens file (TOML):
//
//   [[tenant]]
//   name = "team-a"
//   token_sha256 = "<64 hex digits: SHA-256 of the bearer token>"   # optional
//   uids = [1000]              # optional: Unix-socket peers with this uid act as it
//   cert_names = ["worker-a"]  # optional: mTLS client certificates with this CN or SAN
//   namespaces = ["team-a", "team-a/*"]   # exact names, "prefix*" patterns, or "*"
//   rights = ["read", "write"]            # read, write, admin
//
// Secrets are never stored: only their SHA-256, compared in constant time.
//
// Thread safety: TokenTable is immutable after Parse (share it freely); Authenticator is
// thread-safe and swaps its table atomically on Reload.
#ifndef KVSTASH_SERVER_AUTH_TOKENS_H_
#define KVSTASH_SERVER_AUTH_TOKENS_H_

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace kvstash::auth {

// What a call needs on its namespace.
enum Right : uint32_t {
  kRead = 1u << 0,   // Get, Lookup, regions used for Get
  kWrite = 1u << 1,  // Put, Delete, regions used for Put
  kAdmin = 1u << 2,  // Stats of every namespace (others see only their own)
};

using Sha256 = std::array<uint8_t, 32>;

// SHA-256 of `data`.
Sha256 HashToken(absl::string_view data);
// Lower-case hex.
std::string ToHex(const Sha256& digest);
// 64 hex digits (either case) as a digest; nullopt for anything else.
std::optional<Sha256> ParseSha256Hex(absl::string_view hex);
// Whether two digests are equal, in time independent of where they differ.
bool SameDigest(const Sha256& a, const Sha256& b);

struct Tenant {
  std::string name;
  std::optional<Sha256> token_sha256;
  std::vector<uid_t> uids;
  std::vector<std::string> cert_names;
  std::vector<std::string> namespaces;  // "name", "prefix*" or "*"
  uint32_t rights = 0;                   // Right bits

  // Whether `ns` matches one of `namespaces`.
  bool Covers(absl::string_view ns) const;
};

class TokenTable {
 public:
  // Parses a tokens file. InvalidArgument naming `origin`, the tenant index and the field
  // for anything malformed: unknown keys, a token hash that is not 64 hex digits, unknown
  // rights, no namespaces, two tenants with the same name, token hash, uid or cert name.
  static absl::StatusOr<TokenTable> Parse(absl::string_view text, absl::string_view origin);
  // Reads and parses `path`. InvalidArgument when unreadable.
  static absl::StatusOr<TokenTable> Load(const std::string& path);

  // The tenant whose token hashes to SHA-256(token), or null. Every tenant's hash is
  // compared, in constant time, whatever matches (no early exit).
  const Tenant* FindByToken(absl::string_view token) const;
  const Tenant* FindByUid(uid_t uid) const;
  const Tenant* FindByCertName(absl::string_view name) const;

  const std::vector<Tenant>& tenants() const { return tenants_; }

 private:
  std::vector<Tenant> tenants_;
};

// Who a call is from once authenticated.
struct Principal {
  std::string tenant;                    // "" = authentication off (anonymous, every right)
  std::shared_ptr<const TokenTable> table;  // keeps `grant` alive across a reload
  const Tenant* grant = nullptr;         // null = every right on every namespace

  bool anonymous() const { return grant == nullptr; }
  bool Has(uint32_t rights) const { return grant == nullptr || (grant->rights & rights) == rights; }
  bool Covers(absl::string_view ns) const { return grant == nullptr || grant->Covers(ns); }
};

// Why a call was refused; the label of kvstash_auth_refusals_total.
enum class Refusal {
  kMissingCredentials,  // UNAUTHENTICATED: no token, no mapped uid or certificate
  kBadToken,            // UNAUTHENTICATED: a token that matches no tenant
  kNamespace,           // PERMISSION_DENIED: namespace not granted to the tenant
  kRight,               // PERMISSION_DENIED: right (read/write/admin) not granted
};
absl::string_view RefusalName(Refusal r);

// What the transport knows about the caller.
struct Credentials {
  std::optional<absl::string_view> bearer_token;  // from "authorization: Bearer ..."
  std::optional<uid_t> peer_uid;                 // Unix-socket peer (SO_PEERCRED)
  std::vector<std::string> cert_names;           // verified mTLS client CN and SANs
};

class Authenticator {
 public:
  // `tokens_file` empty = authentication off: every call is anonymous with every right.
  // `on_refusal` (may be null) is called once per refused call, with the reason.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(
      const std::string& tokens_file, std::function<void(Refusal)> on_refusal = nullptr);

  bool enabled() const { return !path_.empty(); }
  const std::string& path() const { return path_; }

  // Reads the tokens file again; on error the current table stays and the error is
  // returned. Calls already authenticated keep the table they were checked against.
  absl::Status Reload();
  // Number of tenants in the current table.
  size_t tenants() const;

  // UNAUTHENTICATED (no credentials, or a token of no tenant: the message never contains
  // the token). A presented token wins over the peer uid and the certificate.
  absl::StatusOr<Principal> Authenticate(const Credentials& credentials) const;
  // PERMISSION_DENIED naming the tenant, the namespace (field `field`) and the right.
  absl::Status Authorize(const Principal& principal, absl::string_view ns, uint32_t rights,
                         absl::string_view field = "namespace") const;
  // PERMISSION_DENIED unless the principal holds `rights` (namespace-free calls).
  absl::Status Require(const Principal& principal, uint32_t rights) const;

 private:
  Authenticator(std::string path, std::shared_ptr<const TokenTable> table,
                std::function<void(Refusal)> on_refusal)
      : path_(std::move(path)), table_(std::move(table)), on_refusal_(std::move(on_refusal)) {}
  void Count(Refusal r) const {
    if (on_refusal_) on_refusal_(r);
  }

  const std::string path_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const TokenTable> table_ ABSL_GUARDED_BY(mu_);
  const std::function<void(Refusal)> on_refusal_;
};

// "read", "write", "admin" joined by "+".
std::string RightsName(uint32_t rights);

}  // namespace kvstash::auth

#endif  // KVSTASH_SERVER_AUTH_TOKENS_H_
