#include "redis_transport.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <span>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace kvstash::bench {
namespace {

struct ContextFree {
  void operator()(redisContext* c) const { redisFree(c); }
};
using Context = std::unique_ptr<redisContext, ContextFree>;

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

timeval ToTimeval(std::chrono::milliseconds ms) {
  return timeval{static_cast<time_t>(ms.count() / 1000),
                 static_cast<suseconds_t>(ms.count() % 1000 * 1000)};
}

absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// The status of a context that failed (c.err set). hiredis reports a socket timeout and a
// broken connection both as REDIS_ERR_IO; the errno it left tells them apart.
absl::Status ContextStatus(const redisContext& c, int saved_errno, std::string_view what) {
  absl::StatusCode code = absl::StatusCode::kInternal;  // protocol and other errors
  switch (c.err) {
    case REDIS_ERR_IO:
      code = saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == ETIMEDOUT
                 ? absl::StatusCode::kDeadlineExceeded
                 : absl::StatusCode::kUnavailable;
      break;
#ifdef REDIS_ERR_TIMEOUT  // hiredis >= 1.0 reports timeouts apart
    case REDIS_ERR_TIMEOUT:
      code = absl::StatusCode::kDeadlineExceeded;
      break;
#endif
    case REDIS_ERR_EOF:  // the server closed the socket
      code = absl::StatusCode::kUnavailable;
      break;
    case REDIS_ERR_OOM:  // hiredis could not allocate
      code = absl::StatusCode::kResourceExhausted;
      break;
  }
  return absl::Status(code, absl::StrCat("redis ", Av(what), ": ", c.errstr));
}

// The reply of a command just issued on `c` (raw, as hiredis returned it), or the status
// of a failed socket or of an error reply.
absl::StatusOr<Reply> Checked(const redisContext& c, void* raw, int saved_errno,
                              std::string_view what) {
  if (raw == nullptr) return ContextStatus(c, saved_errno, what);
  Reply r(static_cast<redisReply*>(raw));
  if (r->type == REDIS_REPLY_ERROR) {
    const absl::Status s = RedisErrorStatus(std::string_view(r->str, r->len));
    return absl::Status(s.code(), absl::StrCat("redis ", Av(what), ": ", s.message()));
  }
  return r;
}

// One command, binary-safe: argv[i] is len[i] bytes.
absl::StatusOr<Reply> Command(redisContext* c, std::span<const char* const> argv,
                              std::span<const size_t> len, std::string_view what) {
  errno = 0;
  void* raw = redisCommandArgv(c, static_cast<int>(argv.size()),
                               const_cast<const char**>(argv.data()), len.data());
  return Checked(*c, raw, errno, what);
}

absl::Status UnexpectedReply(std::string_view what, const redisReply& r) {
  return absl::InternalError(
      absl::StrCat("redis ", Av(what), ": unexpected reply type ", r.type));
}

// "host:port" or "[v6]:port".
absl::Status SplitTarget(const std::string& target, std::string* host, int* port) {
  const size_t colon = target.rfind(':');
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("--addr: '", target, "' is not host:port (the redis server)"));
  };
  if (colon == std::string::npos || colon == 0) return bad();
  *host = target.substr(0, colon);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  const char* first = target.data() + colon + 1;
  const char* last = target.data() + target.size();
  const auto [end, ec] = std::from_chars(first, last, *port);
  if (ec != std::errc() || end != last || *port < 1 || *port > 65535) return bad();
  return absl::OkStatus();
}

// A pool of sockets, one per request in flight: Redis answers the requests of a socket in
// order, so concurrent requests on one socket would queue behind each other (a pipeline),
// which is not how a pool-using client behaves. Each call takes a socket, uses it alone
// and gives it back; a socket that broke is dialled again by the next call that takes it,
// outside the lock.
class RedisTransport final : public Transport {
 public:
  RedisTransport(const TransportOptions& options, std::string host, int port)
      : options_(options), host_(std::move(host)), port_(port) {}

