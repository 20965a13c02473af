// Fuzz target (d): the daemon's configuration parsers (server/config/config.h).
//
// Input: byte 0 picks the mode, the rest is text.
//   mode 0: a TOML document for ApplyToml, then ValidateConfig;
//   mode 1: each line for ParseSize, ParseDuration and SplitHostPort;
//   mode 2: lines as command-line arguments for ParseCommandLine (without --config, so
//           the harness reads no files);
//   mode 3: a tokens file for auth::TokenTable::Parse (server/auth/tokens.h).
// Oracles besides the sanitizers: every refusal is InvalidArgument; a document ApplyToml
// accepts prints (ConfigToToml) as one it reads back to the same configuration (compared
// as printed text); a parsed size or duration prints (FormatSize, FormatDuration) as text
// that parses back to the same value; a parsed HOST:PORT has a port <= 65535.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "fuzz_common.h"
#include "server/auth/tokens.h"
#include "server/config/config.h"

namespace kvstash::fuzz {
namespace {

std::string Str(const absl::Status& s) { return std::string(s.ToString()); }

void CheckRefusal(const char* what, const absl::Status& s) {
  FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument, "%s: %s", what, Str(s).c_str());
}

std::vector<std::string> Lines(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    out.emplace_back(text.substr(0, nl));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return out;
}

void RunToml(std::string_view text) {
  const absl::string_view t(text.data(), text.size());
  auto c = config::ApplyToml(config::DaemonConfig{}, t, "fuzz.toml");
  if (!c.ok()) {
    CheckRefusal("ApplyToml", c.status());
    return;
  }
  if (absl::Status v = config::ValidateConfig(*c); !v.ok()) CheckRefusal("ValidateConfig", v);
  const std::string printed = config::ConfigToToml(*c);
  auto again = config::ApplyToml(config::DaemonConfig{}, printed, "printed.toml");
  FUZZ_CHECK(again.ok(), "ConfigToToml printed a document ApplyToml refuses: %s\n%s",
             Str(again.status()).c_str(), printed.c_str());
  const std::string reprinted = config::ConfigToToml(*again);
  FUZZ_CHECK(reprinted == printed, "the printed configuration reads back differently:\n%s\n---\n%s",
             printed.c_str(), reprinted.c_str());
}

void RunValues(std::string_view text) {
  for (const std::string& line : Lines(text)) {
    if (auto v = config::ParseSize(line); v.ok()) {
      const std::string f = config::FormatSize(*v);
      auto back = config::ParseSize(f);
      FUZZ_CHECK(back.ok() && *back == *v, "size %llu prints as '%s'",
                 static_cast<unsigned long long>(*v), f.c_str());
    } else {
      CheckRefusal("ParseSize", v.status());
    }
    if (auto v = config::ParseDuration(line); v.ok()) {
      const std::string f = config::FormatDuration(*v);
      auto back = config::ParseDuration(f);
      FUZZ_CHECK(back.ok() && *back == *v, "duration %llu ms prints as '%s'",
                 static_cast<unsigned long long>(*v), f.c_str());
    } else {
      CheckRefusal("ParseDuration", v.status());
    }
    if (auto hp = config::SplitHostPort(line); hp.ok()) {
      FUZZ_CHECK(hp->port <= 65535 && !hp->host.empty(), "'%s' split into '%s' port %u",
                 line.c_str(), hp->host.c_str(), hp->port);
    } else {
      CheckRefusal("SplitHostPort", hp.status());
    }
  }
}

void RunCommandLine(std::string_view text) {
  std::vector<std::string> args = {"kvstashd"};
  for (std::string& line : Lines(text)) {
    if (line.rfind("--config", 0) == 0) continue;  // no file reads
    args.push_back(std::move(line));
    if (args.size() > 64) break;
  }
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  auto cl = config::ParseCommandLine(static_cast<int>(argv.size()), argv.data());
  if (!cl.ok()) CheckRefusal("ParseCommandLine", cl.status());
}

// A tokens file: refused with InvalidArgument, or every tenant it yields has a name, a
// credential, namespaces and rights, and is found again by each of its credentials.
void RunTokens(std::string_view text) {
  absl::StatusOr<auth::TokenTable> t = auth::TokenTable::Parse(
      absl::string_view(text.data(), text.size()), "fuzz-tokens.toml");
  if (!t.ok()) {
    CheckRefusal("TokenTable::Parse", t.status());
    return;
  }
  for (const auth::Tenant& tenant : t->tenants()) {
    FUZZ_CHECK(!tenant.name.empty() && !tenant.namespaces.empty() && tenant.rights != 0,
               "tenant accepted without a name, namespaces or rights%s", "");
    FUZZ_CHECK(tenant.token_sha256 || !tenant.uids.empty() || !tenant.cert_names.empty(),
               "tenant %s accepted without a credential", tenant.name.c_str());
    for (uid_t u : tenant.uids)
      FUZZ_CHECK(t->FindByUid(u) == &tenant, "uid %u not found back", static_cast<unsigned>(u));
    for (const std::string& c : tenant.cert_names)
      FUZZ_CHECK(t->FindByCertName(c) == &tenant, "cert name %s not found back", c.c_str());
  }
}

}  // namespace
}  // namespace kvstash::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash::fuzz;
  if (size < 1) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 4) {
    case 0: RunToml(text); break;
    case 1: RunValues(text); break;
    case 2: RunCommandLine(text); break;
    case 3: RunTokens(text); break;
  }
  return 0;
}
