#include "server/rpc/auth.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <grpc/grpc_security_constants.h>
#include <grpcpp/server_posix.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace kvstash::rpc {

namespace {

std::string Errno(int err) { return std::strerror(err); }

// A socket address for `path`; false when the path does not fit sun_path.
bool UnixAddress(const std::string& path, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr->sun_path)) return false;
  std::memcpy(addr->sun_path, path.data(), path.size());
  return true;
}

// Whether a daemon answers on the socket file at `path`.
bool SomeoneListens(const sockaddr_un& addr) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool live = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return live;
}

}  // namespace

// --- UnixSocketListener -----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<UnixSocketListener>> UnixSocketListener::Create(
    const std::string& path, mode_t mode) {
  sockaddr_un addr;
  if (!UnixAddress(path, &addr))
    return absl::InvalidArgumentError(absl::StrCat(
        "server.unix_socket: \"", path, "\" is empty or longer than ", sizeof(addr.sun_path) - 1,
        " bytes"));
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return absl::FailedPreconditionError(absl::StrCat(
          "server.unix_socket: ", path, " exists and is not a socket; refusing to replace it"));
    if (SomeoneListens(addr))
      return absl::FailedPreconditionError(absl::StrCat(
          "server.unix_socket: another process is serving on ", path));
    ::unlink(path.c_str());  // stale: left by a daemon that did not shut down cleanly
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("server.unix_socket: socket: ", Errno(errno)));
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("server.unix_socket: cannot bind ", path, ": ", Errno(err)));
  }
  // Before listen, so nobody can connect through a wider mode in between.
  if (::chmod(path.c_str(), mode) != 0 || ::listen(fd, SOMAXCONN) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return absl::FailedPreconditionError(
        absl::StrCat("server.unix_socket: cannot chmod or listen on ", path, ": ", Errno(err)));
  }
  int wake[2];
  if (::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return absl::InternalError(absl::StrCat("server.unix_socket: pipe: ", Errno(err)));
  }
  return std::unique_ptr<UnixSocketListener>(new UnixSocketListener(path, fd, wake[0], wake[1]));
}

UnixSocketListener::~UnixSocketListener() {
  Stop();
  ::close(fd_);
  ::close(wake_read_);
  ::close(wake_write_);
}

void UnixSocketListener::Start(grpc::Server* server) {
  thread_ = std::thread([this, server] { AcceptLoop(server); });
}

void UnixSocketListener::Stop() {
  if (stopped_.exchange(true)) return;
  const char byte = 0;
  (void)!::write(wake_write_, &byte, 1);
  if (thread_.joinable()) thread_.join();
  ::unlink(path_.c_str());
}

void UnixSocketListener::AcceptLoop(grpc::Server* server) {
  while (!stopped_.load(std::memory_order_acquire)) {
    pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_read_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("unix socket {}: poll: {}", path_, Errno(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    const int conn = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (conn < 0) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
        spdlog::warn("unix socket {}: accept: {}", path_, Errno(errno));
      if (errno == EMFILE || errno == ENFILE) ::poll(nullptr, 0, 100);  // back off
      continue;
    }
    ucred cred;
    socklen_t len = sizeof(cred);
    if (::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      spdlog::warn("unix socket {}: SO_PEERCRED: {}", path_, Errno(errno));
      ::close(conn);
      continue;
    }
    {
      // gRPC closes the descriptor when the connection ends, and the next accept may get
      // the same number: the entry is overwritten here before that connection can send
      // a call. See CallAuthenticator::Authenticate for the call that outlives its
      // connection.
      absl::MutexLock lock(&mu_);
      peers_[conn] = cred.uid;
    }
    grpc::AddInsecureChannelFromFd(server, conn);
  }
}

std::optional<uid_t> UnixSocketListener::PeerUid(absl::string_view peer) const {
  if (peer.substr(0, 3) != "fd:") return std::nullopt;
  int fd = -1;
  if (!absl::SimpleAtoi(peer.substr(3), &fd)) return std::nullopt;
  absl::MutexLock lock(&mu_);
  const auto it = peers_.find(fd);
  if (it == peers_.end()) return std::nullopt;
  return it->second;
}

// --- CallAuthenticator ------------------------------------------------------------------

absl::StatusOr<auth::Principal> CallAuthenticator::Authenticate(
    grpc::CallbackServerContext* context) const {
  if (!enabled()) return auth::Principal{};
  auth::Credentials credentials;
  const auto& metadata = context->client_metadata();
  const auto [begin, end] = metadata.equal_range("authorization");
  std::string token;
  if (begin != end) {
    if (std::next(begin) != end)
      return absl::UnauthenticatedError("authorization: sent more than once");
    const absl::string_view value(begin->second.data(), begin->second.size());
    constexpr absl::string_view kScheme = "bearer ";
    if (value.size() <= kScheme.size() ||
        absl::AsciiStrToLower(value.substr(0, kScheme.size())) != kScheme)
      return absl::UnauthenticatedError(
          "authorization: expected \"Bearer <token>\" (the value is not shown)");
    token = std::string(absl::StripAsciiWhitespace(value.substr(kScheme.size())));
    credentials.bearer_token = token;
  }
  if (unix_ != nullptr) {
    credentials.peer_uid = unix_->PeerUid(context->peer());
    // A call whose connection closed before this point may find its descriptor already
    // reused by a newer connection (another uid). gRPC cancels a connection's calls
    // before it closes the descriptor, so such a call is already cancelled: refuse it.
    if (credentials.peer_uid && context->IsCancelled())
      return absl::CancelledError("the connection closed before the call was authenticated");
  }
  const std::shared_ptr<const grpc::AuthContext> auth_context = context->auth_context();
  if (auth_context != nullptr && auth_context->IsPeerAuthenticated()) {
    for (const char* property : {GRPC_X509_CN_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME})
      for (const grpc::string_ref& v : auth_context->FindPropertyValues(property))
        credentials.cert_names.emplace_back(v.data(), v.size());
  }
  return auth_->Authenticate(credentials);
}

absl::StatusOr<auth::Principal> CallAuthenticator::Check(grpc::CallbackServerContext* context,
                                                         absl::string_view ns, uint32_t rights,
                                                         absl::string_view field) const {
  absl::StatusOr<auth::Principal> principal = Authenticate(context);
  if (!principal.ok() || !enabled()) return principal;
  if (absl::Status s = auth_->Authorize(*principal, ns, rights, field); !s.ok()) return s;
  return principal;
}

}  // namespace kvstash::rpc
