// Fuzz target (b): the stored-chunk decoder (kernels/: ParseHeader, the directory, section
// checksums, Decode and DecodeSections in both implementations, and the C ABI's
// kvs_decoded_elements/kvs_decode), plus the encoder on arbitrary input values.
//
// Input: byte 0 picks the mode (low 2 bits) and the output dtype (bits 2-3: 0 fp16, 1 bf16,
// else invalid); bytes 1-4 a slice (layer begin, layer end, head begin, head end; an end
// of 0 = to the last); the rest is
//   mode 0: a stored chunk, decoded as is (mostly refused: checksums);
//   mode 1: a stored chunk whose sizes, directory and checksums the harness fixes first
//           (when its shape and config are valid and it is at most 64 KiB), so the decoder
//           reads fuzzed sections;
//   mode 2: as mode 1, then cut short by byte 5 x 64 bytes (partial buffers);
//   mode 3: a shape and config (bytes 5-14) and input values for the encoder.
// Oracles besides the sanitizers: the reference and fast implementations agree on the
// status code, and byte for byte (docs/format.md promises identical bytes) for every
// encode and for every decode of a chunk whose stored values are finite; DecodeSections over sections held in separate, exactly sized buffers (as the
// store holds them) gives the same bytes as Decode; the C ABI agrees; a chunk the encoder
// wrote parses and decodes, fp16 exactly back to its input.
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "fuzz_common.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "kvstash_codec_capi.h"

