#include "server/store/store_impl.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "spdlog/spdlog.h"

namespace kvstash::store::internal {

namespace {

// A 64-byte aligned, grow-only scratch buffer, one per thread per use, so that steady-state
// Puts and Gets do not allocate. Buffers above kKeepBytes are released after each use so a
// single huge chunk does not pin that much memory in every worker thread for good.
class Scratch {
 public:
  static constexpr size_t kAlign = 64;
  static constexpr size_t kKeepBytes = 256ull << 20;

  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { Free(); }

  uint8_t* Get(size_t n) {
    if (n > cap_) {
      Free();
      cap_ = (n + kAlign - 1) / kAlign * kAlign;
      data_ = static_cast<uint8_t*>(::operator new(cap_, std::align_val_t(kAlign)));
    }
    return data_;
  }
  void Trim() {
    if (cap_ > kKeepBytes) Free();
  }

 private:
  void Free() {
    if (data_ != nullptr) ::operator delete(data_, std::align_val_t(kAlign));
    data_ = nullptr;
    cap_ = 0;
  }
  uint8_t* data_ = nullptr;
  size_t cap_ = 0;
};

// Trims a thread's scratch buffer when the calling scope ends, on every return path.
class TrimOnExit {
 public:
  explicit TrimOnExit(Scratch& s) : s_(s) {}
  ~TrimOnExit() { s_.Trim(); }

 private:
  Scratch& s_;
};

thread_local Scratch tls_encode;  // Put: the whole encoded chunk
thread_local Scratch tls_input;   // Put: a copy of an odd-aligned payload
thread_local Scratch tls_gather;  // Get: split pair sections made contiguous

std::string KeyString(std::string_view ns, const ChunkKey& key) {
  return absl::StrFormat("%s/%016x%016x", absl::string_view(ns.data(), ns.size()), key.hi,
                         key.lo);
}

absl::Status NotFound(std::string_view ns, const ChunkKey& key) {
  return absl::NotFoundError(absl::StrCat("chunk ", KeyString(ns, key), " not found"));
}

ChunkInfo MakeInfo(const kernels::ChunkLayout& layout) {
  ChunkInfo info;
  info.shape = layout.shape;
  info.config = layout.config;
  info.logical_bytes = layout.shape.payload_bytes();
  info.stored_bytes = layout.total_bytes;
  info.equivalent_bits = kernels::EquivalentBits(layout.shape, layout.config);
  info.true_bits = kernels::TrueBits(layout);
  return info;
}

}  // namespace

uint64_t HashKey(std::string_view ns, const ChunkKey& key) {
  // Keys are usually content hashes already; mixing them in through the seed keeps one pass
  // over the (short) namespace and spreads keys that differ in either half.
  const uint64_t seed = key.lo ^ (key.hi * 0x9E3779B97F4A7C15ull);
  return XXH3_64bits_withSeed(ns.data(), ns.size(), seed);
}

uint64_t ChunkPages(const kernels::ChunkLayout& layout, uint32_t page_bytes,
                    std::vector<uint64_t>* section_offset) {
  const auto pages_for = [page_bytes](uint64_t bytes) {
    return (bytes + page_bytes - 1) / page_bytes;
  };
  uint64_t aligned = pages_for(layout.header_bytes);
  for (const kernels::PairLayout& p : layout.pairs) aligned += pages_for(p.bytes);
  const uint64_t packed = pages_for(layout.total_bytes);
  // Page-aligned sections let a layer-range read touch only its pairs' pages, and cost up
  // to a page per section plus the header's page. For chunks of sections much smaller than
  // a page that is most of the memory (a one-pair chunk of a few KiB took two pages), so
  // those are packed; a read of them touches a page or two either way.
  const bool pack = 2 * packed <= aligned;
  if (section_offset != nullptr) {
    section_offset->resize(layout.num_pairs());
    uint64_t pages = pages_for(layout.header_bytes);
    for (uint32_t p = 0; p < layout.num_pairs(); ++p) {
      (*section_offset)[p] = pack ? layout.pairs[p].offset : pages * page_bytes;
      pages += pages_for(layout.pairs[p].bytes);
    }
  }
  return pack ? packed : aligned;
}

StoreImpl::StoreImpl(const StoreOptions& options, std::unique_ptr<memory::PagePool> pool,
                     std::vector<std::unique_ptr<GpuTier>> gpus)
    : options_(options),
      namespaces_(std::make_unique<NamespaceTable>(options.num_shards,
                                                   options.namespace_quota_bytes,
                                                   options.namespace_quota_overrides)),
      pool_(std::move(pool)),
      shards_(new Shard[options.num_shards]),
      gpus_(std::move(gpus)),
      gpu_alloc_mu_(new absl::Mutex[std::max<size_t>(gpus_.size(), 1)]) {
  for (uint32_t i = 0; i < options_.num_shards; ++i) {
    Shard& s = shards_[i];
    absl::MutexLock lock(&s.mu);
    s.gpu_lru.reset(new EntryList[std::max<size_t>(gpus_.size(), 1)]);
    s.gpu_lru_pages.assign(gpus_.size(), 0);
    s.gpu_chunks.assign(gpus_.size(), 0);
  }
#if KVSTASH_HAVE_CUDA
  if (!gpus_.empty() && options_.gpu_pin_host_pool) {
    absl::StatusOr<std::shared_ptr<void>> reg =
        RegisterHostMemory(pool_->page(0), pool_->capacity_bytes());
    if (reg.ok()) {
      host_pool_registration_ = *std::move(reg);
    } else {
      spdlog::warn("store: host pool not registered with CUDA ({}); host-tier restores to a "
                   "GPU go through staging buffers",
                   reg.status().ToString());
    }
  }
#endif
}

StoreImpl::~StoreImpl() {
  for (uint32_t i = 0; i < options_.num_shards; ++i) {
    Shard& s = shards_[i];
    std::vector<Entry*> dead;
    {
      absl::MutexLock lock(&s.mu);
      if (!s.in_use.empty()) spdlog::error("store: destroyed while a Get is in progress");
      std::vector<Entry*> all(s.map.begin(), s.map.end());
      for (Entry* e : all) {
        if (Entry* d = RemoveLocked(s, e)) dead.push_back(d);
      }
    }
    for (Entry* e : dead) delete e;
  }
}

absl::Status StoreImpl::ValidateNamespace(std::string_view ns) const {
  if (ns.empty()) return absl::InvalidArgumentError("namespace must not be empty");
  if (ns.size() > options_.max_namespace_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("namespace is ", ns.size(),
                                                   " bytes, the limit is ",
                                                   options_.max_namespace_bytes));
  }
  return absl::OkStatus();
}

