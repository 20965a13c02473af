#include "kvstash/kernels/cuda_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace kvstash::kernels::cuda {

absl::Status CudaStatus(cudaError_t error, std::string_view context) {
  if (error == cudaSuccess) return absl::OkStatus();
  std::string message = absl::StrCat(std::string(context), ": ", cudaGetErrorName(error), ": ",
                                     cudaGetErrorString(error));
  if (error == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

}  // namespace kvstash::kernels::cuda
