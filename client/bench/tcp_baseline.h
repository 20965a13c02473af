// The loopback TCP baseline of kvstash-bench: how fast plain sockets on 127.0.0.1 move the
// same payload, with the same concurrency, on the same machine and in the same run, so the
// gRPC figures can be read as a fraction of what the kernel's loopback allows
// (docs/bench.md, "TCP baseline").
//
// Thread-safety: RunTcpBaseline is thread-safe; it owns its server and sockets.
#ifndef KVSTASH_CLIENT_BENCH_TCP_BASELINE_H_
#define KVSTASH_CLIENT_BENCH_TCP_BASELINE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace kvstash::bench {

struct TcpBaselineOptions {
  uint64_t payload_bytes = 0;  // bytes per transfer; REQUIRES > 0
  uint32_t streams = 1;        // concurrent connections, one thread each
  double duration_s = 2.0;     // per direction, when count == 0
  uint64_t count = 0;          // transfers per direction (all streams together); 0 = duration
};

// One direction: `ops` transfers of payload_bytes in `seconds`, with each transfer's time.
struct TcpDirection {
  uint64_t ops = 0;
  double seconds = 0;
  std::vector<uint64_t> latency_ns;
  double gbps(uint64_t payload_bytes) const {
    return seconds > 0 ? static_cast<double>(ops) * payload_bytes / seconds / 1e9 : 0.0;
  }
};

struct TcpBaselineResult {
  // Client → server: the client sends the payload, the server reads it all and answers one
  // byte (the shape of a Put).
  TcpDirection upload;
  // Server → client: the client sends a request header and reads the payload (a Get).
  TcpDirection download;
};

// Starts an in-process server on 127.0.0.1 (ephemeral port), runs `streams` client
// connections for uploads, then for downloads, and stops the server. Payload bytes are
// really copied into and out of user buffers on both sides, as a server would.
// Internal (with the syscall) when a socket operation fails, InvalidArgument for options.
absl::StatusOr<TcpBaselineResult> RunTcpBaseline(const TcpBaselineOptions& options);

}  // namespace kvstash::bench

#endif  // KVSTASH_CLIENT_BENCH_TCP_BASELINE_H_
