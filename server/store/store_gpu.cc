// The store's GPU paths: Put and Get on a device tier, demotion GPU -> host under device
// pressure and promotion host -> GPU after a read. Built only with KVSTASH_HAVE_CUDA; the
// CUDA work itself is in gpu_tier.cc. docs/store.md ("GPU tier") has the design.
//
// Locks are never held across a worker call: entries are pinned under their shard lock,
// copied or decoded unlocked, and swapped for their copy in another tier under the lock.
#include <cuda.h>
#include <xxhash.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "kvstash/kernels/xxh3.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "kvstash/kernels/cuda_status.h"
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
      kernels::Xxh3Update(state, e.pages.page(off / pb) + off % pb, take);
      off += take;
      left -= take;
    }
    ok = XXH3_64bits_digest(state) == e.header.section_checksums[p];
  }
  XXH3_freeState(state);
  return ok;
}

// An IPC mapping: cudaIpcCloseMemHandle on its device when the last reference goes.
class OpenedIpc final : public IpcMapping {
 public:
  OpenedIpc(int device) : device_(device) {}
  ~OpenedIpc() override {
    if (data == nullptr) return;
    int current = 0;
    cudaGetDevice(&current);
    cudaSetDevice(device_);
    if (cudaIpcCloseMemHandle(data) != cudaSuccess) cudaGetLastError();
    cudaSetDevice(current);
  }

 private:
  const int device_;
};

// Size of the allocation that starts at device pointer `p` (cuMemGetAddressRange through
// the runtime's driver entry point: no link against libcuda). 0 when it cannot be told.
uint64_t AllocationBytes(void* p, uint8_t** base) {
  using Fn = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
  static Fn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<Fn>(nullptr);
    }
    return reinterpret_cast<Fn>(f);
  }();
  if (fn == nullptr) return 0;
  CUdeviceptr b = 0;
  size_t n = 0;
  if (fn(&b, &n, reinterpret_cast<CUdeviceptr>(p)) != CUDA_SUCCESS) return 0;
  *base = reinterpret_cast<uint8_t*>(b);
  return n;
}

// Whether `out` can take `resolved` of a chunk of `shape` (GetDevice's checks of what the
// rpc layer cannot know): a contiguous output's capacity, a paged window's head geometry
// and plane and block-id counts.
absl::Status CheckDeviceOutput(const kernels::ChunkShape& shape, const kernels::Slice& resolved,
                               const DeviceTensor& out) {
  if (!out.paged()) {
    const uint64_t bytes = kernels::DecodedBytes(shape, resolved);
    if (bytes > out.capacity) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "store: the slice is ", bytes, " bytes, the output holds ", out.capacity));
    }
    return absl::OkStatus();
  }
  const uint64_t slots = uint64_t{out.first_slot} + shape.num_tokens;
  const uint32_t ls = resolved.layer_end - resolved.layer_begin;
  const uint32_t hs = resolved.head_end - resolved.head_begin;
  if (out.heads != hs || out.head_dim != shape.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("paged output: ", out.heads, " heads of ",
                                                   out.head_dim, ", the slice has ", hs, " of ",
                                                   shape.head_dim));
  }
  if (out.planes.size() != 2ull * ls || out.block_size == 0 ||
      out.block_ids.size() != (slots + out.block_size - 1) / out.block_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "paged output: ", out.planes.size(), " planes and ", out.block_ids.size(),
        " block ids do not fit ", ls, " layers of ", shape.num_tokens, " tokens in blocks of ",
        out.block_size));
  }
  return absl::OkStatus();
}

std::string Hex(std::string_view bytes) {
  return absl::BytesToHexString(absl::string_view(bytes.data(), bytes.size()));
}

}  // namespace

// --- Device data paths ------------------------------------------------------------------

absl::StatusOr<std::shared_ptr<void>> StoreImpl::RegisterHostMemory(void* data, uint64_t bytes) {
  if (gpus_.empty() || bytes == 0) return std::shared_ptr<void>();
  // Portable: the registration is visible to every device's context.
  if (cudaError_t err = cudaHostRegister(data, bytes, cudaHostRegisterPortable);
      err != cudaSuccess) {
    cudaGetLastError();
    return kernels::cuda::CudaStatus(err, absl::StrCat("cudaHostRegister of ", bytes, " bytes"));
  }
  return std::shared_ptr<void>(data, [](void* p) {
    if (cudaHostUnregister(p) != cudaSuccess) cudaGetLastError();
  });
}