// --- Pinning and the index --------------------------------------------------------------

Entry* StoreImpl::PinLocked(Shard& s, const KeyRef& k) {
  auto it = s.map.find(k);
  if (it == s.map.end()) return nullptr;
  Entry* e = *it;
  if (e->refs == 1) {  // unpinned: leaves the evictable lists while it is read
    UnlinkEvictableLocked(s, e);
    s.in_use.PushNewest(e);
  }
  ++e->refs;
  return e;
}

Entry* StoreImpl::UnrefLocked(Shard& s, Entry* e) {
  if (e->refs == 0) {
    spdlog::critical("store: entry {} unreferenced twice", KeyString(e->ns, e->key));
    std::abort();
  }
  --e->refs;
  if (e->refs == 0) return e;  // out of the index already (the index holds a reference)
  if (e->refs == 1 && e->in_index) {
    // The last reader is done: the chunk becomes the most recently used and evictable.
    EntryList::Unlink(e);
    e->last_use = clock_.fetch_add(1, std::memory_order_relaxed) + 1;
    LinkEvictableLocked(s, e);
  }
  return nullptr;
}

void StoreImpl::LinkEvictableLocked(Shard& s, Entry* e) {
  LruOf(s, e).PushNewest(e);
  LruPagesOf(s, e) += e->num_pages();
  NsLru& l = e->nsref->lru[ShardIndex(e->hash)];
  e->ns_prev = l.newest;
  e->ns_next = nullptr;
  (l.newest != nullptr ? l.newest->ns_next : l.oldest) = e;
  l.newest = e;
  l.pages += e->num_pages();
}

void StoreImpl::UnlinkEvictableLocked(Shard& s, Entry* e) {
  EntryList::Unlink(e);
  LruPagesOf(s, e) -= e->num_pages();
  NsLru& l = e->nsref->lru[ShardIndex(e->hash)];
  (e->ns_prev != nullptr ? e->ns_prev->ns_next : l.oldest) = e->ns_next;
  (e->ns_next != nullptr ? e->ns_next->ns_prev : l.newest) = e->ns_prev;
  e->ns_prev = e->ns_next = nullptr;
  l.pages -= e->num_pages();
}

Entry* StoreImpl::RemoveLocked(Shard& s, Entry* e) {
  s.map.erase(e);
  if (e->refs == 1) {
    UnlinkEvictableLocked(s, e);
  } else {
    EntryList::Unlink(e);  // from in_use
  }
  e->in_index = false;
  s.chunks -= 1;
  if (e->tier >= 0) s.gpu_chunks[e->tier] -= 1;
  s.logical_bytes -= e->info.logical_bytes;
  s.stored_bytes -= e->info.stored_bytes;
  s.elements -= e->elements;
  s.equivalent_bit_elements -= e->equivalent_bit_elements;
  e->nsref->chunks.fetch_sub(1, std::memory_order_relaxed);
  e->nsref->stored_bytes.fetch_sub(e->info.stored_bytes, std::memory_order_relaxed);
  e->nsref->logical_bytes.fetch_sub(e->info.logical_bytes, std::memory_order_relaxed);
  return UnrefLocked(s, e);
}