  absl::Status Connect() {
    for (uint32_t i = 0; i < options_.redis_connections; ++i) {
      absl::StatusOr<Context> c = Dial();
      if (!c.ok()) return c.status();
      absl::MutexLock lock(&mu_);
      free_.push_back(std::move(*c));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Put(std::string_view ns, const PutOp& op) override {
    const std::string key = RedisKey(ns, op.key);
    return WithSocket([&](redisContext* c) -> absl::StatusOr<uint64_t> {
      const char* argv[] = {"SET", key.data(), reinterpret_cast<const char*>(op.data.data())};
      const size_t len[] = {3, key.size(), op.data.size()};
      absl::StatusOr<Reply> r = Command(c, argv, len, "SET");
      if (!r.ok()) return r.status();
      if ((*r)->type != REDIS_REPLY_STATUS) return UnexpectedReply("SET", **r);
      return uint64_t{op.data.size()};  // Redis keeps the bytes as given
    });
  }

  absl::StatusOr<GetReply> Get(std::string_view ns, const client::ChunkKey& key) override {
    const std::string k = RedisKey(ns, key);
    return WithSocket([&](redisContext* c) -> absl::StatusOr<GetReply> {
      const char* argv[] = {"GET", k.data()};
      const size_t len[] = {3, k.size()};
      absl::StatusOr<Reply> r = Command(c, argv, len, "GET");
      if (!r.ok()) return r.status();
      if ((*r)->type == REDIS_REPLY_NIL) return absl::NotFoundError("redis GET: key not found");
      if ((*r)->type != REDIS_REPLY_STRING) return UnexpectedReply("GET", **r);
      // The reply is lent, not copied: the bench reads it where hiredis parsed it.
      GetReply reply;
      reply.stored_bytes = (*r)->len;
      reply.view = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>((*r)->str),
                                            (*r)->len);
      reply.hold = std::shared_ptr<void>(r->release(), [](void* p) { freeReplyObject(p); });
      return reply;
    });
  }

  absl::StatusOr<uint32_t> Lookup(std::string_view ns,
                                  std::span<const client::ChunkKey> chain) override {
    if (chain.empty()) return 0u;
    std::vector<std::string> keys;
    keys.reserve(chain.size());
    for (const client::ChunkKey& k : chain) keys.push_back(RedisKey(ns, k));
    return WithSocket([&](redisContext* c) -> absl::StatusOr<uint32_t> {
      // One round trip: every EXISTS is sent, then every answer read (all of them, so the
      // socket stays in step even after an error reply).
      for (const std::string& k : keys) {
        const char* argv[] = {"EXISTS", k.data()};
        const size_t len[] = {6, k.size()};
        if (redisAppendCommandArgv(c, 2, argv, len) != REDIS_OK) {
          return ContextStatus(*c, errno, "EXISTS");
        }
      }
      absl::Status first_error;
      uint32_t present = 0;
      bool prefix = true;
      for (size_t i = 0; i < keys.size(); ++i) {
        void* raw = nullptr;
        errno = 0;
        const int rc = redisGetReply(c, &raw);
        if (rc != REDIS_OK) return Checked(*c, nullptr, errno, "EXISTS").status();
        absl::StatusOr<Reply> r = Checked(*c, raw, 0, "EXISTS");
        if (!r.ok()) {
          if (first_error.ok()) first_error = r.status();
          continue;
        }
        if ((*r)->type != REDIS_REPLY_INTEGER) {
          if (first_error.ok()) first_error = UnexpectedReply("EXISTS", **r);
          continue;
        }
        prefix = prefix && (*r)->integer == 1;
        if (prefix) ++present;
      }
      if (!first_error.ok()) return first_error;
      return present;
    });
  }

  absl::Status Delete(std::string_view ns, std::span<const client::ChunkKey> keys) override {
    if (keys.empty()) return absl::OkStatus();
    std::vector<std::string> names;
    names.reserve(keys.size());
    for (const client::ChunkKey& k : keys) names.push_back(RedisKey(ns, k));
    std::vector<const char*> argv{"DEL"};
    std::vector<size_t> len{3};
    for (const std::string& n : names) {
      argv.push_back(n.data());
      len.push_back(n.size());
    }
    return WithSocket([&](redisContext* c) -> absl::Status {
      return Command(c, argv, len, "DEL").status();
    });
  }

  absl::StatusOr<uint64_t> ServerMemoryBytes() override {
    return WithSocket([&](redisContext* c) -> absl::StatusOr<uint64_t> {
      const char* argv[] = {"INFO", "memory"};
      const size_t len[] = {4, 6};
      absl::StatusOr<Reply> r = Command(c, argv, len, "INFO");
      if (!r.ok()) return r.status();
      if ((*r)->type != REDIS_REPLY_STRING && (*r)->type != REDIS_REPLY_STATUS) {
        return UnexpectedReply("INFO", **r);
      }
      return ParseRedisUsedMemory(std::string_view((*r)->str, (*r)->len));
    });
  }

 private:
  absl::StatusOr<Context> Dial() const {
    const std::chrono::milliseconds connect =
        options_.connect_timeout.count() > 0 ? options_.connect_timeout : options_.timeout;
    Context c(redisConnectWithTimeout(host_.c_str(), port_, ToTimeval(connect)));
    if (c == nullptr) return absl::ResourceExhaustedError("redis: cannot allocate a context");
    if (c->err != 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to redis at ", options_.target, ": ", c->errstr));
    }
    if (redisSetTimeout(c.get(), ToTimeval(options_.timeout)) != REDIS_OK) {
      return ContextStatus(*c, errno, "set timeout");
    }
    return c;
  }

  bool HasFree() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !free_.empty(); }

