// The one place where CUDA runtime errors become absl::Status (STYLE.md: errors are
// converted once per boundary). Thread-safe: pure functions.
#ifndef KVSTASH_KERNELS_CUDA_STATUS_H_
#define KVSTASH_KERNELS_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include <string_view>

#include "absl/status/status.h"

namespace kvstash::kernels::cuda {

// cudaSuccess -> OK; cudaErrorMemoryAllocation -> ResourceExhausted; anything else ->
// Internal. The message is "<context>: <cudaErrorName>: <description>".
absl::Status CudaStatus(cudaError_t error, std::string_view context);

}  // namespace kvstash::kernels::cuda

// Evaluates a cudaError_t expression once; returns its CudaStatus from the enclosing
// function when it is not cudaSuccess.
#define KVSTASH_CUDA_RETURN_IF_ERROR(expr, context)                                  \
  do {                                                                               \
    const cudaError_t kvstash_cuda_error_ = (expr);                                  \
    if (kvstash_cuda_error_ != cudaSuccess)                                          \
      return ::kvstash::kernels::cuda::CudaStatus(kvstash_cuda_error_, (context));   \
  } while (0)

#endif  // KVSTASH_KERNELS_CUDA_STATUS_H_