absl::StatusOr<std::shared_ptr<const IpcMapping>> StoreImpl::OpenIpcBuffer(
    std::string_view handle, std::string_view device_uuid) {
  if (gpus_.empty()) return absl::FailedPreconditionError("cuda_ipc: this daemon has no GPU tier");
  if (handle.size() != sizeof(cudaIpcMemHandle_t)) {
    return absl::InvalidArgumentError(absl::StrCat("cuda_ipc.handle: ", handle.size(),
                                                   " bytes, a cudaIpcMemHandle_t has ",
                                                   sizeof(cudaIpcMemHandle_t)));
  }
  if (device_uuid.size() != 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda_ipc.device_uuid: ", device_uuid.size(), " bytes, expected 16"));
  }
  int t = -1;
  for (size_t i = 0; i < gpus_.size(); ++i) {
    if (gpus_[i]->uuid() == device_uuid) t = static_cast<int>(i);
  }
  if (t < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda_ipc.device_uuid: ", Hex(device_uuid),
        " is not a device this daemon uses (see its gpu_devices); no GPU tier can map it"));
  }
  const std::string key(handle);
  absl::MutexLock lock(&ipc_mu_);  // opening is rare; one at a time keeps the cache simple
  if (auto it = ipc_.find(key); it != ipc_.end()) {
    if (std::shared_ptr<const IpcMapping> live = it->second.lock()) return live;
    ipc_.erase(it);
  }
  const int device = gpus_[t]->device();
  cudaSetDevice(device);
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle.data(), sizeof(h));
  void* p = nullptr;
  if (cudaError_t err = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
      err != cudaSuccess) {
    cudaGetLastError();
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda_ipc.handle: the driver cannot open it on device ", device, " (",
        cudaGetErrorName(err), ": ", cudaGetErrorString(err),
        "); it must come from cudaIpcGetMemHandle in another live process on this node"));
  }
  auto mapping = std::make_shared<OpenedIpc>(device);
  mapping->tier = t;
  mapping->data = static_cast<uint8_t*>(p);
  uint8_t* base = nullptr;
  mapping->size = AllocationBytes(p, &base);
  if (mapping->size == 0 || base != mapping->data) {
    return absl::InternalError("cuda_ipc: cannot tell the size of the shared allocation");
  }
  ipc_[key] = mapping;
  // Drop cache entries of mappings closed since (the map stays as small as the live set).
  absl::erase_if(ipc_, [](const auto& kv) { return kv.second.expired(); });
  return std::shared_ptr<const IpcMapping>(std::move(mapping));
}

absl::StatusOr<ChunkInfo> StoreImpl::PutDevice(std::string_view ns, const ChunkKey& key,
                                               const kernels::ChunkShape& shape,
                                               const kernels::CodecConfig& config,
                                               const DeviceTensor& in) {
  if (gpus_.empty()) return absl::FailedPreconditionError("cuda_ipc: this daemon has no GPU tier");
  kernels::ChunkLayout layout;
  uint64_t num_pages = 0;
  absl::StatusOr<std::unique_ptr<Entry>> entry =
      NewEntry(ns, key, shape, config, &layout, &num_pages);
  if (!entry.ok()) return entry.status();
  if (in.tier < 0 || in.tier >= static_cast<int>(gpus_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("device tier ", in.tier, " is out of range"));
  }
  if (in.paged()) {
    const uint64_t slots = uint64_t{in.first_slot} + shape.num_tokens;
    if (in.heads != shape.num_heads || in.head_dim != shape.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "paged input: ", in.heads, " heads of ", in.head_dim, ", the chunk has ",
          shape.num_heads, " of ", shape.head_dim));
    }
    if (in.planes.size() != 2ull * shape.num_layers || in.block_size == 0 ||
        in.block_ids.size() != (slots + in.block_size - 1) / in.block_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "paged input: ", in.planes.size(), " planes and ", in.block_ids.size(),
          " block ids do not fit ", shape.num_layers, " layers of ", shape.num_tokens,
          " tokens in blocks of ", in.block_size));
    }
  }
  if (!gpus_[in.tier]->healthy()) {
    return absl::UnavailableError(absl::StrCat("gpu tier ", in.tier,
                                               " failed earlier and takes no new chunks"));
  }
  (*entry)->home = in.tier;
  return PutGpu(in.tier, *std::move(entry), layout, num_pages,
                [&](GpuWorker& w) { return w.EncodeDevice(layout, in); });
}

