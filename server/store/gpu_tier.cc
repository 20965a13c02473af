#include "server/store/gpu_tier.h"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kvstash/kernels/cuda_chunk.h"
#include "kvstash/kernels/cuda_codec.h"
#include "kvstash/kernels/cuda_status.h"
#include "kvstash/kernels/xxh3.h"
#include "spdlog/spdlog.h"

namespace kvstash::store::internal {
namespace {

// Calls fn(address, offset_in_range, length) for each maximal run of adjacent pages that
// holds [offset, offset + n) of `span`. Page addresses are plain arithmetic, so this works
// for device spans too.
template <class Fn>
void ForEachRun(const memory::PageSpan& span, uint64_t offset, uint64_t n, Fn&& fn) {
  if (n == 0) return;
  const uint64_t pb = span.bytes() / std::max<size_t>(span.num_pages(), 1);
  uint64_t done = 0;
  while (done < n) {
    const uint64_t o = offset + done;
    size_t page = o / pb;
    uint64_t len = std::min(n - done, pb - o % pb);
    uint8_t* start = span.page(page) + o % pb;
    while (done + len < n && span.page_id(page + 1) == span.page_id(page) + 1) {
      ++page;
      len += std::min(n - done - len, pb);
    }
    fn(start, done, len);
    done += len;
  }
}

// Whether `p` is host memory registered with (or allocated by) the CUDA driver, so a
// cudaMemcpyAsync from or to it is a DMA with no staging.
bool IsPinnedHost(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeHost;
}

}  // namespace

int VisibleCudaDevices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear it: no driver or no device is not an error for us
    return 0;
  }
  return n;
}

// --- CudaBuffer -------------------------------------------------------------------------

CudaBuffer::CudaBuffer(CudaBuffer&& o) noexcept
    : kind_(o.kind_), data_(std::exchange(o.data_, nullptr)), cap_(std::exchange(o.cap_, 0)) {}

absl::Status CudaBuffer::Reserve(uint64_t bytes) {
  if (bytes <= cap_) return absl::OkStatus();
  Free();
  const uint64_t want = std::max<uint64_t>((bytes + 255) / 256 * 256, 256);
  void* p = nullptr;
  const cudaError_t err = kind_ == Kind::kDevice ? cudaMalloc(&p, want)
                                                 : cudaHostAlloc(&p, want, cudaHostAllocDefault);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return kernels::cuda::CudaStatus(
        err, absl::StrCat(kind_ == Kind::kDevice ? "gpu tier: cudaMalloc of "
                                                 : "gpu tier: cudaHostAlloc of ",
                          want, " bytes"));
  }
  data_ = static_cast<uint8_t*>(p);
  cap_ = want;
  return absl::OkStatus();
}

void CudaBuffer::Free() {
  if (data_ == nullptr) return;
  if (kind_ == Kind::kDevice) {
    cudaFree(data_);
  } else {
    cudaFreeHost(data_);
  }
  data_ = nullptr;
  cap_ = 0;
}

// --- HostCopier -------------------------------------------------------------------------

HostCopier::HostCopier(uint32_t threads) {
  for (uint32_t i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

HostCopier::~HostCopier() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void HostCopier::Loop() {
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.Await(absl::Condition(
        +[](HostCopier* c) ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->stop_ || !c->queue_.empty(); },
        this));
    if (queue_.empty()) return;  // stopping
    const Task t = queue_.front();
    queue_.pop_front();
    mu_.Unlock();
    (*t.fn)();
    mu_.Lock();
    --t.batch->left;
  }
}

void HostCopier::Submit(std::span<const std::function<void()>> tasks, Batch* batch) {
  absl::MutexLock lock(&mu_);
  batch->left += static_cast<int>(tasks.size());
  for (const auto& fn : tasks) queue_.push_back(Task{&fn, batch});
}

void HostCopier::Wait(Batch* batch) {
  absl::MutexLock lock(&mu_);
  for (;;) {
    struct Args {
      HostCopier* c;
      Batch* b;
    } args{this, batch};
    mu_.Await(absl::Condition(
        +[](Args* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return a->b->left == 0 || !a->c->queue_.empty();
        },
        &args));
    if (batch->left == 0) return;
    const Task t = queue_.front();
    queue_.pop_front();
    mu_.Unlock();
    (*t.fn)();
    mu_.Lock();
    --t.batch->left;
  }
}

void HostCopier::Run(std::span<const std::function<void()>> tasks) {
  if (tasks.empty()) return;
  if (threads_.empty() || tasks.size() == 1) {
    for (const auto& fn : tasks) fn();
    return;
  }
  Batch batch;
  Submit(tasks, &batch);
  Wait(&batch);
}

void HostCopier::Copy(uint8_t* dst, const uint8_t* src, uint64_t n) {
  const uint64_t parts = std::min<uint64_t>(std::min<uint64_t>(threads_.size() + 1, kMaxCopyParts),
                                            std::max<uint64_t>(n / kMinPart, 1));
  if (parts <= 1) {
    std::memcpy(dst, src, n);
    return;
  }
  // Parts of whole 4 KiB pages, so no two threads write the same page.
  const uint64_t part = ((n + parts - 1) / parts + 4095) / 4096 * 4096;
  std::vector<std::function<void()>> tasks;
  for (uint64_t off = 0; off < n; off += part) {
    const uint64_t len = std::min(part, n - off);
    tasks.push_back([=] { std::memcpy(dst + off, src + off, len); });
  }
  Run(tasks);
}