void StoreImpl::Unpin(Entry* e) {
  Shard& s = ShardFor(e->hash);
  Entry* dead;
  {
    absl::MutexLock lock(&s.mu);
    dead = UnrefLocked(s, e);
  }
  delete dead;  // returns its pages to the pool, outside the shard lock
}

void StoreImpl::InsertLocked(Shard& s, Entry* e) {
  e->refs = 1;
  e->in_index = true;
  e->last_use = clock_.fetch_add(1, std::memory_order_relaxed) + 1;
  s.map.insert(e);
  LinkEvictableLocked(s, e);
  s.chunks += 1;
  if (e->tier >= 0) s.gpu_chunks[e->tier] += 1;
  s.logical_bytes += e->info.logical_bytes;
  s.stored_bytes += e->info.stored_bytes;
  s.elements += e->elements;
  s.equivalent_bit_elements += e->equivalent_bit_elements;
  e->nsref->chunks.fetch_add(1, std::memory_order_relaxed);
  e->nsref->stored_bytes.fetch_add(e->info.stored_bytes, std::memory_order_relaxed);
  e->nsref->logical_bytes.fetch_add(e->info.logical_bytes, std::memory_order_relaxed);
}

std::unique_ptr<Entry> StoreImpl::CloneMeta(const Entry& old) {
  auto e = std::make_unique<Entry>();
  e->ns = old.ns;
  e->key = old.key;
  e->hash = old.hash;
  e->header = old.header;
  e->info = old.info;
  e->elements = old.elements;
  e->equivalent_bit_elements = old.equivalent_bit_elements;
  e->home = old.home;
  e->section_offset = old.section_offset;
  e->nsref = old.nsref.Share();
  return e;
}

bool StoreImpl::ReplaceIfIndexed(Entry* old, std::unique_ptr<Entry> fresh) {
  Shard& s = ShardFor(old->hash);
  {
    absl::MutexLock lock(&s.mu);
    if (old->in_index) {
      // The caller's pin keeps `old` alive: RemoveLocked drops only the index's reference.
      Entry* dead = RemoveLocked(s, old);
      if (dead != nullptr) {
        spdlog::critical("store: replacing an entry nobody pinned");
        std::abort();
      }
      // The chunk's charge follows it to its new tier; old's pages, freed by the last
      // reader's unpin, are no longer counted against the namespace.
      old->nsref.MoveChargeTo(fresh->nsref);
      InsertLocked(s, fresh.release());
      return true;
    }
  }
  return false;  // deleted or re-put meanwhile; `fresh` is freed here, outside the lock
}

int StoreImpl::HomeTier(std::string_view ns) const {
  if (gpus_.empty()) return -1;
  return static_cast<int>(XXH3_64bits(ns.data(), ns.size()) % gpus_.size());
}

// --- Eviction ---------------------------------------------------------------------------
//
// Least recently read first, across shards: every shard keeps its unpinned entries oldest
// first by a store-wide clock, so the globally oldest is the oldest of the shard heads.
// Finding it takes one short lock per shard; eviction runs only when the pool is full, and
// each victim frees at least one page, so this is cheap next to encoding the chunk that
// needed the room.

Entry* StoreImpl::EvictOldest() {
  for (;;) {
    Shard* best = nullptr;
    uint64_t best_use = std::numeric_limits<uint64_t>::max();
    for (uint32_t i = 0; i < options_.num_shards; ++i) {
      Shard& s = shards_[i];
      absl::MutexLock lock(&s.mu);
      if (const Entry* o = s.lru.oldest(); o != nullptr && o->last_use < best_use) {
        best = &s;
        best_use = o->last_use;
      }
    }
    if (best == nullptr) return nullptr;
    absl::MutexLock lock(&best->mu);
    Entry* victim = best->lru.oldest();
    if (victim == nullptr) continue;  // pinned or removed meanwhile; look again
    return RemoveLocked(*best, victim);  // refs was 1, so this returns victim
  }
}

