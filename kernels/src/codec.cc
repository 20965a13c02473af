// Entry points of the CPU codec: argument checks, header/checksum handling and dispatch to
// the scalar reference or the fast path (docs/format.md is the contract both follow).
#include "kvstash/kernels/codec.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "codec_internal.h"
#include "kvstash/kernels/half.h"

namespace kvstash::kernels {
namespace internal {

absl::Status SectionChecksumError(const ChunkLayout& layout, uint32_t pair) {
  return absl::DataLossError(
      absl::StrCat("chunk: checksum mismatch in the section of layer pair ", pair, " (layers ",
                   2 * pair, "..", std::min(2 * pair + 1, layout.shape.num_layers - 1), ")"));
}

absl::Status VerifySection(const ParsedHeader& header, const uint8_t* section, uint32_t pair) {
  if (Checksum(section, header.layout.pairs[pair].bytes) != header.section_checksums[pair]) {
    return SectionChecksumError(header.layout, pair);
  }
  return absl::OkStatus();
}

namespace {

// SealChecksums with the section checksums already computed: the same bytes (the tests
// compare fast and reference chunks, which SealChecksums seals, byte for byte).
void SealWithSectionSums(const ChunkLayout& layout, uint8_t* chunk, const uint64_t* sums) {
  // docs/format.md section 4: directory entry p at 64 + 24p holds its checksum at +16; the
  // header checksum at 56 covers [0, header bytes) with itself zero.
  constexpr size_t kEntrySumOffset = 16, kHeaderSumOffset = 56;
  for (uint32_t p = 0; p < layout.num_pairs(); ++p) {
    std::memcpy(chunk + kHeaderBytes + kDirEntryBytes * p + kEntrySumOffset, &sums[p], 8);
  }
  std::memset(chunk + kHeaderSumOffset, 0, 8);
  const uint64_t header_sum = Checksum(chunk, layout.header_bytes);
  std::memcpy(chunk + kHeaderSumOffset, &header_sum, 8);
}

}  // namespace
}  // namespace internal

absl::StatusOr<Slice> ResolveSlice(const ChunkShape& shape, const Slice& slice) {
  Slice r = slice;
  if (r.layer_end == 0) r.layer_end = shape.num_layers;
  if (r.head_end == 0) r.head_end = shape.num_heads;
  if (r.layer_begin >= r.layer_end || r.layer_end > shape.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer_range: [", r.layer_begin, ", ",
                                                   r.layer_end, ") is empty or outside [0, ",
                                                   shape.num_layers, ")"));
  }
  if (r.head_begin >= r.head_end || r.head_end > shape.num_heads) {
    return absl::InvalidArgumentError(absl::StrCat("head_range: [", r.head_begin, ", ", r.head_end,
                                                   ") is empty or outside [0, ", shape.num_heads,
                                                   ")"));
  }
  return r;
}

uint64_t DecodedBytes(const ChunkShape& shape, const Slice& s) {
  return 2ull * (s.layer_end - s.layer_begin) * 2 * shape.num_tokens * (s.head_end - s.head_begin) *
         shape.head_dim;
}

absl::Status ValidateInput(const ChunkShape& shape, const uint16_t* in) {
  const int dt = static_cast<int>(shape.dtype);
  const uint64_t n = shape.elements();
  for (uint64_t e = 0; e < n; ++e) {
    if (!HalfIsEncodable(in[e], dt)) return InvalidElementStatus(shape, e, in[e]);
  }
  return absl::OkStatus();
}

