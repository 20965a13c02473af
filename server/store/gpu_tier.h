// The GPU memory tier of one device: its page pool (server/memory/device_pool.h) and a
// small set of workers, each a CUDA stream with pinned staging buffers and grow-only device
// scratch, that run the copy/encode/decode orchestration of the store's GPU paths.
// Internal to kvstash_store, built only with KVSTASH_HAVE_CUDA; docs/store.md ("GPU tier")
// has the design.
//
// Thread-safety: GpuTier is thread-safe (Acquire hands each worker to one thread at a
// time; its mutex guards only the free list, and no CUDA call runs under it). A GpuWorker
// is used by the one thread holding its lease. No worker method takes a lock.
#ifndef KVSTASH_SERVER_STORE_GPU_TIER_H_
#define KVSTASH_SERVER_STORE_GPU_TIER_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/cuda_codec.h"
#include "kvstash/kernels/format.h"
#include "server/memory/device_pool.h"
#include "server/memory/page_pool.h"
#include "server/store/store.h"

namespace kvstash::store::internal {

// Number of CUDA devices this process can use; 0 when the runtime reports none or fails
// (no driver, no device). Never fails.
int VisibleCudaDevices();

struct GpuTierOptions {
  int device = 0;                  // CUDA ordinal
  uint64_t capacity_bytes = 0;     // device pool bytes; 0 = a quarter of free memory
  uint32_t page_bytes = 64 * 1024; // same as the host pool's, so tiers share page layouts
  uint32_t workers = 4;            // streams (and staging buffer pairs) per device
  uint64_t staging_bytes = 4 << 20;  // bytes of each of a worker's two pinned buffers
  // Threads that split host work (staging memcpys, restore checksums) with the calling
  // worker; 0 = min(7, hardware threads / 2). Shared by the device's workers. A memcpy
  // uses at most HostCopier::kMaxCopyParts of them. Default 0.
  uint32_t copy_threads = 0;
};

// Splits large host memcpys (and other host work, e.g. checksums) over a few threads.
// Moving 16-bit data between pageable and pinned staging memory is what bounds one request
// through the GPU (docs/store.md, "GPU tier"); one thread copies ~7-10 GB/s, several
// saturate memory bandwidth instead.
// Thread-safe: any number of callers may Copy, Run or Submit at once; tasks run in the
// order they were queued (first in, first out). The mutex guards only the task queue and
// the batches' counters; work runs outside it.
class HostCopier {
 public:
  // `threads` helpers besides the caller; 0 = everything runs on the caller.
  explicit HostCopier(uint32_t threads);
  ~HostCopier();
  HostCopier(const HostCopier&) = delete;
  HostCopier& operator=(const HostCopier&) = delete;

  // Tasks queued by one Submit; Wait returns when all of them ran.
  class Batch {
   public:
    Batch() = default;
    Batch(const Batch&) = delete;
    Batch& operator=(const Batch&) = delete;

   private:
    friend class HostCopier;
    int left = 0;  // guarded by the copier's mutex
  };

  // memcpy(dst, src, n), split into parts of at least kMinPart bytes when n is large.
  void Copy(uint8_t* dst, const uint8_t* src, uint64_t n);
  // Runs every task, on the helpers and the caller; returns when all are done.
  void Run(std::span<const std::function<void()>> tasks);
  // Queues `tasks` behind everything queued before. `tasks` and `batch` must stay alive
  // until Wait(batch) returns. REQUIRES: `batch` has no tasks outstanding.
  void Submit(std::span<const std::function<void()>> tasks, Batch* batch);
  // Runs queued tasks (anyone's) on the caller until every task of `batch` has run.
  void Wait(Batch* batch);

  static constexpr uint64_t kMinPart = 512 << 10;
  // A memcpy saturates memory bandwidth with this many threads; more only add overhead.
  static constexpr uint64_t kMaxCopyParts = 8;

 private:
  struct Task {
    const std::function<void()>* fn;
    Batch* batch;
  };
  void Loop();

