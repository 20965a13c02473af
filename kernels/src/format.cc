// Sizes, offsets and header I/O of the stored chunk format (docs/format.md).
#include "kvstash/kernels/format.h"

#include "kvstash/kernels/xxh3.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "xxhash.h"

namespace kvstash::kernels {
namespace {

constexpr uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

template <typename T>
void Put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));  // host is little-endian (x86-64, aarch64)
}
template <typename T>
T Get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Header field offsets (docs/format.md section 4).
enum : size_t {
  kOffMagic = 0, kOffVersion = 4, kOffHeaderBytes = 6, kOffDType = 8, kOffLayout = 9,
  kOffPreset = 10, kOffFlags = 11, kOffGroup = 12, kOffReserved = 14, kOffShape = 16,
  kOffKq = 32, kOffVq = 34, kOffKm = 36, kOffVm = 38, kOffEta1 = 40, kOffEta2 = 44,
  kOffTotal = 48, kOffHeaderSum = 56,
};
constexpr uint8_t kLayoutLKVTHD = 1;
constexpr uint8_t kFlagRaw = 1;

}  // namespace

std::string_view DTypeName(DType d) {
  switch (d) {
    case DType::kF16: return "fp16";
    case DType::kBF16: return "bf16";
    default: return "unspecified";
  }
}

std::string_view PresetName(Preset p) {
  switch (p) {
    case Preset::kFp16: return "fp16";
    case Preset::kKivi2: return "kivi-2";
    case Preset::kAsymKv15: return "asymkv-1.5";
    case Preset::kXQuant: return "xquant";
    default: return "custom";
  }
}

absl::StatusOr<Preset> ParsePreset(std::string_view name) {
  for (Preset p : {Preset::kFp16, Preset::kKivi2, Preset::kAsymKv15, Preset::kXQuant}) {
    if (name == PresetName(p)) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "preset: unknown codec preset '", std::string(name), "' (want fp16, kivi-2, asymkv-1.5 or xquant)"));
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  if (name == "fp16" || name == "float16") return DType::kF16;
  if (name == "bf16" || name == "bfloat16") return DType::kBF16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype: unknown dtype '", std::string(name), "' (want fp16 or bf16)"));
}

CodecConfig PresetConfig(Preset preset, uint32_t L) {
  CodecConfig c;
  c.preset = preset;
  switch (preset) {
    case Preset::kFp16:
      c.raw = true;
      c.k_q = c.v_q = c.k_m = c.v_m = L;
      break;
    case Preset::kKivi2:
      c.k_q = c.v_q = c.k_m = c.v_m = L;
      break;
    case Preset::kAsymKv15:
      c.k_q = L, c.v_q = 0, c.k_m = L, c.v_m = L;
      break;
    case Preset::kXQuant:
      c.k_q = L, c.v_q = 0, c.k_m = L, c.v_m = L / 2;
      c.eta1 = 1.0f / 6.0f, c.eta2 = 0.045f;
      break;
    case Preset::kCustom:
      break;
  }
  return c;
}

absl::Status ValidateShape(const ChunkShape& s) {
  if (s.num_layers < 1 || s.num_layers > kMaxLayers)
    return absl::InvalidArgumentError(absl::StrCat("shape.num_layers: ", s.num_layers,
                                                   " is outside [1, ", kMaxLayers, "]"));
  if (s.num_tokens < 1 || s.num_tokens > kMaxTokens)
    return absl::InvalidArgumentError(absl::StrCat("shape.num_tokens: ", s.num_tokens,
                                                   " is outside [1, ", kMaxTokens, "]"));
  if (s.num_heads < 1 || s.num_heads > kMaxHeads)
    return absl::InvalidArgumentError(absl::StrCat("shape.num_heads: ", s.num_heads,
                                                   " is outside [1, ", kMaxHeads, "]"));
  if (s.head_dim < kGroupSize || s.head_dim > kMaxHeadDim || s.head_dim % kGroupSize != 0)
    return absl::InvalidArgumentError(absl::StrCat(
        "shape.head_dim: ", s.head_dim, " must be a multiple of 32 in [32, ", kMaxHeadDim, "]"));
  if (s.dtype != DType::kF16 && s.dtype != DType::kBF16)
    return absl::InvalidArgumentError("shape.dtype: must be fp16 or bf16");
  return absl::OkStatus();
}

