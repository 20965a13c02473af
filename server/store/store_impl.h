// The Store implementation: a sharded index of pinned-by-refcount entries over a host
// PagePool and, with GPUs, one device pool per GPU (gpu_tier.h), with least-recently-read
// demotion GPU -> host and eviction from the host tier. Internal to kvstash_store; include
// store.h instead. The design is in docs/store.md.
//
// Thread-safe, as Store. Lock order: gpu_alloc_mu_[d] -> alloc_mu_ -> one Shard::mu ->
// a PagePool's mutex; NamespaceState::evict_mu -> one Shard::mu (never with alloc_mu_ or
// gpu_alloc_mu_ held); the NamespaceTable's mutex is a leaf. A GPU worker lease is taken
// before gpu_alloc_mu_ or evict_mu and never while holding a mutex. No lock is held across
// a CUDA call.
// No lock is held while encoding, decoding, copying chunk bytes or calling the
// OutputAllocator; entries are freed (pages returned) after the shard lock is dropped.
#ifndef KVSTASH_SERVER_STORE_STORE_IMPL_H_
#define KVSTASH_SERVER_STORE_STORE_IMPL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "server/memory/page_pool.h"
#include "server/store/namespaces.h"
#include "server/store/store.h"

#if KVSTASH_HAVE_CUDA
#include "server/store/gpu_tier.h"
#endif

namespace kvstash::store::internal {

#if !KVSTASH_HAVE_CUDA
// Without CUDA there are no GPU tiers: StoreImpl::gpus_ is always empty.
class GpuTier {};
class GpuWorker {};
#endif

// (namespace, key) plus its hash, for lookups that must not allocate.
struct KeyRef {
  std::string_view ns;
  ChunkKey key;
  uint64_t hash = 0;
};
uint64_t HashKey(std::string_view ns, const ChunkKey& key);

// The pages a chunk of `layout` takes, and (when not null) the byte offset of each pair
// section in them (docs/store.md, "How a chunk is laid out in pages"): the header in a run
// of its own and each section in a page-aligned run, unless storing the encoded chunk
// verbatim (packed, sections at their encoded offsets) takes at most half as many pages.
uint64_t ChunkPages(const kernels::ChunkLayout& layout, uint32_t page_bytes,
                    std::vector<uint64_t>* section_offset);

// One stored chunk. Immutable after publication except the fields marked as guarded by
// the owning shard's mutex.
struct Entry {
  std::string ns;
  ChunkKey key;
  uint64_t hash = 0;
  kernels::ParsedHeader header;  // parsed once at Put, used by every Get
  ChunkInfo info;                // replaced is always false here
  uint64_t elements = 0;         // 2·L·T·H·D
  // B_eq × elements, a whole number (code bits per element summed over the chunk), kept
  // as an integer so the shard sums add and subtract exactly.
  uint64_t equivalent_bit_elements = 0;
  // Which tier holds `pages`: -1 the host pool, d >= 0 the device pool gpus_[d] (then the
  // page addresses and `direct` are device pointers). Fixed for the entry's life: moving a
  // chunk between tiers publishes a new entry in its place.
  int tier = -1;
  int home = -1;                 // GPU tier the chunk belongs on (-1 without GPUs)
  // The namespace's state, and the bytes of `pages` charged to it. Declared before `pages`
  // so that the charge is released after the pages are back in the pool.
  NamespaceRef nsref;
  // Page-aligned: the header run, then one page-aligned run per pair section. Packed (small
  // chunks, ChunkPages): the encoded chunk verbatim, sections at their encoded offsets.
  memory::PageSpan pages;
  std::vector<uint64_t> section_offset;  // [P] byte offset of pair p in `pages`
  std::vector<const uint8_t*> direct;    // [P] pair p in place, or null if its run is split

  // Guarded by the owning Shard::mu (not annotatable on a per-shard basis).
  uint32_t refs = 0;        // 1 for the index while in_index, +1 per reader (pin)
  bool in_index = false;
  uint64_t last_use = 0;    // store clock when last published or unpinned
  Entry* prev = nullptr;    // links in the shard's lru or in_use list
  Entry* next = nullptr;
  Entry* ns_prev = nullptr; // links in nsref->lru[shard] while in lru or gpu_lru
  Entry* ns_next = nullptr;