  absl::Mutex mu_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// A contiguous run to copy between device memory and (pageable) host memory.
struct CopySegment {
  uint8_t* device = nullptr;
  uint8_t* host = nullptr;
  uint64_t bytes = 0;
};

// Move-only owner of a grow-only cudaMalloc'd or cudaHostAlloc'd buffer.
class CudaBuffer {
 public:
  enum class Kind { kDevice, kPinnedHost };
  explicit CudaBuffer(Kind kind) : kind_(kind) {}
  CudaBuffer(CudaBuffer&& o) noexcept;
  CudaBuffer& operator=(CudaBuffer&&) = delete;
  CudaBuffer(const CudaBuffer&) = delete;
  ~CudaBuffer() { Free(); }
  // Grows to at least `bytes` (contents are not kept). ResourceExhausted on failure.
  absl::Status Reserve(uint64_t bytes);
  uint8_t* data() const { return data_; }

 private:
  void Free();
  const Kind kind_;
  uint8_t* data_ = nullptr;
  uint64_t cap_ = 0;
};

// One CUDA stream with its pinned staging pair, events and scratch. Every method runs
// synchronously with respect to the caller unless it says otherwise, returns CUDA failures
// as CudaStatus (Internal with the error name; ResourceExhausted for allocation) and leaves
// the worker reusable after an error (a sticky device error excepted).
class GpuWorker {
 public:
  ~GpuWorker();
  GpuWorker(const GpuWorker&) = delete;
  GpuWorker& operator=(const GpuWorker&) = delete;

  int device() const { return device_; }

  // Copies host -> device through the pinned staging buffers (double-buffered). Returns
  // when the host memory may be reused; the device side completes in stream order.
  absl::Status CopyToDevice(std::span<const CopySegment> segments);
  // Copies device -> host through the staging buffers; returns when the host has the bytes.
  absl::Status CopyToHost(std::span<const CopySegment> segments);
  absl::Status Synchronize();

  // Encodes `payload` ([L][2][T][H][D], layout.shape.dtype) on the device: the sections stay
  // in this worker's device scratch, and the whole chunk, header and checksums sealed, is
  // returned in pinned host memory valid until the next Encode. InvalidArgument for NaN/Inf.
  absl::StatusOr<const uint8_t*> Encode(const kernels::ChunkLayout& layout,
                                        std::span<const uint8_t> payload);
  // Writes the last Encode's chunk into `dst` (device pages): the header run at offset 0 and
  // pair p's section at section_offset[p]. Synchronizes.
  absl::Status StoreEncoded(const kernels::ChunkLayout& layout,
                            std::span<const uint64_t> section_offset,
                            const memory::PageSpan& dst);

  // Decodes `resolved` of a device-resident chunk into host memory `out` (DecodedBytes):
  // sections whose device pages are contiguous (direct[p] != null) are read in place, the
  // others gathered device-to-device first. No checksum is verified here: the sections
  // were verified when they entered the device (docs/store.md).
  absl::Status Decode(const kernels::ParsedHeader& header, const memory::PageSpan& pages,
                      std::span<const uint64_t> section_offset,
                      std::span<const uint8_t* const> direct, const kernels::Slice& resolved,
                      kernels::DType out_dtype, uint8_t* out);

  // Encodes from memory on this worker's device: `in` contiguous, or paged (the kernels
  // gather the blocks). Returns as Encode; InvalidArgument for NaN/Inf naming the element
  // of the contiguous layout.
  absl::StatusOr<const uint8_t*> EncodeDevice(const kernels::ChunkLayout& layout,
                                              const DeviceTensor& in);

  // Where a chunk's sections are, for DecodeToDevice.
  struct Sections {
    const memory::PageSpan* pages = nullptr;
    std::span<const uint64_t> section_offset;
    std::span<const uint8_t* const> direct;  // device tier only: pair p in place, or null
    int device = -1;                         // CUDA ordinal of the pages; -1 = host pool
    bool host_registered = false;            // host pool pages are cudaHostRegister'ed
  };
  // Decodes `resolved` into device memory `out` of this worker's device (contiguous, or
  // scattered into a paged cache by the kernels). Sections on this device are read in
  // place (split ones gathered first); those of another device are copied peer to peer;
  // those of the host pool are checksum-verified and copied (compressed) to the device,
  // straight from the pages when host_registered. DataLoss for a corrupt host section.
  // Synchronizes: `out` holds the slice when this returns OK.
  absl::Status DecodeToDevice(const kernels::ParsedHeader& header, const Sections& src,
                              const kernels::Slice& resolved, kernels::DType out_dtype,
                              const DeviceTensor& out);

