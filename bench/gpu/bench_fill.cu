// Device-side input generation for kernel_bench: KV-cache-like 16-bit values (a per-channel
// offset and spread, a few outlier channels) from a counter hash, so 1 GiB fills in
// microseconds and never lands as zeros.
#include <cuda_runtime.h>

#include <cstdint>

#include "kvstash/kernels/half.h"

namespace kvstash::bench {
namespace {

__device__ __forceinline__ uint32_t Hash(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

__global__ void FillKernel(uint16_t* out, uint64_t n, uint32_t channels, int dtype, uint64_t seed) {
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; i < n;
       i += uint64_t{gridDim.x} * blockDim.x) {
    const uint32_t ch = static_cast<uint32_t>(i % channels);
    const uint32_t hc = Hash(seed * 0x9E3779B97F4A7C15ull + ch);
    const float off = (static_cast<float>(hc & 0xFFFF) / 65536.0f - 0.5f) * 4.0f;
    const float spread = (hc >> 28) == 0 ? 16.0f : 0.25f + static_cast<float>((hc >> 16) & 0xFF) / 256.0f;
    const uint32_t h = Hash(seed + i);
    // Sum of two uniforms: a cheap bell shape.
    const float u = (static_cast<float>(h & 0xFFFF) + static_cast<float>(h >> 16)) / 65536.0f - 1.0f;
    out[i] = kernels::FloatToHalfSat(off + spread * u, dtype);
  }
}

}  // namespace

cudaError_t FillRandom(uint16_t* out, uint64_t n, uint32_t channels, int dtype, uint64_t seed,
                       cudaStream_t stream) {
  FillKernel<<<4096, 256, 0, stream>>>(out, n, channels, dtype, seed);
  return cudaGetLastError();
}

}  // namespace kvstash::bench
