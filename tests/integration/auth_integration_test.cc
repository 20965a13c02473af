// Authentication, authorization, TLS and the Unix socket against the real kvstashd
// (docs/security.md): every refusal with its exact code, tenant isolation, token reload on
// SIGHUP, TLS and mutual TLS with certificates made by openssl here, and peer-uid tenants
// on the Unix socket. Calls go through raw gRPC stubs so that exactly what is on the wire
// (the authorization metadata, the channel credentials) is under test.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "server/auth/tokens.h"
#include "tests/integration/daemon_process.h"

namespace kvstash {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr uint32_t kL = 2, kT = 16, kH = 2, kD = 32;

std::string Hash(const std::string& token) { return auth::ToHex(auth::HashToken(token)); }

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

std::string Tenants(bool with_carol = false) {
  std::string text = absl::StrCat(
      "[[tenant]]\nname = \"alice\"\ntoken_sha256 = \"", Hash("alice-token"),
      "\"\ncert_names = [\"alice-worker\"]\nnamespaces = [\"alice\", \"shared/*\"]\n"
      "rights = [\"read\", \"write\"]\n\n"
      "[[tenant]]\nname = \"bob\"\ntoken_sha256 = \"", Hash("bob-token"),
      "\"\nnamespaces = [\"bob\"]\nrights = [\"read\", \"write\"]\n\n"
      "[[tenant]]\nname = \"auditor\"\ntoken_sha256 = \"", Hash("auditor-token"),
      "\"\nnamespaces = [\"alice\"]\nrights = [\"read\"]\n\n"
      "[[tenant]]\nname = \"ops\"\ntoken_sha256 = \"", Hash("ops-token"),
      "\"\nnamespaces = [\"*\"]\nrights = [\"admin\"]\n\n"
      "[[tenant]]\nname = \"local\"\nuids = [", ::geteuid(),
      "]\nnamespaces = [\"local\"]\nrights = [\"read\", \"write\"]\n");
  if (with_carol)
    absl::StrAppend(&text, "\n[[tenant]]\nname = \"carol\"\ntoken_sha256 = \"",
                    Hash("carol-token"), "\"\nnamespaces = [\"carol\"]\nrights = [\"write\"]\n");
  return text;
}

// A call's outcome: the code and message.
struct Outcome {
  grpc::StatusCode code;
  std::string message;
};

class Caller {
 public:
  Caller(const std::string& target, std::shared_ptr<grpc::ChannelCredentials> creds,
         std::string token = "")
      : stub_(v1::KvStash::NewStub(grpc::CreateChannel(target, creds))), token_(token) {}

  void Prepare(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!token_.empty()) ctx->AddMetadata("authorization", "Bearer " + token_);
  }

  Outcome Put(const std::string& ns, uint64_t key, const std::string& payload) const {
    v1::PutRequest req;
    v1::PutChunk* c = req.add_chunks();
    c->set_namespace_(ns);
    c->mutable_key()->set_hi(1);
    c->mutable_key()->set_lo(key);
    c->mutable_layout()->set_num_layers(kL);
    c->mutable_layout()->set_num_tokens(kT);
    c->mutable_layout()->set_num_heads(kH);
    c->mutable_layout()->set_head_dim(kD);
    c->set_dtype(v1::DTYPE_FP16);
    c->mutable_codec()->set_preset(v1::PRESET_FP16);
    c->set_data(payload);
    v1::PutResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx);
    const grpc::Status s = stub_->Put(&ctx, req, &resp);
    return {s.error_code(), s.error_message()};
  }
  Outcome Get(const std::string& ns, uint64_t key, std::string* data = nullptr) const {
    v1::GetRequest req;
    req.set_namespace_(ns);
    req.add_keys()->set_hi(1);
    req.mutable_keys(0)->set_lo(key);
    v1::GetResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx);
    const grpc::Status s = stub_->Get(&ctx, req, &resp);
    if (s.ok() && data != nullptr && resp.results_size() == 1) *data = resp.results(0).data();
    return {s.error_code(), s.error_message()};
  }
  Outcome Lookup(const std::string& ns, uint64_t key, uint32_t* present = nullptr) const {
    v1::LookupRequest req;
    req.set_namespace_(ns);
    req.add_keys()->set_hi(1);
    req.mutable_keys(0)->set_lo(key);
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx);
    const grpc::Status s = stub_->Lookup(&ctx, req, &resp);
    if (present != nullptr) *present = resp.present_prefix();
    return {s.error_code(), s.error_message()};
  }
  Outcome Delete(const std::string& ns, uint64_t key) const {
    v1::DeleteRequest req;
    req.set_namespace_(ns);
    req.add_keys()->set_hi(1);
    req.mutable_keys(0)->set_lo(key);
    v1::DeleteResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx);
    const grpc::Status s = stub_->Delete(&ctx, req, &resp);
    return {s.error_code(), s.error_message()};
  }
  Outcome Stats(v1::StatsResponse* resp) const {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    const grpc::Status s = stub_->Stats(&ctx, v1::StatsRequest{}, resp);
    return {s.error_code(), s.error_message()};
  }
  Outcome Register(const std::string& ns, const std::string& path) const {
    v1::RegisterRegionRequest req;
    req.set_namespace_(ns);
    req.set_path(path);
    req.set_size(4096);
    v1::RegisterRegionResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx);
    const grpc::Status s = stub_->RegisterRegion(&ctx, req, &resp);
    return {s.error_code(), s.error_message()};
  }

 private:
  std::unique_ptr<v1::KvStash::Stub> stub_;
  std::string token_;
};

