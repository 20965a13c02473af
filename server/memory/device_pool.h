// The GPU memory tier's pages: one cudaMalloc'd region per device, allocated up front and
// carved into fixed-size pages by a PagePool over external memory (page_pool.h), so the
// device tier shares the host tier's free-stack logic, strict capacity and PageSpan RAII.
// Page addresses are device pointers: never pass a span of this pool to PageSpan::Write or
// Read; copy with cudaMemcpy* over page()/ContiguousAt addresses. See docs/store.md.
//
// Thread-safe, as PagePool. Built only with KVSTASH_HAVE_CUDA.
#ifndef KVSTASH_SERVER_MEMORY_DEVICE_POOL_H_
#define KVSTASH_SERVER_MEMORY_DEVICE_POOL_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "server/memory/page_pool.h"

namespace kvstash::memory {

struct DevicePoolOptions {
  // CUDA device ordinal. Default 0.
  int device = 0;
  // Bytes of device memory to take, rounded down to whole pages; 0 = a quarter of the
  // device's free memory at creation. Default 0.
  uint64_t capacity_bytes = 0;
  // Page size in bytes; a power of two >= 4096. Default 64 KiB.
  uint32_t page_bytes = 64 * 1024;
};

class DevicePool {
 public:
  // ResourceExhausted (with the CUDA error name) when cudaMalloc fails; Internal for other
  // CUDA failures; InvalidArgument for a bad page size or a capacity below one page.
  static absl::StatusOr<std::unique_ptr<DevicePool>> Create(const DevicePoolOptions& options);
  // REQUIRES: every PageSpan of pages() has been destroyed or released.
  ~DevicePool();
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  int device() const { return device_; }
  PagePool& pages() const { return *pages_; }

 private:
  DevicePool(int device, void* base, std::unique_ptr<PagePool> pages)
      : device_(device), base_(base), pages_(std::move(pages)) {}

  const int device_;
  void* const base_;                      // what cudaFree gets
  std::unique_ptr<PagePool> pages_;  // reset before base_ is freed
};

}  // namespace kvstash::memory

#endif  // KVSTASH_SERVER_MEMORY_DEVICE_POOL_H_
