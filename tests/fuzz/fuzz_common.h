// What the request fuzzer (request_fuzzer.cc) and the seed generator (make_seeds.cc) agree
// on: the chunks the fuzzer keeps in its store, their deterministic payloads, and the
// placeholders the fuzzer replaces in a request before handling it.
#ifndef KVSTASH_TESTS_FUZZ_FUZZ_COMMON_H_
#define KVSTASH_TESTS_FUZZ_FUZZ_COMMON_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"

// A failed oracle: print what and where, then abort (libFuzzer saves the input as a crash).
#define FUZZ_CHECK(cond, ...)                                          \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                               \
      std::fprintf(stderr, "\n");                                      \
      std::abort();                                                    \
    }                                                                  \
  } while (0)

namespace kvstash::fuzz {

// The namespace of the fixed chunks and of region 1.
inline constexpr const char* kNamespace = "fuzz";
// A RegionRef whose token is this gets the token of the region the fuzzer registered at
// start-up (region 1: ROOT/r0, kRegionBytes bytes, namespace kNamespace).
inline constexpr const char* kTokenPlaceholder = "@TOKEN@";
// A RegisterRegion path starting with this gets the fuzzer's region root instead.
inline constexpr const char* kRootPlaceholder = "@ROOT@";
inline constexpr uint64_t kRegionBytes = 64 << 10;

// RPC selectors: byte 0 of a request-fuzzer input, modulo kRpcCount.
enum Rpc : uint8_t {
  kPut = 0, kGet, kLookup, kDelete, kRegisterRegion, kUnregisterRegion, kRenewRegion, kStats,
  kRpcCount
};

// Chunks stored at the start of every input, under kNamespace.
struct FixedChunk {
  uint64_t key_lo;  // key {0, key_lo}
  kernels::ChunkShape shape;
  kernels::Preset preset;
};
inline const FixedChunk kFixedChunks[] = {
    {1, {2, 33, 1, 32, kernels::DType::kF16}, kernels::Preset::kFp16},
    {2, {3, 40, 1, 32, kernels::DType::kF16}, kernels::Preset::kXQuant},
    {3, {2, 32, 1, 64, kernels::DType::kBF16}, kernels::Preset::kKivi2},
};

// Deterministic finite 16-bit values of the shape's dtype (roughly N(0, 2) plus offsets).
inline std::vector<uint16_t> Payload(const kernels::ChunkShape& shape, uint64_t seed) {
  std::vector<uint16_t> out(shape.elements());
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < out.size(); ++i) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    const float u = static_cast<float>(s >> 40) / static_cast<float>(1 << 24);  // [0, 1)
    const float x = (u - 0.5f) * 8.0f + static_cast<float>(i % shape.head_dim % 3);
    out[i] = shape.dtype == kernels::DType::kF16 ? kernels::FloatToF16Finite(x)
                                                 : kernels::FloatToBF16Finite(x);
  }
  return out;
}

// The bytes region 1 holds at the start of every input: fp16 values.
inline std::vector<uint8_t> RegionBytes() {
  const kernels::ChunkShape s{1, static_cast<uint32_t>(kRegionBytes / 2 / 2 / 32), 1, 32,
                              kernels::DType::kF16};
  const std::vector<uint16_t> v = Payload(s, 99);
  std::vector<uint8_t> out(kRegionBytes);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

}  // namespace kvstash::fuzz

#endif  // KVSTASH_TESTS_FUZZ_FUZZ_COMMON_H_