  // One chunk of a batched host-tier restore (DecodeManyToDevice).
  struct HostRestore {
    const kernels::ParsedHeader* header = nullptr;
    std::span<const uint64_t> section_offset;
    // Pair section PairsForSlice(resolved).first in the registered host pool; the sections
    // up to .last follow it in the same run of adjacent pages, at their section offsets.
    const uint8_t* run = nullptr;
    uint8_t* out = nullptr;  // contiguous [l1-l0][2][T][h1-h0][D] output on this device
    // Instead of `out`: a paged window on this device (DeviceTensor, paged), whose counts
    // the caller checked as GetDevice does. Not owned; must outlive the call.
    const DeviceTensor* paged = nullptr;
  };
  // Restores host-tier chunks of one layout into device memory, each with the slice
  // `resolved` in `out_dtype`. The chunks' section runs go H2D in key order, one DMA each,
  // alternating between this worker's two copy streams, while the copy threads verify
  // their checksums in chunk order; each group of kChunksPerLaunch chunks, once verified,
  // is decoded on a third stream behind the copies it reads (an event of each copy
  // stream): chunks with adjacent contiguous outputs in one launch (num_chunks), each
  // chunk with a paged output in a launch of its own (a PagedView takes one chunk).
  // Sets status[i] to OK, or to DataLoss when chunk i's sections fail their checksums
  // (nothing of it is written). A CUDA failure is returned for the whole batch (statuses
  // then unspecified). Synchronizes: every copy and decode is complete when this returns,
  // errors included, so the caller may unpin the chunks then.
  // REQUIRES: status.size() == chunks.size(); every header has the same layout.
  absl::Status DecodeManyToDevice(std::span<const HostRestore> chunks,
                                  const kernels::Slice& resolved, kernels::DType out_dtype,
                                  std::span<absl::Status> status);
  // Chunks per decode launch of DecodeManyToDevice. Smaller groups start decoding sooner
  // behind the DMA (the last group's decode is what the restore waits for after its last
  // copy); larger ones launch less often.
  static constexpr size_t kChunksPerLaunch = 4;
  // The store splits a larger restore into calls of at most this many section bytes (the
  // worker's device scratch holds one call's sections).
  static constexpr uint64_t kMaxRestoreBytes = 256ull << 20;

  // Copies every page of `device_span` to the page of the same index of `host_span`
  // (demotion), or the other way (promotion). Synchronizes.
  // REQUIRES: the spans have the same number of pages of the same size.
  absl::Status CopyPagesToHost(const memory::PageSpan& device_span,
                               const memory::PageSpan& host_span);
  absl::Status CopyPagesToDevice(const memory::PageSpan& host_span,
                                 const memory::PageSpan& device_span);

 private:
  friend class GpuTier;
  GpuWorker(int device, uint64_t staging_bytes, HostCopier* copier);
  absl::Status Init();
  // Device-to-device copies of [offset, offset + n) of device span `src` into `dst`.
  absl::Status GatherFromSpan(const memory::PageSpan& src, uint64_t offset, uint64_t n,
                              uint8_t* dst);
  absl::Status ScatterToSpan(const uint8_t* src, cudaMemcpyKind kind,
                             const memory::PageSpan& dst, uint64_t offset, uint64_t n);
  // Makes the pair sections of `range` readable on this device and fills the host pointer
  // table (h_ptrs_[0, num_pairs)); see DecodeToDevice for the sources.
  absl::Status StageSections(const kernels::ParsedHeader& header, const Sections& src,
                             const kernels::PairRange& range);
  // Copies h_ptrs_'s section table, then (when `paged`) its planes and block ids, to the
  // device; returns DecodeParams with sections (and paged) pointing at the copies.
  absl::StatusOr<kernels::cuda::DecodeParams> UploadTables(const kernels::ChunkLayout& layout,
                                                           const DeviceTensor* paged);