namespace kvstash::fuzz {
namespace {

using kernels::ChunkShape;
using kernels::CodecConfig;
using kernels::DType;
using kernels::Impl;

constexpr size_t kMaxResealBytes = 64 << 10;  // keeps an input to milliseconds

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
void Store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

std::string Str(const absl::Status& s) { return std::string(s.ToString()); }

// docs/format.md section 4: fixes header_bytes, total_bytes and the directory of a chunk
// whose shape and config are valid, resizes it to its total size and seals every checksum.
// Leaves every other field as fuzzed (the parser must still judge them).
void Reseal(std::vector<uint8_t>& chunk) {
  if (chunk.size() < kernels::kHeaderBytes) return;
  const uint8_t* h = chunk.data();
  ChunkShape s{Load<uint32_t>(h + 16), Load<uint32_t>(h + 20), Load<uint32_t>(h + 24),
               Load<uint32_t>(h + 28), static_cast<DType>(h[8])};
  CodecConfig c{(h[11] & 1) != 0,   Load<uint16_t>(h + 32), Load<uint16_t>(h + 34),
                Load<uint16_t>(h + 36), Load<uint16_t>(h + 38), Load<float>(h + 40),
                Load<float>(h + 44), static_cast<kernels::Preset>(h[10])};
  if (!kernels::ValidateConfig(s, c).ok()) return;
  const kernels::ChunkLayout lay = kernels::ComputeLayout(s, c);
  if (lay.total_bytes > kMaxResealBytes) return;
  chunk.resize(lay.total_bytes);
  uint8_t* w = chunk.data();
  Store<uint16_t>(w + 6, static_cast<uint16_t>(lay.header_bytes));
  Store<uint64_t>(w + 48, lay.total_bytes);
  for (uint32_t p = 0; p < lay.num_pairs(); ++p) {
    Store<uint64_t>(w + kernels::kHeaderBytes + kernels::kDirEntryBytes * p, lay.pairs[p].offset);
    Store<uint64_t>(w + kernels::kHeaderBytes + kernels::kDirEntryBytes * p + 8, lay.pairs[p].bytes);
  }
  kernels::SealChecksums(lay, w);
}

// Whether every stored 16-bit value (scales, zeros, tails; all of a raw chunk) is finite,
// as the encoder always writes them. Decoding a non-finite one is unspecified
// (docs/format.md section 3 defines decoding for the encoder's output; such a chunk is
// corrupt even when its checksums match), so the implementations are compared only on
// chunks without them; every chunk must still decode without a sanitizer report.
bool StoredValuesFinite(const std::vector<uint8_t>& chunk) {
  auto header = kernels::ParseHeader(chunk.data(), chunk.size(), /*require_full=*/true);
  if (!header.ok()) return true;
  const kernels::ChunkLayout& lay = header->layout;
  const ChunkShape& s = lay.shape;
  const uint16_t exp = s.dtype == DType::kBF16 ? 0x7F80 : 0x7C00;
  auto finite = [&](uint64_t offset, uint64_t count) {
    for (uint64_t i = 0; i < count; ++i)
      if ((Load<uint16_t>(chunk.data() + offset + 2 * i) & exp) == exp) return false;
    return true;
  };
  for (uint32_t l = 0; l < s.num_layers; ++l) {
    for (int x = 0; x < 2; ++x) {
      const kernels::TensorLayout& t = lay.tensor(l, x);
      if (!finite(t.scales, lay.groups) || !finite(t.zeros, lay.groups) ||
          !finite(t.tail, uint64_t{s.num_heads} * lay.tail_tokens * s.head_dim))
        return false;
    }
  }
  return true;
}

void DecodeAll(const std::vector<uint8_t>& chunk, const kernels::Slice& slice, DType out) {
  std::vector<uint16_t> ref, fast;
  const absl::Status sr = kernels::Decode(chunk.data(), chunk.size(), slice, out, &ref, Impl::kReference);
  const absl::Status sf = kernels::Decode(chunk.data(), chunk.size(), slice, out, &fast, Impl::kFast);
  FUZZ_CHECK(sr.code() == sf.code(), "reference decode: %s; fast decode: %s", Str(sr).c_str(),
             Str(sf).c_str());
  const bool comparable = StoredValuesFinite(chunk);
  if (sr.ok() && comparable) {
    FUZZ_CHECK(ref.size() == fast.size() &&
                   std::memcmp(ref.data(), fast.data(), ref.size() * 2) == 0,
               "reference and fast decodes differ (%zu values)", ref.size());
  }

  // The C ABI, on the same bytes.
  uint64_t elements = 0;
  const int ce = kvs_decoded_elements(chunk.data(), chunk.size(), slice.layer_begin,
                                      slice.layer_end, slice.head_begin, slice.head_end,
                                      &elements, nullptr, 0);
  if (ce == 0 && elements <= (64u << 20)) {
    std::vector<uint16_t> capi(elements);
    const int cd = kvs_decode(chunk.data(), chunk.size(), slice.layer_begin, slice.layer_end,
                              slice.head_begin, slice.head_end, static_cast<uint32_t>(out),
                              capi.data(), capi.size(), 0, nullptr, 0);
    FUZZ_CHECK(cd == static_cast<int>(sf.code()), "kvs_decode %d, Decode %s", cd,
               Str(sf).c_str());
    if (cd == 0)
      FUZZ_CHECK(capi == fast, "kvs_decode and Decode differ");
  }

  // Sections in buffers of their own, exactly sized, as the store's pages hold them.
  auto header = kernels::ParseHeader(chunk.data(), chunk.size(), /*require_full=*/true);
  FUZZ_CHECK(header.ok() || !sr.ok(), "Decode succeeded on a chunk ParseHeader refuses: %s",
             Str(header.status()).c_str());
  if (!header.ok()) return;
  auto resolved = kernels::ResolveSlice(header->layout.shape, slice);
  if (!resolved.ok()) return;
  const kernels::PairRange pairs = kernels::PairsForSlice(*resolved);
  std::vector<std::vector<uint8_t>> owned(header->layout.num_pairs());
  std::vector<const uint8_t*> sections(header->layout.num_pairs(), nullptr);
  for (uint32_t p = pairs.first; p <= pairs.last; ++p) {
    const kernels::PairLayout& pl = header->layout.pairs[p];
    owned[p].assign(chunk.begin() + pl.offset, chunk.begin() + pl.offset + pl.bytes);
    sections[p] = owned[p].data();
  }
  const uint64_t n = kernels::DecodedBytes(header->layout.shape, *resolved) / 2;
  for (Impl impl : {Impl::kReference, Impl::kFast}) {
    std::vector<uint16_t> got(n);
    const absl::Status s =
        kernels::DecodeSections(*header, sections.data(), *resolved, out, got.data(), impl);
    FUZZ_CHECK(s.code() == sr.code(), "DecodeSections (%s): %s; Decode: %s",
               impl == Impl::kFast ? "fast" : "reference", Str(s).c_str(), Str(sr).c_str());
    if (s.ok())
      FUZZ_CHECK(got == (impl == Impl::kFast ? fast : ref), "DecodeSections and Decode differ");
  }
}

void EncodeAll(const uint8_t* p, size_t size, DType out) {
  if (size < 10) return;
  ChunkShape s;
  s.num_layers = 1 + p[0] % 5;
  s.num_tokens = 1 + p[1] % 80;
  s.num_heads = 1 + p[2] % 3;
  s.head_dim = 32 * (1 + p[3] % 2);
  s.dtype = (p[4] & 1) ? DType::kBF16 : DType::kF16;
  CodecConfig c;
  if ((p[4] >> 1) % 5 != 0) {
    c = kernels::PresetConfig(static_cast<kernels::Preset>((p[4] >> 1) % 5), s.num_layers);
  } else {  // custom, including configurations ValidateConfig refuses
    c.k_q = p[5] % (s.num_layers + 2);
    c.v_q = p[6] % (s.num_layers + 2);
    c.k_m = p[7] % (s.num_layers + 2);
    c.v_m = p[8] % (s.num_layers + 2);
    c.eta1 = static_cast<float>(p[9] & 0x0F) / 28.0f;
    c.eta2 = static_cast<float>(p[9] >> 4) / 28.0f;
  }
  p += 10, size -= 10;
  // Input values: the fuzz bytes, repeated (NaN, Inf and huge bf16 values included).
  std::vector<uint16_t> in(s.elements());
  if (size >= 2) {
    for (size_t i = 0; i < in.size(); ++i) {
      const size_t at = (2 * i) % (size - size % 2);
      in[i] = static_cast<uint16_t>(p[at] | p[at + 1] << 8);
    }
  }
  auto ref = kernels::EncodeChunk(s, c, in, Impl::kReference);
  auto fast = kernels::EncodeChunk(s, c, in, Impl::kFast);
  FUZZ_CHECK(ref.status().code() == fast.status().code(), "reference encode: %s; fast: %s",
             Str(ref.status()).c_str(), Str(fast.status()).c_str());
  if (!ref.ok()) return;
  FUZZ_CHECK(*ref == *fast, "reference and fast encodes differ (%zu bytes)", ref->size());
  FUZZ_CHECK(kernels::ParseHeader(ref->data(), ref->size(), true).ok(),
             "the encoder wrote a chunk its parser refuses");
  DecodeAll(*ref, {}, out == DType::kBF16 ? DType::kBF16 : s.dtype);
  if (c.raw) {
    std::vector<uint16_t> back;
    FUZZ_CHECK(kernels::Decode(ref->data(), ref->size(), {}, s.dtype, &back).ok() && back == in,
               "fp16 chunk does not decode to its input");
  }
}

}  // namespace
}  // namespace kvstash::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash;
  using namespace kvstash::fuzz;
  if (size < 5) return 0;
  const int mode = data[0] & 3;
  const int dt = (data[0] >> 2) & 3;
  const kernels::DType out = dt == 0   ? kernels::DType::kF16
                             : dt == 1 ? kernels::DType::kBF16
                                       : static_cast<kernels::DType>(dt + 1);
  const kernels::Slice slice{data[1], data[2], data[3], data[4]};
  if (mode == 3) {
    EncodeAll(data + 5, size - 5, out);
    return 0;
  }
  size_t cut = 0;
  if (mode == 2) {
    if (size < 6) return 0;
    cut = size_t{data[5]} * 64;
    data += 1, size -= 1;
  }
  std::vector<uint8_t> chunk(data + 5, data + size);
  if (mode >= 1) Reseal(chunk);
  if (mode == 2 && cut < chunk.size()) {
    chunk.resize(cut);
    // A partial buffer: what a reader holding only the header and some sections parses.
    auto h = kernels::ParseHeader(chunk.data(), chunk.size(), /*require_full=*/false);
    if (h.ok())
      FUZZ_CHECK(h->layout.header_bytes <= chunk.size(), "a header longer than the buffer parsed");
  }
  DecodeAll(chunk, slice, out);
  return 0;
}