absl::Status ValidateConfig(const ChunkShape& shape, const CodecConfig& c) {
  if (auto st = ValidateShape(shape); !st.ok()) return st;
  if (c.raw) return absl::OkStatus();
  const uint32_t L = shape.num_layers;
  const std::pair<const char*, uint32_t> fields[] = {
      {"config.k_q", c.k_q}, {"config.v_q", c.v_q}, {"config.k_m", c.k_m}, {"config.v_m", c.v_m}};
  for (const auto& [name, v] : fields) {
    if (v > L)
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": ", v, " exceeds the number of layers ", L));
  }
  const std::pair<const char*, float> etas[] = {{"config.eta1", c.eta1}, {"config.eta2", c.eta2}};
  for (const auto& [name, v] : etas) {
    if (!(v >= 0.0f && v < 0.5f))
      return absl::InvalidArgumentError(absl::StrCat(name, ": ", v, " is outside [0, 0.5)"));
  }
  for (int x = 0; x < 2; ++x) {
    for (uint32_t l = 1; l < L; l += 2) {
      if (!StoresCodes(c, l, x) && Bits(c, l, x) != Bits(c, l - 1, x)) {
        return absl::InvalidArgumentError(absl::StrCat(
            x == 0 ? "config.k_m" : "config.v_m", ": layer ", l, " shares the ",
            x == 0 ? "key" : "value", " codes of layer ", l - 1,
            " but their bit widths differ (", Bits(c, l, x), " vs ", Bits(c, l - 1, x),
            "); move ", x == 0 ? "k_q" : "v_q", " to an even layer or raise the sharing start"));
      }
    }
  }
  return absl::OkStatus();
}

ChunkLayout ComputeLayout(const ChunkShape& shape, const CodecConfig& config) {
  ChunkLayout lay;
  lay.shape = shape;
  lay.config = config;
  const uint64_t H = shape.num_heads, D = shape.head_dim, L = shape.num_layers;
  lay.num_groups_t = config.raw ? 0 : shape.num_tokens / kGroupSize;
  lay.quant_tokens = lay.num_groups_t * kGroupSize;
  lay.tail_tokens = shape.num_tokens - lay.quant_tokens;
  lay.groups = H * lay.num_groups_t * D;
  const uint32_t P = static_cast<uint32_t>((L + 1) / 2);
  lay.header_bytes = RoundUp(kHeaderBytes + kDirEntryBytes * P, kSectionAlign);
  lay.pairs.resize(P);
  lay.tensors.resize(2 * L);
  const uint64_t tail_bytes = 2 * H * lay.tail_tokens * D;
  uint64_t off = lay.header_bytes;
  for (uint32_t p = 0; p < P; ++p) {
    lay.pairs[p].offset = off;
    for (uint32_t l = 2 * p; l < std::min<uint64_t>(2 * p + 2, L); ++l) {
      for (int x = 0; x < 2; ++x) {
        TensorLayout& t = lay.tensors[2 * l + x];
        t.bits = config.raw ? 0 : Bits(config, l, x);
        t.owns_codes = StoresCodes(config, l, x);
        if (t.owns_codes) {
          t.codes = off;
          off += lay.groups * 4 * t.bits;
        } else if (!config.raw) {
          t.codes = lay.tensors[2 * (l - 1) + x].codes;
        }
        t.scales = off;
        off += 2 * lay.groups;
        t.zeros = off;
        off += 2 * lay.groups;
        t.tail = off;
        off += tail_bytes;
      }
    }
    lay.pairs[p].bytes = off - lay.pairs[p].offset;
  }
  lay.total_bytes = off;
  return lay;
}

absl::StatusOr<ChunkLayout> MakeLayout(const ChunkShape& shape, const CodecConfig& config) {
  if (auto st = ValidateConfig(shape, config); !st.ok()) return st;
  return ComputeLayout(shape, config);
}