absl::StatusOr<ChunkInfo> StoreImpl::GetDevice(std::string_view ns, const ChunkKey& key,
                                               const kernels::Slice& slice,
                                               kernels::DType requested,
                                               const DeviceTensor& out) {
  if (gpus_.empty()) return absl::FailedPreconditionError("cuda_ipc: this daemon has no GPU tier");
  if (out.tier < 0 || out.tier >= static_cast<int>(gpus_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("device tier ", out.tier, " is out of range"));
  }
  absl::StatusOr<Entry*> pinned = PinForRead(ns, key);
  if (!pinned.ok()) return pinned.status();
  Pin pin(this, *pinned);
  const kernels::DType out_dtype = ReadDType(*pin.get(), requested);
  absl::StatusOr<kernels::Slice> resolved = ResolveRead(*pin.get(), slice, out_dtype);
  if (!resolved.ok()) return resolved.status();
  if (auto st = CheckDeviceOutput(pin->header.layout.shape, *resolved, out); !st.ok()) {
    return st;
  }
  GpuWorker::Sections src;
  src.pages = &pin->pages;
  src.section_offset = pin->section_offset;
  src.direct = pin->direct;
  src.device = pin->tier >= 0 ? gpus_[pin->tier]->device() : -1;
  src.host_registered = host_pool_registration_ != nullptr;
  GpuTier::Lease w = gpus_[out.tier]->Acquire();
  if (auto st = w->DecodeToDevice(pin->header, src, *resolved, out_dtype, out); !st.ok()) {
    if (!absl::IsDataLoss(st)) NoteGpuError(out.tier, st);
    return st;
  }
  if (options_.gpu_promote_on_read) MaybePromote(pin.get());
  return pin->info;
}

void StoreImpl::GetDeviceMany(std::string_view ns, std::span<const ChunkKey> keys,
                              const kernels::Slice& slice,
                              std::span<const kernels::DType> out_dtypes,
                              std::span<const DeviceTensor> outs,
                              std::span<std::optional<absl::StatusOr<ChunkInfo>>> results) {
  // Batches the host-tier restore of compressed chunks only: a device-tier chunk decodes
  // in place in tens of microseconds. One key gains nothing.
  if (gpus_.empty() || host_pool_registration_ == nullptr || keys.size() < 2) return;
  // Candidates: pinned host-tier chunks whose slice sections lie in one run of registered
  // pages, with an output that takes the slice (a contiguous one that fits, or a paged
  // window of the slice's geometry: those decode one chunk per launch). The first fixes
  // the geometry, dtype and device of the batch; keys that differ, or whose output
  // GetDevice would refuse, are left to GetDevice.
  struct Candidate {
    size_t index;
    Entry* entry;
  };
  std::vector<Candidate> batch;
  std::vector<Entry*> pinned_entries;  // unpinned when the batch is complete
  kernels::Slice resolved{};
  kernels::DType dtype = kernels::DType::kF16;
  int tier = -1;
  for (size_t i = 0; i < keys.size(); ++i) {
    const DeviceTensor& out = outs[i];
    if (out.tier < 0 || out.tier >= static_cast<int>(gpus_.size())) continue;
    if (tier >= 0 && out.tier != tier) continue;
    absl::StatusOr<Entry*> pinned = PinForRead(ns, keys[i]);
    if (!pinned.ok()) {
      results[i] = pinned.status();  // as GetDevice: NotFound, or a bad namespace
      continue;
    }
    Entry* e = *pinned;
    const kernels::DType want = ReadDType(*e, out_dtypes[i]);  // of the pinned version
    absl::StatusOr<kernels::Slice> r = ResolveRead(*e, slice, want);
    // Raw (fp16-preset) chunks are left out: they have nothing to decode, and their
    // 32 MiB-per-chunk copies ran faster on concurrent per-key streams than as one
    // batch's single copy stream (docs/store.md, "Device I/O").
    bool take = r.ok() && e->tier < 0 && !e->header.layout.config.raw &&
                (batch.empty() || want == dtype);
    if (take && !batch.empty()) {
      const kernels::ChunkLayout& first = batch[0].entry->header.layout;
      take = e->header.layout.shape == first.shape && e->header.layout.config == first.config;
    }
    if (take) {
      const kernels::PairRange range = kernels::PairsForSlice(*r);
      for (uint32_t p = range.first; take && p <= range.last; ++p) {
        take = e->direct[p] != nullptr &&
               e->direct[p] == e->direct[range.first] +
                                   (e->section_offset[p] - e->section_offset[range.first]);
      }
      take = take && CheckDeviceOutput(e->header.layout.shape, *r, out).ok();
    }
    if (!take) {
      // GetDevice reads it (and reports its errors) as it always did, and counts it then.
      gets_.fetch_sub(1, std::memory_order_relaxed);
      hits_.fetch_sub(1, std::memory_order_relaxed);
      Unpin(e);
      continue;
    }
    if (batch.empty()) {
      resolved = *r;
      dtype = want;
      tier = out.tier;
    }
    batch.push_back({i, e});
    pinned_entries.push_back(e);
  }
  if (batch.size() < 2) {  // left to GetDevice, uncounted as above
    gets_.fetch_sub(batch.size(), std::memory_order_relaxed);
    hits_.fetch_sub(batch.size(), std::memory_order_relaxed);
    for (Entry* e : pinned_entries) Unpin(e);
    return;
  }
  const kernels::PairRange range = kernels::PairsForSlice(resolved);
  std::vector<GpuWorker::HostRestore> chunks(batch.size());
  for (size_t j = 0; j < batch.size(); ++j) {
    const Entry& e = *batch[j].entry;
    chunks[j].header = &e.header;
    chunks[j].section_offset = e.section_offset;
    chunks[j].run = e.direct[range.first];
    const DeviceTensor& out = outs[batch[j].index];
    chunks[j].out = out.data;
    chunks[j].paged = out.paged() ? &out : nullptr;
  }
  std::vector<absl::Status> status(batch.size());
  std::vector<absl::Status> failed(batch.size());  // a CUDA failure of the call holding j
  {
    GpuTier::Lease w = gpus_[tier]->Acquire();
    // Calls of at most kMaxRestoreBytes of sections (bounds the worker's scratch).
    for (size_t b = 0; b < batch.size();) {
      size_t e = b;
      uint64_t bytes = 0;
      while (e < batch.size()) {
        const Entry& x = *batch[e].entry;
        const uint64_t run = x.section_offset[range.last] +
                             x.header.layout.pairs[range.last].bytes -
                             x.section_offset[range.first];
        if (e > b && bytes + run > GpuWorker::kMaxRestoreBytes) break;
        bytes += run;
        ++e;
      }
      const absl::Status st = w->DecodeManyToDevice(
          std::span(chunks).subspan(b, e - b), resolved, dtype,
          std::span(status).subspan(b, e - b));
      if (!st.ok()) {
        NoteGpuError(tier, st);
        for (size_t j = b; j < e; ++j) failed[j] = st;
      }
      b = e;
    }
  }
  for (size_t j = 0; j < batch.size(); ++j) {
    const absl::Status& s = failed[j].ok() ? status[j] : failed[j];
    if (s.ok()) {
      if (options_.gpu_promote_on_read) MaybePromote(batch[j].entry);
      results[batch[j].index] = batch[j].entry->info;
    } else {
      results[batch[j].index] = s;
    }
  }
  // The worker synchronized: no copy reads these pages any more.
  for (Entry* e : pinned_entries) Unpin(e);
}

