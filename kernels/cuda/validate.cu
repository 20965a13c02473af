// The input validity pass (docs/format.md section 1) and LaunchValidate: a streaming read
// of the whole batch, 16 bytes per load and four loads in flight per thread; a thread that
// sees a bad value re-scans its 8 elements and atomicMin's the first one's index.
#include <algorithm>

#include "codec_device.cuh"

namespace kvstash::kernels::cuda {
namespace detail {
namespace {

constexpr int kUnroll = 4;

template <class DT>
__global__ void __launch_bounds__(kThreads)
    ValidateKernel(const uint4* __restrict__ in, uint64_t n16, const uint16_t* __restrict__ rest,
                   uint64_t rest_begin, uint64_t count, unsigned long long* flag) {
  const uint64_t stride = uint64_t{gridDim.x} * kThreads * kUnroll;
  for (uint64_t base = uint64_t{blockIdx.x} * kThreads * kUnroll + threadIdx.x; base < n16;
       base += stride) {
    uint4 v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const uint64_t i = base + static_cast<uint64_t>(k) * kThreads;
      v[k] = i < n16 ? __ldcs(in + i) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const uint32_t am = AbsMax2(AbsMax2(AbsMax2(AbsMax2(0, v[k].x), v[k].y), v[k].z), v[k].w);
      if (AnyBad<DT>(am)) {
        const uint64_t i = base + static_cast<uint64_t>(k) * kThreads;
        const uint32_t w[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
        for (int e = 0; e < 8; ++e) {
          if (IsBad<DT>(w[e / 2] >> (16 * (e % 2)))) {
            atomicMin(flag, 8 * i + e);
            break;
          }
        }
      }
    }
  }
  // The last count % 8 elements, if any.
  if (blockIdx.x == 0) {
    for (uint64_t i = rest_begin + threadIdx.x; i < count; i += kThreads) {
      if (IsBad<DT>(rest[i])) atomicMin(flag, i);
    }
  }
}

}  // namespace
}  // namespace detail

cudaError_t LaunchValidate(const ValidateParams& p, cudaStream_t stream) {
  using namespace detail;
  if (p.in == nullptr || p.flag == nullptr || !Aligned(p.in, 16) || !Aligned(p.flag, 8))
    return cudaErrorInvalidValue;
  if (cudaError_t e = cudaMemsetAsync(p.flag, 0xFF, sizeof(*p.flag), stream); e != cudaSuccess)
    return e;
  if (p.count == 0) return cudaSuccess;
  int device = 0, sms = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      e != cudaSuccess)
    return e;
  const uint64_t n16 = p.count / 8;
  const uint64_t want = (n16 + kThreads * kUnroll - 1) / (kThreads * kUnroll);
  const unsigned blocks =
      static_cast<unsigned>(std::max<uint64_t>(1, std::min<uint64_t>(want, uint64_t(sms) * 8)));
  return DispatchDType(p.dtype, [&](auto dt) {
    ValidateKernel<decltype(dt)><<<blocks, kThreads, 0, stream>>>(
        reinterpret_cast<const uint4*>(p.in), n16, p.in, n16 * 8, p.count, p.flag);
    return cudaGetLastError();
  });
}

}  // namespace kvstash::kernels::cuda
