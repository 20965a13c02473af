#include "server/memory/device_pool.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "kvstash/kernels/cuda_status.h"
#include "spdlog/spdlog.h"

namespace kvstash::memory {

absl::StatusOr<std::unique_ptr<DevicePool>> DevicePool::Create(const DevicePoolOptions& o) {
  const std::string ctx = absl::StrCat("device pool ", o.device);
  KVSTASH_CUDA_RETURN_IF_ERROR(cudaSetDevice(o.device), ctx + ": cudaSetDevice");
  uint64_t capacity = o.capacity_bytes;
  if (capacity == 0) {
    size_t free_bytes = 0, total_bytes = 0;
    KVSTASH_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes),
                                 ctx + ": cudaMemGetInfo");
    capacity = free_bytes / 4;
  }
  if (o.page_bytes == 0 || capacity < o.page_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(ctx, ": capacity ", capacity,
                                                   " bytes is less than one page of ",
                                                   o.page_bytes, " bytes"));
  }
  capacity -= capacity % o.page_bytes;
  void* base = nullptr;
  KVSTASH_CUDA_RETURN_IF_ERROR(cudaMalloc(&base, capacity),
                               absl::StrCat(ctx, ": cudaMalloc of ", capacity, " bytes"));
  absl::StatusOr<std::unique_ptr<PagePool>> pages =
      PagePool::CreateOver(static_cast<uint8_t*>(base), capacity, o.page_bytes);
  if (!pages.ok()) {
    cudaFree(base);
    return pages.status();
  }
  spdlog::info("device pool {}: {} pages of {} bytes ({} MiB)", o.device,
               (*pages)->pages_total(), o.page_bytes, capacity >> 20);
  return std::unique_ptr<DevicePool>(new DevicePool(o.device, base, *std::move(pages)));
}

DevicePool::~DevicePool() {
  pages_.reset();
  // Best effort: a failing device at shutdown must not stop the daemon from exiting.
  if (cudaSetDevice(device_) == cudaSuccess) cudaFree(base_);
}

}  // namespace kvstash::memory
