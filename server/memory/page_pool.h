// A memory pool of fixed-size pages carved out of one up-front region, and the move-only
// PageSpan that owns a set of its pages and returns them on destruction. The region is
// either a host mapping the pool owns (Create) or memory owned by someone else, such as a
// cudaMalloc'd device region (CreateOver; see server/memory/device_pool.h).
//
// Fixed-size pages mean the pool never fragments externally: any N free pages can back an
// N-page request, whatever sizes were allocated and freed before. A span's pages need not
// be adjacent in memory; PageSpan copies across page boundaries and reports the ranges that
// happen to be contiguous so readers can skip a copy. See docs/store.md.
//
// Thread-safe: PagePool may be used from any thread (one mutex guards the free list; no
// syscall or copy runs under it). A PageSpan is thread-compatible; distinct spans may be
// used concurrently.
#ifndef KVSTASH_SERVER_MEMORY_PAGE_POOL_H_
#define KVSTASH_SERVER_MEMORY_PAGE_POOL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace kvstash::memory {

struct PagePoolOptions {
  // Bytes the pool maps up front; rounded down to a whole number of pages. No default.
  uint64_t capacity_bytes = 0;
  // Page size in bytes; a power of two >= 4096. Default 64 KiB.
  uint32_t page_bytes = 64 * 1024;
  // Ask the kernel for transparent huge pages (madvise MADV_HUGEPAGE) over the mapping
  // when it spans at least one 2 MiB huge page. Default true.
  bool huge_pages = true;
  // Touch every page at startup so that no request pays a page fault and a host without
  // the memory fails at startup rather than under load. Default false.
  bool prefault = false;
};

class PagePool;

// Owns a set of pool pages; returns them to the pool on destruction. Move-only.
// The bytes of the span are the concatenation of its pages, in order:
// byte offset o lives in page o / page_bytes at o % page_bytes.
class PageSpan {
 public:
  PageSpan() = default;
  PageSpan(PageSpan&& other) noexcept;
  PageSpan& operator=(PageSpan&& other) noexcept;
  PageSpan(const PageSpan&) = delete;
  PageSpan& operator=(const PageSpan&) = delete;
  ~PageSpan() { Release(); }

  bool empty() const { return ids_.empty(); }
  size_t num_pages() const { return ids_.size(); }
  uint64_t bytes() const;
  uint32_t page_id(size_t i) const { return ids_[i]; }
  uint8_t* page(size_t i) const;

  // Copies n bytes from src into the span at byte `offset`.
  // REQUIRES: offset + n <= bytes().
  void Write(uint64_t offset, const void* src, uint64_t n);
  // Copies n bytes at byte `offset` of the span into dst. REQUIRES: offset + n <= bytes().
  void Read(uint64_t offset, uint64_t n, void* dst) const;
  // The address of byte `offset` if [offset, offset + n) lies in pages that are adjacent
  // in memory (always true within one page), else nullptr. REQUIRES: offset + n <= bytes().
  const uint8_t* ContiguousAt(uint64_t offset, uint64_t n) const;

  // Returns the pages to the pool now; the span becomes empty.
  void Release();

 private:
  friend class PagePool;
  PageSpan(PagePool* pool, std::vector<uint32_t> ids) : pool_(pool), ids_(std::move(ids)) {}

  PagePool* pool_ = nullptr;  // not owned; outlives the span
  std::vector<uint32_t> ids_;
};

class PagePool {
 public:
  // InvalidArgument naming the field for a bad page size or a capacity below one page;
  // ResourceExhausted if the mapping fails.
  static absl::StatusOr<std::unique_ptr<PagePool>> Create(const PagePoolOptions& options);
  // A pool over `capacity_bytes` (rounded down to whole pages) of memory at `base` that the
  // caller owns and keeps alive until the pool is destroyed. The memory is never touched by
  // the pool; when it is not host-addressable (device memory) PageSpan::Write and Read must
  // not be used: copy page by page with page()/ContiguousAt addresses instead.
  // InvalidArgument as Create, or for a null base.
  static absl::StatusOr<std::unique_ptr<PagePool>> CreateOver(uint8_t* base,
                                                              uint64_t capacity_bytes,
                                                              uint32_t page_bytes);
  // REQUIRES: every PageSpan of this pool has been destroyed or released.
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  // Takes `num_pages` pages (num_pages >= 1). Never over-allocates: ResourceExhausted when
  // fewer pages are free, and then nothing is taken. InvalidArgument for num_pages == 0.
  absl::StatusOr<PageSpan> Allocate(uint64_t num_pages);

  // Pages needed to hold `bytes` bytes (0 for 0).
  uint64_t PagesFor(uint64_t bytes) const { return (bytes + page_bytes_ - 1) / page_bytes_; }

  uint32_t page_bytes() const { return page_bytes_; }
  uint64_t pages_total() const { return pages_total_; }
  uint64_t capacity_bytes() const { return pages_total_ * page_bytes_; }
  uint64_t pages_free() const;
  uint64_t pages_used() const { return pages_total_ - pages_free(); }
  // Whether the mapping was advised to use transparent huge pages.
  bool huge_pages() const { return huge_pages_; }

  uint8_t* page(uint32_t id) const { return base_ + static_cast<uint64_t>(id) * page_bytes_; }

 private:
  friend class PageSpan;
  PagePool(uint8_t* mapping, uint64_t mapping_bytes, uint8_t* base, uint32_t page_bytes,
           uint64_t pages_total, bool huge_pages);
  void Free(const std::vector<uint32_t>& ids);

  uint8_t* const mapping_;         // what munmap gets; null over external memory
  const uint64_t mapping_bytes_;
  uint8_t* const base_;            // page 0; huge-page aligned inside the mapping when advised
  const uint32_t page_bytes_;
  const uint64_t pages_total_;
  const bool huge_pages_;

  mutable absl::Mutex mu_;
  // A stack of free page ids; the next allocation pops from the back. Kept so that a fresh
  // pool, and a freed span that is reused whole, hand out ascending adjacent ids, which
  // lets readers use a run of pages in place (PageSpan::ContiguousAt).
  std::vector<uint32_t> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvstash::memory

#endif  // KVSTASH_SERVER_MEMORY_PAGE_POOL_H_
