// A minimal JSON object writer for the CLI's --json output: one flat or nested object,
// keys in insertion order, strings escaped per RFC 8259, non-finite numbers as null.
//
// Thread-compatible.
#ifndef KVSTASH_CLIENT_CLI_JSON_H_
#define KVSTASH_CLIENT_CLI_JSON_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace kvstash::cli {

// Escapes `s` and wraps it in double quotes.
std::string JsonString(std::string_view s);
// Shortest round-trip form of `v`; "null" for NaN and infinities.
std::string JsonNumber(double v);
std::string JsonNumber(float v);

class JsonObject {
 public:
  JsonObject& Add(std::string_view key, std::string_view value);
  JsonObject& Add(std::string_view key, const char* value) {
    return Add(key, std::string_view(value));
  }
  JsonObject& Add(std::string_view key, uint64_t value);
  JsonObject& Add(std::string_view key, int64_t value);
  JsonObject& Add(std::string_view key, uint32_t value) { return Add(key, uint64_t{value}); }
  JsonObject& Add(std::string_view key, int value) { return Add(key, int64_t{value}); }
  JsonObject& Add(std::string_view key, double value);
  // Shortest form of the float itself (0.16666667, not 0.1666666716337204).
  JsonObject& Add(std::string_view key, float value);
  JsonObject& Add(std::string_view key, bool value);
  // `json` must already be valid JSON (an object or array from this writer).
  JsonObject& AddRaw(std::string_view key, std::string_view json);

  std::string str() const { return body_ + "}"; }

 private:
  void Key(std::string_view key);
  std::string body_ = "{";
  bool first_ = true;
};

}  // namespace kvstash::cli

#endif  // KVSTASH_CLIENT_CLI_JSON_H_