  uint64_t num_pages() const { return pages.num_pages(); }
  KeyRef ref() const { return KeyRef{ns, key, hash}; }
};

// A circular doubly linked list of entries with a dummy head; oldest at head.next.
class EntryList {
 public:
  EntryList() { head_.prev = head_.next = &head_; }
  EntryList(const EntryList&) = delete;
  EntryList& operator=(const EntryList&) = delete;
  bool empty() const { return head_.next == &head_; }
  Entry* oldest() const { return empty() ? nullptr : head_.next; }
  void PushNewest(Entry* e) {
    e->next = &head_;
    e->prev = head_.prev;
    e->prev->next = e;
    e->next->prev = e;
  }
  static void Unlink(Entry* e) {
    e->next->prev = e->prev;
    e->prev->next = e->next;
    e->prev = e->next = nullptr;
  }

 private:
  Entry head_;
};

struct EntryHash {
  using is_transparent = void;
  size_t operator()(const Entry* e) const { return e->hash; }
  size_t operator()(const KeyRef& k) const { return k.hash; }
};
struct EntryEq {
  using is_transparent = void;
  static bool Same(const KeyRef& a, const KeyRef& b) { return a.key == b.key && a.ns == b.ns; }
  bool operator()(const Entry* a, const Entry* b) const { return Same(a->ref(), b->ref()); }
  bool operator()(const Entry* a, const KeyRef& b) const { return Same(a->ref(), b); }
  bool operator()(const KeyRef& a, const Entry* b) const { return Same(a, b->ref()); }
};

struct Shard {
  absl::Mutex mu;
  absl::flat_hash_set<Entry*, EntryHash, EntryEq> map ABSL_GUARDED_BY(mu);
  EntryList lru ABSL_GUARDED_BY(mu);     // indexed, unpinned (refs == 1), host tier; evictable
  EntryList in_use ABSL_GUARDED_BY(mu);  // indexed, pinned (refs > 1), any tier
  uint64_t lru_pages ABSL_GUARDED_BY(mu) = 0;  // pages of the entries in lru
  // Per GPU tier d: its unpinned entries (demotable, oldest first), their pages, and the
  // chunks resident there. Sized once by StoreImpl's constructor.
  std::unique_ptr<EntryList[]> gpu_lru ABSL_GUARDED_BY(mu);
  std::vector<uint64_t> gpu_lru_pages ABSL_GUARDED_BY(mu);
  std::vector<uint64_t> gpu_chunks ABSL_GUARDED_BY(mu);
  uint64_t chunks ABSL_GUARDED_BY(mu) = 0;
  uint64_t logical_bytes ABSL_GUARDED_BY(mu) = 0;
  uint64_t stored_bytes ABSL_GUARDED_BY(mu) = 0;
  uint64_t elements ABSL_GUARDED_BY(mu) = 0;
  uint64_t equivalent_bit_elements ABSL_GUARDED_BY(mu) = 0;
};

class StoreImpl final : public Store {
 public:
  // REQUIRES: options validated (Store::Create does it). `gpus` may be empty.
  StoreImpl(const StoreOptions& options, std::unique_ptr<memory::PagePool> pool,
            std::vector<std::unique_ptr<GpuTier>> gpus);
  ~StoreImpl() override;

  absl::StatusOr<ChunkInfo> Put(std::string_view ns, const ChunkKey& key,
                                const kernels::ChunkShape& shape,
                                const kernels::CodecConfig& config,
                                std::span<const uint8_t> payload) override;
  absl::StatusOr<ChunkInfo> Put(std::string_view ns, const ChunkKey& key,
                                const kernels::ChunkShape& shape,
                                const kernels::CodecConfig& config,
                                std::span<const uint8_t> payload,
                                const PutOptions& options) override;
  absl::StatusOr<ChunkInfo> Get(std::string_view ns, const ChunkKey& key,
                                const kernels::Slice& slice, kernels::DType out_dtype,
                                const OutputAllocator& alloc) override;
  uint64_t Lookup(std::string_view ns, std::span<const ChunkKey> chain) override;
  absl::StatusOr<ChunkInfo> Describe(std::string_view ns, const ChunkKey& key) override;
  absl::Status Delete(std::string_view ns, const ChunkKey& key) override;
  StoreStats Stats() const override;
  std::vector<NamespaceStats> PerNamespaceStats() const override;

