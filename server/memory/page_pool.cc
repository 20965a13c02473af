#include "server/memory/page_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace kvstash::memory {
namespace {

constexpr uint64_t kHugePageBytes = 2ull << 20;

bool IsPowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

}  // namespace

// --- PageSpan ---------------------------------------------------------------------------

PageSpan::PageSpan(PageSpan&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)), ids_(std::move(other.ids_)) {
  other.ids_.clear();
}

PageSpan& PageSpan::operator=(PageSpan&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = std::exchange(other.pool_, nullptr);
    ids_ = std::move(other.ids_);
    other.ids_.clear();
  }
  return *this;
}

uint64_t PageSpan::bytes() const {
  return pool_ == nullptr ? 0 : ids_.size() * static_cast<uint64_t>(pool_->page_bytes());
}

uint8_t* PageSpan::page(size_t i) const { return pool_->page(ids_[i]); }

void PageSpan::Write(uint64_t offset, const void* src, uint64_t n) {
  const uint64_t pb = pool_->page_bytes();
  const uint8_t* s = static_cast<const uint8_t*>(src);
  while (n > 0) {
    const uint64_t in_page = offset % pb;
    const uint64_t take = std::min(n, pb - in_page);
    std::memcpy(page(offset / pb) + in_page, s, take);
    s += take;
    offset += take;
    n -= take;
  }
}

void PageSpan::Read(uint64_t offset, uint64_t n, void* dst) const {
  const uint64_t pb = pool_->page_bytes();
  uint8_t* d = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const uint64_t in_page = offset % pb;
    const uint64_t take = std::min(n, pb - in_page);
    std::memcpy(d, page(offset / pb) + in_page, take);
    d += take;
    offset += take;
    n -= take;
  }
}

const uint8_t* PageSpan::ContiguousAt(uint64_t offset, uint64_t n) const {
  const uint64_t pb = pool_->page_bytes();
  const size_t first = offset / pb;
  const size_t last = n == 0 ? first : (offset + n - 1) / pb;
  for (size_t i = first + 1; i <= last; ++i) {
    if (ids_[i] != ids_[i - 1] + 1) return nullptr;
  }
  return page(first) + offset % pb;
}

void PageSpan::Release() {
  if (pool_ != nullptr && !ids_.empty()) pool_->Free(ids_);
  ids_.clear();
  pool_ = nullptr;
}

// --- PagePool ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<PagePool>> PagePool::Create(const PagePoolOptions& options) {
  if (!IsPowerOfTwo(options.page_bytes) || options.page_bytes < 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_bytes must be a power of two >= 4096, got ", options.page_bytes));
  }
  const uint64_t pages = options.capacity_bytes / options.page_bytes;
  if (pages == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("capacity_bytes ", options.capacity_bytes, " is less than one page of ",
                     options.page_bytes, " bytes"));
  }
  if (pages > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "capacity_bytes ", options.capacity_bytes, " holds ", pages,
        " pages; at most 2^32-1 are supported, use a larger page_bytes"));
  }
  const uint64_t bytes = pages * options.page_bytes;
  // Huge pages only help when the pool spans at least one; then map one extra huge page so
  // the pool can start on a 2 MiB boundary and THP can back it from the first byte.
  const bool huge = options.huge_pages && bytes >= kHugePageBytes;
  const uint64_t map_bytes = huge ? bytes + kHugePageBytes : bytes;
  int flags = MAP_PRIVATE | MAP_ANONYMOUS;
  if (options.prefault) flags |= MAP_POPULATE;
  void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (m == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat("page pool: mmap of ", map_bytes,
                                                     " bytes failed: ", std::strerror(errno)));
  }
  uint8_t* mapping = static_cast<uint8_t*>(m);
  uint8_t* base = mapping;
  if (huge) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(mapping);
    base = reinterpret_cast<uint8_t*>((p + kHugePageBytes - 1) & ~(kHugePageBytes - 1));
    if (madvise(base, bytes, MADV_HUGEPAGE) != 0) {
      // Not fatal: kernels without THP still give us ordinary pages.
      spdlog::warn("page pool: madvise(MADV_HUGEPAGE) failed: {}", std::strerror(errno));
    }
  }
  if (options.prefault && huge) {
    // MAP_POPULATE faulted small pages before the advice; touch again so THP may collapse
    // them, and so that a host short of memory fails here rather than under load.
    for (uint64_t o = 0; o < bytes; o += 4096) base[o] = 0;
  }
  spdlog::info("page pool: {} pages of {} bytes ({} MiB){}{}", pages, options.page_bytes,
               bytes >> 20, huge ? ", huge pages advised" : "",
               options.prefault ? ", prefaulted" : "");
  return std::unique_ptr<PagePool>(
      new PagePool(mapping, map_bytes, base, options.page_bytes, pages, huge));
}

