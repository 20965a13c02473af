#include "server/store/store.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "server/memory/page_pool.h"
#include "server/store/store_impl.h"

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
  return absl::OkStatus();
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
  return std::unique_ptr<Store>(new internal::StoreImpl(options, *std::move(pool)));
}

}  // namespace kvstash::store