absl::StatusOr<memory::PageSpan> StoreImpl::AllocateWithEviction(uint64_t num_pages,
                                                                 const KeyRef& putting,
                                                                 bool* evicted_self) {
  *evicted_self = false;
  if (auto span = pool_->Allocate(num_pages); span.ok()) return span;
  absl::MutexLock alloc_lock(&alloc_mu_);
  bool checked = false;
  for (;;) {
    auto span = pool_->Allocate(num_pages);
    if (span.ok() || !absl::IsResourceExhausted(span.status())) return span;
    if (!checked) {
      // Evict nothing unless evicting can succeed, so that a Put that cannot fit leaves
      // the store as it was. Exact when no other thread pins or frees meanwhile.
      checked = true;
      uint64_t evictable = 0;
      for (uint32_t i = 0; i < options_.num_shards; ++i) {
        absl::MutexLock lock(&shards_[i].mu);
        evictable += shards_[i].lru_pages;
      }
      const uint64_t free = pool_->pages_free();
      if (free + evictable < num_pages) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "store: chunk needs ", num_pages, " pages of ", pool_->page_bytes(),
            " bytes; ", free, " are free and ", evictable,
            " more held by unpinned chunks (the rest are pinned by reads in progress)"));
      }
    }
    Entry* victim = EvictOldest();
    if (victim == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "store: chunk needs ", num_pages, " pages; every other page is pinned by a read "
          "in progress"));
    }
    // The old chunk of the key being put is replaced, not evicted; Put settles the count.
    if (EntryEq::Same(victim->ref(), putting)) {
      *evicted_self = true;
    } else {
      CountEviction(victim->nsref.get(), SelfEviction::kCapacity);
    }
    delete victim;
  }
}

void StoreImpl::CountEviction(NamespaceState* ns, SelfEviction cause) {
  evictions_.fetch_add(1, std::memory_order_relaxed);
  if (cause == SelfEviction::kQuota) {
    quota_evictions_.fetch_add(1, std::memory_order_relaxed);
    ns->quota_evictions.fetch_add(1, std::memory_order_relaxed);
  } else {
    ns->capacity_evictions.fetch_add(1, std::memory_order_relaxed);
  }
}

// --- Namespace quotas -------------------------------------------------------------------
//
// As capacity eviction, but within one namespace: each shard keeps the namespace's
// unpinned entries (both tiers) oldest first in NamespaceState::lru[shard], so its oldest
// is the oldest of those heads.

Entry* StoreImpl::EvictOldestOf(NamespaceState* ns) {
  for (;;) {
    uint32_t best = options_.num_shards;
    uint64_t best_use = std::numeric_limits<uint64_t>::max();
    for (uint32_t i = 0; i < options_.num_shards; ++i) {
      absl::MutexLock lock(&shards_[i].mu);
      if (const Entry* o = ns->lru[i].oldest; o != nullptr && o->last_use < best_use) {
        best = i;
        best_use = o->last_use;
      }
    }
    if (best == options_.num_shards) return nullptr;
    Shard& s = shards_[best];
    absl::MutexLock lock(&s.mu);
    Entry* victim = ns->lru[best].oldest;
    if (victim == nullptr) continue;  // pinned or removed meanwhile; look again
    return RemoveLocked(s, victim);   // refs was 1, so this returns victim
  }
}

absl::Status StoreImpl::ChargeQuota(Entry* entry, uint64_t num_pages,
                                    SelfEviction* evicted_self) {
  NamespaceRef& ref = entry->nsref;
  NamespaceState* ns = ref.get();
  const uint64_t bytes = num_pages * pool_->page_bytes();
  if (ref.TryCharge(bytes)) return absl::OkStatus();  // no quota, or room under it
  absl::MutexLock evict_lock(&ns->evict_mu);
  const KeyRef putting = entry->ref();
  bool checked = false;
  for (;;) {
    if (ref.TryCharge(bytes)) return absl::OkStatus();
    const uint64_t used = ns->charged_bytes.load(std::memory_order_relaxed);
    if (!checked) {
      // Evict nothing unless evicting can succeed, so that a Put that cannot fit leaves
      // the store as it was (exact when nothing is pinned or freed meanwhile).
      checked = true;
      uint64_t evictable_pages = 0;
      for (uint32_t i = 0; i < options_.num_shards; ++i) {
        absl::MutexLock lock(&shards_[i].mu);
        evictable_pages += ns->lru[i].pages;
      }
      const uint64_t evictable = evictable_pages * pool_->page_bytes();
      if (used - std::min(used, evictable) + bytes > ns->quota_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "store: namespace \"", ns->name, "\" is at its quota of ", ns->quota_bytes,
            " bytes: it holds ", used, " bytes of pool pages, of which ", evictable,
            " are unpinned chunks it could evict, and the chunk needs ", bytes, " (",
            num_pages, " pages); the rest are pinned by reads in progress"));
      }
    }
    Entry* victim = EvictOldestOf(ns);
    if (victim == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "store: namespace \"", ns->name, "\" is at its quota of ", ns->quota_bytes,
          " bytes: it holds ", used, " bytes and the chunk needs ", bytes,
          "; every other chunk of it is pinned by a read in progress"));
    }
    if (EntryEq::Same(victim->ref(), putting)) {
      *evicted_self = SelfEviction::kQuota;  // replaced, not evicted; Publish settles it
    } else {
      CountEviction(ns, SelfEviction::kQuota);
    }
    delete victim;  // uncharges it
  }
}