  // For tests of checksum verification: flips one byte of pair section `pair` of a
  // host-tier chunk in place. NotFound; FailedPrecondition when the chunk is on a device;
  // InvalidArgument for a pair out of range.
  absl::Status CorruptSectionForTest(std::string_view ns, const ChunkKey& key, uint32_t pair);

#if KVSTASH_HAVE_CUDA
  // Device data paths (store_gpu.cc).
  absl::StatusOr<std::shared_ptr<const IpcMapping>> OpenIpcBuffer(
      std::string_view handle, std::string_view device_uuid) override;
  absl::StatusOr<ChunkInfo> PutDevice(std::string_view ns, const ChunkKey& key,
                                      const kernels::ChunkShape& shape,
                                      const kernels::CodecConfig& config,
                                      const DeviceTensor& in) override;
  absl::StatusOr<ChunkInfo> GetDevice(std::string_view ns, const ChunkKey& key,
                                      const kernels::Slice& slice, kernels::DType out_dtype,
                                      const DeviceTensor& out) override;
  void GetDeviceMany(std::string_view ns, std::span<const ChunkKey> keys,
                     const kernels::Slice& slice, std::span<const kernels::DType> out_dtypes,
                     std::span<const DeviceTensor> outs,
                     std::span<std::optional<absl::StatusOr<ChunkInfo>>> results) override;
  absl::StatusOr<std::shared_ptr<void>> RegisterHostMemory(void* data,
                                                           uint64_t bytes) override;
#endif

 private:
  // Holds a reader's reference to an entry; unpins on destruction.
  class Pin {
   public:
    Pin(StoreImpl* store, Entry* e) : store_(store), e_(e) {}
    Pin(const Pin&) = delete;
    Pin& operator=(const Pin&) = delete;
    ~Pin() {
      if (e_ != nullptr) store_->Unpin(e_);
    }
    const Entry* operator->() const { return e_; }
    Entry* get() const { return e_; }

   private:
    StoreImpl* const store_;
    Entry* const e_;
  };

  // The start of every Put: validates the namespace, shape, codec and device, and builds
  // the unpublished entry (key, hash, one page-aligned run per section). Sets *layout and
  // *num_pages; home is left -1.
  absl::StatusOr<std::unique_ptr<Entry>> NewEntry(std::string_view ns, const ChunkKey& key,
                                                  const kernels::ChunkShape& shape,
                                                  const kernels::CodecConfig& config,
                                                  kernels::ChunkLayout* layout,
                                                  uint64_t* num_pages) const;
  // The start of every Get: counts it, pins the entry (NotFound counts a miss) and resolves
  // the slice and output dtype against it.
  absl::StatusOr<Entry*> PinForRead(std::string_view ns, const ChunkKey& key);
  static absl::StatusOr<kernels::Slice> ResolveRead(const Entry& e, const kernels::Slice& slice,
                                                    kernels::DType out_dtype);
  // The dtype a read of pinned `e` decodes to: `requested`, or e's own when unspecified.
  static kernels::DType ReadDType(const Entry& e, kernels::DType requested) {
    return requested == kernels::DType::kUnspecified ? e.header.layout.shape.dtype : requested;
  }

  Shard& ShardFor(uint64_t hash) const { return shards_[ShardIndex(hash)]; }
  absl::Status ValidateNamespace(std::string_view ns) const;

  // Why the old chunk of a key being put was removed before the Put published (Publish
  // settles whether that was a replacement or an eviction).
  enum class SelfEviction { kNone, kCapacity, kQuota };

