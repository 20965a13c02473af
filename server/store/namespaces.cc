#include "server/store/namespaces.h"

#include <algorithm>

namespace kvstash::store::internal {

// --- NamespaceRef -----------------------------------------------------------------------

NamespaceRef& NamespaceRef::operator=(NamespaceRef&& other) noexcept {
  if (this != &other) {
    Reset();
    table_ = std::exchange(other.table_, nullptr);
    state_ = std::exchange(other.state_, nullptr);
    charged_ = std::exchange(other.charged_, 0);
  }
  return *this;
}

NamespaceRef NamespaceRef::Share() const {
  {
    absl::MutexLock lock(&table_->mu_);
    ++state_->refs;
  }
  return NamespaceRef(table_, state_);
}

bool NamespaceRef::TryCharge(uint64_t bytes) {
  std::atomic<uint64_t>& used = state_->charged_bytes;
  if (state_->quota_bytes == 0) {
    used.fetch_add(bytes, std::memory_order_relaxed);
  } else {
    uint64_t cur = used.load(std::memory_order_relaxed);
    do {
      if (bytes > state_->quota_bytes || cur > state_->quota_bytes - bytes) return false;
    } while (!used.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed));
  }
  charged_ += bytes;
  return true;
}

void NamespaceRef::MoveChargeTo(NamespaceRef& to) {
  to.charged_ += std::exchange(charged_, 0);
}

void NamespaceRef::Reset() {
  if (state_ == nullptr) return;
  if (charged_ > 0) state_->charged_bytes.fetch_sub(charged_, std::memory_order_relaxed);
  charged_ = 0;
  table_->Release(std::exchange(state_, nullptr));
  table_ = nullptr;
}

// --- NamespaceTable ---------------------------------------------------------------------

NamespaceTable::NamespaceTable(uint32_t num_shards, uint64_t default_quota_bytes,
                               std::map<std::string, uint64_t> quota_overrides)
    : num_shards_(num_shards),
      default_quota_(default_quota_bytes),
      overrides_(quota_overrides.begin(), quota_overrides.end()) {}

uint64_t NamespaceTable::QuotaFor(std::string_view ns) const {
  if (auto it = overrides_.find(ns); it != overrides_.end()) return it->second;
  return default_quota_;
}

NamespaceRef NamespaceTable::Acquire(std::string_view ns) {
  absl::MutexLock lock(&mu_);
  auto it = map_.find(absl::string_view(ns.data(), ns.size()));
  if (it == map_.end()) {
    it = map_.emplace(std::string(ns), std::make_unique<NamespaceState>(
                                           std::string(ns), QuotaFor(ns), num_shards_))
             .first;
  }
  NamespaceState* state = it->second.get();
  ++state->refs;
  return NamespaceRef(this, state);
}

void NamespaceTable::Release(NamespaceState* state) {
  std::unique_ptr<NamespaceState> dead;  // destroyed after the lock is dropped
  absl::MutexLock lock(&mu_);
  if (--state->refs > 0) return;
  // Idle: nothing of it is stored any more. Keep its counters for a while (an operator
  // wants to see that a tenant was evicted away), but bound how many idle ones are kept,
  // since namespaces are names chosen by clients.
  state->idle_seq = ++idle_seq_;
  idle_.emplace_back(state, state->idle_seq);
  while (idle_.size() > kMaxIdle) {
    auto [old, seq] = idle_.front();
    idle_.pop_front();
    // Every older record of `old` was popped before this one, so a current record is its
    // last: once erased, no record names it.
    if (old->refs == 0 && old->idle_seq == seq) {
      auto node = map_.extract(old->name);
      dead = std::move(node.mapped());
      break;  // at most one per release keeps the critical section short
    }
  }
}

std::vector<NamespaceStats> NamespaceTable::Snapshot() const {
  std::vector<NamespaceStats> out;
  {
    absl::MutexLock lock(&mu_);
    out.reserve(map_.size());
    for (const auto& [name, s] : map_) {
      NamespaceStats n;
      n.name = name;
      n.chunks = s->chunks.load(std::memory_order_relaxed);
      n.allocated_bytes = s->charged_bytes.load(std::memory_order_relaxed);
      n.stored_bytes = s->stored_bytes.load(std::memory_order_relaxed);
      n.logical_bytes = s->logical_bytes.load(std::memory_order_relaxed);
      n.quota_evictions = s->quota_evictions.load(std::memory_order_relaxed);
      n.capacity_evictions = s->capacity_evictions.load(std::memory_order_relaxed);
      n.quota_bytes = s->quota_bytes;
      out.push_back(std::move(n));
    }
  }
  std::sort(out.begin(), out.end(), [](const NamespaceStats& a, const NamespaceStats& b) {
    if (a.allocated_bytes != b.allocated_bytes) return a.allocated_bytes > b.allocated_bytes;
    return a.name < b.name;
  });
  return out;
}

}  // namespace kvstash::store::internal