  const int device_;
  const uint64_t staging_bytes_;
  HostCopier* const copier_;  // the tier's; outlives the worker
  cudaStream_t stream_ = nullptr;
  cudaEvent_t events_[2] = {nullptr, nullptr};
  // DecodeManyToDevice, created on its first call: the second copy stream (the first is
  // stream_) and the decode stream.
  cudaStream_t copy_stream_ = nullptr;
  cudaStream_t decode_stream_ = nullptr;
  // DecodeManyToDevice: 2g + k is behind group g's copies on copy stream k.
  std::vector<cudaEvent_t> group_events_;
  CudaBuffer staging_[2] = {CudaBuffer(CudaBuffer::Kind::kPinnedHost),
                            CudaBuffer(CudaBuffer::Kind::kPinnedHost)};
  CudaBuffer d_in_{CudaBuffer::Kind::kDevice};       // Put: the 16-bit payload
  CudaBuffer d_chunk_{CudaBuffer::Kind::kDevice};    // Put: the encoded chunk
  CudaBuffer d_flag_{CudaBuffer::Kind::kDevice};     // Put: first bad element
  CudaBuffer h_chunk_{CudaBuffer::Kind::kPinnedHost};  // Put: the sealed chunk on host
  CudaBuffer d_gather_{CudaBuffer::Kind::kDevice};   // Get: split sections made contiguous
  CudaBuffer d_out_{CudaBuffer::Kind::kDevice};      // Get: decoded slice
  CudaBuffer d_ptrs_{CudaBuffer::Kind::kDevice};     // section pointers, paged tables
  CudaBuffer h_ptrs_{CudaBuffer::Kind::kPinnedHost};
  int64_t last_verify_us_ = 0;  // the last restore's checksum time (trace logging)
};

class GpuTier {
 public:
  // Creates the device pool and the workers. Errors as CudaStatus / DevicePool::Create.
  static absl::StatusOr<std::unique_ptr<GpuTier>> Create(const GpuTierOptions& options);
  // REQUIRES: no lease outstanding and every span of pages() released.
  ~GpuTier();
  GpuTier(const GpuTier&) = delete;
  GpuTier& operator=(const GpuTier&) = delete;

  // RAII: holds one worker; returns it on destruction. Move-only.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& o) noexcept : tier_(std::exchange(o.tier_, nullptr)), w_(o.w_) {}
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    ~Lease() {
      if (tier_ != nullptr) tier_->Release(w_);
    }
    explicit operator bool() const { return tier_ != nullptr; }
    GpuWorker* operator->() const { return w_; }

   private:
    friend class GpuTier;
    Lease(GpuTier* tier, GpuWorker* w) : tier_(tier), w_(w) {}
    GpuTier* tier_ = nullptr;
    GpuWorker* w_ = nullptr;
  };
  // Blocks until a worker is free. The worker's device is made current on this thread.
  Lease Acquire();
  // An empty lease when every worker is busy.
  Lease TryAcquire();

  int device() const { return device_; }
  const std::string& name() const { return name_; }
  const std::string& uuid() const { return uuid_; }  // 16 bytes, cudaDeviceProp::uuid
  memory::PagePool& pages() const { return pool_->pages(); }

  // A device that failed with a CUDA error other than an allocation failure takes no new
  // chunks (Puts go to the host tier); reads of chunks already on it are still tried.
  bool healthy() const { return !failed_.load(std::memory_order_relaxed); }
  void MarkFailed(const absl::Status& why);

 private:
  GpuTier(int device, std::string name, std::string uuid,
          std::unique_ptr<memory::DevicePool> pool)
      : device_(device), name_(std::move(name)), uuid_(std::move(uuid)), pool_(std::move(pool)) {}
  void Release(GpuWorker* w);

  const int device_;
  const std::string name_;
  const std::string uuid_;
  std::unique_ptr<memory::DevicePool> pool_;
  std::unique_ptr<HostCopier> copier_;               // used by workers_; destroyed after them
  std::vector<std::unique_ptr<GpuWorker>> workers_;  // fixed after Create
  std::atomic<bool> failed_{false};

  absl::Mutex mu_;
  std::vector<GpuWorker*> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvstash::store::internal

#endif  // KVSTASH_SERVER_STORE_GPU_TIER_H_