double EquivalentBits(const ChunkShape& shape, const CodecConfig& c) {
  if (c.raw) return 16.0;
  uint64_t bits = 0;
  for (uint32_t l = 0; l < shape.num_layers; ++l)
    for (int x = 0; x < 2; ++x)
      if (StoresCodes(c, l, x)) bits += Bits(c, l, x);
  return static_cast<double>(bits) / (2.0 * shape.num_layers);
}

double TrueBits(const ChunkLayout& layout) {
  return 8.0 * static_cast<double>(layout.total_bytes) /
         static_cast<double>(layout.shape.elements());
}

absl::Status InvalidElementStatus(const ChunkShape& shape, uint64_t index, uint16_t value) {
  uint64_t r = index;
  const uint64_t d = r % shape.head_dim;
  r /= shape.head_dim;
  const uint64_t h = r % shape.num_heads;
  r /= shape.num_heads;
  const uint64_t t = r % shape.num_tokens;
  r /= shape.num_tokens;
  const uint64_t x = r % 2, l = r / 2;
  const bool non_finite = shape.dtype == DType::kBF16 ? (value & 0x7F80u) == 0x7F80u
                                                      : (value & 0x7C00u) == 0x7C00u;
  return absl::InvalidArgumentError(absl::StrCat(
      "input: element (layer ", l, ", ", x == 0 ? "K" : "V", ", token ", t, ", head ", h,
      ", channel ", d, ") = 0x", absl::Hex(value, absl::kZeroPad4), " is ",
      non_finite ? "NaN or Inf" : "a bf16 value with |x| >= 2^126", " in a ",
      std::string(DTypeName(shape.dtype)), " chunk"));
}

uint64_t Checksum(const void* data, size_t size) { return Xxh3(data, size); }

void WriteHeader(const ChunkLayout& lay, uint8_t* out) {
  std::memset(out, 0, lay.header_bytes);
  const ChunkShape& s = lay.shape;
  const CodecConfig& c = lay.config;
  Put<uint32_t>(out + kOffMagic, kChunkMagic);
  Put<uint16_t>(out + kOffVersion, kFormatVersion);
  Put<uint16_t>(out + kOffHeaderBytes, static_cast<uint16_t>(lay.header_bytes));
  out[kOffDType] = static_cast<uint8_t>(s.dtype);
  out[kOffLayout] = kLayoutLKVTHD;
  out[kOffPreset] = static_cast<uint8_t>(c.preset);
  out[kOffFlags] = c.raw ? kFlagRaw : 0;
  Put<uint16_t>(out + kOffGroup, kGroupSize);
  Put<uint32_t>(out + kOffShape + 0, s.num_layers);
  Put<uint32_t>(out + kOffShape + 4, s.num_tokens);
  Put<uint32_t>(out + kOffShape + 8, s.num_heads);
  Put<uint32_t>(out + kOffShape + 12, s.head_dim);
  Put<uint16_t>(out + kOffKq, static_cast<uint16_t>(c.k_q));
  Put<uint16_t>(out + kOffVq, static_cast<uint16_t>(c.v_q));
  Put<uint16_t>(out + kOffKm, static_cast<uint16_t>(c.k_m));
  Put<uint16_t>(out + kOffVm, static_cast<uint16_t>(c.v_m));
  Put<float>(out + kOffEta1, c.raw ? 0.0f : c.eta1);
  Put<float>(out + kOffEta2, c.raw ? 0.0f : c.eta2);
  Put<uint64_t>(out + kOffTotal, lay.total_bytes);
  for (uint32_t p = 0; p < lay.num_pairs(); ++p) {
    uint8_t* e = out + kHeaderBytes + kDirEntryBytes * p;
    Put<uint64_t>(e, lay.pairs[p].offset);
    Put<uint64_t>(e + 8, lay.pairs[p].bytes);
  }
}

void SealChecksums(const ChunkLayout& lay, uint8_t* chunk) {
  for (uint32_t p = 0; p < lay.num_pairs(); ++p) {
    const uint64_t sum = Checksum(chunk + lay.pairs[p].offset, lay.pairs[p].bytes);
    Put<uint64_t>(chunk + kHeaderBytes + kDirEntryBytes * p + 16, sum);
  }
  Put<uint64_t>(chunk + kOffHeaderSum, 0);
  Put<uint64_t>(chunk + kOffHeaderSum, Checksum(chunk, lay.header_bytes));
}

