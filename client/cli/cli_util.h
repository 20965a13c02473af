// Helpers of the kvstash CLI that are worth testing on their own: argument parsing,
// named model geometries, synthetic payloads, 16-bit conversions and error metrics.
//
// Pure functions: thread-safe.
#ifndef KVSTASH_CLIENT_CLI_CLI_UTIL_H_
#define KVSTASH_CLIENT_CLI_CLI_UTIL_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"

namespace kvstash::cli {

// This Abseil's absl::string_view is not std::string_view; StrCat needs the former.
inline absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Process exit codes (documented in `kvstash --help` and docs/cli.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNotFound = 3;
inline constexpr int kExitUnavailable = 4;
inline constexpr int kExitResourceExhausted = 5;
inline constexpr int kExitDenied = 6;

// InvalidArgument/OutOfRange → 2, NotFound → 3, Unavailable/DeadlineExceeded → 4,
// ResourceExhausted → 5, Unauthenticated/PermissionDenied → 6, OK → 0, anything else → 1.
int ExitCodeFor(absl::StatusCode code);

// "1,2,3", ranges "0-255" (inclusive) and mixes "5,7-9". Token ids are 0 .. 2^31-1.
absl::StatusOr<std::vector<int32_t>> ParseTokenList(std::string_view text);

// "A:B" → [A, B); "A:" → [A, 0) i.e. to the last; ":B" → [0, B); "A" → [A, A+1).
absl::StatusOr<std::pair<uint32_t, uint32_t>> ParseRange(std::string_view text);

// "L,T,H,D" → shape (dtype fp16).
absl::StatusOr<kernels::ChunkShape> ParseLayout(std::string_view text);

// Geometry of a named model (num_tokens 256): llama-3-8b and mistral-7b L32 H8 D128,
// qwen2.5-7b L28 H4 D128. InvalidArgument listing the known names otherwise.
absl::StatusOr<kernels::ChunkShape> ModelGeometry(std::string_view name);
std::vector<std::string> ModelNames();

// fp32 <-> fp16 / bf16, round to nearest even; NaN stays NaN.
uint16_t FloatToHalf(float f);
float HalfToFloat(uint16_t h);
uint16_t FloatToBf16(float f);
float Bf16ToFloat(uint16_t b);
float ToFloat(uint16_t v, kernels::DType dtype);

// shape.elements() deterministic pseudo-random values of shape.dtype: standard normal
// (Box–Muller over splitmix64), with a few per-channel outliers in K as real caches have.
// The same (shape, seed) gives the same bytes on every platform.
std::vector<uint16_t> GeneratePayload(const kernels::ChunkShape& shape, uint64_t seed);

// Copies slice [l0,l1) x [h0,h1) out of a full [L][2][T][H][D] payload into
// [l1-l0][2][T][h1-h0][D]. REQUIRES: the slice is resolved against the shape.
std::vector<uint16_t> SlicePayload(const kernels::ChunkShape& shape,
                                   std::span<const uint16_t> full, const kernels::Slice& slice);

struct ErrorMetrics {
  double max_abs = 0;   // max |a - b|
  double rel_rms = 0;   // sqrt(sum (a-b)^2 / sum a^2); 0 when both are all zero
  uint64_t elements = 0;
};
// Compares a reference `ref` (in ref_dtype) with `got` (in got_dtype). InvalidArgument
// when the element counts differ.
absl::StatusOr<ErrorMetrics> CompareValues(std::span<const uint16_t> ref, kernels::DType ref_dtype,
                                           std::span<const uint16_t> got, kernels::DType got_dtype);

// "1.50 KiB", "32.00 MiB", "123 B".
std::string HumanBytes(uint64_t bytes);

}  // namespace kvstash::cli

#endif  // KVSTASH_CLIENT_CLI_CLI_UTIL_H_
