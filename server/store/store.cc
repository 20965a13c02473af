#include "server/store/store.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "server/memory/page_pool.h"
#include "server/store/store_impl.h"
#include "spdlog/spdlog.h"

namespace kvstash::store {
namespace {

bool IsPowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

absl::Status ValidateOptions(const StoreOptions& o) {
  if (!IsPowerOfTwo(o.page_bytes) || o.page_bytes < 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.page_bytes must be a power of two >= 4096, got ", o.page_bytes));
  }
  if (o.host_capacity_bytes < o.page_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.host_capacity_bytes ", o.host_capacity_bytes,
                     " is less than one page of ", o.page_bytes, " bytes"));
  }
  if (!IsPowerOfTwo(o.num_shards) || o.num_shards > 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.num_shards must be a power of two in [1, 4096], got ", o.num_shards));
  }
  if (o.max_namespace_bytes == 0) {
    return absl::InvalidArgumentError("store.max_namespace_bytes must be >= 1");
  }
  if (o.namespace_quota_bytes != 0 && o.namespace_quota_bytes < o.page_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.namespace_quota_bytes ", o.namespace_quota_bytes, " is less than one page of ",
        o.page_bytes, " bytes (0 = no quota)"));
  }
  for (const auto& [ns, quota] : o.namespace_quota_overrides) {
    if (ns.empty() || ns.size() > o.max_namespace_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "store.namespace_quota_overrides: namespace \"", ns, "\" is ", ns.size(),
          " bytes; namespaces are 1 to ", o.max_namespace_bytes, " bytes"));
    }
    if (quota != 0 && quota < o.page_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "store.namespace_quota_overrides[\"", ns, "\"] = ", quota,
          " is less than one page of ", o.page_bytes, " bytes (0 = no quota)"));
    }
  }
  if (o.gpu_streams < 1 || o.gpu_streams > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.gpu_streams must be in [1, 64], got ", o.gpu_streams));
  }
  if (o.gpu_staging_bytes < (64u << 10) || o.gpu_staging_bytes > (1ull << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.gpu_staging_bytes must be in [64 KiB, 1 GiB], got ", o.gpu_staging_bytes));
  }
  if (o.gpu_capacity_bytes != 0 && o.gpu_capacity_bytes < o.page_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.gpu_capacity_bytes ", o.gpu_capacity_bytes,
                     " is less than one page of ", o.page_bytes, " bytes (0 = auto)"));
  }
  for (size_t i = 0; i < o.gpu_devices.size(); ++i) {
    if (o.gpu_devices[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("store.gpu_devices[", i, "] = ", o.gpu_devices[i], " is negative"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (o.gpu_devices[j] == o.gpu_devices[i]) {
        return absl::InvalidArgumentError(
            absl::StrCat("store.gpu_devices lists device ", o.gpu_devices[i], " twice"));
      }
    }
  }
  return absl::OkStatus();
}

// The GPU tiers to run with: none without CUDA, without a device, or with use_gpu off.
absl::StatusOr<std::vector<std::unique_ptr<internal::GpuTier>>> CreateGpuTiers(
    const StoreOptions& o) {
  std::vector<std::unique_ptr<internal::GpuTier>> tiers;
#if KVSTASH_HAVE_CUDA
  if (!o.use_gpu) return tiers;
  const int visible = internal::VisibleCudaDevices();
  if (visible == 0) {
    if (!o.gpu_devices.empty()) {
      spdlog::warn("store: gpu_devices is set but no CUDA device is visible; host tier only");
    }
    return tiers;
  }
  std::vector<int> devices = o.gpu_devices;
  if (devices.empty()) {
    for (int d = 0; d < visible; ++d) devices.push_back(d);
  }
  for (int d : devices) {
    if (d >= visible) {
      return absl::InvalidArgumentError(absl::StrCat(
          "store.gpu_devices names device ", d, " but ", visible, " are visible"));
    }
    internal::GpuTierOptions go;
    go.device = d;
    go.capacity_bytes = o.gpu_capacity_bytes;
    go.page_bytes = o.page_bytes;
    go.workers = o.gpu_streams;
    go.staging_bytes = o.gpu_staging_bytes;
    absl::StatusOr<std::unique_ptr<internal::GpuTier>> tier = internal::GpuTier::Create(go);
    if (!tier.ok()) return tier.status();
    tiers.push_back(*std::move(tier));
  }
#else
  (void)o;
#endif
  return tiers;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Create(const StoreOptions& options) {
  if (auto st = ValidateOptions(options); !st.ok()) return st;
  memory::PagePoolOptions pool_options;
  pool_options.capacity_bytes = options.host_capacity_bytes;
  pool_options.page_bytes = options.page_bytes;
  pool_options.huge_pages = true;
  pool_options.prefault = options.prefault;
  absl::StatusOr<std::unique_ptr<memory::PagePool>> pool =
      memory::PagePool::Create(pool_options);
  if (!pool.ok()) return pool.status();
  absl::StatusOr<std::vector<std::unique_ptr<internal::GpuTier>>> gpus = CreateGpuTiers(options);
  if (!gpus.ok()) return gpus.status();
  return std::unique_ptr<Store>(
      new internal::StoreImpl(options, *std::move(pool), *std::move(gpus)));
}

}  // namespace kvstash::store