// Finite fp16 values (random mantissas, small exponents), deterministic per seed.
std::string Payload(uint32_t seed) {
  std::string out(2ull * kL * kT * kH * kD * 2, '\0');
  std::mt19937 rng(seed);
  for (size_t i = 0; i < out.size(); i += 2) {
    const uint16_t h = static_cast<uint16_t>(0x3000 | (rng() & 0x0fff) | ((rng() & 1) << 15));
    out[i] = static_cast<char>(h & 0xff);
    out[i + 1] = static_cast<char>(h >> 8);
  }
  return out;
}

class AuthIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() /
            absl::StrCat("kvstash-auth-", ::getpid(), "-", counter_++))
               .string();
    std::filesystem::create_directories(dir_);
    tokens_ = dir_ + "/tokens.toml";
    std::ofstream(tokens_) << Tenants();
  }
  void TearDown() override {
    daemon_.Stop();
    std::filesystem::remove_all(dir_);
  }
  void StartDaemon(std::vector<std::string> extra) {
    extra.insert(extra.end(), {"--tokens-file", tokens_, "--host-capacity", "16MiB",
                               "--gpu", "off", "--worker-threads", "2"});
    ASSERT_TRUE(daemon_.Start(KVSTASHD_PATH, extra).ok()) << daemon_.Log();
  }
  Caller Plain(const std::string& token) const {
    return Caller(daemon_.address(), grpc::InsecureChannelCredentials(), token);
  }

  static inline int counter_ = 0;
  std::string dir_, tokens_;
  testing::DaemonProcess daemon_;
};