absl::StatusOr<std::unique_ptr<PagePool>> PagePool::CreateOver(uint8_t* base,
                                                               uint64_t capacity_bytes,
                                                               uint32_t page_bytes) {
  if (base == nullptr) return absl::InvalidArgumentError("page pool: base must not be null");
  if (!IsPowerOfTwo(page_bytes) || page_bytes < 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_bytes must be a power of two >= 4096, got ", page_bytes));
  }
  const uint64_t pages = capacity_bytes / page_bytes;
  if (pages == 0 || pages > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("capacity_bytes ", capacity_bytes,
                                                   " must hold 1 to 2^32-1 pages of ",
                                                   page_bytes, " bytes"));
  }
  return std::unique_ptr<PagePool>(
      new PagePool(/*mapping=*/nullptr, /*mapping_bytes=*/0, base, page_bytes, pages,
                   /*huge_pages=*/false));
}

PagePool::PagePool(uint8_t* mapping, uint64_t mapping_bytes, uint8_t* base,
                   uint32_t page_bytes, uint64_t pages_total, bool huge_pages)
    : mapping_(mapping),
      mapping_bytes_(mapping_bytes),
      base_(base),
      page_bytes_(page_bytes),
      pages_total_(pages_total),
      huge_pages_(huge_pages) {
  absl::MutexLock lock(&mu_);
  free_.resize(pages_total_);
  // Descending, so that pops from the back hand out 0, 1, 2, ...
  for (uint64_t i = 0; i < pages_total_; ++i) {
    free_[i] = static_cast<uint32_t>(pages_total_ - 1 - i);
  }
}

PagePool::~PagePool() {
  {
    absl::MutexLock lock(&mu_);
    if (free_.size() != pages_total_) {
      spdlog::error("page pool: destroyed with {} pages still held",
                    pages_total_ - free_.size());
    }
  }
  if (mapping_ != nullptr) munmap(mapping_, mapping_bytes_);
}

absl::StatusOr<PageSpan> PagePool::Allocate(uint64_t num_pages) {
  if (num_pages == 0) return absl::InvalidArgumentError("page pool: num_pages must be >= 1");
  std::vector<uint32_t> ids;
  ids.reserve(num_pages);  // outside the lock: this may call malloc
  {
    absl::MutexLock lock(&mu_);
    if (num_pages > free_.size()) {
      return absl::ResourceExhaustedError(
          absl::StrCat("page pool: ", num_pages, " pages requested, ", free_.size(),
                       " of ", pages_total_, " free"));
    }
    // The back of the stack, most recently freed first, in ascending order of a freed run.
    ids.assign(free_.rbegin(), free_.rbegin() + num_pages);
    free_.resize(free_.size() - num_pages);
  }
  return PageSpan(this, std::move(ids));
}

void PagePool::Free(const std::vector<uint32_t>& ids) {
  absl::MutexLock lock(&mu_);
  // Reversed, so that the next allocation of this many pages gets them in the same order.
  free_.insert(free_.end(), ids.rbegin(), ids.rend());
}

uint64_t PagePool::pages_free() const {
  absl::MutexLock lock(&mu_);
  return free_.size();
}

}  // namespace kvstash::memory