absl::Status Encode(const ChunkLayout& layout, const uint16_t* in, uint8_t* out, Impl impl) {
  const internal::ScopedIeeeMode ieee;
  if (auto st = ValidateConfig(layout.shape, layout.config); !st.ok()) return st;
  if (in == nullptr || out == nullptr) return absl::InvalidArgumentError("input/output: null");
  {
    // A layout not made by ComputeLayout for this shape and config is a caller bug that
    // would write out of bounds; the check is cheap next to encoding.
    const ChunkLayout expect = ComputeLayout(layout.shape, layout.config);
    if (expect.total_bytes != layout.total_bytes || expect.header_bytes != layout.header_bytes ||
        expect.tensors.size() != layout.tensors.size()) {
      return absl::InvalidArgumentError("layout: does not match its shape and config");
    }
  }
  if (impl == Impl::kReference) {
    if (auto st = ValidateInput(layout.shape, in); !st.ok()) return st;
    WriteHeader(layout, out);
    for (uint32_t l = 0; l < layout.shape.num_layers; ++l) {
      for (int x = 0; x < 2; ++x) internal::EncodeTensorReference(layout, in, l, x, out);
    }
    SealChecksums(layout, out);
  } else {
    WriteHeader(layout, out);
    std::vector<uint64_t> sums(layout.num_pairs());
    if (auto st = internal::EncodeFast(layout, in, out, sums.data()); !st.ok()) return st;
    internal::SealWithSectionSums(layout, out, sums.data());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> EncodeChunk(const ChunkShape& shape, const CodecConfig& config,
                                                 std::span<const uint16_t> in, Impl impl) {
  absl::StatusOr<ChunkLayout> layout = MakeLayout(shape, config);
  if (!layout.ok()) return layout.status();
  if (in.size() != shape.elements()) {
    return absl::InvalidArgumentError(
        absl::StrCat("input: holds ", in.size(), " values, the shape needs ", shape.elements()));
  }
  std::vector<uint8_t> out(layout->total_bytes);
  if (auto st = Encode(*layout, in.data(), out.data(), impl); !st.ok()) return st;
  return out;
}

PairRange PairsForSlice(const Slice& s) { return {s.layer_begin / 2, (s.layer_end - 1) / 2}; }

absl::Status DecodeSections(const ParsedHeader& header, const uint8_t* const* sections,
                            const Slice& slice, DType out_dtype, uint16_t* out, Impl impl) {
  const internal::ScopedIeeeMode ieee;
  const ChunkLayout& layout = header.layout;
  if (out_dtype != DType::kF16 && out_dtype != DType::kBF16) {
    return absl::InvalidArgumentError("out_dtype: must be fp16 or bf16");
  }
  absl::StatusOr<Slice> resolved = ResolveSlice(layout.shape, slice);
  if (!resolved.ok()) return resolved.status();
  if (sections == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("sections/output: null");
  }
  const PairRange pairs = PairsForSlice(*resolved);
  for (uint32_t p = pairs.first; p <= pairs.last; ++p) {
    if (sections[p] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("sections: the section of layer pair ", p, " is needed but missing"));
    }
  }
  if (impl == Impl::kFast) {
    return internal::DecodeFast(header, sections, *resolved, out_dtype, out);
  }
  for (uint32_t p = pairs.first; p <= pairs.last; ++p) {
    if (auto st = internal::VerifySection(header, sections[p], p); !st.ok()) return st;
  }
  for (uint32_t l = resolved->layer_begin; l < resolved->layer_end; ++l) {
    for (int x = 0; x < 2; ++x) {
      internal::DecodeTensorReference(layout, sections, *resolved, l, x, out_dtype, out);
    }
  }
  return absl::OkStatus();
}

absl::Status Decode(const uint8_t* chunk, size_t size, const Slice& slice, DType out_dtype,
                    std::vector<uint16_t>* out, Impl impl) {
  if (chunk == nullptr || out == nullptr) return absl::InvalidArgumentError("chunk/output: null");
  absl::StatusOr<ParsedHeader> header = ParseHeader(chunk, size, /*require_full=*/true);
  if (!header.ok()) return header.status();
  absl::StatusOr<Slice> resolved = ResolveSlice(header->layout.shape, slice);
  if (!resolved.ok()) return resolved.status();
  std::vector<const uint8_t*> sections(header->layout.num_pairs());
  for (uint32_t p = 0; p < sections.size(); ++p) {
    sections[p] = chunk + header->layout.pairs[p].offset;
  }
  out->resize(DecodedBytes(header->layout.shape, *resolved) / 2);
  return DecodeSections(*header, sections.data(), *resolved, out_dtype, out->data(), impl);
}

const char* FastPathName() { return internal::FastPath(); }

}  // namespace kvstash::kernels
