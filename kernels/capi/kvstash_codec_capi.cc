// C ABI over the kvstash codec; see kvstash_codec_capi.h.
#include "kvstash_codec_capi.h"

#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"

namespace {

namespace k = kvstash::kernels;

int Fail(const absl::Status& s, char* err, size_t err_len) {
  if (err != nullptr && err_len > 0) {
    const std::string msg = s.ToString();
    const size_t n = std::min(msg.size(), err_len - 1);
    std::memcpy(err, msg.data(), n);
    err[n] = '\0';
  }
  const int code = static_cast<int>(s.code());
  return code == 0 ? static_cast<int>(absl::StatusCode::kUnknown) : code;
}

int Ok(char* err, size_t err_len) {
  if (err != nullptr && err_len > 0) err[0] = '\0';
  return 0;
}

absl::Status ToShape(const kvs_shape* s, k::ChunkShape* out) {
  if (s == nullptr) return absl::InvalidArgumentError("shape is null");
  if (s->dtype != 1 && s->dtype != 2) return absl::InvalidArgumentError("shape.dtype");
  out->num_layers = s->num_layers;
  out->num_tokens = s->num_tokens;
  out->num_heads = s->num_heads;
  out->head_dim = s->head_dim;
  out->dtype = static_cast<k::DType>(s->dtype);
  return absl::OkStatus();
}

absl::Status ToConfig(const kvs_config* c, k::CodecConfig* out) {
  if (c == nullptr) return absl::InvalidArgumentError("config is null");
  if (c->preset > 4) return absl::InvalidArgumentError("config.preset");
  out->raw = c->raw != 0;
  out->k_q = c->k_q;
  out->v_q = c->v_q;
  out->k_m = c->k_m;
  out->v_m = c->v_m;
  out->eta1 = c->eta1;
  out->eta2 = c->eta2;
  out->preset = static_cast<k::Preset>(c->preset);
  return absl::OkStatus();
}

absl::StatusOr<k::ChunkLayout> Layout(const kvs_shape* shape, const kvs_config* config) {
  k::ChunkShape s;
  k::CodecConfig c;
  if (auto st = ToShape(shape, &s); !st.ok()) return st;
  if (auto st = ToConfig(config, &c); !st.ok()) return st;
  return k::MakeLayout(s, c);
}

k::Impl ToImpl(int impl) { return impl == 1 ? k::Impl::kReference : k::Impl::kFast; }

}  // namespace

extern "C" {

int kvs_capi_version(void) { return KVS_CAPI_VERSION; }

const char* kvs_fast_path_name(void) { return k::FastPathName(); }

int kvs_preset_config(const char* name, uint32_t num_layers, kvs_config* out, char* err,
                      size_t err_len) {
  if (name == nullptr || out == nullptr)
    return Fail(absl::InvalidArgumentError("null argument"), err, err_len);
  auto p = k::ParsePreset(name);
  if (!p.ok()) return Fail(p.status(), err, err_len);
  const k::CodecConfig c = k::PresetConfig(*p, num_layers);
  out->raw = c.raw ? 1 : 0;
  out->k_q = c.k_q;
  out->v_q = c.v_q;
  out->k_m = c.k_m;
  out->v_m = c.v_m;
  out->eta1 = c.eta1;
  out->eta2 = c.eta2;
  out->preset = static_cast<uint32_t>(c.preset);
  return Ok(err, err_len);
}

int kvs_chunk_bytes(const kvs_shape* shape, const kvs_config* config, uint64_t* bytes,
                    char* err, size_t err_len) {
  auto layout = Layout(shape, config);
  if (!layout.ok()) return Fail(layout.status(), err, err_len);
  if (bytes != nullptr) *bytes = layout->total_bytes;
  return Ok(err, err_len);
}

int kvs_bits(const kvs_shape* shape, const kvs_config* config, double* equivalent_bits,
             double* true_bits, char* err, size_t err_len) {
  auto layout = Layout(shape, config);
  if (!layout.ok()) return Fail(layout.status(), err, err_len);
  if (equivalent_bits != nullptr) *equivalent_bits = k::EquivalentBits(layout->shape, layout->config);
  if (true_bits != nullptr) *true_bits = k::TrueBits(*layout);
  return Ok(err, err_len);
}

int kvs_encode(const kvs_shape* shape, const kvs_config* config, const uint16_t* in,
               uint64_t in_elements, uint8_t* out, uint64_t out_cap, uint64_t* out_size,
               int impl, char* err, size_t err_len) {
  auto layout = Layout(shape, config);
  if (!layout.ok()) return Fail(layout.status(), err, err_len);
  if (in == nullptr || in_elements != layout->shape.elements())
    return Fail(absl::InvalidArgumentError("input holds " + std::to_string(in_elements) +
                                           " elements, shape needs " +
                                           std::to_string(layout->shape.elements())),
                err, err_len);
  if (out == nullptr || out_cap < layout->total_bytes)
    return Fail(absl::InvalidArgumentError("output buffer smaller than the chunk (" +
                                           std::to_string(layout->total_bytes) + " bytes)"),
                err, err_len);
  if (auto st = k::Encode(*layout, in, out, ToImpl(impl)); !st.ok()) return Fail(st, err, err_len);
  if (out_size != nullptr) *out_size = layout->total_bytes;
  return Ok(err, err_len);
}

int kvs_decoded_elements(const uint8_t* chunk, uint64_t size, uint32_t layer_begin,
                         uint32_t layer_end, uint32_t head_begin, uint32_t head_end,
                         uint64_t* elements, char* err, size_t err_len) {
  if (chunk == nullptr) return Fail(absl::InvalidArgumentError("chunk is null"), err, err_len);
  auto header = k::ParseHeader(chunk, size, /*require_full=*/true);
  if (!header.ok()) return Fail(header.status(), err, err_len);
  auto slice = k::ResolveSlice(header->layout.shape,
                               k::Slice{layer_begin, layer_end, head_begin, head_end});
  if (!slice.ok()) return Fail(slice.status(), err, err_len);
  if (elements != nullptr) *elements = k::DecodedBytes(header->layout.shape, *slice) / 2;
  return Ok(err, err_len);
}

int kvs_decode(const uint8_t* chunk, uint64_t size, uint32_t layer_begin, uint32_t layer_end,
               uint32_t head_begin, uint32_t head_end, uint32_t out_dtype, uint16_t* out,
               uint64_t out_elements, int impl, char* err, size_t err_len) {
  if (chunk == nullptr || out == nullptr)
    return Fail(absl::InvalidArgumentError("null argument"), err, err_len);
  if (out_dtype != 1 && out_dtype != 2)
    return Fail(absl::InvalidArgumentError("out_dtype"), err, err_len);
  std::vector<uint16_t> buf;
  const absl::Status st =
      k::Decode(chunk, size, k::Slice{layer_begin, layer_end, head_begin, head_end},
                static_cast<k::DType>(out_dtype), &buf, ToImpl(impl));
  if (!st.ok()) return Fail(st, err, err_len);
  if (buf.size() != out_elements)
    return Fail(absl::InvalidArgumentError("output holds " + std::to_string(out_elements) +
                                           " elements, slice decodes to " +
                                           std::to_string(buf.size())),
                err, err_len);
  std::memcpy(out, buf.data(), buf.size() * sizeof(uint16_t));
  return Ok(err, err_len);
}

}  // extern "C"
