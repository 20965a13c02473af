// Tenants, tokens and rights (server/auth/tokens.h) and the daemon options that turn them
// on (server/config). The end-to-end refusals over real sockets, TLS and the Unix socket
// are in tests/integration/auth_integration_test.cc.
#include "server/auth/tokens.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/config/config.h"

namespace kvstash::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Hash(const std::string& token) { return ToHex(HashToken(token)); }

std::string TwoTenants() {
  return absl::StrCat(R"([[tenant]]
name = "alice"
token_sha256 = ")", Hash("alice-secret"), R"("
namespaces = ["alice", "shared/*"]
rights = ["read", "write"]

[[tenant]]
name = "ops"
token_sha256 = ")", Hash("ops-secret"), R"("
uids = [4242]
cert_names = ["ops.example"]
namespaces = ["*"]
rights = ["read", "admin"]
)");
}

TEST(HashTokenTest, MatchesKnownSha256) {
  EXPECT_EQ(Hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(TokenTableTest, ParsesTenantsAndFindsThemByEachCredential) {
  absl::StatusOr<TokenTable> t = TokenTable::Parse(TwoTenants(), "tokens.toml");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->tenants().size(), 2u);
  ASSERT_NE(t->FindByToken("alice-secret"), nullptr);
  EXPECT_EQ(t->FindByToken("alice-secret")->name, "alice");
  EXPECT_EQ(t->FindByToken("alice-secreT"), nullptr);
  EXPECT_EQ(t->FindByToken(""), nullptr);
  ASSERT_NE(t->FindByUid(4242), nullptr);
  EXPECT_EQ(t->FindByUid(4242)->name, "ops");
  EXPECT_EQ(t->FindByUid(4243), nullptr);
  ASSERT_NE(t->FindByCertName("ops.example"), nullptr);
  EXPECT_EQ(t->FindByCertName("ops.example.evil"), nullptr);
}

TEST(TokenTableTest, NamespacePatternsMatchExactlyOrByPrefix) {
  Tenant t;
  t.namespaces = {"alice", "shared/*"};
  EXPECT_TRUE(t.Covers("alice"));
  EXPECT_FALSE(t.Covers("alice2"));
  EXPECT_FALSE(t.Covers("alic"));
  EXPECT_TRUE(t.Covers("shared/x"));
  EXPECT_TRUE(t.Covers("shared/"));
  EXPECT_FALSE(t.Covers("shared"));
  t.namespaces = {"*"};
  EXPECT_TRUE(t.Covers("anything"));
}

TEST(TokenTableTest, RefusesMalformedFilesNamingTenantAndField) {
  const std::string good_hash = Hash("x");
  const struct {
    std::string text;
    std::string expect;
  } cases[] = {
      {"[[tenant]]\nname = \"a\"\ntoken_sha256 = \"abc\"\nnamespaces = [\"a\"]\nrights = [\"read\"]\n",
       "tenant[0].token_sha256: not 64 hex digits"},
      {absl::StrCat("[[tenant]]\nname = \"a\"\ntoken_sha256 = \"", good_hash,
                    "\"\nnamespaces = [\"a\"]\nrights = [\"root\"]\n"),
       "tenant[0].rights: \"root\" is not read, write or admin"},
      {absl::StrCat("[[tenant]]\nname = \"a\"\ntoken_sha256 = \"", good_hash,
                    "\"\nrights = [\"read\"]\n"),
       "tenant[0].namespaces: missing"},
      {absl::StrCat("[[tenant]]\nname = \"a\"\ntoken_sha256 = \"", good_hash,
                    "\"\nnamespaces = [\"a*b\"]\nrights = [\"read\"]\n"),
       "'*' may only end a pattern"},
      {"[[tenant]]\nname = \"a\"\nnamespaces = [\"a\"]\nrights = [\"read\"]\n",
       "needs a token_sha256, uids or cert_names"},
      {absl::StrCat("[[tenant]]\nname = \"a\"\ntoken_sha256 = \"", good_hash,
                    "\"\nnamespaces = [\"a\"]\nrights = [\"read\"]\npassword = \"x\"\n"),
       "tenant[0].password: unknown key"},
      {absl::StrCat("[[tenant]]\nname = \"a\"\ntoken_sha256 = \"", good_hash,
                    "\"\nnamespaces = [\"a\"]\nrights = [\"read\"]\n[[tenant]]\nname = \"b\"\n"
                    "token_sha256 = \"", good_hash, "\"\nnamespaces = [\"b\"]\nrights = [\"read\"]\n"),
       "tenant[1].token_sha256: the same token is given to two tenants"},
      {"[tenants]\n", "tenants: unknown key"},
      {"[[tenant]\n", "not valid TOML"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<TokenTable> t = TokenTable::Parse(c.text, "tokens.toml");
    ASSERT_FALSE(t.ok()) << c.text;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(c.expect)) << c.text;
    EXPECT_THAT(std::string(t.status().message()), HasSubstr("tokens.toml"));
  }
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = absl::StrCat(::testing::TempDir(), "/tokens-", ::getpid(), ".toml");
    Write(TwoTenants());
    absl::StatusOr<std::unique_ptr<Authenticator>> a =
        Authenticator::Create(path_, [this](Refusal r) { refusals_.push_back(r); });
    ASSERT_TRUE(a.ok()) << a.status();
    auth_ = *std::move(a);
  }
  void TearDown() override { std::remove(path_.c_str()); }
  void Write(const std::string& text) {
    std::ofstream(path_, std::ios::trunc) << text;
  }
  absl::StatusOr<Principal> WithToken(absl::string_view token) {
    Credentials c;
    c.bearer_token = token;
    return auth_->Authenticate(c);
  }

  std::string path_;
  std::unique_ptr<Authenticator> auth_;
  std::vector<Refusal> refusals_;
};

