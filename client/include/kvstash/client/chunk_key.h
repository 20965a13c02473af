// Chunk keys: the canonical chain function that turns a token sequence into 128-bit keys,
// and the hex form the CLI and logs use. Every client that wants to share cached chunks
// must derive keys exactly this way (docs/cli.md, "Chunk keys").
//
// Pure functions: thread-safe, no shared state.
#ifndef KVSTASH_CLIENT_CHUNK_KEY_H_
#define KVSTASH_CLIENT_CHUNK_KEY_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvstash::client {

// A 128-bit chunk key.
struct ChunkKey {
  uint64_t hi = 0;
  uint64_t lo = 0;
  bool operator==(const ChunkKey&) const = default;
};

// The key of the chunk holding `tokens`, following the chunk whose key is `prev`
// (all-zero ChunkKey{} for the first chunk of a sequence):
//
//   XXH3_128bits, seed 0, over  prev.hi (u64 LE) ‖ prev.lo (u64 LE)
//                               ‖ tokens (each int32 LE) ‖ ns bytes
//   hi = high64 of the digest, lo = low64.
ChunkKey ChainKey(const ChunkKey& prev, std::span<const int32_t> tokens, std::string_view ns);

// Keys of the complete chunks of `tokens` cut every `chunk_tokens` tokens, each chained to
// the previous one: floor(tokens.size() / chunk_tokens) keys. A trailing partial chunk gets
// no key (its key would change once it is complete). Empty when chunk_tokens is 0.
std::vector<ChunkKey> ChainKeys(std::span<const int32_t> tokens, uint32_t chunk_tokens,
                                std::string_view ns);

// 32 lowercase hex digits: hi (16 digits) then lo (16 digits).
std::string KeyToHex(const ChunkKey& key);
// Parses exactly 32 hex digits (either case), hi then lo. InvalidArgument otherwise.
absl::StatusOr<ChunkKey> KeyFromHex(std::string_view hex);

}  // namespace kvstash::client

#endif  // KVSTASH_CLIENT_CHUNK_KEY_H_