  // Takes `num_pages` pages, evicting least-recently-read unpinned chunks as needed.
  // ResourceExhausted (nothing evicted) when free plus evictable pages fall short.
  // Sets *evicted_self when the old chunk of `putting` was one of the victims.
  absl::StatusOr<memory::PageSpan> AllocateWithEviction(uint64_t num_pages,
                                                        const KeyRef& putting,
                                                        bool* evicted_self);
  // Removes the globally oldest unpinned entry from the index and returns it for the
  // caller to count and delete outside every lock; null when nothing is evictable.
  Entry* EvictOldest() ABSL_EXCLUSIVE_LOCKS_REQUIRED(alloc_mu_);
  // Charges the pages of `entry` (not yet charged) to its namespace, first evicting the
  // namespace's own least recently read unpinned chunks (any tier) while it would exceed
  // its quota. ResourceExhausted naming the namespace, quota and usage, with nothing
  // evicted, when even evicting all of them cannot make room. Sets *evicted_self
  // (kQuota) when the old chunk of the entry's key was one of the victims.
  absl::Status ChargeQuota(Entry* entry, uint64_t num_pages, SelfEviction* evicted_self);
  // As EvictOldest, among the unpinned entries of namespace `ns` in every tier.
  Entry* EvictOldestOf(NamespaceState* ns) ABSL_EXCLUSIVE_LOCKS_REQUIRED(ns->evict_mu);
  // Counts the eviction of a chunk of namespace `ns`: kQuota or kCapacity.
  void CountEviction(NamespaceState* ns, SelfEviction cause);

  // Pins the entry of `k` (refs++, moved to in_use), or null when absent.
  Entry* PinLocked(Shard& s, const KeyRef& k) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);
  // Drops one reference; returns the entry when that was the last one (the caller deletes
  // it after unlocking), else null. An indexed entry left unpinned becomes the newest.
  Entry* UnrefLocked(Shard& s, Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);
  // Takes an indexed entry out of the index and its list, dropping the index's reference.
  Entry* RemoveLocked(Shard& s, Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);
  void Unpin(Entry* e);

  // The tier-dependent list and page count an unpinned indexed entry lives in.
  static EntryList& LruOf(Shard& s, const Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
    return e->tier < 0 ? s.lru : s.gpu_lru[e->tier];
  }
  static uint64_t& LruPagesOf(Shard& s, const Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
    return e->tier < 0 ? s.lru_pages : s.gpu_lru_pages[e->tier];
  }
  // Adds a fresh entry (refs 0) to the index as the newest of its tier.
  void InsertLocked(Shard& s, Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);
  // Moves an indexed entry that has just become unpinned (refs 1) into its tier's LRU
  // list and its namespace's list of the shard, as the newest; and back out of both.
  void LinkEvictableLocked(Shard& s, Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);
  void UnlinkEvictableLocked(Shard& s, Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);
  uint32_t ShardIndex(uint64_t hash) const {
    return static_cast<uint32_t>((hash >> 40) & (options_.num_shards - 1));
  }
  // Parses the header of the encoded `chunk` into the entry with its info and bit counts.
  static absl::Status SetHeader(Entry* entry, const uint8_t* chunk, uint64_t chunk_bytes);
  // Publishes a filled entry, replacing any chunk of its key; settles `evicted_self`.
  ChunkInfo Publish(std::unique_ptr<Entry> entry, SelfEviction evicted_self);
  // Host tier: charges the namespace (unless the entry is charged already; then
  // `evicted_self` says what that charge evicted), allocates pages (evicting), copies the
  // whole encoded `chunk`, publishes. Parses and keeps the chunk's header (Internal if the
  // encoder wrote a bad one).
  absl::StatusOr<ChunkInfo> PutHost(std::unique_ptr<Entry> entry, uint64_t num_pages,
                                    const uint8_t* chunk, uint64_t chunk_bytes,
                                    SelfEviction evicted_self = SelfEviction::kNone);
  // Replaces `old` (pinned by the caller) with `fresh`, a copy of it in another tier, if
  // `old` is still the indexed chunk of its key; else deletes `fresh`. True if replaced.
  bool ReplaceIfIndexed(Entry* old, std::unique_ptr<Entry> fresh);
  // A new entry with old's key and metadata, no pages and no charge (ReplaceIfIndexed
  // moves old's charge to it).
  static std::unique_ptr<Entry> CloneMeta(const Entry& old);
  int HomeTier(std::string_view ns) const;

