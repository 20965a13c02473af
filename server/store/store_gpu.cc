// The store's GPU paths: Put and Get on a device tier, demotion GPU -> host under device
// pressure and promotion host -> GPU after a read. Built only with KVSTASH_HAVE_CUDA; the
// CUDA work itself is in gpu_tier.cc. docs/store.md ("GPU tier") has the design.
//
// Locks are never held across a worker call: entries are pinned under their shard lock,
// copied or decoded unlocked, and swapped for their copy in another tier under the lock.
#include <xxhash.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/store/gpu_tier.h"
#include "server/store/store_impl.h"
#include "spdlog/spdlog.h"

namespace kvstash::store::internal {
namespace {

void SetDirect(Entry* e) {
  const kernels::ChunkLayout& lay = e->header.layout;
  e->direct.resize(lay.num_pairs());
  for (uint32_t p = 0; p < lay.num_pairs(); ++p) {
    e->direct[p] = e->pages.ContiguousAt(e->section_offset[p], lay.pairs[p].bytes);
  }
}

// Whether every pair section of a host-tier entry matches its directory checksum. The GPU
// decoder does not verify checksums, so sections are verified on their way to a device.
bool HostSectionsIntact(const Entry& e) {
  const kernels::ChunkLayout& lay = e.header.layout;
  const uint64_t pb = e.pages.bytes() / e.pages.num_pages();
  XXH3_state_t* state = XXH3_createState();
  bool ok = state != nullptr;
  for (uint32_t p = 0; ok && p < lay.num_pairs(); ++p) {
    XXH3_64bits_reset(state);
    uint64_t off = e.section_offset[p];
    uint64_t left = lay.pairs[p].bytes;
    while (left > 0) {
      const uint64_t take = std::min(left, pb - off % pb);
      XXH3_64bits_update(state, e.pages.page(off / pb) + off % pb, take);
      off += take;
      left -= take;
    }
    ok = XXH3_64bits_digest(state) == e.header.section_checksums[p];
  }
  XXH3_freeState(state);
  return ok;
}

}  // namespace

void StoreImpl::NoteGpuError(int t, const absl::Status& st) {
  // Allocation failures (ResourceExhausted) and bad input (InvalidArgument) leave the
  // device usable; anything else is a CUDA failure that may be sticky.
  if (absl::IsInternal(st)) gpus_[t]->MarkFailed(st);
}

absl::StatusOr<ChunkInfo> StoreImpl::PutGpu(int t, std::unique_ptr<Entry> entry,
                                            const kernels::ChunkLayout& layout,
                                            uint64_t num_pages,
                                            std::span<const uint8_t> payload) {
  GpuTier& tier = *gpus_[t];
  GpuTier::Lease w = tier.Acquire();  // held to the end: the encoded chunk lives in it
  absl::StatusOr<const uint8_t*> chunk = w->Encode(layout, payload);
  if (!chunk.ok()) {
    NoteGpuError(t, chunk.status());
    return chunk.status();
  }
  if (auto st = SetHeader(entry.get(), *chunk, layout.total_bytes); !st.ok()) return st;

  absl::StatusOr<memory::PageSpan> pages = AllocateOnGpu(t, num_pages, w.operator->());
  if (!pages.ok()) {
    if (!absl::IsResourceExhausted(pages.status())) {
      NoteGpuError(t, pages.status());
      return pages.status();
    }
    // The device pool cannot take it (too large, or the rest is pinned by reads): keep the
    // GPU-encoded chunk in the host tier.
    gpu_fallbacks_.fetch_add(1, std::memory_order_relaxed);
    return PutHost(std::move(entry), num_pages, *chunk, layout.total_bytes);
  }
  entry->tier = t;
  entry->pages = *std::move(pages);
  if (auto st = w->StoreEncoded(layout, entry->section_offset, entry->pages); !st.ok()) {
    NoteGpuError(t, st);
    return st;
  }
  SetDirect(entry.get());
  return Publish(std::move(entry), /*evicted_self=*/false);
}

absl::Status StoreImpl::GetGpu(const Entry& e, const kernels::Slice& resolved,
                               kernels::DType out_dtype, uint8_t* out) {
  GpuTier::Lease w = gpus_[e.tier]->Acquire();
  absl::Status st = w->Decode(e.header, e.pages, e.section_offset, e.direct, resolved,
                              out_dtype, out);
  if (!st.ok()) NoteGpuError(e.tier, st);
  return st;
}

absl::StatusOr<memory::PageSpan> StoreImpl::AllocateOnGpu(int t, uint64_t num_pages,
                                                          GpuWorker* w) {
  memory::PagePool& pool = gpus_[t]->pages();
  if (num_pages > pool.pages_total()) {
    return absl::ResourceExhaustedError(absl::StrCat("gpu tier ", t, ": chunk needs ",
                                                     num_pages, " pages, the pool holds ",
                                                     pool.pages_total()));
  }
  if (auto span = pool.Allocate(num_pages); span.ok()) return span;
  absl::MutexLock alloc_lock(&gpu_alloc_mu_[t]);
  bool checked = false;
  for (;;) {
    auto span = pool.Allocate(num_pages);
    if (span.ok() || !absl::IsResourceExhausted(span.status())) return span;
    if (!checked) {
      checked = true;
      uint64_t demotable = 0;
      for (uint32_t i = 0; i < options_.num_shards; ++i) {
        absl::MutexLock lock(&shards_[i].mu);
        demotable += shards_[i].gpu_lru_pages[t];
      }
      if (pool.pages_free() + demotable < num_pages) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "gpu tier ", t, ": chunk needs ", num_pages, " pages; ", pool.pages_free(),
            " are free and ", demotable, " more held by unpinned chunks"));
      }
    }
    Entry* victim = PinOldestOnGpu(t);
    if (victim == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "gpu tier ", t, ": chunk needs ", num_pages,
          " pages; every other page is pinned by a read in progress"));
    }
    if (auto st = Demote(victim, w); !st.ok()) return st;
  }
}

