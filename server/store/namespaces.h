// Per-namespace accounting of the store: what each namespace holds (chunks, bytes of pool
// pages charged to it, stored and logical bytes), its quota, its evictions, and the
// per-shard lists of its evictable chunks that own-quota eviction walks. Internal to
// kvstash_store; docs/store.md ("Namespaces and quotas") has the design.
//
// Thread-safe: NamespaceTable may be used from any thread (one mutex guards the table; the
// counters of a NamespaceState are relaxed atomics). NamespaceState::lru[i] is guarded by
// the store's shard i mutex. A NamespaceRef is thread-compatible.
#ifndef KVSTASH_SERVER_STORE_NAMESPACES_H_
#define KVSTASH_SERVER_STORE_NAMESPACES_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/store/store.h"

namespace kvstash::store::internal {

struct Entry;

// A namespace's indexed, unpinned chunks of one shard (both tiers), oldest first, linked
// through Entry::ns_prev / ns_next. Guarded by that shard's mutex.
struct NsLru {
  Entry* oldest = nullptr;
  Entry* newest = nullptr;
  uint64_t pages = 0;  // pages of the entries listed
};

struct NamespaceState {
  NamespaceState(std::string n, uint64_t quota, uint32_t num_shards)
      : name(std::move(n)), quota_bytes(quota), lru(new NsLru[num_shards]) {}

  const std::string name;
  const uint64_t quota_bytes;  // 0 = no limit
  // Bytes of pool pages charged to the namespace: the pages of its entries (indexed, or
  // removed and still pinned by a reader) in any tier, plus Puts' reservations in flight.
  std::atomic<uint64_t> charged_bytes{0};
  std::atomic<uint64_t> chunks{0};         // indexed chunks
  std::atomic<uint64_t> stored_bytes{0};   // their encoded bytes
  std::atomic<uint64_t> logical_bytes{0};  // their 16-bit payload bytes
  std::atomic<uint64_t> quota_evictions{0};
  std::atomic<uint64_t> capacity_evictions{0};
  // Serializes this namespace's own-quota evictions (as StoreImpl::alloc_mu_ does for
  // capacity), so concurrent Puts at the quota do not evict on each other's behalf.
  absl::Mutex evict_mu;
  // [num_shards]: lru[i] guarded by shard i's mutex.
  const std::unique_ptr<NsLru[]> lru;

  // Guarded by NamespaceTable::mu_.
  uint64_t refs = 0;      // NamespaceRefs (entries and Puts in flight) naming it
  uint64_t idle_seq = 0;  // when refs last dropped to 0
};

class NamespaceTable;

// A reference to one namespace's state, held by every entry and every Put in flight, with
// the bytes this holder has charged to the namespace; releases both on destruction.
// Move-only.
class NamespaceRef {
 public:
  NamespaceRef() = default;
  NamespaceRef(NamespaceRef&& other) noexcept
      : table_(std::exchange(other.table_, nullptr)),
        state_(std::exchange(other.state_, nullptr)),
        charged_(std::exchange(other.charged_, 0)) {}
  NamespaceRef& operator=(NamespaceRef&& other) noexcept;
  NamespaceRef(const NamespaceRef&) = delete;
  NamespaceRef& operator=(const NamespaceRef&) = delete;
  ~NamespaceRef() { Reset(); }

  NamespaceState* get() const { return state_; }
  NamespaceState* operator->() const { return state_; }
  explicit operator bool() const { return state_ != nullptr; }
  uint64_t charged_bytes() const { return charged_; }

  // Another reference to the same namespace, charging nothing.
  NamespaceRef Share() const;
  // Charges `bytes` if the namespace stays within its quota (always without one).
  bool TryCharge(uint64_t bytes);
  // Moves this holder's charge to `to` (same namespace): a chunk that changed tiers.
  void MoveChargeTo(NamespaceRef& to);
  // Drops the charge and the reference.
  void Reset();

 private:
  friend class NamespaceTable;
  NamespaceRef(NamespaceTable* table, NamespaceState* state) : table_(table), state_(state) {}

  NamespaceTable* table_ = nullptr;  // not owned; outlives every ref
  NamespaceState* state_ = nullptr;  // kept alive by this reference
  uint64_t charged_ = 0;
};

class NamespaceTable {
 public:
  // Namespaces that hold nothing keep their state (and eviction counts) until this many
  // more have become idle after them.
  static constexpr size_t kMaxIdle = 1024;

  // REQUIRES: the overrides' names are valid namespaces (Store::Create checks).
  NamespaceTable(uint32_t num_shards, uint64_t default_quota_bytes,
                 std::map<std::string, uint64_t> quota_overrides);
  // REQUIRES: every NamespaceRef has been destroyed.
  ~NamespaceTable() = default;
  NamespaceTable(const NamespaceTable&) = delete;
  NamespaceTable& operator=(const NamespaceTable&) = delete;

  // The configured quota of `ns` in bytes; 0 = none.
  uint64_t QuotaFor(std::string_view ns) const;
  // A reference to the state of `ns`, created on first use.
  NamespaceRef Acquire(std::string_view ns);
  // Every namespace that holds chunks or charged bytes, and up to kMaxIdle recently
  // emptied ones; by allocated bytes, largest first, then by name.
  std::vector<NamespaceStats> Snapshot() const;

 private:
  friend class NamespaceRef;
  void Release(NamespaceState* state);

  const uint32_t num_shards_;
  const uint64_t default_quota_;
  const std::map<std::string, uint64_t, std::less<>> overrides_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<NamespaceState>> map_ ABSL_GUARDED_BY(mu_);
  // Namespaces in the order they became idle, with the idle_seq of that event; a record is
  // stale when the namespace was used again since.
  std::deque<std::pair<NamespaceState*, uint64_t>> idle_ ABSL_GUARDED_BY(mu_);
  uint64_t idle_seq_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvstash::store::internal

#endif  // KVSTASH_SERVER_STORE_NAMESPACES_H_
