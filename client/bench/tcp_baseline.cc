#include "tcp_baseline.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvstash::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kHeaderBytes = 9;  // op byte ('U' or 'D') + u64 little-endian length

absl::Status Errno(const char* what) {
  return absl::InternalError(absl::StrCat("tcp baseline: ", what, ": ", std::strerror(errno)));
}

bool WriteAll(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

void NoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Serves one connection until the peer closes it.
void ServeConnection(int fd) {
  NoDelay(fd);
  std::vector<uint8_t> buf;
  uint8_t header[kHeaderBytes];
  while (ReadAll(fd, header, kHeaderBytes)) {
    uint64_t n = 0;
    std::memcpy(&n, header + 1, 8);
    if (buf.size() < n) buf.resize(n, 0x5a);
    if (header[0] == 'U') {
      const uint8_t ack = 1;
      if (!ReadAll(fd, buf.data(), n) || !WriteAll(fd, &ack, 1)) break;
    } else if (header[0] == 'D') {
      if (!WriteAll(fd, buf.data(), n)) break;
    } else {
      break;
    }
  }
  ::close(fd);
}

class LoopbackServer {
 public:
  ~LoopbackServer() { Stop(); }

  absl::Status Start() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return Errno("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return Errno("bind");
    if (::listen(fd_, 128) != 0) return Errno("listen");
    socklen_t len = sizeof(addr);
    if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return Errno("getsockname");
    }
    port_ = ntohs(addr.sin_port);
    accept_ = std::thread([this] {
      for (;;) {
        const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          return;  // the listener was shut down
        }
        std::lock_guard<std::mutex> lock(mu_);
        conns_.emplace_back(ServeConnection, c);
      }
    });
    return absl::OkStatus();
  }

  // REQUIRES: every client connection is closed (their server threads then exit).
  void Stop() {
    if (fd_ < 0) return;
    ::shutdown(fd_, SHUT_RDWR);
    if (accept_.joinable()) accept_.join();
    ::close(fd_);
    fd_ = -1;
    std::lock_guard<std::mutex> lock(mu_);
    for (std::thread& t : conns_) t.join();
    conns_.clear();
  }

  uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
  std::thread accept_;
  std::mutex mu_;
  std::vector<std::thread> conns_;
};

absl::StatusOr<int> Connect(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    absl::Status st = Errno("connect");
    ::close(fd);
    return st;
  }
  NoDelay(fd);
  return fd;
}

absl::StatusOr<TcpDirection> RunDirection(const TcpBaselineOptions& o, uint16_t port,
                                          bool upload) {
  std::vector<int> fds;
  for (uint32_t s = 0; s < o.streams; ++s) {
    absl::StatusOr<int> fd = Connect(port);
    if (!fd.ok()) {
      for (int f : fds) ::close(f);
      return fd.status();
    }
    fds.push_back(*fd);
  }
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::vector<uint64_t>> lat(o.streams);
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration_s));
  std::vector<std::thread> threads;
  for (uint32_t s = 0; s < o.streams; ++s) {
    threads.emplace_back([&, s] {
      std::vector<uint8_t> buf(o.payload_bytes, 0xa5);
      uint8_t header[kHeaderBytes];
      header[0] = upload ? 'U' : 'D';
      std::memcpy(header + 1, &o.payload_bytes, 8);
      for (;;) {
        if (o.count > 0) {
          if (next.fetch_add(1) >= o.count) break;
        } else if (Clock::now() >= deadline) {
          break;
        }
        const Clock::time_point t0 = Clock::now();
        bool ok = WriteAll(fds[s], header, kHeaderBytes);
        if (upload) {
          uint8_t ack = 0;
          ok = ok && WriteAll(fds[s], buf.data(), buf.size()) && ReadAll(fds[s], &ack, 1);
        } else {
          ok = ok && ReadAll(fds[s], buf.data(), buf.size());
        }
        if (!ok) {
          failed = true;
          break;
        }
        lat[s].push_back(static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (int f : fds) ::close(f);
  if (failed) return absl::InternalError("tcp baseline: a loopback transfer failed");
  TcpDirection d;
  d.seconds = seconds;
  for (auto& v : lat) d.latency_ns.insert(d.latency_ns.end(), v.begin(), v.end());
  d.ops = d.latency_ns.size();
  return d;
}

}  // namespace

absl::StatusOr<TcpBaselineResult> RunTcpBaseline(const TcpBaselineOptions& options) {
  if (options.payload_bytes == 0) {
    return absl::InvalidArgumentError("tcp baseline: payload_bytes must be positive");
  }
  if (options.streams == 0) return absl::InvalidArgumentError("tcp baseline: streams must be positive");
  if (options.count == 0 && !(options.duration_s > 0)) {
    return absl::InvalidArgumentError("tcp baseline: give a positive duration or count");
  }
  LoopbackServer server;
  if (absl::Status st = server.Start(); !st.ok()) return st;
  TcpBaselineResult result;
  absl::StatusOr<TcpDirection> up = RunDirection(options, server.port(), /*upload=*/true);
  if (!up.ok()) return up.status();
  result.upload = std::move(*up);
  absl::StatusOr<TcpDirection> down = RunDirection(options, server.port(), /*upload=*/false);
  if (!down.ok()) return down.status();
  result.download = std::move(*down);
  server.Stop();
  return result;
}

}  // namespace kvstash::bench