// --- GpuWorker --------------------------------------------------------------------------

GpuWorker::GpuWorker(int device, uint64_t staging_bytes, HostCopier* copier)
    : device_(device), staging_bytes_(staging_bytes), copier_(copier) {}

absl::Status GpuWorker::Init() {
  KVSTASH_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                               "gpu tier: cudaStreamCreate");
  for (int b = 0; b < 2; ++b) {
    KVSTASH_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&events_[b], cudaEventDisableTiming),
                                 "gpu tier: cudaEventCreate");
    if (auto st = staging_[b].Reserve(staging_bytes_); !st.ok()) return st;
  }
  if (auto st = d_flag_.Reserve(sizeof(unsigned long long)); !st.ok()) return st;
  return absl::OkStatus();
}

GpuWorker::~GpuWorker() {
  cudaSetDevice(device_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (copy_stream_ != nullptr) cudaStreamSynchronize(copy_stream_);
  if (decode_stream_ != nullptr) cudaStreamSynchronize(decode_stream_);
  for (cudaEvent_t e : events_) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  for (cudaEvent_t e : group_events_) cudaEventDestroy(e);
  if (decode_stream_ != nullptr) cudaStreamDestroy(decode_stream_);
  if (copy_stream_ != nullptr) cudaStreamDestroy(copy_stream_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status GpuWorker::Synchronize() {
  KVSTASH_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "gpu tier: synchronize");
  return absl::OkStatus();
}

// Host -> device: the host gathers pieces into one staging buffer while the other one's
// copies run; a buffer is refilled only after the event recorded behind its copies.
absl::Status GpuWorker::CopyToDevice(std::span<const CopySegment> segments) {
  int b = 0;
  uint64_t fill = 0;
  bool direct = false;
  for (const CopySegment& seg : segments) {
    if (IsPinnedHost(seg.host)) {  // e.g. a registered shared-memory region: plain DMA
      KVSTASH_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(seg.device, seg.host, seg.bytes,
                                                   cudaMemcpyHostToDevice, stream_),
                                   "gpu tier: host-to-device copy");
      direct = true;
      continue;
    }
    uint64_t pos = 0;
    while (pos < seg.bytes) {
      if (fill == 0) {
        KVSTASH_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(events_[b]),
                                     "gpu tier: staging wait");
      }
      const uint64_t take = std::min(seg.bytes - pos, staging_bytes_ - fill);
      uint8_t* stage = staging_[b].data() + fill;
      copier_->Copy(stage, seg.host + pos, take);
      KVSTASH_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(seg.device + pos, stage, take, cudaMemcpyHostToDevice, stream_),
          "gpu tier: host-to-device copy");
      fill += take;
      pos += take;
      if (fill == staging_bytes_) {
        KVSTASH_CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[b], stream_),
                                     "gpu tier: cudaEventRecord");
        b ^= 1;
        fill = 0;
      }
    }
  }
  if (fill > 0) {
    KVSTASH_CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[b], stream_),
                                 "gpu tier: cudaEventRecord");
  }
  // A direct copy reads the host memory until it completes.
  return direct ? Synchronize() : absl::OkStatus();
}

// Device -> host: copies fill one staging buffer while the host drains the other.
absl::Status GpuWorker::CopyToHost(std::span<const CopySegment> segments) {
  struct Piece {
    uint8_t* host;
    uint64_t offset;
    uint64_t bytes;
  };
  std::vector<Piece> batch[2];
  bool in_flight[2] = {false, false};
  auto drain = [&](int b) -> absl::Status {
    if (!in_flight[b]) return absl::OkStatus();
    KVSTASH_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(events_[b]),
                                 "gpu tier: device-to-host copy");
    for (const Piece& p : batch[b]) copier_->Copy(p.host, staging_[b].data() + p.offset, p.bytes);
    batch[b].clear();
    in_flight[b] = false;
    return absl::OkStatus();
  };
  int b = 0;
  uint64_t fill = 0;
  bool direct = false;
  for (const CopySegment& seg : segments) {
    if (IsPinnedHost(seg.host)) {  // DMA straight into it; waited for at the end
      KVSTASH_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(seg.host, seg.device, seg.bytes,
                                                   cudaMemcpyDeviceToHost, stream_),
                                   "gpu tier: device-to-host copy");
      direct = true;
      continue;
    }
    uint64_t pos = 0;
    while (pos < seg.bytes) {
      const uint64_t take = std::min(seg.bytes - pos, staging_bytes_ - fill);
      KVSTASH_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(staging_[b].data() + fill, seg.device + pos,
                                                   take, cudaMemcpyDeviceToHost, stream_),
                                   "gpu tier: device-to-host copy");
      batch[b].push_back({seg.host + pos, fill, take});
      fill += take;
      pos += take;
      if (fill == staging_bytes_) {
        KVSTASH_CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[b], stream_),
                                     "gpu tier: cudaEventRecord");
        in_flight[b] = true;
        b ^= 1;
        if (auto st = drain(b); !st.ok()) return st;
        fill = 0;
      }
    }
  }
  if (fill > 0) {
    KVSTASH_CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[b], stream_),
                                 "gpu tier: cudaEventRecord");
    in_flight[b] = true;
  }
  if (auto st = drain(b ^ 1); !st.ok()) return st;
  if (auto st = drain(b); !st.ok()) return st;
  return direct ? Synchronize() : absl::OkStatus();
}