TEST_F(AuthIntegrationTest, MissingMalformedAndWrongTokensAreUnauthenticated) {
  StartDaemon({});
  const std::string payload = Payload(1);
  Outcome o = Plain("").Put("alice", 1, payload);
  EXPECT_EQ(o.code, grpc::StatusCode::UNAUTHENTICATED) << o.message;
  EXPECT_THAT(o.message, HasSubstr("no credentials"));
  o = Plain("not-a-tenant-secret").Get("alice", 1);
  EXPECT_EQ(o.code, grpc::StatusCode::UNAUTHENTICATED) << o.message;
  EXPECT_THAT(o.message, Not(HasSubstr("not-a-tenant-secret")));
  v1::StatsResponse stats;
  EXPECT_EQ(Plain("").Stats(&stats).code, grpc::StatusCode::UNAUTHENTICATED);

  // A header that is not "Bearer <token>".
  auto stub = v1::KvStash::NewStub(
      grpc::CreateChannel(daemon_.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Basic YWxpY2U6cHc=");
  v1::StatsResponse r;
  const grpc::Status s = stub->Stats(&ctx, v1::StatsRequest{}, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), Not(HasSubstr("YWxpY2U6cHc")));
  // The secret never reaches the log either.
  EXPECT_THAT(daemon_.Log(), Not(HasSubstr("not-a-tenant-secret")));
}

TEST_F(AuthIntegrationTest, ATenantCannotTouchAnotherTenantsNamespace) {
  StartDaemon({});
  const Caller alice = Plain("alice-token"), bob = Plain("bob-token");
  const std::string payload = Payload(2);
  ASSERT_EQ(alice.Put("alice", 7, payload).code, grpc::StatusCode::OK);
  ASSERT_EQ(alice.Put("shared/a", 7, payload).code, grpc::StatusCode::OK);

  // Read, look up, overwrite, delete: all PERMISSION_DENIED naming the namespace.
  Outcome o = bob.Get("alice", 7);
  EXPECT_EQ(o.code, grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(o.message, HasSubstr("namespace 'alice'"));
  EXPECT_EQ(bob.Lookup("alice", 7).code, grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(bob.Put("alice", 7, Payload(3)).code, grpc::StatusCode::PERMISSION_DENIED);
  o = bob.Delete("alice", 7);
  EXPECT_EQ(o.code, grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(bob.Get("shared/a", 7).code, grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(bob.Register("alice", "/dev/shm/x").code, grpc::StatusCode::PERMISSION_DENIED);
  // Bob's own namespace works, and alice's chunk is untouched.
  EXPECT_EQ(bob.Put("bob", 7, Payload(4)).code, grpc::StatusCode::OK);
  std::string back;
  ASSERT_EQ(alice.Get("alice", 7, &back).code, grpc::StatusCode::OK);
  EXPECT_TRUE(back == payload);
  uint32_t present = 0;
  ASSERT_EQ(alice.Lookup("alice", 7, &present).code, grpc::StatusCode::OK);
  EXPECT_EQ(present, 1u);
}

TEST_F(AuthIntegrationTest, RightsAreEnforcedPerCall) {
  StartDaemon({});
  const Caller alice = Plain("alice-token"), auditor = Plain("auditor-token"),
               ops = Plain("ops-token");
  ASSERT_EQ(alice.Put("alice", 1, Payload(5)).code, grpc::StatusCode::OK);
  // Read-only: Get and Lookup yes, Put and Delete no.
  EXPECT_EQ(auditor.Get("alice", 1).code, grpc::StatusCode::OK);
  EXPECT_EQ(auditor.Lookup("alice", 1).code, grpc::StatusCode::OK);
  Outcome o = auditor.Put("alice", 2, Payload(6));
  EXPECT_EQ(o.code, grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(o.message, HasSubstr("lacks the write right"));
  EXPECT_EQ(auditor.Delete("alice", 1).code, grpc::StatusCode::PERMISSION_DENIED);
  // Admin sees everything in Stats but has no data rights of its own.
  EXPECT_EQ(ops.Get("alice", 1).code, grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(AuthIntegrationTest, StatsShowTheWholeStoreOnlyToAdmins) {
  StartDaemon({});
  const Caller alice = Plain("alice-token"), bob = Plain("bob-token"), ops = Plain("ops-token");
  ASSERT_EQ(alice.Put("alice", 1, Payload(7)).code, grpc::StatusCode::OK);
  ASSERT_EQ(alice.Put("alice", 2, Payload(8)).code, grpc::StatusCode::OK);
  v1::StatsResponse as_bob, as_ops;
  ASSERT_EQ(bob.Stats(&as_bob).code, grpc::StatusCode::OK);
  ASSERT_EQ(ops.Stats(&as_ops).code, grpc::StatusCode::OK);
  EXPECT_EQ(as_ops.chunks(), 2u);
  EXPECT_EQ(as_ops.puts(), 2u);
  EXPECT_EQ(as_bob.chunks(), 0u);
  EXPECT_EQ(as_bob.puts(), 0u);
  EXPECT_EQ(as_bob.used_bytes(), 0u);
  EXPECT_EQ(as_bob.capacity_bytes(), as_ops.capacity_bytes());
  EXPECT_EQ(as_bob.max_message_bytes(), as_ops.max_message_bytes());
  // Per-namespace figures: the admin sees alice's namespace, bob sees none of it.
  ASSERT_EQ(bob.Put("bob", 1, Payload(15)).code, grpc::StatusCode::OK);
  ASSERT_EQ(bob.Stats(&as_bob).code, grpc::StatusCode::OK);
  ASSERT_EQ(ops.Stats(&as_ops).code, grpc::StatusCode::OK);
  ASSERT_EQ(as_bob.namespaces_size(), 1);
  EXPECT_EQ(as_bob.namespaces(0).namespace_(), "bob");
  EXPECT_EQ(as_bob.namespaces(0).chunks(), 1u);
  bool ops_sees_alice = false;
  for (const v1::NamespaceStats& n : as_ops.namespaces())
    ops_sees_alice |= n.namespace_() == "alice" && n.chunks() == 2;
  EXPECT_TRUE(ops_sees_alice);
}

TEST_F(AuthIntegrationTest, SighupReloadsTokensAndABadFileKeepsTheOldOnes) {
  StartDaemon({});
  EXPECT_EQ(Plain("carol-token").Put("carol", 1, Payload(9)).code,
            grpc::StatusCode::UNAUTHENTICATED);
  {
    std::ofstream(tokens_ + ".new") << Tenants(/*with_carol=*/true);
    std::filesystem::rename(tokens_ + ".new", tokens_);
  }
  ASSERT_EQ(::kill(daemon_.pid(), SIGHUP), 0);
  // The reload is asynchronous; wait for the daemon to take it.
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  for (int i = 0; i < 200 && code != grpc::StatusCode::OK; ++i) {
    code = Plain("carol-token").Put("carol", 1, Payload(9)).code;
    if (code != grpc::StatusCode::OK) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(code, grpc::StatusCode::OK) << daemon_.Log();

  std::ofstream(tokens_, std::ios::trunc) << "[[tenant]\n";  // not TOML
  ASSERT_EQ(::kill(daemon_.pid(), SIGHUP), 0);
  for (int i = 0; i < 200 && daemon_.Log().find("kept the previous tenants") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_THAT(daemon_.Log(), HasSubstr("kept the previous tenants"));
  EXPECT_EQ(Plain("carol-token").Get("carol", 1).code, grpc::StatusCode::PERMISSION_DENIED)
      << "carol has write only";
  EXPECT_EQ(Plain("alice-token").Put("alice", 1, Payload(10)).code, grpc::StatusCode::OK);
}

TEST_F(AuthIntegrationTest, UnixSocketPeersActAsTheirUidsTenant) {
  const std::string sock = dir_ + "/kvstash.sock";
  StartDaemon({"--unix-socket", sock, "--unix-socket-mode", "0600"});
  struct stat st;
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const Caller local("unix:" + sock, grpc::InsecureChannelCredentials());
  Outcome o = local.Put("local", 1, Payload(11));
  ASSERT_EQ(o.code, grpc::StatusCode::OK) << o.message;
  EXPECT_EQ(local.Get("local", 1).code, grpc::StatusCode::OK);
  EXPECT_EQ(local.Get("alice", 1).code, grpc::StatusCode::PERMISSION_DENIED);
  // The same uid over TCP carries no identity.
  EXPECT_EQ(Plain("").Get("local", 1).code, grpc::StatusCode::UNAUTHENTICATED);
  // A token over the socket wins over the uid.
  const Caller alice_local("unix:" + sock, grpc::InsecureChannelCredentials(), "alice-token");
  EXPECT_EQ(alice_local.Put("alice", 1, Payload(12)).code, grpc::StatusCode::OK);
  EXPECT_EQ(alice_local.Get("local", 1).code, grpc::StatusCode::PERMISSION_DENIED);
  // Many short connections: each is mapped to its own peer.
  for (int i = 0; i < 20; ++i) {
    const Caller c("unix:" + sock, grpc::InsecureChannelCredentials());
    ASSERT_EQ(c.Lookup("local", 1).code, grpc::StatusCode::OK);
  }
  daemon_.Stop();
  EXPECT_FALSE(std::filesystem::exists(sock)) << "the socket file is removed on shutdown";
}

// --- TLS --------------------------------------------------------------------------------

class TlsIntegrationTest : public AuthIntegrationTest {
 protected:
  void SetUp() override {
    AuthIntegrationTest::SetUp();
    if (std::system("command -v openssl >/dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl";
    // A CA, a server certificate for 127.0.0.1/localhost, a client certificate
    // "alice-worker" from the CA, and a second, unrelated CA.
    const std::string d = dir_;
    const std::string script = absl::StrCat(
        "set -e; cd ", d, "\n",
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca "
        "-keyout ca.key -out ca.pem\n",
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca "
        "-keyout other.key -out other.pem\n",
        "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key "
        "-out server.csr\n",
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext\n",
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-extfile server.ext -out server.pem\n",
        "openssl req -newkey rsa:2048 -nodes -subj /CN=alice-worker -keyout client.key "
        "-out client.csr\n",
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-out client.pem\n",
        "openssl req -newkey rsa:2048 -nodes -subj /CN=alice-worker -keyout rogue.key "
        "-out rogue.csr\n",
        "openssl x509 -req -in rogue.csr -CA other.pem -CAkey other.key -CAcreateserial "
        "-days 2 -out rogue.pem\n");
    ASSERT_EQ(std::system(absl::StrCat("bash -c '", script, "' >", d, "/openssl.log 2>&1").c_str()), 0)
        << ReadAll(d + "/openssl.log");
  }
  std::shared_ptr<grpc::ChannelCredentials> Tls(const std::string& ca, const std::string& cert = "",
                                                const std::string& key = "") const {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = ReadAll(dir_ + "/" + ca);
    if (!cert.empty()) {
      o.pem_cert_chain = ReadAll(dir_ + "/" + cert);
      o.pem_private_key = ReadAll(dir_ + "/" + key);
    }
    return grpc::SslCredentials(o);
  }
};

TEST_F(TlsIntegrationTest, ServesTlsToClientsThatTrustTheCaOnly) {
  StartDaemon({"--tls-cert", dir_ + "/server.pem", "--tls-key", dir_ + "/server.key"});
  const Caller good(daemon_.address(), Tls("ca.pem"), "alice-token");
  Outcome o = good.Put("alice", 1, Payload(13));
  EXPECT_EQ(o.code, grpc::StatusCode::OK) << o.message;
  // Wrong CA, and plaintext against the TLS port: no connection.
  EXPECT_EQ(Caller(daemon_.address(), Tls("other.pem"), "alice-token").Get("alice", 1).code,
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Plain("alice-token").Get("alice", 1).code, grpc::StatusCode::UNAVAILABLE);
  // TLS alone is not an identity: the token is still required.
  EXPECT_EQ(Caller(daemon_.address(), Tls("ca.pem")).Get("alice", 1).code,
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(TlsIntegrationTest, MutualTlsMapsVerifiedClientCertificatesToTenants) {
  StartDaemon({"--tls-cert", dir_ + "/server.pem", "--tls-key", dir_ + "/server.key",
               "--tls-client-ca", dir_ + "/ca.pem", "--tls-require-client-cert"});
  // A client certificate from the CA named alice-worker acts as alice, without a token.
  const Caller worker(daemon_.address(), Tls("ca.pem", "client.pem", "client.key"));
  Outcome o = worker.Put("alice", 1, Payload(14));
  EXPECT_EQ(o.code, grpc::StatusCode::OK) << o.message;
  EXPECT_EQ(worker.Get("bob", 1).code, grpc::StatusCode::PERMISSION_DENIED);
  // No client certificate, or one with the same name from another CA: no handshake.
  EXPECT_EQ(Caller(daemon_.address(), Tls("ca.pem"), "alice-token").Get("alice", 1).code,
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Caller(daemon_.address(), Tls("ca.pem", "rogue.pem", "rogue.key")).Get("alice", 1).code,
            grpc::StatusCode::UNAVAILABLE);
}

TEST(AuthStartupTest, RefusesAnOpenPortWithoutAuthentication) {
  const std::string cmd = absl::StrCat(KVSTASHD_PATH,
                                       " --listen 0.0.0.0:0 --metrics-listen 127.0.0.1:0 2>&1");
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  const int status = ::pclose(p);
  EXPECT_EQ(WEXITSTATUS(status), 2) << out;
  EXPECT_THAT(out, HasSubstr("--insecure"));
}

}  // namespace
}  // namespace kvstash
