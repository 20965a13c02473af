#include "kvstash/client/chunk_key.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "xxhash.h"

namespace kvstash::client {
namespace {

// Explicit little-endian appends so the key does not depend on the host byte order.
void AppendLe64(std::string* buf, uint64_t v) {
  for (int i = 0; i < 8; ++i) buf->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void AppendLe32(std::string* buf, uint32_t v) {
  for (int i = 0; i < 4; ++i) buf->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

ChunkKey ChainKey(const ChunkKey& prev, std::span<const int32_t> tokens, std::string_view ns) {
  std::string buf;
  buf.reserve(16 + 4 * tokens.size() + ns.size());
  AppendLe64(&buf, prev.hi);
  AppendLe64(&buf, prev.lo);
  for (int32_t t : tokens) AppendLe32(&buf, static_cast<uint32_t>(t));
  buf.append(ns.data(), ns.size());
  const XXH128_hash_t h = XXH3_128bits(buf.data(), buf.size());
  return ChunkKey{h.high64, h.low64};
}

std::vector<ChunkKey> ChainKeys(std::span<const int32_t> tokens, uint32_t chunk_tokens,
                                std::string_view ns) {
  std::vector<ChunkKey> keys;
  if (chunk_tokens == 0) return keys;
  const size_t n = tokens.size() / chunk_tokens;
  keys.reserve(n);
  ChunkKey prev;
  for (size_t i = 0; i < n; ++i) {
    prev = ChainKey(prev, tokens.subspan(i * chunk_tokens, chunk_tokens), ns);
    keys.push_back(prev);
  }
  return keys;
}

std::string KeyToHex(const ChunkKey& key) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[i] = kDigits[(key.hi >> (60 - 4 * i)) & 0xf];
    out[16 + i] = kDigits[(key.lo >> (60 - 4 * i)) & 0xf];
  }
  return out;
}

absl::StatusOr<ChunkKey> KeyFromHex(std::string_view hex) {
  if (hex.size() != 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("key: expected 32 hex digits, got ", hex.size(), " characters"));
  }
  ChunkKey key;
  for (int i = 0; i < 32; ++i) {
    const int d = HexDigit(hex[i]);
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("key: '", std::string(1, hex[i]), "' at position ", i,
                       " is not a hex digit"));
    }
    uint64_t& half = i < 16 ? key.hi : key.lo;
    half = (half << 4) | static_cast<uint64_t>(d);
  }
  return key;
}

}  // namespace kvstash::client