absl::Status GpuWorker::GatherFromSpan(const memory::PageSpan& src, uint64_t offset,
                                       uint64_t n, uint8_t* dst) {
  cudaError_t err = cudaSuccess;
  ForEachRun(src, offset, n, [&](uint8_t* addr, uint64_t at, uint64_t len) {
    if (err == cudaSuccess) {
      err = cudaMemcpyAsync(dst + at, addr, len, cudaMemcpyDeviceToDevice, stream_);
    }
  });
  KVSTASH_CUDA_RETURN_IF_ERROR(err, "gpu tier: gather sections");
  return absl::OkStatus();
}

absl::Status GpuWorker::ScatterToSpan(const uint8_t* src, cudaMemcpyKind kind,
                                      const memory::PageSpan& dst, uint64_t offset,
                                      uint64_t n) {
  cudaError_t err = cudaSuccess;
  ForEachRun(dst, offset, n, [&](uint8_t* addr, uint64_t at, uint64_t len) {
    if (err == cudaSuccess) err = cudaMemcpyAsync(addr, src + at, len, kind, stream_);
  });
  KVSTASH_CUDA_RETURN_IF_ERROR(err, "gpu tier: store sections");
  return absl::OkStatus();
}

absl::StatusOr<const uint8_t*> GpuWorker::Encode(const kernels::ChunkLayout& layout,
                                                 std::span<const uint8_t> payload) {
  if (auto st = d_in_.Reserve(payload.size()); !st.ok()) return st;
  if (auto st = d_chunk_.Reserve(layout.total_bytes); !st.ok()) return st;
  if (auto st = h_chunk_.Reserve(layout.total_bytes); !st.ok()) return st;
  const CopySegment in{d_in_.data(), const_cast<uint8_t*>(payload.data()), payload.size()};
  if (auto st = CopyToDevice({&in, 1}); !st.ok()) return st;
  // d_chunk_ is this worker's scratch, never published for a rejected chunk, so the
  // one-pass fused validity check is safe here.
  if (auto st = kernels::cuda::EncodeToHost(
          layout, reinterpret_cast<const uint16_t*>(d_in_.data()), d_chunk_.data(),
          reinterpret_cast<unsigned long long*>(d_flag_.data()), stream_, h_chunk_.data(),
          kernels::cuda::ValidityCheck::kFused);
      !st.ok()) {
    return st;
  }
  return h_chunk_.data();
}

absl::Status GpuWorker::StoreEncoded(const kernels::ChunkLayout& layout,
                                     std::span<const uint64_t> section_offset,
                                     const memory::PageSpan& dst) {
  // The header from the pinned host copy (it is sealed there), the sections device to
  // device from where the encoder wrote them.
  if (auto st = ScatterToSpan(h_chunk_.data(), cudaMemcpyHostToDevice, dst, 0,
                              layout.header_bytes);
      !st.ok()) {
    return st;
  }
  for (uint32_t p = 0; p < layout.num_pairs(); ++p) {
    if (auto st = ScatterToSpan(d_chunk_.data() + layout.pairs[p].offset,
                                cudaMemcpyDeviceToDevice, dst, section_offset[p],
                                layout.pairs[p].bytes);
        !st.ok()) {
      return st;
    }
  }
  return Synchronize();
}

absl::StatusOr<const uint8_t*> GpuWorker::EncodeDevice(const kernels::ChunkLayout& layout,
                                                       const DeviceTensor& in) {
  if (auto st = d_chunk_.Reserve(layout.total_bytes); !st.ok()) return st;
  if (auto st = h_chunk_.Reserve(layout.total_bytes); !st.ok()) return st;
  auto* flag = reinterpret_cast<unsigned long long*>(d_flag_.data());
  if (!in.paged()) {
    if (auto st = kernels::cuda::EncodeToHost(
            layout, reinterpret_cast<const uint16_t*>(in.data), d_chunk_.data(), flag, stream_,
            h_chunk_.data(), kernels::cuda::ValidityCheck::kFused);
        !st.ok()) {
      return st;
    }
    return h_chunk_.data();
  }
  absl::StatusOr<kernels::cuda::DecodeParams> tables = UploadTables(layout, &in);
  if (!tables.ok()) return tables.status();
  kernels::cuda::PagedInput pin;
  pin.view = tables->paged;
  pin.host_planes = {reinterpret_cast<uint16_t* const*>(in.planes.data()), in.planes.size()};
  pin.host_block_ids = in.block_ids;
  if (auto st = kernels::cuda::EncodeToHost(layout, pin, d_chunk_.data(), flag, stream_,
                                            h_chunk_.data());
      !st.ok()) {
    return st;
  }
  return h_chunk_.data();
}