// --- Operations -------------------------------------------------------------------------

absl::StatusOr<ChunkInfo> StoreImpl::Put(std::string_view ns, const ChunkKey& key,
                                         const kernels::ChunkShape& shape,
                                         const kernels::CodecConfig& config,
                                         std::span<const uint8_t> payload) {
  return Put(ns, key, shape, config, payload, PutOptions{});
}

absl::StatusOr<std::unique_ptr<Entry>> StoreImpl::NewEntry(std::string_view ns,
                                                           const ChunkKey& key,
                                                           const kernels::ChunkShape& shape,
                                                           const kernels::CodecConfig& config,
                                                           kernels::ChunkLayout* layout,
                                                           uint64_t* num_pages) const {
  if (auto st = ValidateNamespace(ns); !st.ok()) return st;
  absl::StatusOr<kernels::ChunkLayout> made = kernels::MakeLayout(shape, config);
  if (!made.ok()) return made.status();
  *layout = *std::move(made);
  // Each section gets its own page-aligned run so a layer-range read touches only the
  // pages of the pairs it decodes. Every tier uses the same page size, so the runs are at
  // the same offsets whichever tier holds the chunk.
  // Small chunks are packed instead (ChunkPages).
  auto entry = std::make_unique<Entry>();
  *num_pages = ChunkPages(*layout, pool_->page_bytes(), &entry->section_offset);
  entry->ns.assign(ns.data(), ns.size());
  entry->key = key;
  entry->hash = HashKey(ns, key);
  entry->nsref = namespaces_->Acquire(ns);
  const uint64_t quota = entry->nsref->quota_bytes;
  const uint64_t bytes = *num_pages * pool_->page_bytes();
  if (quota > 0 && bytes > quota) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "store: namespace \"", absl::string_view(ns.data(), ns.size()), "\" has a quota of ",
        quota, " bytes (it holds ",
        entry->nsref->charged_bytes.load(std::memory_order_relaxed),
        "); the chunk needs more: ", bytes, " bytes (", *num_pages, " pages of ",
        pool_->page_bytes(), ")"));
  }
  return entry;
}

absl::StatusOr<ChunkInfo> StoreImpl::Put(std::string_view ns, const ChunkKey& key,
                                         const kernels::ChunkShape& shape,
                                         const kernels::CodecConfig& config,
                                         std::span<const uint8_t> payload,
                                         const PutOptions& put_options) {
  kernels::ChunkLayout lay;
  uint64_t num_pages = 0;
  absl::StatusOr<std::unique_ptr<Entry>> made = NewEntry(ns, key, shape, config, &lay, &num_pages);
  if (!made.ok()) return made.status();
  std::unique_ptr<Entry> entry = *std::move(made);
  const kernels::ChunkLayout* layout = &lay;
  if (payload.size() != shape.payload_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("payload is ", payload.size(),
                                                   " bytes, the shape needs ",
                                                   shape.payload_bytes()));
  }
  if (!gpus_.empty() &&
      (put_options.device < -1 || put_options.device >= static_cast<int>(gpus_.size()))) {
    return absl::InvalidArgumentError(absl::StrCat("device ", put_options.device,
                                                   " is out of range: the store has ",
                                                   gpus_.size(), " GPU tiers"));
  }
  // Without GPU tiers PutOptions::device means nothing (and is not range-checked).
  entry->home = gpus_.empty()                ? -1
                : put_options.device >= 0 ? put_options.device
                                          : HomeTier(ns);

#if KVSTASH_HAVE_CUDA
  if (const int home = entry->home; home >= 0) {
    if (gpus_[home]->healthy()) {
      return PutGpu(home, std::move(entry), *layout, num_pages,
                    [&](GpuWorker& w) -> absl::StatusOr<const uint8_t*> {
                      absl::StatusOr<const uint8_t*> encoded = w.Encode(*layout, payload);
                      if (encoded.ok() && put_options.verify_source) {
                        if (absl::Status s = put_options.verify_source(); !s.ok()) return s;
                      }
                      return encoded;
                    });
    }
    // The device failed earlier: encode on the CPU into the host tier.
    gpu_fallbacks_.fetch_add(1, std::memory_order_relaxed);
  }