TEST_F(AuthenticatorTest, NoCredentialsAndBadTokensAreUnauthenticatedWithoutTheSecret) {
  absl::StatusOr<Principal> p = auth_->Authenticate(Credentials{});
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated);
  p = WithToken("guess-me-123");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(p.status().message()), Not(HasSubstr("guess-me-123")));
  EXPECT_EQ(refusals_,
            (std::vector<Refusal>{Refusal::kMissingCredentials, Refusal::kBadToken}));
}

TEST_F(AuthenticatorTest, AWrongTokenIsRefusedEvenFromAMappedUid) {
  Credentials c;
  c.bearer_token = "wrong";
  c.peer_uid = 4242;
  EXPECT_EQ(auth_->Authenticate(c).status().code(), absl::StatusCode::kUnauthenticated);
  c.bearer_token.reset();
  absl::StatusOr<Principal> p = auth_->Authenticate(c);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->tenant, "ops");
}

TEST_F(AuthenticatorTest, AuthorizesNamespacesAndRights) {
  absl::StatusOr<Principal> alice = WithToken("alice-secret");
  ASSERT_TRUE(alice.ok());
  EXPECT_TRUE(auth_->Authorize(*alice, "alice", kRead | kWrite).ok());
  EXPECT_TRUE(auth_->Authorize(*alice, "shared/x", kWrite).ok());
  absl::Status s = auth_->Authorize(*alice, "bob", kRead);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(s.message()), HasSubstr("namespace 'bob'"));
  EXPECT_EQ(auth_->Require(*alice, kAdmin).code(), absl::StatusCode::kPermissionDenied);

  Credentials cert;
  cert.cert_names = {"someone", "ops.example"};
  absl::StatusOr<Principal> ops = auth_->Authenticate(cert);
  ASSERT_TRUE(ops.ok());
  EXPECT_TRUE(auth_->Authorize(*ops, "alice", kRead).ok());
  s = auth_->Authorize(*ops, "alice", kWrite);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(s.message()), HasSubstr("lacks the write right"));
  EXPECT_TRUE(auth_->Require(*ops, kAdmin).ok());
  EXPECT_EQ(refusals_, (std::vector<Refusal>{Refusal::kNamespace, Refusal::kRight,
                                             Refusal::kRight}));
}