absl::Status GpuWorker::StageSections(const kernels::ParsedHeader& header, const Sections& src,
                                      const kernels::PairRange& range) {
  const kernels::ChunkLayout& lay = header.layout;
  const uint32_t num_pairs = lay.num_pairs();
  const memory::PageSpan& pages = *src.pages;
  // A host-tier chunk whose sections lie in one run of adjacent pages (the usual case: a
  // pool hands out adjacent pages) goes over PCIe in a single DMA, padding included.
  bool one_run = src.device < 0 && src.host_registered;
  for (uint32_t p = range.first; one_run && p <= range.last; ++p) {
    one_run = src.direct[p] != nullptr &&
              src.direct[p] == src.direct[range.first] +
                                   (src.section_offset[p] - src.section_offset[range.first]);
  }
  const uint64_t run_bytes = src.section_offset[range.last] + lay.pairs[range.last].bytes -
                             src.section_offset[range.first];
  uint64_t gather_bytes = 0;
  for (uint32_t p = range.first; p <= range.last; ++p) {
    if (src.device != device_ || src.direct[p] == nullptr) gather_bytes += lay.pairs[p].bytes;
  }
  if (one_run) gather_bytes = run_bytes;
  if (auto st = h_ptrs_.Reserve(num_pairs * sizeof(void*)); !st.ok()) return st;
  if (gather_bytes > 0) {
    if (auto st = d_gather_.Reserve(gather_bytes); !st.ok()) return st;
  }
  const uint8_t** ptrs = reinterpret_cast<const uint8_t**>(h_ptrs_.data());
  std::fill(ptrs, ptrs + num_pairs, nullptr);
  uint8_t* gather = d_gather_.data();
  std::vector<CopySegment> staged;  // host sections of an unregistered pool
  absl::Status status;
  if (one_run) {
    KVSTASH_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(gather, src.direct[range.first], run_bytes,
                                                 cudaMemcpyHostToDevice, stream_),
                                 "gpu tier: host-to-device copy");
    for (uint32_t p = range.first; p <= range.last; ++p) {
      ptrs[p] = gather + (src.section_offset[p] - src.section_offset[range.first]);
    }
  }
  for (uint32_t p = range.first; !one_run && p <= range.last && status.ok(); ++p) {
    const uint64_t off = src.section_offset[p], n = lay.pairs[p].bytes;
    if (src.device == device_ && src.direct[p] != nullptr) {
      ptrs[p] = src.direct[p];
      continue;
    }
    ptrs[p] = gather;
    if (src.device == device_) {
      status = GatherFromSpan(pages, off, n, gather);
    } else if (src.device >= 0) {
      cudaError_t err = cudaSuccess;
      ForEachRun(pages, off, n, [&](uint8_t* addr, uint64_t at, uint64_t len) {
        if (err == cudaSuccess) {
          err = cudaMemcpyPeerAsync(gather + at, device_, addr, src.device, len, stream_);
        }
      });
      if (err != cudaSuccess) status = kernels::cuda::CudaStatus(err, "gpu tier: peer copy");
    } else {
      ForEachRun(pages, off, n, [&](uint8_t* addr, uint64_t at, uint64_t len) {
        if (!src.host_registered) {
          staged.push_back({gather + at, addr, len});
        } else if (status.ok()) {
          if (cudaError_t err = cudaMemcpyAsync(gather + at, addr, len,
                                                cudaMemcpyHostToDevice, stream_);
              err != cudaSuccess) {
            status = kernels::cuda::CudaStatus(err, "gpu tier: host-to-device copy");
          }
        }
      });
    }
    gather += n;  // a multiple of 64: the next section stays aligned
  }
  if (status.ok() && !staged.empty()) status = CopyToDevice(staged);
  if (!status.ok()) return status;
  if (src.device >= 0) return absl::OkStatus();

  // Host pool: verify every section (the device decoder does not), in parallel on the copy
  // threads while the DMA above runs; the copies only fill this worker's scratch, and
  // nothing is decoded unless every section matches (docs/store.md, "Device I/O").
  std::vector<uint8_t> bad(num_pairs, 0);
  std::vector<std::function<void()>> tasks;
  for (uint32_t p = range.first; p <= range.last; ++p) {
    tasks.push_back([&, p] {
      XXH3_state_t* xxh = XXH3_createState();
      XXH3_64bits_reset(xxh);
      ForEachRun(pages, src.section_offset[p], lay.pairs[p].bytes,
                 [&](uint8_t* addr, uint64_t, uint64_t len) { kernels::Xxh3Update(xxh, addr, len); });
      bad[p] = XXH3_64bits_digest(xxh) != header.section_checksums[p];
      XXH3_freeState(xxh);
    });
  }
  const auto v0 = std::chrono::steady_clock::now();
  copier_->Run(tasks);
  last_verify_us_ = std::chrono::duration_cast<std::chrono::microseconds>(
                        std::chrono::steady_clock::now() - v0)
                        .count();
  for (uint32_t p = range.first; p <= range.last; ++p) {
    if (bad[p]) {
      if (auto st = Synchronize(); !st.ok()) return st;  // the scratch is reused next
      return absl::DataLossError(
          absl::StrCat("store: pair section ", p, " of a host-tier chunk fails its checksum"));
    }
  }
  return absl::OkStatus();
}

namespace {

void SetSlice(const kernels::Slice& resolved, kernels::DType out_dtype,
              kernels::cuda::DecodeParams* dp) {
  dp->layer_begin = resolved.layer_begin;
  dp->layer_end = resolved.layer_end;
  dp->head_begin = resolved.head_begin;
  dp->head_end = resolved.head_end;
  dp->out_dtype = static_cast<uint32_t>(out_dtype);
}

}  // namespace

