// The Redis peer of kvstash-bench (--transport redis): what a user would otherwise pick for
// a shared KV store. Chunks are stored raw (the 16-bit payload, no codec) with
// SET/GET/EXISTS/DEL through hiredis; docs/bench.md ("Redis") explains the mapping and why
// a transport holds one socket per request in flight.
//
// Thread-safety: the Transport returned by OpenRedisTransport is thread-safe: each call
// takes a socket of its own from the transport's pool for the call's duration. The free
// functions are pure.
#ifndef KVSTASH_CLIENT_BENCH_REDIS_TRANSPORT_H_
#define KVSTASH_CLIENT_BENCH_REDIS_TRANSPORT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvstash/client/chunk_key.h"
#include "transport.h"

namespace kvstash::bench {

// Connects options.redis_connections sockets to the Redis server at options.target
// ("host:port"), each with options.timeout as its per-call timeout. InvalidArgument for a
// bad target or a zero socket count; Unavailable when a socket cannot connect within
// options.connect_timeout.
//
// Put is `SET key payload` (stored bytes = payload bytes: Redis keeps what it is given),
// Get is `GET key` (NotFound on nil; the reply's bytes are lent through GetReply::view),
// Lookup pipelines `EXISTS key` over the chain and counts the leading present keys, Delete
// is `DEL key...`, ServerMemoryBytes is `used_memory` of `INFO memory`. A socket that saw
// an I/O error is reconnected by the next call that takes it.
absl::StatusOr<std::unique_ptr<Transport>> OpenRedisTransport(const TransportOptions& options);

// The Redis key of a chunk: "<ns>:" followed by the 32 lowercase hex digits of hi, then lo.
std::string RedisKey(std::string_view ns, const client::ChunkKey& key);

// The status for an error reply of the server ("OOM command not allowed ...", "LOADING
// ...", "NOAUTH ..."), chosen by its first word: OOM → ResourceExhausted; LOADING, BUSY,
// MASTERDOWN, TRYAGAIN → Unavailable; NOAUTH, WRONGPASS → Unauthenticated; NOPERM →
// PermissionDenied; READONLY, WRONGTYPE → FailedPrecondition; anything else → Internal.
absl::Status RedisErrorStatus(std::string_view reply);

// `used_memory` from the text of `INFO memory`. Internal when the field is missing or
// not a number.
absl::StatusOr<uint64_t> ParseRedisUsedMemory(std::string_view info);

}  // namespace kvstash::bench

#endif  // KVSTASH_CLIENT_BENCH_REDIS_TRANSPORT_H_