  // GPU paths (store_gpu.cc; CUDA builds only, reached only when gpus_ is non-empty).
  // Encodes on GPU tier t and keeps the chunk there, demoting others as needed; when the
  // device pool cannot take it, stores the GPU-encoded chunk in the host tier instead.
  // `encode` runs on the leased worker and returns the sealed chunk in its pinned memory.
  using GpuEncoder = std::function<absl::StatusOr<const uint8_t*>(GpuWorker&)>;
  absl::StatusOr<ChunkInfo> PutGpu(int t, std::unique_ptr<Entry> entry,
                                   const kernels::ChunkLayout& layout, uint64_t num_pages,
                                   const GpuEncoder& encode);
  absl::Status GetGpu(const Entry& e, const kernels::Slice& resolved, kernels::DType out_dtype,
                      uint8_t* out);
  // Takes `num_pages` pages of GPU tier t, demoting least-recently-read unpinned chunks of
  // that device to the host tier as needed. ResourceExhausted when even that cannot make
  // room (the caller falls back to the host tier).
  absl::StatusOr<memory::PageSpan> AllocateOnGpu(int t, uint64_t num_pages, GpuWorker* w);
  // Pins the oldest unpinned entry of GPU tier t across shards; null when none.
  Entry* PinOldestOnGpu(int t);
  // Moves pinned GPU entry `victim` to the host tier and unpins it; if the host tier cannot
  // take it the chunk is dropped (an eviction). Errors only for CUDA failures.
  absl::Status Demote(Entry* victim, GpuWorker* w);
  // After a host-tier read of pinned `e`: copies it to its home GPU when that pool has
  // free pages and a worker is idle. Best effort; never fails the read.
  void MaybePromote(Entry* e);
  void NoteGpuError(int t, const absl::Status& st);

  const StoreOptions options_;
  // Declared before pool_ and shards_: every entry holds a reference into it.
  const std::unique_ptr<NamespaceTable> namespaces_;
  const std::unique_ptr<memory::PagePool> pool_;
  const std::unique_ptr<Shard[]> shards_;
  const std::vector<std::unique_ptr<GpuTier>> gpus_;
  // Per GPU tier: serializes its demotion slow path, as alloc_mu_ does for the host tier.
  const std::unique_ptr<absl::Mutex[]> gpu_alloc_mu_;

  // Serializes the eviction slow path so that concurrent Puts under pressure do not
  // evict on each other's behalf more than needed.
  absl::Mutex alloc_mu_;
  // Logical clock for LRU order; advanced under a shard lock, so monotone within a shard.
  std::atomic<uint64_t> clock_{0};

  std::atomic<uint64_t> hits_{0};
  std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> evictions_{0};
  std::atomic<uint64_t> quota_evictions_{0};
  std::atomic<uint64_t> puts_{0};
  std::atomic<uint64_t> gets_{0};
  std::atomic<uint64_t> deletes_{0};
  std::atomic<uint64_t> demotions_{0};
  std::atomic<uint64_t> promotions_{0};
  std::atomic<uint64_t> gpu_fallbacks_{0};

#if KVSTASH_HAVE_CUDA
  // The host pool's cudaHostRegister (gpu_pin_host_pool), undone before pool_ is unmapped
  // (members are destroyed in reverse order). Null when not registered.
  std::shared_ptr<void> host_pool_registration_;
  // Open CUDA IPC mappings by handle bytes; entries of closed mappings are dropped lazily.
  absl::Mutex ipc_mu_;
  absl::flat_hash_map<std::string, std::weak_ptr<const IpcMapping>> ipc_ ABSL_GUARDED_BY(ipc_mu_);
#endif
};

}  // namespace kvstash::store::internal

#endif  // KVSTASH_SERVER_STORE_STORE_IMPL_H_