absl::StatusOr<kernels::cuda::DecodeParams> GpuWorker::UploadTables(
    const kernels::ChunkLayout& layout, const DeviceTensor* paged) {
  const uint64_t num_pairs = layout.num_pairs();
  const uint64_t planes = paged != nullptr ? paged->planes.size() : 0;
  const uint64_t ids = paged != nullptr ? paged->block_ids.size() : 0;
  const uint64_t bytes = (num_pairs + planes) * sizeof(void*) + ids * sizeof(uint32_t);
  // h_ptrs_ may already hold the section table (StageSections): grow-only Reserve would
  // drop it, so reserve the whole size before anything is written.
  if (auto st = h_ptrs_.Reserve(bytes); !st.ok()) return st;
  if (auto st = d_ptrs_.Reserve(bytes); !st.ok()) return st;
  uint8_t* h = h_ptrs_.data();
  if (planes > 0) std::memcpy(h + num_pairs * sizeof(void*), paged->planes.data(), planes * sizeof(void*));
  if (ids > 0) {
    std::memcpy(h + (num_pairs + planes) * sizeof(void*), paged->block_ids.data(),
                ids * sizeof(uint32_t));
  }
  KVSTASH_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(d_ptrs_.data(), h, bytes, cudaMemcpyHostToDevice, stream_),
      "gpu tier: copy pointer tables");
  kernels::cuda::DecodeParams dp;
  dp.geo = kernels::cuda::GeometryOf(layout);
  dp.sections = reinterpret_cast<const uint8_t* const*>(d_ptrs_.data());
  if (paged != nullptr) {
    dp.paged.planes = reinterpret_cast<uint16_t* const*>(d_ptrs_.data() + num_pairs * sizeof(void*));
    dp.paged.block_ids =
        reinterpret_cast<const uint32_t*>(d_ptrs_.data() + (num_pairs + planes) * sizeof(void*));
    dp.paged.block_size = paged->block_size;
    dp.paged.first_slot = paged->first_slot;
    dp.paged.block_stride = paged->block_stride / sizeof(uint16_t);
    dp.paged.token_stride = paged->token_stride / sizeof(uint16_t);
    dp.paged.head_stride = paged->head_stride / sizeof(uint16_t);
  }
  return dp;
}

absl::Status GpuWorker::DecodeToDevice(const kernels::ParsedHeader& header, const Sections& src,
                                       const kernels::Slice& resolved, kernels::DType out_dtype,
                                       const DeviceTensor& out) {
  const kernels::ChunkLayout& lay = header.layout;
  // Reserve the tables first: StageSections writes the section table into h_ptrs_.
  const uint64_t table_bytes = (lay.num_pairs() + out.planes.size()) * sizeof(void*) +
                               out.block_ids.size() * sizeof(uint32_t);
  if (auto st = h_ptrs_.Reserve(table_bytes); !st.ok()) return st;
  // At trace level, each phase is timed to its completion (extra synchronizations).
  const bool trace = spdlog::should_log(spdlog::level::trace);
  const auto t0 = std::chrono::steady_clock::now();
  if (auto st = StageSections(header, src, kernels::PairsForSlice(resolved)); !st.ok()) return st;
  if (trace) {
    if (auto st = Synchronize(); !st.ok()) return st;
  }
  const auto t1 = std::chrono::steady_clock::now();
  absl::StatusOr<kernels::cuda::DecodeParams> dp =
      UploadTables(lay, out.paged() ? &out : nullptr);
  if (!dp.ok()) return dp.status();
  SetSlice(resolved, out_dtype, &*dp);
  dp->out = reinterpret_cast<uint16_t*>(out.data);
  KVSTASH_CUDA_RETURN_IF_ERROR(kernels::cuda::LaunchDecode(*dp, stream_),
                               "gpu tier: decode launch");
  absl::Status st = Synchronize();
  if (trace) {
    const auto t2 = std::chrono::steady_clock::now();
    using us = std::chrono::microseconds;
    spdlog::trace("gpu tier {}: decode to device from {}: stage {} us (verify {} us), "
                  "tables + decode {} us",
                  device_, src.device < 0 ? "host" : "device",
                  std::chrono::duration_cast<us>(t1 - t0).count(), last_verify_us_,
                  std::chrono::duration_cast<us>(t2 - t1).count());
  }
  return st;
}