TEST_F(AuthenticatorTest, ReloadSwapsTenantsAndKeepsThemOnABadFile) {
  Write(absl::StrCat("[[tenant]]\nname = \"carol\"\ntoken_sha256 = \"", Hash("carol-secret"),
                     "\"\nnamespaces = [\"carol\"]\nrights = [\"read\"]\n"));
  ASSERT_TRUE(auth_->Reload().ok());
  EXPECT_EQ(WithToken("alice-secret").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(WithToken("carol-secret").ok());
  Write("[[tenant]\n");
  EXPECT_EQ(auth_->Reload().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(WithToken("carol-secret").ok());
  EXPECT_EQ(auth_->tenants(), 1u);
}

TEST(AuthenticatorOffTest, EveryCallIsAnonymousWithEveryRight) {
  absl::StatusOr<std::unique_ptr<Authenticator>> a = Authenticator::Create("");
  ASSERT_TRUE(a.ok());
  absl::StatusOr<Principal> p = (*a)->Authenticate(Credentials{});
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->anonymous());
  EXPECT_TRUE((*a)->Authorize(*p, "anything", kRead | kWrite | kAdmin).ok());
}

// --- The daemon options -------------------------------------------------------------------

absl::StatusOr<config::CommandLine> Parse(std::vector<std::string> args) {
  std::vector<const char*> argv{"kvstashd"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  return config::ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

TEST(SecurityConfigTest, NonLoopbackWithoutAuthNeedsInsecure) {
  absl::StatusOr<config::CommandLine> cli = Parse({"--listen", "0.0.0.0:7450"});
  ASSERT_FALSE(cli.ok());
  EXPECT_EQ(cli.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(cli.status().message()), HasSubstr("--insecure"));
  cli = Parse({"--listen", "0.0.0.0:7450", "--insecure"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_TRUE(cli->config.insecure);
  cli = Parse({"--listen", "0.0.0.0:7450", "--tokens-file", "/etc/kvstash/tokens.toml"});
  EXPECT_TRUE(cli.ok()) << cli.status();
  for (const char* loopback : {"127.0.0.1:0", "[::1]:0", "localhost:7450", "127.1.2.3:1"})
    EXPECT_TRUE(Parse({"--listen", loopback}).ok()) << loopback;
}

TEST(SecurityConfigTest, TlsOptionsMustComeTogether) {
  EXPECT_THAT(std::string(Parse({"--tls-cert", "/c.pem"}).status().message()),
              HasSubstr("both the certificate and the key"));
  EXPECT_THAT(std::string(Parse({"--tls-client-ca", "/ca.pem"}).status().message()),
              HasSubstr("client certificates need TLS"));
  EXPECT_THAT(std::string(Parse({"--tls-cert", "/c.pem", "--tls-key", "/k.pem",
                                 "--tls-require-client-cert", "true"})
                              .status()
                              .message()),
              HasSubstr("needs tls.client_ca_file"));
  EXPECT_TRUE(Parse({"--tls-cert", "/c.pem", "--tls-key", "/k.pem", "--tls-client-ca",
                     "/ca.pem", "--tls-require-client-cert"})
                  .ok());
}

TEST(SecurityConfigTest, QuotasAndSocketReadFromTheFileAndPrintBack) {
  const std::string text = R"(
[server]
unix_socket = "/run/kvstash/kvstash.sock"
unix_socket_mode = "0600"
[quotas]
namespace_bytes = "1GiB"
namespace_regions = 4
[quotas.namespaces]
"team-a" = { bytes = "8GiB", regions = 32 }
"team b" = { regions = 2 }
)";
  absl::StatusOr<config::DaemonConfig> c = config::ApplyToml(config::DaemonConfig{}, text, "f");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->namespace_quota_bytes, 1ull << 30);
  EXPECT_EQ(c->namespace_max_regions, 4u);
  ASSERT_EQ(c->namespace_quotas.size(), 2u);
  EXPECT_EQ(c->namespace_quotas.at("team-a").bytes, 8ull << 30);
  EXPECT_EQ(c->namespace_quotas.at("team-a").regions, 32u);
  EXPECT_EQ(c->namespace_quotas.at("team b").bytes, 0u);
  EXPECT_TRUE(config::ValidateConfig(*c).ok());
  absl::StatusOr<config::DaemonConfig> back =
      config::ApplyToml(config::DaemonConfig{}, config::ConfigToToml(*c), "printed");
  ASSERT_TRUE(back.ok()) << back.status() << config::ConfigToToml(*c);
  EXPECT_EQ(back->namespace_quotas, c->namespace_quotas);
  EXPECT_EQ(back->unix_socket, "/run/kvstash/kvstash.sock");
  EXPECT_EQ(back->unix_socket_mode, "0600");

  c = config::ApplyToml(config::DaemonConfig{}, "[quotas.namespaces]\n\"a\" = { byts = 1 }\n", "f");
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("quotas.namespaces.\"a\".byts"));
  EXPECT_THAT(std::string(Parse({"--unix-socket-mode", "999"}).status().message()),
              HasSubstr("not an octal mode"));
  EXPECT_THAT(std::string(Parse({"--unix-socket", "relative.sock"}).status().message()),
              HasSubstr("absolute path"));
}

}  // namespace
}  // namespace kvstash::auth