#endif
  if (num_pages > pool_->pages_total()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "store: chunk of ", layout->total_bytes, " encoded bytes needs ", num_pages,
        " pages; the whole store holds ", pool_->pages_total()));
  }

  // Encode outside every lock, into this thread's scratch buffer.
  const uint16_t* in = reinterpret_cast<const uint16_t*>(payload.data());
  TrimOnExit trim_input(tls_input);
  if (reinterpret_cast<uintptr_t>(payload.data()) % alignof(uint16_t) != 0) {
    uint8_t* copy = tls_input.Get(payload.size());
    std::memcpy(copy, payload.data(), payload.size());
    in = reinterpret_cast<const uint16_t*>(copy);
  }
  TrimOnExit trim_encode(tls_encode);
  uint8_t* chunk = tls_encode.Get(layout->total_bytes);
  if (auto st = kernels::Encode(*layout, in, chunk, options_.impl); !st.ok()) return st;
  if (put_options.verify_source) {
    if (absl::Status st = put_options.verify_source(); !st.ok()) return st;
  }
  return PutHost(std::move(entry), num_pages, chunk, layout->total_bytes);
}

absl::StatusOr<ChunkInfo> StoreImpl::PutHost(std::unique_ptr<Entry> entry, uint64_t num_pages,
                                             const uint8_t* chunk, uint64_t chunk_bytes,
                                             SelfEviction evicted_self) {
  if (num_pages > pool_->pages_total()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "store: chunk needs ", num_pages, " pages; the whole host tier holds ",
        pool_->pages_total()));
  }
  if (auto st = SetHeader(entry.get(), chunk, chunk_bytes); !st.ok()) return st;
  entry->tier = -1;
  const KeyRef k = entry->ref();

  // The namespace's quota first (it evicts only the namespace's own chunks), then the
  // pool's capacity (any namespace's). A GPU Put that fell back here is charged already.
  if (entry->nsref.charged_bytes() == 0) {
    if (auto st = ChargeQuota(entry.get(), num_pages, &evicted_self); !st.ok()) return st;
  }
  bool evicted_for_room = false;
  absl::StatusOr<memory::PageSpan> pages = AllocateWithEviction(num_pages, k, &evicted_for_room);
  if (!pages.ok()) return pages.status();  // the entry's charge is released with it
  if (evicted_for_room) {
    if (evicted_self == SelfEviction::kNone) {
      evicted_self = SelfEviction::kCapacity;
    } else {
      // The quota pass already removed an older chunk of this key; this one was put by
      // another Put meanwhile, so its removal is an eviction.
      CountEviction(entry->nsref.get(), SelfEviction::kCapacity);
    }
  }
  entry->pages = *std::move(pages);

  // Copy into the pages, still outside every lock: nobody else can see this entry yet.
  const kernels::ChunkLayout& lay = entry->header.layout;
  entry->pages.Write(0, chunk, lay.header_bytes);
  entry->direct.resize(lay.num_pairs());
  for (uint32_t p = 0; p < lay.num_pairs(); ++p) {
    const uint64_t off = entry->section_offset[p];
    entry->pages.Write(off, chunk + lay.pairs[p].offset, lay.pairs[p].bytes);
    entry->direct[p] = entry->pages.ContiguousAt(off, lay.pairs[p].bytes);
  }
  return Publish(std::move(entry), evicted_self);
}

absl::Status StoreImpl::SetHeader(Entry* entry, const uint8_t* chunk, uint64_t chunk_bytes) {
  absl::StatusOr<kernels::ParsedHeader> header =
      kernels::ParseHeader(chunk, chunk_bytes, /*require_full=*/true);
  if (!header.ok()) {
    // The encoder wrote a header its own parser rejects: a codec bug, not a caller error.
    return absl::InternalError(
        absl::StrCat("store: encoder produced an unreadable header: ", header.status().message()));
  }
  entry->info = MakeInfo(header->layout);
  entry->elements = header->layout.shape.elements();
  entry->equivalent_bit_elements =
      std::llround(entry->info.equivalent_bits * static_cast<double>(entry->elements));
  entry->header = *std::move(header);
  return absl::OkStatus();
}

ChunkInfo StoreImpl::Publish(std::unique_ptr<Entry> entry, SelfEviction evicted_self) {
  // One shard lock swaps the old entry for the new, so readers see either.
  ChunkInfo info = entry->info;
  const KeyRef k = entry->ref();
  NamespaceState* const ns = entry->nsref.get();
  Shard& s = ShardFor(k.hash);
  Entry* dead = nullptr;
  {
    absl::MutexLock lock(&s.mu);
    if (auto it = s.map.find(k); it != s.map.end()) {
      info.replaced = true;
      dead = RemoveLocked(s, *it);  // freed now, or by its last reader's unpin
      // Another Put of this key published after our eviction pass removed the older
      // chunk: that removal was an eviction after all.
      if (evicted_self != SelfEviction::kNone) CountEviction(ns, evicted_self);
    } else if (evicted_self != SelfEviction::kNone) {
      info.replaced = true;  // the old chunk made room for this one
    }
    InsertLocked(s, entry.release());
  }
  delete dead;
  puts_.fetch_add(1, std::memory_order_relaxed);
  return info;
}