// The batched restore. Three things overlap: the DMA of every chunk's compressed sections
// (issued at once, alternating between stream_ and copy_stream_: one stream of back-to-back
// copies of a few MB moved ~41 GB/s on an H200 where one large pinned copy moves 55, and
// two keep the link busy across each copy's gaps), the CPU checksums of a group of chunks
// (copy threads), and the decodes of earlier groups (decode_stream_, each group waiting on
// the events behind its copies on both copy streams). Checksums run faster than PCIe, so a
// group is verified before its copies land and its decode starts as they do; what is left
// after the last copy is one group's decode. A chunk is decoded only after all of its
// sections matched; the copies only fill this worker's scratch.
absl::Status GpuWorker::DecodeManyToDevice(std::span<const HostRestore> chunks,
                                           const kernels::Slice& resolved,
                                           kernels::DType out_dtype,
                                           std::span<absl::Status> status) {
  const size_t n = chunks.size();
  if (n == 0) return absl::OkStatus();
  const kernels::ChunkLayout& lay = chunks[0].header->layout;
  const uint32_t num_pairs = lay.num_pairs();
  const kernels::PairRange range = kernels::PairsForSlice(resolved);
  const uint64_t out_bytes = kernels::DecodedBytes(lay.shape, resolved);
  const size_t groups = (n + kChunksPerLaunch - 1) / kChunksPerLaunch;
  auto rel = [&](size_t c, uint32_t p) {  // pair p's offset in chunk c's run
    return chunks[c].section_offset[p] - chunks[c].section_offset[range.first];
  };
  auto run_bytes = [&](size_t c) { return rel(c, range.last) + lay.pairs[range.last].bytes; };
  std::vector<uint64_t> at(n + 1, 0);  // chunk c's run in d_gather_, 256-byte aligned
  for (size_t c = 0; c < n; ++c) at[c + 1] = at[c] + (run_bytes(c) + 255) / 256 * 256;
  // The device tables: [n][num_pairs] section pointers, then for each chunk with a paged
  // output its planes (pointers) and block ids, at paged_at[c] (8-byte aligned).
  uint64_t table_bytes = uint64_t{n} * num_pairs * sizeof(void*);
  std::vector<uint64_t> paged_at(n, 0);
  for (size_t c = 0; c < n; ++c) {
    if (chunks[c].paged == nullptr) continue;
    paged_at[c] = table_bytes;
    table_bytes += chunks[c].paged->planes.size() * sizeof(void*) +
                   (chunks[c].paged->block_ids.size() * sizeof(uint32_t) + 7) / 8 * 8;
  }
  if (auto st = d_gather_.Reserve(at[n]); !st.ok()) return st;
  if (auto st = h_ptrs_.Reserve(table_bytes); !st.ok()) return st;
  if (auto st = d_ptrs_.Reserve(table_bytes); !st.ok()) return st;
  if (decode_stream_ == nullptr) {
    KVSTASH_CUDA_RETURN_IF_ERROR(
        cudaStreamCreateWithFlags(&decode_stream_, cudaStreamNonBlocking),
        "gpu tier: cudaStreamCreate");
  }
  if (copy_stream_ == nullptr) {
    KVSTASH_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking),
                                 "gpu tier: cudaStreamCreate");
  }
  const cudaStream_t copy[2] = {stream_, copy_stream_};
  while (group_events_.size() < 2 * groups) {
    cudaEvent_t e = nullptr;
    KVSTASH_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming),
                                 "gpu tier: cudaEventCreate");
    group_events_.push_back(e);
  }
  uint8_t* const gather = d_gather_.data();
  const uint8_t** table = reinterpret_cast<const uint8_t**>(h_ptrs_.data());
  std::fill(table, table + uint64_t{n} * num_pairs, nullptr);
  for (size_t c = 0; c < n; ++c) {
    for (uint32_t p = range.first; p <= range.last; ++p) {
      table[c * num_pairs + p] = gather + at[c] + rel(c, p);
    }
    if (const DeviceTensor* w = chunks[c].paged; w != nullptr) {
      uint8_t* h = h_ptrs_.data() + paged_at[c];
      std::memcpy(h, w->planes.data(), w->planes.size() * sizeof(void*));
      std::memcpy(h + w->planes.size() * sizeof(void*), w->block_ids.data(),
                  w->block_ids.size() * sizeof(uint32_t));
    }
  }

  // bad[c * num_pairs + p]: one writer per flag. Every group's checksums are queued at
  // once, in chunk order and before the copies are issued, so the copy threads start at
  // once and never wait at a group boundary; the caller helps while it waits for each
  // group in turn.
  std::vector<uint8_t> bad(uint64_t{n} * num_pairs, 0);
  std::vector<std::vector<std::function<void()>>> tasks(groups);
  std::unique_ptr<HostCopier::Batch[]> verified(new HostCopier::Batch[groups]);
  for (size_t g = 0; g < groups; ++g) {
    const size_t b = g * kChunksPerLaunch, e = std::min(n, b + kChunksPerLaunch);
    for (size_t c = b; c < e; ++c) {
      for (uint32_t p = range.first; p <= range.last; ++p) {
        tasks[g].push_back([&, c, p] {
          bad[c * num_pairs + p] = kernels::Xxh3(chunks[c].run + rel(c, p), lay.pairs[p].bytes) !=
                                   chunks[c].header->section_checksums[p];
        });
      }
    }
  }
  const auto v0 = std::chrono::steady_clock::now();
  for (size_t g = 0; g < groups; ++g) copier_->Submit(tasks[g], &verified[g]);
  // From here on the copy threads read `bad`, `chunks` and `tasks`, and (after the first
  // copy) the streams read the caller's pinned pages and this worker's scratch: every exit
  // waits for all of them.
  size_t waited = 0;
  auto finish = [&](absl::Status st) {
    for (; waited < groups; ++waited) copier_->Wait(&verified[waited]);
    const cudaError_t a = cudaStreamSynchronize(stream_);
    const cudaError_t a2 = cudaStreamSynchronize(copy_stream_);
    const cudaError_t b = cudaStreamSynchronize(decode_stream_);
    if (st.ok() && a != cudaSuccess) st = kernels::cuda::CudaStatus(a, "gpu tier: restore copies");
    if (st.ok() && a2 != cudaSuccess) st = kernels::cuda::CudaStatus(a2, "gpu tier: restore copies");
    if (st.ok() && b != cudaSuccess) st = kernels::cuda::CudaStatus(b, "gpu tier: restore decodes");
    return st;
  };
  auto fail = [&](cudaError_t err, const char* what) {
    return finish(kernels::cuda::CudaStatus(err, what));
  };
  for (size_t g = 0; g < groups; ++g) {
    const size_t e = std::min(n, (g + 1) * kChunksPerLaunch);
    for (size_t c = g * kChunksPerLaunch; c < e; ++c) {
      if (cudaError_t err = cudaMemcpyAsync(gather + at[c], chunks[c].run, run_bytes(c),
                                            cudaMemcpyHostToDevice, copy[c % 2]);
          err != cudaSuccess) {
        return fail(err, "gpu tier: host-to-device copy");
      }
    }
    for (int k = 0; k < 2; ++k) {
      if (cudaError_t err = cudaEventRecord(group_events_[2 * g + k], copy[k]);
          err != cudaSuccess) {
        return fail(err, "gpu tier: cudaEventRecord");
      }
    }
  }
  // h_ptrs_ is not written again until this returns (after the synchronization).
  if (cudaError_t err = cudaMemcpyAsync(d_ptrs_.data(), h_ptrs_.data(), table_bytes,
                                        cudaMemcpyHostToDevice, decode_stream_);
      err != cudaSuccess) {
    return fail(err, "gpu tier: copy pointer tables");
  }
  kernels::cuda::DecodeParams base;
  base.geo = kernels::cuda::GeometryOf(lay);
  SetSlice(resolved, out_dtype, &base);
  const auto* d_table = reinterpret_cast<const uint8_t* const*>(d_ptrs_.data());

  for (size_t g = 0; g < groups; ++g) {
    const size_t b = g * kChunksPerLaunch, e = std::min(n, b + kChunksPerLaunch);
    copier_->Wait(&verified[g]);
    waited = g + 1;
    auto chunk_ok = [&](size_t c) {
      for (uint32_t p = range.first; p <= range.last; ++p) {
        if (bad[c * num_pairs + p]) {
          status[c] = absl::DataLossError(absl::StrCat(
              "store: pair section ", p, " of a host-tier chunk fails its checksum"));
          return false;
        }
      }
      status[c] = absl::OkStatus();
      return true;
    };
    for (int k = 0; k < 2; ++k) {
      if (cudaError_t err = cudaStreamWaitEvent(decode_stream_, group_events_[2 * g + k], 0);
          err != cudaSuccess) {
        return fail(err, "gpu tier: cudaStreamWaitEvent");
      }
    }
    // One launch per run of good chunks with adjacent contiguous outputs ([C][...]), and
    // one per good chunk with a paged output.
    for (size_t s = b; s < e;) {
      if (!chunk_ok(s)) {
        ++s;
        continue;
      }
      kernels::cuda::DecodeParams dp = base;
      dp.sections = d_table + s * num_pairs;
      size_t t = s + 1;
      if (const DeviceTensor* w = chunks[s].paged; w != nullptr) {
        const uint8_t* d = d_ptrs_.data() + paged_at[s];
        dp.paged.planes = reinterpret_cast<uint16_t* const*>(d);
        dp.paged.block_ids =
            reinterpret_cast<const uint32_t*>(d + w->planes.size() * sizeof(void*));
        dp.paged.block_size = w->block_size;
        dp.paged.first_slot = w->first_slot;
        dp.paged.block_stride = w->block_stride / sizeof(uint16_t);
        dp.paged.token_stride = w->token_stride / sizeof(uint16_t);
        dp.paged.head_stride = w->head_stride / sizeof(uint16_t);
      } else {
        while (t < e && chunks[t].paged == nullptr &&
               chunks[t].out == chunks[t - 1].out + out_bytes && chunk_ok(t)) {
          ++t;
        }
        dp.num_chunks = static_cast<uint32_t>(t - s);
        dp.out = reinterpret_cast<uint16_t*>(chunks[s].out);
      }
      if (cudaError_t err = kernels::cuda::LaunchDecode(dp, decode_stream_);
          err != cudaSuccess) {
        return fail(err, "gpu tier: decode launch");
      }
      // A chunk that broke the run (bad, paged, or a non-adjacent output) starts the next.
      s = t;
    }
  }
  const int64_t verify_us = std::chrono::duration_cast<std::chrono::microseconds>(
                                std::chrono::steady_clock::now() - v0)
                                .count();
  absl::Status st = finish(absl::OkStatus());
  spdlog::trace("gpu tier {}: batched restore of {} chunks, {} MB over PCIe: checksums done "
                "after {} us, decodes after {} us",
                device_, n, at[n] / 1000000, verify_us,
                std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::steady_clock::now() - v0)
                    .count());
  return st;
}

