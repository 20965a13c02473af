// The scalar reference codec: the test oracle for the fast path and the CUDA kernels.
//
// Written for clarity, one group at a time, literally following docs/format.md section 3
// (quantizer) and section 4 (byte layout). Speed is not a goal here. The build passes
// -ffp-contract=off, so every `a * b + c` below is a rounded product then a rounded sum, as
// the format requires.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "codec_internal.h"
#include "kvstash/kernels/half.h"

namespace kvstash::kernels::internal {
namespace {

// What one quantized group stores.
struct GroupOut {
  uint64_t code = 0;   // code of element j at bit j (b = 1) or bits 2j, 2j+1 (b = 2)
  uint16_t scale = 0;  // to16(ŝ)
  uint16_t zero = 0;   // to16(ẑ)
};

// docs/format.md section 3, for one group of 32 values already converted to fp32.
GroupOut QuantizeGroup(const float (&in)[kGroupSize], uint32_t bits, float eta, int dtype) {
  float x[kGroupSize];
  for (uint32_t j = 0; j < kGroupSize; ++j) x[j] = in[j] + 0.0f;  // -0 -> +0
  float mn = x[0], mx = x[0];
  for (uint32_t j = 1; j < kGroupSize; ++j) {
    mn = std::min(mn, x[j]);
    mx = std::max(mx, x[j]);
  }
  const float lv = bits == 2 ? 3.0f : 1.0f;
  const float r = mx - mn;
  const float s = r / lv;
  GroupOut g;
  if (s != 0.0f) {
    for (uint32_t j = 0; j < kGroupSize; ++j) {
      const float t = std::min(std::max((x[j] - mn) / s, 0.0f), lv);
      const uint64_t q = static_cast<uint64_t>(std::rint(t));  // default rounding: ties to even
      g.code |= q << (bits * j);
    }
  }
  const float eta_r = eta * r;
  const float zhat = mn + eta_r;
  const float factor = 1.0f - 2.0f * eta;
  const float shat = factor * s;
  g.scale = FloatToHalfSat(shat, dtype);
  g.zero = FloatToHalfSat(zhat, dtype);
  return g;
}

void Put16(uint8_t* base, uint64_t index, uint16_t v) { std::memcpy(base + 2 * index, &v, 2); }
uint16_t Get16(const uint8_t* base, uint64_t index) {
  uint16_t v;
  std::memcpy(&v, base + 2 * index, 2);
  return v;
}

}  // namespace

void EncodeTensorReference(const ChunkLayout& lay, const uint16_t* in, uint32_t layer, int x,
                           uint8_t* out) {
  const ChunkShape& s = lay.shape;
  const int dt = static_cast<int>(s.dtype);
  const uint64_t H = s.num_heads, D = s.head_dim, T = s.num_tokens;
  const uint64_t NG = lay.num_groups_t, Tq = lay.quant_tokens, Tt = lay.tail_tokens;
  const TensorLayout& tl = lay.tensor(layer, x);
  const uint16_t* src = InputTensor(s, in, layer, x);  // [T][H][D]
  auto element = [&](uint64_t t, uint64_t h, uint64_t d) { return src[(t * H + h) * D + d]; };

  for (uint64_t i = 0; i < lay.groups; ++i) {
    float v[kGroupSize];
    if (x == 0) {  // K, per channel: i = (h·NG + g)·D + d holds tokens 32g + j
      const uint64_t d = i % D, g = (i / D) % NG, h = i / (D * NG);
      for (uint32_t j = 0; j < kGroupSize; ++j) v[j] = HalfToFloat(element(32 * g + j, h, d), dt);
    } else {  // V, per token: i = (h·Tq + t)·(D/32) + c holds channels 32c + j
      const uint64_t C = D / kGroupSize;
      const uint64_t c = i % C, t = (i / C) % Tq, h = i / (C * Tq);
      for (uint32_t j = 0; j < kGroupSize; ++j) v[j] = HalfToFloat(element(t, h, 32 * c + j), dt);
    }
    const GroupOut g = QuantizeGroup(v, tl.bits, EtaFor(lay.config, tl.bits), dt);
    if (tl.owns_codes) {
      if (tl.bits == 1) {
        const uint32_t w = static_cast<uint32_t>(g.code);
        std::memcpy(out + tl.codes + 4 * i, &w, 4);
      } else {
        std::memcpy(out + tl.codes + 8 * i, &g.code, 8);
      }
    }
    Put16(out + tl.scales, i, g.scale);
    Put16(out + tl.zeros, i, g.zero);
  }
  // Tail tokens t >= Tq at 16 bits, [H][Tt][D].
  for (uint64_t h = 0; h < H; ++h) {
    for (uint64_t t = Tq; t < T; ++t) {
      for (uint64_t d = 0; d < D; ++d) {
        Put16(out + tl.tail, (h * Tt + (t - Tq)) * D + d, element(t, h, d));
      }
    }
  }
}

void DecodeTensorReference(const ChunkLayout& lay, const uint8_t* const* sections,
                           const Slice& slice, uint32_t layer, int x, DType out_dtype,
                           uint16_t* out) {
  const ChunkShape& s = lay.shape;
  const int dt = static_cast<int>(s.dtype);
  const int odt = static_cast<int>(out_dtype);
  const uint64_t D = s.head_dim, T = s.num_tokens;
  const uint64_t NG = lay.num_groups_t, Tq = lay.quant_tokens, Tt = lay.tail_tokens;
  const uint64_t h0 = slice.head_begin, Hs = slice.head_end - slice.head_begin;
  const TensorLayout& tl = lay.tensor(layer, x);
  uint16_t* dst = OutputTensor(s, slice, out, layer, x);  // [T][Hs][D]
  auto put = [&](uint64_t t, uint64_t h, uint64_t d, float v) {
    dst[(t * Hs + (h - h0)) * D + d] = FloatToHalfSat(v, odt);
  };

  if (lay.groups > 0) {
    // A shared layer's tl.codes points at layer-1's codes, which are in the same pair section.
    const uint8_t* codes = SectionAt(lay, sections, layer, tl.codes);
    const uint8_t* scales = SectionAt(lay, sections, layer, tl.scales);
    const uint8_t* zeros = SectionAt(lay, sections, layer, tl.zeros);
    const uint64_t mask = tl.bits == 2 ? 3u : 1u;
    for (uint64_t i = 0; i < lay.groups; ++i) {
      uint64_t h, t0 = 0, d0 = 0;  // first element of the group; K steps t, V steps d
      if (x == 0) {
        h = i / (D * NG);
        t0 = 32 * ((i / D) % NG);
        d0 = i % D;
      } else {
        const uint64_t C = D / kGroupSize;
        h = i / (C * Tq);
        t0 = (i / C) % Tq;
        d0 = 32 * (i % C);
      }
      if (h < slice.head_begin || h >= slice.head_end) continue;
      uint64_t code = 0;
      if (tl.bits == 1) {
        uint32_t w;
        std::memcpy(&w, codes + 4 * i, 4);
        code = w;
      } else {
        std::memcpy(&code, codes + 8 * i, 8);
      }
      const float scale = HalfToFloat(Get16(scales, i), dt);
      const float zero = HalfToFloat(Get16(zeros, i), dt);
      for (uint32_t j = 0; j < kGroupSize; ++j) {
        const uint64_t q = (code >> (tl.bits * j)) & mask;
        const float prod = static_cast<float>(q) * scale;
        const float v = prod + zero;
        if (x == 0) {
          put(t0 + j, h, d0, v);
        } else {
          put(t0, h, d0 + j, v);
        }
      }
    }
  }
  const uint8_t* tail = SectionAt(lay, sections, layer, tl.tail);
  for (uint64_t h = slice.head_begin; h < slice.head_end; ++h) {
    for (uint64_t t = Tq; t < T; ++t) {
      for (uint64_t d = 0; d < D; ++d) {
        put(t, h, d, HalfToFloat(Get16(tail, (h * Tt + (t - Tq)) * D + d), dt));
      }
    }
  }
}

}  // namespace kvstash::kernels::internal