  // Runs fn(redisContext*) on a socket of its own and returns what fn returns.
  template <typename Fn>
  auto WithSocket(Fn fn) -> decltype(fn(std::declval<redisContext*>())) {
    Context c;
    {
      absl::MutexLock lock(&mu_, absl::Condition(this, &RedisTransport::HasFree));
      c = std::move(free_.back());
      free_.pop_back();
    }
    if (c == nullptr || c->err != 0) {  // broke on an earlier call (or failed to redial)
      c.reset();
      absl::StatusOr<Context> fresh = Dial();
      if (!fresh.ok()) {
        Give(nullptr);
        return fresh.status();
      }
      c = std::move(*fresh);
    }
    auto result = fn(c.get());
    Give(std::move(c));
    return result;
  }

  void Give(Context c) {
    absl::MutexLock lock(&mu_);
    free_.push_back(std::move(c));
  }

  const TransportOptions options_;
  const std::string host_;
  const int port_;
  absl::Mutex mu_;
  std::vector<Context> free_ ABSL_GUARDED_BY(mu_);  // null: dial on next use
};

}  // namespace

std::string RedisKey(std::string_view ns, const client::ChunkKey& key) {
  return absl::StrCat(Av(ns), ":", absl::Hex(key.hi, absl::kZeroPad16),
                      absl::Hex(key.lo, absl::kZeroPad16));
}

absl::Status RedisErrorStatus(std::string_view reply) {
  const std::string_view word = reply.substr(0, reply.find(' '));
  absl::StatusCode code = absl::StatusCode::kInternal;
  if (word == "OOM") {
    code = absl::StatusCode::kResourceExhausted;
  } else if (word == "LOADING" || word == "BUSY" || word == "MASTERDOWN" || word == "TRYAGAIN") {
    code = absl::StatusCode::kUnavailable;
  } else if (word == "NOAUTH" || word == "WRONGPASS") {
    code = absl::StatusCode::kUnauthenticated;
  } else if (word == "NOPERM") {
    code = absl::StatusCode::kPermissionDenied;
  } else if (word == "READONLY" || word == "WRONGTYPE") {
    code = absl::StatusCode::kFailedPrecondition;
  }
  return absl::Status(code, Av(reply));
}

absl::StatusOr<uint64_t> ParseRedisUsedMemory(std::string_view info) {
  constexpr std::string_view kField = "used_memory:";
  for (size_t start = 0; start < info.size();) {
    size_t end = info.find('\n', start);
    if (end == std::string_view::npos) end = info.size();
    std::string_view line = info.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.starts_with(kField)) {
      uint64_t v = 0;
      const char* first = line.data() + kField.size();
      const char* last = line.data() + line.size();
      const auto [p, ec] = std::from_chars(first, last, v);
      if (ec == std::errc() && p == last && p != first) return v;
      break;
    }
    start = end + 1;
  }
  return absl::InternalError("redis INFO memory: no numeric used_memory field");
}

absl::StatusOr<std::unique_ptr<Transport>> OpenRedisTransport(const TransportOptions& options) {
  if (options.redis_connections == 0) {
    return absl::InvalidArgumentError("redis: sockets per transport must be positive");
  }
  if (options.timeout.count() <= 0) return absl::InvalidArgumentError("--timeout: must be positive");
  std::string host;
  int port = 0;
  if (absl::Status s = SplitTarget(options.target, &host, &port); !s.ok()) return s;
  auto t = std::make_unique<RedisTransport>(options, std::move(host), port);
  if (absl::Status s = t->Connect(); !s.ok()) return s;
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace kvstash::bench