absl::Status GpuWorker::Decode(const kernels::ParsedHeader& header,
                               const memory::PageSpan& pages,
                               std::span<const uint64_t> section_offset,
                               std::span<const uint8_t* const> direct,
                               const kernels::Slice& resolved, kernels::DType out_dtype,
                               uint8_t* out) {
  const kernels::ChunkLayout& lay = header.layout;
  const uint64_t out_bytes = kernels::DecodedBytes(lay.shape, resolved);
  if (auto st = d_out_.Reserve(out_bytes); !st.ok()) return st;
  if (auto st = h_ptrs_.Reserve(lay.num_pairs() * sizeof(void*)); !st.ok()) return st;
  Sections src;
  src.pages = &pages;
  src.section_offset = section_offset;
  src.direct = direct;
  src.device = device_;
  if (auto st = StageSections(header, src, kernels::PairsForSlice(resolved)); !st.ok()) return st;
  absl::StatusOr<kernels::cuda::DecodeParams> dp = UploadTables(lay, nullptr);
  if (!dp.ok()) return dp.status();
  SetSlice(resolved, out_dtype, &*dp);
  dp->out = reinterpret_cast<uint16_t*>(d_out_.data());
  KVSTASH_CUDA_RETURN_IF_ERROR(kernels::cuda::LaunchDecode(*dp, stream_),
                               "gpu tier: decode launch");
  const CopySegment seg{d_out_.data(), out, out_bytes};
  // h_ptrs_ is reused by the next call: its copy is ahead of this one in stream order and
  // CopyToHost returns after the output arrived.
  return CopyToHost({&seg, 1});
}

