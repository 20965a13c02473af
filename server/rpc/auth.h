// gRPC side of authentication (docs/security.md): reads a call's credentials (bearer
// token metadata, Unix-socket peer uid, verified mTLS client certificate names) for
// auth::Authenticator, and serves gRPC on a Unix domain socket whose connections carry
// their peer's uid.
#ifndef KVSTASH_SERVER_RPC_AUTH_H_
#define KVSTASH_SERVER_RPC_AUTH_H_

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/auth/tokens.h"

namespace kvstash::rpc {

// Listens on a Unix domain socket and hands each accepted connection to a gRPC server,
// remembering the peer's uid (SO_PEERCRED) by descriptor: gRPC names such a connection's
// peer "fd:N", which PeerUid maps back.
//
// Thread-safe. Lifetime: create before the grpc::Server is built (the path is bound then,
// so a taken path is a startup error), Start once the server runs, destroy after the
// server has been shut down.
class UnixSocketListener {
 public:
  // Binds `path` (a stale socket file nobody answers on is replaced; a live one is
  // FailedPrecondition: another daemon serves there) and chmods it to `mode`.
  static absl::StatusOr<std::unique_ptr<UnixSocketListener>> Create(const std::string& path,
                                                                    mode_t mode);
  ~UnixSocketListener();
  UnixSocketListener(const UnixSocketListener&) = delete;
  UnixSocketListener& operator=(const UnixSocketListener&) = delete;

  // Starts accepting; each connection is added to `server` (not owned; must outlive
  // Stop or the destructor).
  void Start(grpc::Server* server);
  // Stops accepting and unlinks the socket file. Idempotent.
  void Stop();

  // The uid of the peer of a call whose grpc peer string is `peer`, if it came through
  // this listener.
  std::optional<uid_t> PeerUid(absl::string_view peer) const;
  const std::string& path() const { return path_; }

 private:
  UnixSocketListener(std::string path, int fd, int wake_read, int wake_write)
      : path_(std::move(path)), fd_(fd), wake_read_(wake_read), wake_write_(wake_write) {}
  void AcceptLoop(grpc::Server* server);

  const std::string path_;
  const int fd_;
  const int wake_read_, wake_write_;  // a pipe that wakes the accept loop to stop
  std::thread thread_;
  std::atomic<bool> stopped_{false};
  mutable absl::Mutex mu_;
  std::unordered_map<int, uid_t> peers_ ABSL_GUARDED_BY(mu_);
};

// Authenticates calls: the "authorization: Bearer <token>" metadata, the Unix-socket
// peer's uid, and the CN/SANs of a verified client certificate.
// Thread-safe; `auth` and `unix` (may be null) are not owned and must outlive it.
class CallAuthenticator {
 public:
  CallAuthenticator(const auth::Authenticator* auth, const UnixSocketListener* unix)
      : auth_(auth), unix_(unix) {}

  bool enabled() const { return auth_ != nullptr && auth_->enabled(); }
  const auth::Authenticator* authenticator() const { return auth_; }
  // UNAUTHENTICATED for no or bad credentials, or a malformed authorization header.
  absl::StatusOr<auth::Principal> Authenticate(grpc::CallbackServerContext* context) const;
  // Authenticate, then Authorize on `ns` (the request's namespace, named `field`).
  absl::StatusOr<auth::Principal> Check(grpc::CallbackServerContext* context,
                                        absl::string_view ns, uint32_t rights,
                                        absl::string_view field = "namespace") const;

 private:
  const auth::Authenticator* const auth_;
  const UnixSocketListener* const unix_;
};

}  // namespace kvstash::rpc

#endif  // KVSTASH_SERVER_RPC_AUTH_H_