absl::StatusOr<Entry*> StoreImpl::PinForRead(std::string_view ns, const ChunkKey& key) {
  gets_.fetch_add(1, std::memory_order_relaxed);
  if (auto st = ValidateNamespace(ns); !st.ok()) return st;
  const KeyRef k{ns, key, HashKey(ns, key)};
  Shard& s = ShardFor(k.hash);
  Entry* e;
  {
    absl::MutexLock lock(&s.mu);
    e = PinLocked(s, k);
  }
  if (e == nullptr) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return NotFound(ns, key);
  }
  hits_.fetch_add(1, std::memory_order_relaxed);
  return e;
}

absl::StatusOr<kernels::Slice> StoreImpl::ResolveRead(const Entry& e, const kernels::Slice& slice,
                                                      kernels::DType out_dtype) {
  if (out_dtype != kernels::DType::kF16 && out_dtype != kernels::DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "out_dtype must be fp16 or bf16, got ", static_cast<int>(out_dtype)));
  }
  return kernels::ResolveSlice(e.header.layout.shape, slice);
}

absl::StatusOr<ChunkInfo> StoreImpl::Get(std::string_view ns, const ChunkKey& key,
                                         const kernels::Slice& slice, kernels::DType requested,
                                         const OutputAllocator& alloc) {
  absl::StatusOr<Entry*> pinned = PinForRead(ns, key);
  if (!pinned.ok()) return pinned.status();
  Entry* e = *pinned;
  Pin pin(this, e);  // everything below runs unlocked; the pin keeps the pages alive
  const kernels::DType out_dtype = ReadDType(*e, requested);  // of this very version
  absl::StatusOr<kernels::Slice> resolved = ResolveRead(*e, slice, out_dtype);
  if (!resolved.ok()) return resolved.status();
  const kernels::ChunkLayout& lay = pin->header.layout;
  const kernels::PairRange range = kernels::PairsForSlice(*resolved);

#if KVSTASH_HAVE_CUDA
  if (pin->tier >= 0) {
    const uint64_t bytes = kernels::DecodedBytes(lay.shape, *resolved);
    uint8_t* out = alloc(bytes);
    if (out == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("store: output allocator gave no memory for ", bytes, " bytes"));
    }
    if (auto st = GetGpu(*e, *resolved, out_dtype, out); !st.ok()) return st;
    return pin->info;
  }
#endif

  // Sections whose pages are adjacent are read in place; the others are gathered into one
  // contiguous scratch buffer, each at a 64-byte aligned offset.
  thread_local std::vector<const uint8_t*> sections;
  sections.assign(lay.num_pairs(), nullptr);
  uint64_t gather_bytes = 0;
  for (uint32_t p = range.first; p <= range.last; ++p) {
    if (pin->direct[p] == nullptr) gather_bytes += lay.pairs[p].bytes;  // multiples of 64
  }
  TrimOnExit trim_gather(tls_gather);
  uint8_t* gather = gather_bytes > 0 ? tls_gather.Get(gather_bytes) : nullptr;
  for (uint32_t p = range.first; p <= range.last; ++p) {
    if (pin->direct[p] != nullptr) {
      sections[p] = pin->direct[p];
    } else {
      pin->pages.Read(pin->section_offset[p], lay.pairs[p].bytes, gather);
      sections[p] = gather;
      gather += lay.pairs[p].bytes;
    }
  }

  const uint64_t bytes = kernels::DecodedBytes(lay.shape, *resolved);
  uint8_t* out = alloc(bytes);
  if (out == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("store: output allocator gave no memory for ", bytes, " bytes"));
  }
  if (auto st = kernels::DecodeSections(pin->header, sections.data(), *resolved, out_dtype,
                                        reinterpret_cast<uint16_t*>(out), options_.impl);
      !st.ok()) {
    return st;
  }
#if KVSTASH_HAVE_CUDA
  if (!gpus_.empty() && options_.gpu_promote_on_read) MaybePromote(e);
#endif
  return pin->info;
}

uint64_t StoreImpl::Lookup(std::string_view ns, std::span<const ChunkKey> chain) {
  uint64_t present = 0;
  for (const ChunkKey& key : chain) {
    const KeyRef k{ns, key, HashKey(ns, key)};
    Shard& s = ShardFor(k.hash);
    bool found;
    {
      absl::MutexLock lock(&s.mu);
      found = s.map.contains(k);
    }
    if (!found) break;
    ++present;
  }
  hits_.fetch_add(present, std::memory_order_relaxed);
  if (present < chain.size()) misses_.fetch_add(1, std::memory_order_relaxed);
  return present;
}

