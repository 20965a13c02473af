#include "cli_util.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace kvstash::cli {
namespace {

absl::StatusOr<uint64_t> ParseUint(std::string_view text, std::string_view what, uint64_t max) {
  const absl::string_view t =
      absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size()));
  const absl::string_view w(what.data(), what.size());
  uint64_t v = 0;
  // SimpleAtoi would accept a sign; token ids and ranges are plain digits.
  if (t.empty() || t[0] == '+' || t[0] == '-' || !absl::SimpleAtoi(t, &v)) {
    return absl::InvalidArgumentError(absl::StrCat(w, ": '", t, "' is not a number"));
  }
  if (v > max) {
    return absl::InvalidArgumentError(absl::StrCat(w, ": ", v, " is larger than ", max));
  }
  return v;
}

struct Model {
  const char* name;
  uint32_t layers, heads, head_dim;
};
constexpr Model kModels[] = {
    {"llama-3-8b", 32, 8, 128},
    {"mistral-7b", 32, 8, 128},
    {"qwen2.5-7b", 28, 4, 128},
};

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

int ExitCodeFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return kExitOk;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: return kExitUsage;
    case absl::StatusCode::kNotFound: return kExitNotFound;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded: return kExitUnavailable;
    case absl::StatusCode::kResourceExhausted: return kExitResourceExhausted;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied: return kExitDenied;
    default: return kExitError;
  }
}

absl::StatusOr<std::vector<int32_t>> ParseTokenList(std::string_view text) {
  constexpr uint64_t kMaxToken = std::numeric_limits<int32_t>::max();
  constexpr size_t kMaxTokens = 1u << 20;  // kernels::kMaxTokens
  std::vector<int32_t> out;
  for (absl::string_view part : absl::StrSplit(absl::string_view(text.data(), text.size()), ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) return absl::InvalidArgumentError("tokens: empty element");
    const size_t dash = part.find('-');
    if (dash == absl::string_view::npos) {
      auto v = ParseUint(std::string_view(part.data(), part.size()), "tokens", kMaxToken);
      if (!v.ok()) return v.status();
      out.push_back(static_cast<int32_t>(*v));
    } else {
      auto a = ParseUint(std::string_view(part.data(), dash), "tokens", kMaxToken);
      auto b = ParseUint(std::string_view(part.data() + dash + 1, part.size() - dash - 1),
                         "tokens", kMaxToken);
      if (!a.ok()) return a.status();
      if (!b.ok()) return b.status();
      if (*b < *a) {
        return absl::InvalidArgumentError(absl::StrCat("tokens: range '", part, "' is reversed"));
      }
      if (*b - *a + 1 + out.size() > kMaxTokens) {
        return absl::InvalidArgumentError("tokens: more than 2^20 tokens");
      }
      for (uint64_t t = *a; t <= *b; ++t) out.push_back(static_cast<int32_t>(t));
    }
    if (out.size() > kMaxTokens) return absl::InvalidArgumentError("tokens: more than 2^20 tokens");
  }
  return out;
}

absl::StatusOr<std::pair<uint32_t, uint32_t>> ParseRange(std::string_view text) {
  constexpr uint64_t kMax = std::numeric_limits<uint32_t>::max() - 1;
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos) {
    auto a = ParseUint(text, "range", kMax);
    if (!a.ok()) return a.status();
    return std::pair<uint32_t, uint32_t>(*a, *a + 1);
  }
  std::string_view lo = text.substr(0, colon), hi = text.substr(colon + 1);
  uint32_t a = 0, b = 0;
  if (!lo.empty()) {
    auto v = ParseUint(lo, "range begin", kMax);
    if (!v.ok()) return v.status();
    a = static_cast<uint32_t>(*v);
  }
  if (!hi.empty()) {
    auto v = ParseUint(hi, "range end", kMax);
    if (!v.ok()) return v.status();
    b = static_cast<uint32_t>(*v);
    if (b <= a) {
      return absl::InvalidArgumentError(absl::StrCat("range '", Av(text), "' is empty"));
    }
  }
  return std::pair<uint32_t, uint32_t>(a, b);
}

absl::StatusOr<kernels::ChunkShape> ParseLayout(std::string_view text) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(absl::string_view(text.data(), text.size()), ',');
  if (parts.size() != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout: expected L,T,H,D (4 numbers), got '", Av(text), "'"));
  }
  uint32_t v[4];
  static constexpr const char* kNames[] = {"layout.L", "layout.T", "layout.H", "layout.D"};
  for (int i = 0; i < 4; ++i) {
    auto n = ParseUint(std::string_view(parts[i].data(), parts[i].size()), kNames[i],
                       std::numeric_limits<uint32_t>::max());
    if (!n.ok()) return n.status();
    v[i] = static_cast<uint32_t>(*n);
  }
  kernels::ChunkShape s;
  s.num_layers = v[0];
  s.num_tokens = v[1];
  s.num_heads = v[2];
  s.head_dim = v[3];
  return s;
}

