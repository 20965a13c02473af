#include "kvstash/kernels/cuda_chunk.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "kvstash/kernels/cuda_status.h"

namespace kvstash::kernels::cuda {

CudaGeometry GeometryOf(const ChunkLayout& layout) {
  const ChunkShape& s = layout.shape;
  const CodecConfig& c = layout.config;
  CudaGeometry g;
  g.num_layers = s.num_layers;
  g.num_tokens = s.num_tokens;
  g.num_heads = s.num_heads;
  g.head_dim = s.head_dim;
  g.dtype = static_cast<uint32_t>(s.dtype);
  g.raw = c.raw ? 1 : 0;
  g.k_q = c.k_q, g.v_q = c.v_q, g.k_m = c.k_m, g.v_m = c.v_m;
  g.eta1 = c.eta1, g.eta2 = c.eta2;
  g.num_groups_t = layout.num_groups_t;
  g.quant_tokens = layout.quant_tokens;
  g.tail_tokens = layout.tail_tokens;
  g.groups = layout.groups;
  g.header_bytes = layout.header_bytes;
  g.total_bytes = layout.total_bytes;
  return g;
}

namespace {

// Where flat element `index` of the contiguous layout lives in the paged input.
const uint16_t* PagedElement(const ChunkShape& s, const PagedInput& in, uint64_t index) {
  const PagedView v = in.view.Resolved(s.num_heads, s.head_dim);
  const uint64_t hd = uint64_t{s.num_heads} * s.head_dim;
  const uint64_t col = index % hd;
  const uint64_t t = index / hd % s.num_tokens;
  const uint64_t lx = index / hd / s.num_tokens;
  const uint64_t slot = v.first_slot + t;
  const uint32_t block = in.host_block_ids[slot / v.block_size];
  return in.host_planes[lx] + uint64_t{block} * v.block_stride +
         slot % v.block_size * v.token_stride + col / s.head_dim * v.head_stride +
         col % s.head_dim;
}

// Launches and finishes one encode: ep's input and check are set; copies the flag and
// sections back, then seals the chunk or reports the first bad element, read from `at`.
template <class ElementAt>
absl::Status RunEncode(const ChunkLayout& layout, EncodeParams& ep, unsigned long long* d_flag,
                       cudaStream_t stream, uint8_t* host_out, ElementAt at) {
  uint8_t* d_out = ep.out;
  KVSTASH_CUDA_RETURN_IF_ERROR(LaunchEncode(ep, stream), "gpu encode: launch");
  unsigned long long bad = kNoBadElement;
  KVSTASH_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(&bad, d_flag, sizeof(bad), cudaMemcpyDeviceToHost, stream),
      "gpu encode: copy flag");
  const uint64_t hb = layout.header_bytes;
  KVSTASH_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_out + hb, d_out + hb,
                                               layout.total_bytes - hb,
                                               cudaMemcpyDeviceToHost, stream),
                               "gpu encode: copy sections");
  KVSTASH_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "gpu encode: synchronize");
  if (bad != kNoBadElement) {
    uint16_t value = 0;
    KVSTASH_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(&value, at(bad), sizeof(value), cudaMemcpyDeviceToHost),
        "gpu encode: copy bad element");
    return InvalidElementStatus(layout.shape, bad, value);
  }
  WriteHeader(layout, host_out);
  SealChecksums(layout, host_out);
  return absl::OkStatus();
}

}  // namespace

absl::Status EncodeToHost(const ChunkLayout& layout, const PagedInput& in, uint8_t* d_out,
                          unsigned long long* d_flag, cudaStream_t stream, uint8_t* host_out) {
  EncodeParams ep;
  ep.geo = GeometryOf(layout);
  ep.paged = in.view;
  ep.out = d_out;
  KVSTASH_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(d_flag, 0xFF, sizeof(kNoBadElement), stream),
                               "gpu encode: reset flag");
  ep.first_bad = d_flag;
  return RunEncode(layout, ep, d_flag, stream, host_out, [&](uint64_t bad) {
    return PagedElement(layout.shape, in, bad);
  });
}

absl::Status EncodeToHost(const ChunkLayout& layout, const uint16_t* d_in, uint8_t* d_out,
                          unsigned long long* d_flag, cudaStream_t stream, uint8_t* host_out,
                          ValidityCheck check) {
  const CudaGeometry geo = GeometryOf(layout);
  EncodeParams ep;
  ep.geo = geo;
  ep.in = d_in;
  ep.out = d_out;
  if (check == ValidityCheck::kStrict) {
    ValidateParams vp;
    vp.in = d_in;
    vp.count = layout.shape.elements();
    vp.dtype = geo.dtype;
    vp.flag = d_flag;
    KVSTASH_CUDA_RETURN_IF_ERROR(LaunchValidate(vp, stream), "gpu encode: validate");
    ep.gate = d_flag;
  } else {
    KVSTASH_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(d_flag, 0xFF, sizeof(kNoBadElement), stream),
                                 "gpu encode: reset flag");
    ep.first_bad = d_flag;
  }
  return RunEncode(layout, ep, d_flag, stream, host_out,
                   [&](uint64_t bad) { return d_in + bad; });
}

}  // namespace kvstash::kernels::cuda
