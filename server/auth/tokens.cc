#include "server/auth/tokens.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include <toml++/toml.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvstash::auth {

namespace {

absl::Status Bad(absl::string_view origin, size_t index, absl::string_view field,
                 absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(origin, ": tenant[", index, "].", field, ": ", what));
}

// A list of strings; InvalidArgument naming the field otherwise.
absl::StatusOr<std::vector<std::string>> Strings(const toml::node& node, absl::string_view origin,
                                                 size_t index, absl::string_view field) {
  const toml::array* a = node.as_array();
  if (a == nullptr) return Bad(origin, index, field, "not a list of strings");
  std::vector<std::string> out;
  for (const toml::node& e : *a) {
    const auto* s = e.as_string();
    if (s == nullptr) return Bad(origin, index, field, "not a list of strings");
    out.push_back(s->get());
  }
  return out;
}

constexpr const char* kTenantKeys = "name, token_sha256, uids, cert_names, namespaces, rights";

}  // namespace

Sha256 HashToken(absl::string_view data) {
  Sha256 out;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data());
  return out;
}

namespace {
int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

std::optional<Sha256> ParseSha256Hex(absl::string_view hex) {
  if (hex.size() != 64) return std::nullopt;
  Sha256 out;
  for (size_t i = 0; i < 32; ++i) {
    const int hi = HexDigit(hex[2 * i]), lo = HexDigit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

bool SameDigest(const Sha256& a, const Sha256& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string ToHex(const Sha256& digest) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(64);
  for (uint8_t b : digest) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

std::string RightsName(uint32_t rights) {
  std::vector<absl::string_view> names;
  if (rights & kRead) names.push_back("read");
  if (rights & kWrite) names.push_back("write");
  if (rights & kAdmin) names.push_back("admin");
  return names.empty() ? "none" : absl::StrJoin(names, "+");
}

absl::string_view RefusalName(Refusal r) {
  switch (r) {
    case Refusal::kMissingCredentials: return "missing_credentials";
    case Refusal::kBadToken: return "bad_token";
    case Refusal::kNamespace: return "namespace";
    case Refusal::kRight: return "right";
  }
  return "unknown";
}

bool Tenant::Covers(absl::string_view ns) const {
  for (const std::string& pattern : namespaces) {
    if (!pattern.empty() && pattern.back() == '*') {
      const absl::string_view prefix(pattern.data(), pattern.size() - 1);
      if (ns.size() >= prefix.size() && ns.substr(0, prefix.size()) == prefix) return true;
    } else if (ns == pattern) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text, absl::string_view origin) {
  toml::table root;
  try {
    root = toml::parse(std::string_view(text.data(), text.size()),
                       std::string_view(origin.data(), origin.size()));
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return absl::InvalidArgumentError(absl::StrCat(origin, ":", static_cast<uint32_t>(where.line), ":", static_cast<uint32_t>(where.column),
                                                   ": not valid TOML: ",
                                                   std::string(e.description())));
  }
  TokenTable table;
  for (const auto& [key, node] : root) {
    if (key.str() != "tenant")
      return absl::InvalidArgumentError(absl::StrCat(
          origin, ": ", std::string(key.str()), ": unknown key (the file holds [[tenant]] tables only)"));
  }
  const toml::node_view<toml::node> tenants = root["tenant"];
  if (!tenants) return table;  // an empty file: nobody may connect
  const toml::array* list = tenants.as_array();
  if (list == nullptr)
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": tenant: expected [[tenant]] tables"));
  std::set<std::string> names, hashes, certs;
  std::set<uid_t> uids;
  for (size_t i = 0; i < list->size(); ++i) {
    const toml::table* t = (*list)[i].as_table();
    if (t == nullptr) return Bad(origin, i, "", "expected a table");
    Tenant tenant;
    for (const auto& [k, v] : *t) {
      const std::string field(k.str());
      if (field == "name") {
        const auto* s = v.as_string();
        if (s == nullptr || s->get().empty()) return Bad(origin, i, field, "not a non-empty string");
        tenant.name = s->get();
      } else if (field == "token_sha256") {
        const auto* s = v.as_string();
        std::optional<Sha256> digest = s ? ParseSha256Hex(s->get()) : std::nullopt;
        if (!digest)
          return Bad(origin, i, field,
                     "not 64 hex digits (the SHA-256 of the token: printf %s \"$TOKEN\" | "
                     "sha256sum, or kvstashd --new-token)");
        tenant.token_sha256 = *digest;
      } else if (field == "uids") {
        const toml::array* a = v.as_array();
        if (a == nullptr) return Bad(origin, i, field, "not a list of uids");
        for (const toml::node& e : *a) {
          const auto* n = e.as_integer();
          if (n == nullptr || n->get() < 0 || n->get() > std::numeric_limits<uint32_t>::max() - 1)
            return Bad(origin, i, field, "not a list of uids");
          tenant.uids.push_back(static_cast<uid_t>(n->get()));
        }
      } else if (field == "cert_names") {
        absl::StatusOr<std::vector<std::string>> s = Strings(v, origin, i, field);
        if (!s.ok()) return s.status();
        tenant.cert_names = *std::move(s);
      } else if (field == "namespaces") {
        absl::StatusOr<std::vector<std::string>> s = Strings(v, origin, i, field);
        if (!s.ok()) return s.status();
        for (const std::string& p : *s) {
          if (p.empty()) return Bad(origin, i, field, "an empty pattern");
          if (p.find('*') != std::string::npos && p.find('*') != p.size() - 1)
            return Bad(origin, i, field,
                       absl::StrCat("\"", p, "\": '*' may only end a pattern"));
        }
        tenant.namespaces = *std::move(s);
      } else if (field == "rights") {
        absl::StatusOr<std::vector<std::string>> s = Strings(v, origin, i, field);
        if (!s.ok()) return s.status();
        for (const std::string& r : *s) {
          if (r == "read") tenant.rights |= kRead;
          else if (r == "write") tenant.rights |= kWrite;
          else if (r == "admin") tenant.rights |= kAdmin;
          else return Bad(origin, i, field, absl::StrCat("\"", r, "\" is not read, write or admin"));
        }
      } else {
        return Bad(origin, i, field, absl::StrCat("unknown key (known: ", kTenantKeys, ")"));
      }
    }
    if (tenant.name.empty()) return Bad(origin, i, "name", "missing");
    if (!tenant.token_sha256 && tenant.uids.empty() && tenant.cert_names.empty())
      return Bad(origin, i, "token_sha256",
                 "missing (a tenant needs a token_sha256, uids or cert_names)");
    if (tenant.namespaces.empty()) return Bad(origin, i, "namespaces", "missing or empty");
    if (tenant.rights == 0) return Bad(origin, i, "rights", "missing or empty");
    if (!names.insert(tenant.name).second)
      return Bad(origin, i, "name", absl::StrCat("\"", tenant.name, "\" is used twice"));
    if (tenant.token_sha256 && !hashes.insert(ToHex(*tenant.token_sha256)).second)
      return Bad(origin, i, "token_sha256", "the same token is given to two tenants");
    for (uid_t u : tenant.uids)
      if (!uids.insert(u).second)
        return Bad(origin, i, "uids", absl::StrCat("uid ", u, " is given to two tenants"));
    for (const std::string& c : tenant.cert_names)
      if (!certs.insert(c).second)
        return Bad(origin, i, "cert_names", absl::StrCat("\"", c, "\" is given to two tenants"));
    table.tenants_.push_back(std::move(tenant));
  }
  return table;
}

absl::StatusOr<TokenTable> TokenTable::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::InvalidArgumentError(
        absl::StrCat("auth.tokens_file: cannot read ", path, ": ", std::strerror(errno)));
  std::ostringstream os;
  os << in.rdbuf();
  return Parse(os.str(), path);
}

const Tenant* TokenTable::FindByToken(absl::string_view token) const {
  const Sha256 digest = HashToken(token);
  const Tenant* found = nullptr;
  for (const Tenant& t : tenants_) {
    if (!t.token_sha256) continue;
    // No early exit: the time taken does not depend on which tenant (if any) matches.
    if (SameDigest(digest, *t.token_sha256)) found = &t;
  }
  return found;
}

const Tenant* TokenTable::FindByUid(uid_t uid) const {
  for (const Tenant& t : tenants_)
    for (uid_t u : t.uids)
      if (u == uid) return &t;
  return nullptr;
}

const Tenant* TokenTable::FindByCertName(absl::string_view name) const {
  for (const Tenant& t : tenants_)
    for (const std::string& c : t.cert_names)
      if (c == name) return &t;
  return nullptr;
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    const std::string& tokens_file, std::function<void(Refusal)> on_refusal) {
  std::shared_ptr<const TokenTable> table;
  if (!tokens_file.empty()) {
    absl::StatusOr<TokenTable> loaded = TokenTable::Load(tokens_file);
    if (!loaded.ok()) return loaded.status();
    table = std::make_shared<const TokenTable>(*std::move(loaded));
  }
  return std::unique_ptr<Authenticator>(
      new Authenticator(tokens_file, std::move(table), std::move(on_refusal)));
}

absl::Status Authenticator::Reload() {
  if (path_.empty()) return absl::OkStatus();
  absl::StatusOr<TokenTable> loaded = TokenTable::Load(path_);
  if (!loaded.ok()) return loaded.status();
  auto table = std::make_shared<const TokenTable>(*std::move(loaded));
  absl::MutexLock lock(&mu_);
  table_ = std::move(table);
  return absl::OkStatus();
}

size_t Authenticator::tenants() const {
  absl::MutexLock lock(&mu_);
  return table_ ? table_->tenants().size() : 0;
}

absl::StatusOr<Principal> Authenticator::Authenticate(const Credentials& credentials) const {
  if (path_.empty()) return Principal{};
  std::shared_ptr<const TokenTable> table;
  {
    absl::MutexLock lock(&mu_);
    table = table_;
  }
  const Tenant* tenant = nullptr;
  if (credentials.bearer_token) {
    tenant = table->FindByToken(*credentials.bearer_token);
    if (tenant == nullptr) {
      Count(Refusal::kBadToken);
      return absl::UnauthenticatedError(
          "authorization: the bearer token matches no tenant (check the token, or ask the "
          "operator whether it was revoked)");
    }
  }
  if (tenant == nullptr && credentials.peer_uid) tenant = table->FindByUid(*credentials.peer_uid);
  for (size_t i = 0; tenant == nullptr && i < credentials.cert_names.size(); ++i)
    tenant = table->FindByCertName(credentials.cert_names[i]);
  if (tenant == nullptr) {
    Count(Refusal::kMissingCredentials);
    return absl::UnauthenticatedError(
        "authorization: no credentials (send metadata \"authorization: Bearer <token>\", "
        "or connect over the Unix socket as a mapped uid, or with a mapped client "
        "certificate)");
  }
  Principal p;
  p.tenant = tenant->name;
  p.grant = tenant;
  p.table = std::move(table);
  return p;
}

absl::Status Authenticator::Authorize(const Principal& principal, absl::string_view ns,
                                      uint32_t rights, absl::string_view field) const {
  if (!principal.Covers(ns)) {
    Count(Refusal::kNamespace);
    return absl::PermissionDeniedError(absl::StrCat(
        field, ": tenant '", principal.tenant, "' may not use namespace '", ns, "'"));
  }
  if (!principal.Has(rights)) {
    Count(Refusal::kRight);
    return absl::PermissionDeniedError(absl::StrCat(
        field, ": tenant '", principal.tenant, "' lacks the ", RightsName(rights),
        " right (it has ", RightsName(principal.grant->rights), ")"));
  }
  return absl::OkStatus();
}

absl::Status Authenticator::Require(const Principal& principal, uint32_t rights) const {
  if (principal.Has(rights)) return absl::OkStatus();
  Count(Refusal::kRight);
  return absl::PermissionDeniedError(absl::StrCat("tenant '", principal.tenant, "' lacks the ",
                                                  RightsName(rights), " right"));
}

}  // namespace kvstash::auth