absl::StatusOr<kernels::ChunkShape> ModelGeometry(std::string_view name) {
  for (const Model& m : kModels) {
    if (name == m.name) {
      kernels::ChunkShape s;
      s.num_layers = m.layers;
      s.num_tokens = 256;
      s.num_heads = m.heads;
      s.head_dim = m.head_dim;
      return s;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("model: unknown '", Av(name), "'; known: ",
                                                 absl::StrJoin(ModelNames(), ", ")));
}

std::vector<std::string> ModelNames() {
  std::vector<std::string> out;
  for (const Model& m : kModels) out.emplace_back(m.name);
  return out;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0));
  const int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const int shift = 14 - e;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rounds up to inf
  return static_cast<uint16_t>(sign | h);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0x1f) {
    x = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400u));
      x = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else {
    x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float Bf16ToFloat(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

float ToFloat(uint16_t v, kernels::DType dtype) {
  return dtype == kernels::DType::kBF16 ? Bf16ToFloat(v) : HalfToFloat(v);
}

std::vector<uint16_t> GeneratePayload(const kernels::ChunkShape& shape, uint64_t seed) {
  std::vector<uint16_t> out(shape.elements());
  uint64_t state = seed ^ 0x6b767374617368ull;  // "kvstash"
  const bool bf16 = shape.dtype == kernels::DType::kBF16;
  // Irwin–Hall with 4 uniforms, centred and scaled to unit variance: pure integer and
  // fp32 arithmetic, so it is reproducible everywhere (unlike log/cos in Box–Muller).
  constexpr float kScale = 1.7320508f / 65536.0f;  // sqrt(3) / 2^16
  size_t i = 0;
  const uint32_t D = shape.head_dim;
  for (uint32_t l = 0; l < shape.num_layers; ++l) {
    for (int x = 0; x < 2; ++x) {
      for (uint64_t th = 0; th < uint64_t{shape.num_tokens} * shape.num_heads; ++th) {
        for (uint32_t d = 0; d < D; ++d, ++i) {
          const uint64_t r0 = SplitMix64(&state), r1 = SplitMix64(&state);
          const int64_t sum = static_cast<int64_t>(r0 & 0xffff) + static_cast<int64_t>((r0 >> 32) & 0xffff) +
                              static_cast<int64_t>(r1 & 0xffff) + static_cast<int64_t>((r1 >> 32) & 0xffff) -
                              2 * 65536;
          float v = static_cast<float>(sum) * kScale;
          // Keys of real models have a few large-magnitude channels.
          if (x == 0 && d % 32 == 7) v = v * 2.0f + 8.0f;
          out[i] = bf16 ? FloatToBf16(v) : FloatToHalf(v);
        }
      }
    }
  }
  return out;
}

std::vector<uint16_t> SlicePayload(const kernels::ChunkShape& shape,
                                   std::span<const uint16_t> full, const kernels::Slice& s) {
  const uint64_t T = shape.num_tokens, H = shape.num_heads, D = shape.head_dim;
  const uint64_t hn = s.head_end - s.head_begin;
  std::vector<uint16_t> out;
  out.reserve((s.layer_end - s.layer_begin) * 2 * T * hn * D);
  for (uint64_t l = s.layer_begin; l < s.layer_end; ++l) {
    for (uint64_t x = 0; x < 2; ++x) {
      for (uint64_t t = 0; t < T; ++t) {
        const uint16_t* row = full.data() + (((l * 2 + x) * T + t) * H + s.head_begin) * D;
        out.insert(out.end(), row, row + hn * D);
      }
    }
  }
  return out;
}

absl::StatusOr<ErrorMetrics> CompareValues(std::span<const uint16_t> ref, kernels::DType ref_dtype,
                                           std::span<const uint16_t> got, kernels::DType got_dtype) {
  if (ref.size() != got.size()) {
    return absl::InvalidArgumentError(absl::StrCat("compare: reference has ", ref.size(),
                                                   " values, decoded data has ", got.size()));
  }
  ErrorMetrics m;
  m.elements = ref.size();
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double a = ToFloat(ref[i], ref_dtype), b = ToFloat(got[i], got_dtype);
    const double e = std::fabs(a - b);
    if (e > m.max_abs || std::isnan(e)) m.max_abs = e;
    err2 += e * e;
    ref2 += a * a;
  }
  m.rel_rms = ref2 > 0 ? std::sqrt(err2 / ref2) : (err2 > 0 ? INFINITY : 0.0);
  return m;
}

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f %s", v, kUnits[u]);
  return buf;
}

}  // namespace kvstash::cli