absl::StatusOr<ParsedHeader> ParseHeader(const uint8_t* data, size_t size, bool require_full) {
  if (size < kHeaderBytes)
    return absl::DataLossError(absl::StrCat("chunk: ", size, " bytes is shorter than a header"));
  if (Get<uint32_t>(data + kOffMagic) != kChunkMagic)
    return absl::DataLossError("chunk: bad magic, not a kvstash chunk");
  const uint16_t version = Get<uint16_t>(data + kOffVersion);
  if (version != kFormatVersion)
    return absl::FailedPreconditionError(
        absl::StrCat("chunk: format version ", version, " is not supported (want 1)"));
  const uint64_t header_bytes = Get<uint16_t>(data + kOffHeaderBytes);
  if (header_bytes < kHeaderBytes || header_bytes % kSectionAlign != 0 || header_bytes > size)
    return absl::DataLossError(absl::StrCat("chunk: header size ", header_bytes,
                                            " is invalid for a buffer of ", size, " bytes"));
  {
    std::vector<uint8_t> copy(data, data + header_bytes);
    Put<uint64_t>(copy.data() + kOffHeaderSum, 0);
    if (Checksum(copy.data(), copy.size()) != Get<uint64_t>(data + kOffHeaderSum))
      return absl::DataLossError("chunk: header checksum mismatch");
  }
  ChunkShape s;
  s.dtype = static_cast<DType>(data[kOffDType]);
  s.num_layers = Get<uint32_t>(data + kOffShape + 0);
  s.num_tokens = Get<uint32_t>(data + kOffShape + 4);
  s.num_heads = Get<uint32_t>(data + kOffShape + 8);
  s.head_dim = Get<uint32_t>(data + kOffShape + 12);
  CodecConfig c;
  c.preset = static_cast<Preset>(data[kOffPreset]);
  c.raw = (data[kOffFlags] & kFlagRaw) != 0;
  c.k_q = Get<uint16_t>(data + kOffKq);
  c.v_q = Get<uint16_t>(data + kOffVq);
  c.k_m = Get<uint16_t>(data + kOffKm);
  c.v_m = Get<uint16_t>(data + kOffVm);
  c.eta1 = Get<float>(data + kOffEta1);
  c.eta2 = Get<float>(data + kOffEta2);
  if (data[kOffLayout] != kLayoutLKVTHD || (data[kOffFlags] & ~kFlagRaw) != 0 ||
      Get<uint16_t>(data + kOffGroup) != kGroupSize || Get<uint16_t>(data + kOffReserved) != 0 ||
      static_cast<uint8_t>(c.preset) > static_cast<uint8_t>(Preset::kXQuant))
    return absl::DataLossError("chunk: header has an unknown layout, flag or group size");
  if (auto st = ValidateConfig(s, c); !st.ok())
    return absl::DataLossError(absl::StrCat("chunk: header fields are invalid: ", st.message()));
  ParsedHeader out;
  out.layout = ComputeLayout(s, c);
  const ChunkLayout& lay = out.layout;
  if (lay.header_bytes != header_bytes || lay.total_bytes != Get<uint64_t>(data + kOffTotal))
    return absl::DataLossError("chunk: header sizes disagree with its shape");
  if (require_full && size != lay.total_bytes)
    return absl::DataLossError(absl::StrCat("chunk: holds ", size, " bytes, header says ",
                                            lay.total_bytes));
  out.section_checksums.resize(lay.num_pairs());
  for (uint32_t p = 0; p < lay.num_pairs(); ++p) {
    const uint8_t* e = data + kHeaderBytes + kDirEntryBytes * p;
    if (Get<uint64_t>(e) != lay.pairs[p].offset || Get<uint64_t>(e + 8) != lay.pairs[p].bytes)
      return absl::DataLossError(absl::StrCat("chunk: directory entry ", p, " is inconsistent"));
    out.section_checksums[p] = Get<uint64_t>(e + 16);
  }
  return out;
}

}  // namespace kvstash::kernels