Entry* StoreImpl::PinOldestOnGpu(int t) {
  for (;;) {
    Shard* best = nullptr;
    uint64_t best_use = std::numeric_limits<uint64_t>::max();
    for (uint32_t i = 0; i < options_.num_shards; ++i) {
      Shard& s = shards_[i];
      absl::MutexLock lock(&s.mu);
      if (const Entry* o = s.gpu_lru[t].oldest(); o != nullptr && o->last_use < best_use) {
        best = &s;
        best_use = o->last_use;
      }
    }
    if (best == nullptr) return nullptr;
    absl::MutexLock lock(&best->mu);
    Entry* victim = best->gpu_lru[t].oldest();
    if (victim == nullptr) continue;  // pinned or removed meanwhile; look again
    EntryList::Unlink(victim);
    best->gpu_lru_pages[t] -= victim->num_pages();
    best->in_use.PushNewest(victim);
    ++victim->refs;
    return victim;
  }
}

absl::Status StoreImpl::Demote(Entry* victim, GpuWorker* w) {
  bool evicted_self = false;
  absl::StatusOr<memory::PageSpan> host =
      AllocateWithEviction(victim->num_pages(), victim->ref(), &evicted_self);
  // A re-put of the victim's key published meanwhile was evicted to make room.
  if (evicted_self) evictions_.fetch_add(1, std::memory_order_relaxed);
  if (!host.ok()) {
    // The host tier cannot take it either: drop it, as eviction from the last tier does.
    Shard& s = ShardFor(victim->hash);
    bool removed = false;
    {
      absl::MutexLock lock(&s.mu);
      if (victim->in_index) {
        RemoveLocked(s, victim);  // null: our pin keeps it
        removed = true;
      }
    }
    if (removed) evictions_.fetch_add(1, std::memory_order_relaxed);
    Unpin(victim);  // frees its device pages unless a reader holds it
    return absl::OkStatus();
  }
  if (auto st = w->CopyPagesToHost(victim->pages, *host); !st.ok()) {
    NoteGpuError(victim->tier, st);
    Unpin(victim);
    return st;
  }
  std::unique_ptr<Entry> fresh = CloneMeta(*victim);
  fresh->tier = -1;
  fresh->pages = *std::move(host);
  SetDirect(fresh.get());
  if (ReplaceIfIndexed(victim, std::move(fresh))) {
    demotions_.fetch_add(1, std::memory_order_relaxed);
  }
  Unpin(victim);
  return absl::OkStatus();
}

void StoreImpl::MaybePromote(Entry* e) {
  if (e->tier >= 0 || e->home < 0) return;
  GpuTier& tier = *gpus_[e->home];
  if (!tier.healthy()) return;
  // Only into free pages: promotion never demotes, so tiers do not ping-pong.
  absl::StatusOr<memory::PageSpan> pages = tier.pages().Allocate(e->num_pages());
  if (!pages.ok()) return;
  GpuTier::Lease w = tier.TryAcquire();  // never make a read wait for a worker
  if (!w) return;
  if (!HostSectionsIntact(*e)) return;
  if (auto st = w->CopyPagesToDevice(e->pages, *pages); !st.ok()) {
    NoteGpuError(e->home, st);
    return;
  }
  std::unique_ptr<Entry> fresh = CloneMeta(*e);
  fresh->tier = e->home;
  fresh->pages = *std::move(pages);
  SetDirect(fresh.get());
  if (ReplaceIfIndexed(e, std::move(fresh))) {
    promotions_.fetch_add(1, std::memory_order_relaxed);
  }
}

}  // namespace kvstash::store::internal
