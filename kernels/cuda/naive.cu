// The straightforward alternative: one thread per group, scalar 16-bit loads and stores, the
// format's formula literally (an IEEE division and rintf per element). Kept as the
// benchmark's baseline and as a second, independently written oracle for the tests.
#include "codec_device.cuh"

namespace kvstash::kernels::cuda {
namespace detail {
namespace {

struct NaiveArgs {
  CudaGeometry geo;
  const uint16_t* in;
  uint8_t* out;
  const uint8_t* const* sections;
  uint32_t l0, h0, hs, ls;
  uint16_t* dec;
  int out_dtype;
};

// blockIdx.y = 2l + x, one thread per group i.
__global__ void NaiveEncodeGroups(const NaiveArgs a) {
  const uint64_t i = uint64_t{blockIdx.x} * kThreads + threadIdx.x;
  const CudaGeometry& geo = a.geo;
  if (i >= geo.groups) return;
  const uint32_t l = blockIdx.y / 2, x = blockIdx.y % 2, c = blockIdx.z;
  const int dt = static_cast<int>(geo.dtype);
  const uint64_t H = geo.num_heads, D = geo.head_dim, T = geo.num_tokens;
  const uint64_t NG = geo.num_groups_t, Tq = geo.quant_tokens;
  const uint16_t* src = a.in + c * geo.elements() + uint64_t{blockIdx.y} * T * H * D;
  uint64_t first, step;
  if (x == 0) {
    const uint64_t d = i % D, g = (i / D) % NG, h = i / (D * NG);
    first = (32 * g * H + h) * D + d;
    step = H * D;
  } else {
    const uint64_t C = D / 32, cc = i % C, t = (i / C) % Tq, h = i / (C * Tq);
    first = (t * H + h) * D + 32 * cc;
    step = 1;
  }
  float v[32];
  float mn = 0.0f, mx = 0.0f;
  for (int j = 0; j < 32; ++j) {
    v[j] = __fadd_rn(HalfToFloat(src[first + j * step], dt), 0.0f);
    mn = j == 0 ? v[j] : fminf(mn, v[j]);
    mx = j == 0 ? v[j] : fmaxf(mx, v[j]);
  }
  const TensorOffsets to = geo.tensor(l, static_cast<int>(x));
  const float lv = to.bits == 2 ? 3.0f : 1.0f;
  const float r = __fsub_rn(mx, mn);
  const float s = __fdiv_rn(r, lv);
  unsigned long long code = 0;
  if (s != 0.0f) {
    for (int j = 0; j < 32; ++j) {
      const float q = fminf(fmaxf(__fdiv_rn(__fsub_rn(v[j], mn), s), 0.0f), lv);
      code |= static_cast<unsigned long long>(rintf(q)) << (to.bits * j);
    }
  }
  const float eta = EtaFor(geo, to.bits);
  uint8_t* chunk = a.out + c * geo.total_bytes;
  if (to.owns_codes) {
    if (to.bits == 1) {
      reinterpret_cast<uint32_t*>(chunk + to.codes)[i] = static_cast<uint32_t>(code);
    } else {
      reinterpret_cast<unsigned long long*>(chunk + to.codes)[i] = code;
    }
  }
  const float zhat = __fadd_rn(mn, __fmul_rn(eta, r));
  const float shat = __fmul_rn(__fsub_rn(1.0f, __fmul_rn(2.0f, eta)), s);
  reinterpret_cast<uint16_t*>(chunk + to.scales)[i] = FloatToHalfSat(shat, dt);
  reinterpret_cast<uint16_t*>(chunk + to.zeros)[i] = FloatToHalfSat(zhat, dt);
}

// blockIdx.y = 2l + x, one thread per tail element.
__global__ void NaiveEncodeTail(const NaiveArgs a) {
  const CudaGeometry& geo = a.geo;
  const uint64_t H = geo.num_heads, D = geo.head_dim, Tt = geo.tail_tokens;
  const uint64_t e = uint64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (e >= H * Tt * D) return;
  const uint32_t l = blockIdx.y / 2, x = blockIdx.y % 2, c = blockIdx.z;
  const uint64_t d = e % D, tt = (e / D) % Tt, h = e / (D * Tt);
  const uint16_t* src = a.in + c * geo.elements() + uint64_t{blockIdx.y} * geo.num_tokens * H * D;
  const TensorOffsets to = geo.tensor(l, static_cast<int>(x));
  reinterpret_cast<uint16_t*>(a.out + c * geo.total_bytes + to.tail)[e] =
      src[((geo.quant_tokens + tt) * H + h) * D + d];
}

__device__ const uint8_t* NaiveAt(const NaiveArgs& a, uint32_t c, uint32_t l, uint64_t off) {
  return a.sections[uint64_t{c} * a.geo.num_pairs() + l / 2] + (off - a.geo.pair_offset(l / 2));
}

// blockIdx.y = 2l' + x, one thread per group i of the slice's heads.
__global__ void NaiveDecodeGroups(const NaiveArgs a) {
  const CudaGeometry& geo = a.geo;
  const uint64_t D = geo.head_dim, T = geo.num_tokens, NG = geo.num_groups_t,
                 Tq = geo.quant_tokens, hs = a.hs;
  const uint64_t per_head = geo.groups / geo.num_heads;
  const uint64_t k = uint64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (k >= per_head * hs) return;
  const uint64_t i = k + a.h0 * per_head;  // groups of one head are contiguous
  const uint32_t lp = blockIdx.y / 2, x = blockIdx.y % 2, l = a.l0 + lp, c = blockIdx.z;
  const int dt = static_cast<int>(geo.dtype);
  const TensorOffsets to = geo.tensor(l, static_cast<int>(x));
  unsigned long long code = to.bits == 1
      ? reinterpret_cast<const uint32_t*>(NaiveAt(a, c, l, to.codes))[i]
      : reinterpret_cast<const unsigned long long*>(NaiveAt(a, c, l, to.codes))[i];
  const float scale = HalfToFloat(reinterpret_cast<const uint16_t*>(NaiveAt(a, c, l, to.scales))[i], dt);
  const float zero = HalfToFloat(reinterpret_cast<const uint16_t*>(NaiveAt(a, c, l, to.zeros))[i], dt);
  uint64_t h, t0 = 0, d0 = 0, tstep, dstep;
  if (x == 0) {
    h = i / (D * NG), t0 = 32 * ((i / D) % NG), d0 = i % D, tstep = 1, dstep = 0;
  } else {
    const uint64_t C = D / 32;
    h = i / (C * Tq), t0 = (i / C) % Tq, d0 = 32 * (i % C), tstep = 0, dstep = 1;
  }
  uint16_t* dst = a.dec + uint64_t{c} * a.ls * 2 * T * hs * D + uint64_t{blockIdx.y} * T * hs * D;
  const unsigned long long mask = to.bits == 2 ? 3 : 1;
  for (int j = 0; j < 32; ++j) {
    const float q = static_cast<float>((code >> (to.bits * j)) & mask);
    const float v = __fadd_rn(__fmul_rn(q, scale), zero);
    dst[((t0 + j * tstep) * hs + (h - a.h0)) * D + d0 + j * dstep] = FloatToHalfSat(v, a.out_dtype);
  }
}

// blockIdx.y = 2l' + x, one thread per tail element of the slice.
__global__ void NaiveDecodeTail(const NaiveArgs a) {
  const CudaGeometry& geo = a.geo;
  const uint64_t D = geo.head_dim, T = geo.num_tokens, Tt = geo.tail_tokens, hs = a.hs;
  const uint64_t e = uint64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (e >= hs * Tt * D) return;
  const uint64_t d = e % D, tt = (e / D) % Tt, hp = e / (D * Tt);
  const uint32_t lp = blockIdx.y / 2, x = blockIdx.y % 2, l = a.l0 + lp, c = blockIdx.z;
  const TensorOffsets to = geo.tensor(l, static_cast<int>(x));
  const uint16_t v = reinterpret_cast<const uint16_t*>(NaiveAt(a, c, l, to.tail))
      [((a.h0 + hp) * Tt + tt) * D + d];
  uint16_t* dst = a.dec + uint64_t{c} * a.ls * 2 * T * hs * D + uint64_t{blockIdx.y} * T * hs * D;
  dst[((geo.quant_tokens + tt) * hs + hp) * D + d] =
      FloatToHalfSat(HalfToFloat(v, static_cast<int>(geo.dtype)), a.out_dtype);
}

unsigned Blocks(uint64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace
}  // namespace detail

cudaError_t LaunchEncodeNaive(const EncodeParams& p, cudaStream_t stream) {
  using namespace detail;
  const CudaGeometry& geo = p.geo;
  if (p.in == nullptr || p.out == nullptr || p.num_chunks < 1 || p.num_chunks > 65535 ||
      !GeometryOk(geo))
    return cudaErrorInvalidValue;
  NaiveArgs a{geo, p.in, p.out, nullptr, 0, 0, 0, 0, nullptr, 0};
  const dim3 lt(1, 2 * geo.num_layers, p.num_chunks);
  if (geo.groups > 0) {
    NaiveEncodeGroups<<<dim3(Blocks(geo.groups), lt.y, lt.z), kThreads, 0, stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  const uint64_t tail = uint64_t{geo.num_heads} * geo.tail_tokens * geo.head_dim;
  if (tail > 0) {
    NaiveEncodeTail<<<dim3(Blocks(tail), lt.y, lt.z), kThreads, 0, stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

cudaError_t LaunchDecodeNaive(const DecodeParams& p, cudaStream_t stream) {
  using namespace detail;
  const CudaGeometry& geo = p.geo;
  if (p.sections == nullptr || p.out == nullptr || p.num_chunks < 1 || p.num_chunks > 65535 ||
      !GeometryOk(geo) || p.layer_begin >= p.layer_end || p.layer_end > geo.num_layers ||
      p.head_begin >= p.head_end || p.head_end > geo.num_heads ||
      (p.out_dtype != 1 && p.out_dtype != 2))
    return cudaErrorInvalidValue;
  const uint32_t hs = p.head_end - p.head_begin, ls = p.layer_end - p.layer_begin;
  NaiveArgs a{geo, nullptr, nullptr, p.sections, p.layer_begin, p.head_begin, hs, ls, p.out,
              static_cast<int>(p.out_dtype)};
  if (geo.groups > 0) {
    const uint64_t n = geo.groups / geo.num_heads * hs;
    NaiveDecodeGroups<<<dim3(Blocks(n), 2 * ls, p.num_chunks), kThreads, 0, stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  const uint64_t tail = uint64_t{hs} * geo.tail_tokens * geo.head_dim;
  if (tail > 0) {
    NaiveDecodeTail<<<dim3(Blocks(tail), 2 * ls, p.num_chunks), kThreads, 0, stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace kvstash::kernels::cuda
