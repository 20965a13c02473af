// The kvstash stored chunk format, version 1: shapes, codec configurations and the byte
// layout every encoder and decoder shares. The full specification is docs/format.md;
// this header is its single implementation of sizes and offsets.
//
// Everything here is plain data and pure functions: thread-compatible, no allocation
// beyond the returned objects, usable from host code that builds CUDA launches.
#ifndef KVSTASH_KERNELS_FORMAT_H_
#define KVSTASH_KERNELS_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvstash::kernels {

inline constexpr uint32_t kChunkMagic = 0x5153564B;  // "KVSQ"
inline constexpr uint16_t kFormatVersion = 1;
inline constexpr uint32_t kGroupSize = 32;
inline constexpr size_t kHeaderBytes = 64;
inline constexpr size_t kDirEntryBytes = 24;
inline constexpr size_t kSectionAlign = 64;

inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxTokens = 1u << 20;
inline constexpr uint32_t kMaxHeads = 1024;
inline constexpr uint32_t kMaxHeadDim = 512;

enum class DType : uint8_t { kUnspecified = 0, kF16 = 1, kBF16 = 2 };
enum class Preset : uint8_t { kCustom = 0, kFp16 = 1, kKivi2 = 2, kAsymKv15 = 3, kXQuant = 4 };

std::string_view DTypeName(DType d);
std::string_view PresetName(Preset p);
// Parses "fp16", "kivi-2", "asymkv-1.5", "xquant". InvalidArgument otherwise.
absl::StatusOr<Preset> ParsePreset(std::string_view name);
absl::StatusOr<DType> ParseDType(std::string_view name);  // "fp16" | "bf16"

// Geometry of one chunk; canonical input layout [L][2][T][H][D].
struct ChunkShape {
  uint32_t num_layers = 0;  // L
  uint32_t num_tokens = 0;  // T
  uint32_t num_heads = 0;   // H (KV heads)
  uint32_t head_dim = 0;    // D, multiple of 32
  DType dtype = DType::kF16;

  uint64_t elements() const {  // 2·L·T·H·D
    return 2ull * num_layers * num_tokens * num_heads * head_dim;
  }
  uint64_t payload_bytes() const { return 2 * elements(); }
  bool operator==(const ChunkShape&) const = default;
};

// XQuant codec configuration (docs/format.md section 2).
struct CodecConfig {
  bool raw = false;    // fp16 preset: store the 16-bit input as is
  uint32_t k_q = 0;    // layers [0, k_q) use 2-bit keys, the rest 1-bit
  uint32_t v_q = 0;    // layers [0, v_q) use 2-bit values, the rest 1-bit
  uint32_t k_m = 0;    // odd layers >= k_m reuse the K codes of layer l-1
  uint32_t v_m = 0;    // odd layers >= v_m reuse the V codes of layer l-1
  float eta1 = 0.0f;   // calibration for 1-bit groups, [0, 0.5)
  float eta2 = 0.0f;   // calibration for 2-bit groups, [0, 0.5)
  Preset preset = Preset::kCustom;  // informational; recorded in the header

  bool operator==(const CodecConfig&) const = default;
};

// The configuration of a named preset for a model of num_layers layers.
CodecConfig PresetConfig(Preset preset, uint32_t num_layers);

// InvalidArgument naming the offending field ("shape.head_dim", "config.k_m", ...).
absl::Status ValidateShape(const ChunkShape& shape);
absl::Status ValidateConfig(const ChunkShape& shape, const CodecConfig& config);

// Per-layer, per-tensor bit width and whether the layer stores its own codes.
inline uint32_t Bits(const CodecConfig& c, uint32_t layer, int tensor) {
  return layer < (tensor == 0 ? c.k_q : c.v_q) ? 2u : 1u;
}
inline bool StoresCodes(const CodecConfig& c, uint32_t layer, int tensor) {
  if (c.raw) return false;
  return !((layer & 1u) && layer >= (tensor == 0 ? c.k_m : c.v_m));
}

// Offsets of one tensor (K or V) of one layer, relative to the chunk start.
struct TensorLayout {
  uint32_t bits = 0;          // 1 or 2; 0 when raw
  uint64_t codes = 0;         // offset of the code words this tensor decodes with
                              // (layer l-1's when it shares)
  bool owns_codes = false;    // false when the codes belong to layer l-1
  uint64_t scales = 0;        // [NGR] 16-bit
  uint64_t zeros = 0;         // [NGR] 16-bit
  uint64_t tail = 0;          // [H][Tt][D] 16-bit
};

struct PairLayout {
  uint64_t offset = 0;  // section start from the chunk start
  uint64_t bytes = 0;   // multiple of 64
};

// Sizes and offsets of a whole chunk. Computed once per (shape, config) on the host and
// shared by the CPU codec and the CUDA launchers.
struct ChunkLayout {
  ChunkShape shape;
  CodecConfig config;
  uint32_t num_groups_t = 0;   // NG = floor(T/32), 0 when raw
  uint32_t quant_tokens = 0;   // Tq = 32·NG
  uint32_t tail_tokens = 0;    // Tt = T - Tq
  uint64_t groups = 0;         // NGR = H·NG·D, per layer and tensor
  uint64_t header_bytes = 0;   // 64 + directory, rounded up to 64
  uint64_t total_bytes = 0;
  std::vector<PairLayout> pairs;            // ceil(L/2)
  std::vector<TensorLayout> tensors;        // [L][2]

  const TensorLayout& tensor(uint32_t layer, int x) const { return tensors[2 * layer + x]; }
  uint32_t num_pairs() const { return static_cast<uint32_t>(pairs.size()); }
};

// REQUIRES: ValidateConfig(shape, config).ok().
ChunkLayout ComputeLayout(const ChunkShape& shape, const CodecConfig& config);
// Validates, then computes.
absl::StatusOr<ChunkLayout> MakeLayout(const ChunkShape& shape, const CodecConfig& config);

// The paper's equivalent bit width (codes only) and the true stored bits per element.
double EquivalentBits(const ChunkShape& shape, const CodecConfig& config);
double TrueBits(const ChunkLayout& layout);

// --- Header I/O -------------------------------------------------------------------------

// Writes the header and pair directory for `layout` into out[0, header_bytes), with the
// section checksums set to zero. Sections are written by an encoder; SealChecksums then
// fills in every checksum. REQUIRES: out holds layout.total_bytes.
void WriteHeader(const ChunkLayout& layout, uint8_t* out);
// Computes every section checksum, then the header checksum, in place.
void SealChecksums(const ChunkLayout& layout, uint8_t* chunk);

// A parsed and verified header (docs/format.md section 6, header part).
struct ParsedHeader {
  ChunkLayout layout;
  std::vector<uint64_t> section_checksums;  // from the directory, per pair
};
// Verifies magic, version, sizes, header checksum, fields and directory.
// `size` is what the caller holds; it must be at least the header bytes and, when
// `require_full` is true, exactly the total chunk bytes.
absl::StatusOr<ParsedHeader> ParseHeader(const uint8_t* data, size_t size, bool require_full);

// InvalidArgument naming the input element at flat `index` of [L][2][T][H][D] (its layer,
// K|V, token, head, channel) whose 16-bit pattern `value` the codec cannot encode (NaN/Inf,
// or a bf16 magnitude >= 2^126). Shared by the CPU and CUDA validity checks.
absl::Status InvalidElementStatus(const ChunkShape& shape, uint64_t index, uint16_t value);

// XXH3-64 with seed 0, the checksum the format uses.
uint64_t Checksum(const void* data, size_t size);

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_FORMAT_H_