absl::StatusOr<ChunkInfo> StoreImpl::Describe(std::string_view ns, const ChunkKey& key) {
  if (auto st = ValidateNamespace(ns); !st.ok()) return st;
  const KeyRef k{ns, key, HashKey(ns, key)};
  Shard& s = ShardFor(k.hash);
  absl::MutexLock lock(&s.mu);
  auto it = s.map.find(k);
  if (it == s.map.end()) return NotFound(ns, key);
  return (*it)->info;
}

absl::Status StoreImpl::CorruptSectionForTest(std::string_view ns, const ChunkKey& key,
                                              uint32_t pair) {
  absl::StatusOr<Entry*> pinned = PinForRead(ns, key);
  if (!pinned.ok()) return pinned.status();
  Pin pin(this, *pinned);
  if (pin->tier >= 0) return absl::FailedPreconditionError("the chunk is on a device");
  if (pair >= pin->header.layout.num_pairs()) {
    return absl::InvalidArgumentError(absl::StrCat("pair ", pair, " is out of range"));
  }
  const uint64_t pb = pin->pages.bytes() / pin->pages.num_pages();
  const uint64_t at = pin->section_offset[pair] + pin->header.layout.pairs[pair].bytes / 2;
  pin->pages.page(at / pb)[at % pb] ^= 0x5A;
  return absl::OkStatus();
}

absl::Status StoreImpl::Delete(std::string_view ns, const ChunkKey& key) {
  if (auto st = ValidateNamespace(ns); !st.ok()) return st;
  const KeyRef k{ns, key, HashKey(ns, key)};
  Shard& s = ShardFor(k.hash);
  Entry* dead;
  {
    absl::MutexLock lock(&s.mu);
    auto it = s.map.find(k);
    if (it == s.map.end()) return NotFound(ns, key);
    dead = RemoveLocked(s, *it);
  }
  delete dead;  // null while a reader still holds it; its unpin frees it
  deletes_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

StoreStats StoreImpl::Stats() const {
  StoreStats st;
  uint64_t equivalent_bit_elements = 0;
  std::vector<uint64_t> gpu_chunks(gpus_.size(), 0);
  for (uint32_t i = 0; i < options_.num_shards; ++i) {
    Shard& s = shards_[i];
    absl::MutexLock lock(&s.mu);
    st.chunks += s.chunks;
    for (size_t d = 0; d < gpus_.size(); ++d) gpu_chunks[d] += s.gpu_chunks[d];
    st.logical_bytes += s.logical_bytes;
    st.stored_bytes += s.stored_bytes;
    st.elements += s.elements;
    equivalent_bit_elements += s.equivalent_bit_elements;
  }
  st.equivalent_bit_elements = static_cast<double>(equivalent_bit_elements);
  st.page_bytes = pool_->page_bytes();
  st.pages_total = pool_->pages_total();
  st.pages_used = pool_->pages_used();
  st.capacity_bytes = st.pages_total * st.page_bytes;
  st.used_bytes = st.pages_used * st.page_bytes;
  st.hits = hits_.load(std::memory_order_relaxed);
  st.misses = misses_.load(std::memory_order_relaxed);
  st.evictions = evictions_.load(std::memory_order_relaxed);
  st.quota_evictions = quota_evictions_.load(std::memory_order_relaxed);
  st.puts = puts_.load(std::memory_order_relaxed);
  st.gets = gets_.load(std::memory_order_relaxed);
  st.deletes = deletes_.load(std::memory_order_relaxed);
  st.demotions = demotions_.load(std::memory_order_relaxed);
  st.promotions = promotions_.load(std::memory_order_relaxed);
  st.gpu_fallbacks = gpu_fallbacks_.load(std::memory_order_relaxed);
  st.codec_path = gpus_.empty() ? (options_.impl == kernels::Impl::kReference
                                       ? "reference"
                                       : kernels::FastPathName())
                                : "cuda";
#if KVSTASH_HAVE_CUDA
  for (size_t d = 0; d < gpus_.size(); ++d) {
    const GpuTier& g = *gpus_[d];
    GpuTierStats gs;
    gs.ordinal = g.device();
    gs.name = g.name();
    gs.healthy = g.healthy();
    gs.pages_total = g.pages().pages_total();
    gs.pages_used = g.pages().pages_used();
    gs.capacity_bytes = gs.pages_total * st.page_bytes;
    gs.used_bytes = gs.pages_used * st.page_bytes;
    gs.chunks = gpu_chunks[d];
    st.gpu_capacity_bytes += gs.capacity_bytes;
    st.gpu_used_bytes += gs.used_bytes;
    st.gpu_chunks += gs.chunks;
    st.gpus.push_back(std::move(gs));
  }
#endif
  st.host_chunks = st.chunks - st.gpu_chunks;
  return st;
}

std::vector<NamespaceStats> StoreImpl::PerNamespaceStats() const {
  return namespaces_->Snapshot();
}

}  // namespace kvstash::store::internal
