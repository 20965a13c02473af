// How kvstash-bench talks to the daemon. A Transport is one connection; the bench opens
// --connections of them and runs --inflight threads on each. gRPC carries payloads in
// messages; shm moves them through a shared-memory region registered with the daemon (gRPC
// stays the control plane). redis (redis_transport.h) is the peer a user would otherwise
// pick: the same chunks, raw, in a Redis server. CUDA IPC will be a further implementation
// (docs/bench.md, "Transports").
//
// Thread-safety: a Transport is thread-safe; its calls are independent and each carries the
// deadline of TransportOptions::timeout.
#ifndef KVSTASH_CLIENT_BENCH_TRANSPORT_H_
#define KVSTASH_CLIENT_BENCH_TRANSPORT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvstash/client/chunk_key.h"
#include "kvstash/client/client.h"
#include "kvstash/kernels/format.h"

namespace kvstash::bench {

enum class TransportKind { kGrpc, kShm, kCudaIpc, kRedis };

// "grpc", "shm", "cuda-ipc", "redis". InvalidArgument listing the names otherwise.
absl::StatusOr<TransportKind> ParseTransport(std::string_view name);
std::string_view TransportName(TransportKind kind);

struct TransportOptions {
  // Daemon address, "host:port" or "unix:/path" (redis: host:port only). Default
  // "127.0.0.1:7450".
  std::string target = "127.0.0.1:7450";
  // gRPC transports: the bearer token sent with every call (empty: none) and TLS, as in
  // client::ClientOptions. The redis transport ignores them.
  std::string token;
  client::TlsOptions tls;
  // Deadline of every call. Default 60 s.
  std::chrono::milliseconds timeout{60'000};
  // Largest message sent or received, bytes. Default 256 MiB (the daemon's default).
  int max_message_bytes = 256 << 20;
  // How long opening waits for the connection to be ready; Unavailable after. Default 10 s.
  std::chrono::milliseconds connect_timeout{10'000};
  // shm: the namespace the region is registered under (every call must use it), and the
  // payload bytes of one in-flight operation; the region holds `shm_slots` such slots.
  std::string ns = "kvstash-bench";
  uint64_t shm_slot_bytes = 0;
  uint32_t shm_slots = 1;
  // cuda-ipc: the CUDA device of the payloads and output slots (shm_slots × shm_slot_bytes),
  // and whether Get copies results back to the host (for --verify; off, they stay there).
  int cuda_device = 0;
  bool fetch_device_results = false;
  // redis: sockets the transport opens, one per request in flight (Redis answers a
  // socket's requests in order, so a pool-using client gives each its own). Default 1.
  uint32_t redis_connections = 1;
};

// One chunk to store; `data` ([L][2][T][H][D], shape.dtype) is borrowed for the call.
struct PutOp {
  client::ChunkKey key;
  kernels::ChunkShape shape;
  kernels::Preset preset = kernels::Preset::kXQuant;  // never kCustom
  std::span<const uint8_t> data;
};

// A whole decoded chunk (in its own dtype) and its stored size. gRPC fills `data`; shm
// leaves it empty and points `view` into the region, valid while `hold` lives.
struct GetReply {
  std::string data;
  uint64_t stored_bytes = 0;
  std::span<const uint8_t> view;
  std::shared_ptr<void> hold;
  // cuda-ipc without fetch_device_results: bytes decoded into device memory (data empty).
  uint64_t logical_bytes = 0;

  std::span<const uint8_t> bytes() const {
    if (view.data() != nullptr) return view;
    return {reinterpret_cast<const uint8_t*>(data.data()), data.size()};
  }
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Stores one chunk; returns its stored (encoded) bytes. The daemon's status otherwise.
  virtual absl::StatusOr<uint64_t> Put(std::string_view ns, const PutOp& op) = 0;
  // Decodes one whole chunk; NotFound when absent.
  virtual absl::StatusOr<GetReply> Get(std::string_view ns, const client::ChunkKey& key) = 0;
  // How many leading keys of `chain` are stored.
  virtual absl::StatusOr<uint32_t> Lookup(std::string_view ns,
                                          std::span<const client::ChunkKey> chain) = 0;
  // Removes the keys (absent ones are not an error).
  virtual absl::Status Delete(std::string_view ns, std::span<const client::ChunkKey> keys) = 0;
  // Memory the server holds for what is stored, bytes: the daemon's pool bytes in use
  // (Stats used_bytes), Redis's used_memory. Unimplemented when the transport cannot tell.
  virtual absl::StatusOr<uint64_t> ServerMemoryBytes() {
    return absl::UnimplementedError("server memory: not reported by this transport");
  }
};

// Opens one connection. kGrpc: a gRPC channel with its own TCP connection (channels are
// not pooled across Transports, so --connections N means N sockets); Unavailable when the
// daemon does not answer within connect_timeout. kShm: the same, plus a SharedRegion of
// shm_slots × shm_slot_bytes (64-byte aligned slots) registered for options.ns, unregistered
// when the transport is destroyed; Put copies the payload into a free slot and sends a
// RegionRef, Get decodes into a slot (InvalidArgument when shm_slot_bytes is 0).
// kCudaIpc: Unimplemented (not built yet). kRedis: OpenRedisTransport (redis_transport.h).
absl::StatusOr<std::unique_ptr<Transport>> OpenTransport(TransportKind kind,
                                                         const TransportOptions& options);

}  // namespace kvstash::bench

#endif  // KVSTASH_CLIENT_BENCH_TRANSPORT_H_