void StoreImpl::NoteGpuError(int t, const absl::Status& st) {
  // Allocation failures (ResourceExhausted) and bad input (InvalidArgument) leave the
  // device usable; anything else is a CUDA failure that may be sticky.
  if (absl::IsInternal(st)) gpus_[t]->MarkFailed(st);
}

absl::StatusOr<ChunkInfo> StoreImpl::PutGpu(int t, std::unique_ptr<Entry> entry,
                                            const kernels::ChunkLayout& layout,
                                            uint64_t num_pages, const GpuEncoder& encode) {
  GpuTier& tier = *gpus_[t];
  GpuTier::Lease w = tier.Acquire();  // held to the end: the encoded chunk lives in it
  absl::StatusOr<const uint8_t*> chunk = encode(*w.operator->());
  if (!chunk.ok()) {
    NoteGpuError(t, chunk.status());
    return chunk.status();
  }
  if (auto st = SetHeader(entry.get(), *chunk, layout.total_bytes); !st.ok()) return st;
  // The namespace's quota covers both tiers: charge it once, before either allocates.
  SelfEviction evicted_self = SelfEviction::kNone;
  if (auto st = ChargeQuota(entry.get(), num_pages, &evicted_self); !st.ok()) return st;

  absl::StatusOr<memory::PageSpan> pages = AllocateOnGpu(t, num_pages, w.operator->());
  if (!pages.ok()) {
    if (!absl::IsResourceExhausted(pages.status())) {
      NoteGpuError(t, pages.status());
      return pages.status();
    }
    // The device pool cannot take it (too large, or the rest is pinned by reads): keep the
    // GPU-encoded chunk in the host tier.
    gpu_fallbacks_.fetch_add(1, std::memory_order_relaxed);
    return PutHost(std::move(entry), num_pages, *chunk, layout.total_bytes, evicted_self);
  }
  entry->tier = t;
  entry->pages = *std::move(pages);
  if (auto st = w->StoreEncoded(layout, entry->section_offset, entry->pages); !st.ok()) {
    NoteGpuError(t, st);
    return st;
  }
  SetDirect(entry.get());
  return Publish(std::move(entry), evicted_self);
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
    UnlinkEvictableLocked(*best, victim);
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
  if (evicted_self) CountEviction(victim->nsref.get(), SelfEviction::kCapacity);
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
    if (removed) CountEviction(victim->nsref.get(), SelfEviction::kCapacity);
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