namespace {

std::vector<CopySegment> PageSegments(const memory::PageSpan& device_span,
                                      const memory::PageSpan& host_span) {
  std::vector<CopySegment> segs;
  const size_t n = device_span.num_pages();
  const uint64_t pb = n == 0 ? 0 : device_span.bytes() / n;
  for (size_t i = 0; i < n; ++i) {
    uint8_t* d = device_span.page(i);
    uint8_t* h = host_span.page(i);
    if (!segs.empty() && segs.back().device + segs.back().bytes == d &&
        segs.back().host + segs.back().bytes == h) {
      segs.back().bytes += pb;
    } else {
      segs.push_back({d, h, pb});
    }
  }
  return segs;
}

}  // namespace

absl::Status GpuWorker::CopyPagesToHost(const memory::PageSpan& device_span,
                                        const memory::PageSpan& host_span) {
  const std::vector<CopySegment> segs = PageSegments(device_span, host_span);
  return CopyToHost(segs);
}

absl::Status GpuWorker::CopyPagesToDevice(const memory::PageSpan& host_span,
                                          const memory::PageSpan& device_span) {
  const std::vector<CopySegment> segs = PageSegments(device_span, host_span);
  if (auto st = CopyToDevice(segs); !st.ok()) return st;
  return Synchronize();
}

// --- GpuTier ----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<GpuTier>> GpuTier::Create(const GpuTierOptions& o) {
  memory::DevicePoolOptions po;
  po.device = o.device;
  po.capacity_bytes = o.capacity_bytes;
  po.page_bytes = o.page_bytes;
  absl::StatusOr<std::unique_ptr<memory::DevicePool>> pool = memory::DevicePool::Create(po);
  if (!pool.ok()) return pool.status();
  cudaDeviceProp prop{};
  KVSTASH_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, o.device),
                               "gpu tier: cudaGetDeviceProperties");
  std::unique_ptr<GpuTier> tier(new GpuTier(
      o.device, prop.name, std::string(prop.uuid.bytes, sizeof(prop.uuid.bytes)),
      *std::move(pool)));
  const uint32_t copy_threads =
      o.copy_threads > 0 ? o.copy_threads
                         : std::min<uint32_t>(7, std::thread::hardware_concurrency() / 2);
  tier->copier_ = std::make_unique<HostCopier>(copy_threads);
  for (uint32_t i = 0; i < std::max<uint32_t>(o.workers, 1); ++i) {
    std::unique_ptr<GpuWorker> w(new GpuWorker(o.device, o.staging_bytes, tier->copier_.get()));
    if (auto st = w->Init(); !st.ok()) return st;
    tier->workers_.push_back(std::move(w));
  }
  {
    absl::MutexLock lock(&tier->mu_);
    for (auto& w : tier->workers_) tier->free_.push_back(w.get());
  }
  spdlog::info("gpu tier {}: {} ({} MiB pool, {} streams, 2 x {} KiB pinned staging each, "
               "{} copy threads)",
               o.device, tier->name_, tier->pages().capacity_bytes() >> 20,
               tier->workers_.size(), o.staging_bytes >> 10, copy_threads);
  return tier;
}

GpuTier::~GpuTier() {
  workers_.clear();  // streams and buffers before the pool's memory
  copier_.reset();
  pool_.reset();
}

GpuTier::Lease GpuTier::Acquire() {
  GpuWorker* w;
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](std::vector<GpuWorker*>* f) { return !f->empty(); }, &free_));
    w = free_.back();
    free_.pop_back();
  }
  cudaSetDevice(device_);  // outside the lock; failures surface on the worker's next call
  return Lease(this, w);
}

GpuTier::Lease GpuTier::TryAcquire() {
  GpuWorker* w;
  {
    absl::MutexLock lock(&mu_);
    if (free_.empty()) return Lease();
    w = free_.back();
    free_.pop_back();
  }
  cudaSetDevice(device_);
  return Lease(this, w);
}

void GpuTier::Release(GpuWorker* w) {
  absl::MutexLock lock(&mu_);
  free_.push_back(w);
}

void GpuTier::MarkFailed(const absl::Status& why) {
  if (!failed_.exchange(true)) {
    spdlog::error("gpu tier {}: taking no new chunks after a device error: {}", device_,
                  why.ToString());
  }
}

}  // namespace kvstash::store::internal
