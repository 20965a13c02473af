#include "cuda_ipc_transport.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

#if KVSTASH_BENCH_CUDA
#include <cuda_runtime_api.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>

#include "kvstash/client/client.h"
#endif

namespace kvstash::bench {

#if KVSTASH_BENCH_CUDA
namespace {

absl::Status Cuda(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::InternalError(absl::StrCat(absl::string_view(what.data(), what.size()), ": ",
                                          cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

// A cudaMalloc'd buffer registered with the daemon as a CUDA IPC region.
struct SharedBuffer {
  void* data = nullptr;
  client::Region region;
};

class CudaIpcTransport final : public Transport {
 public:
  CudaIpcTransport(const TransportOptions& o, std::unique_ptr<client::Client> c)
      : options_(o), client_(std::move(c)) {}

  ~CudaIpcTransport() override {
    cudaSetDevice(options_.cuda_device);
    for (auto& [ptr, buf] : inputs_) Release(buf);
    Release(output_);
  }

  absl::Status Init() {
    if (auto st = Cuda(cudaSetDevice(options_.cuda_device), "cudaSetDevice"); !st.ok()) return st;
    cudaDeviceProp prop{};
    if (auto st = Cuda(cudaGetDeviceProperties(&prop, options_.cuda_device), "device properties");
        !st.ok())
      return st;
    uuid_.assign(prop.uuid.bytes, sizeof(prop.uuid.bytes));
    slot_bytes_ = (options_.shm_slot_bytes + 63) / 64 * 64;
    absl::StatusOr<SharedBuffer> out = Share(slot_bytes_ * options_.shm_slots);
    if (!out.ok()) return out.status();
    output_ = *std::move(out);
    free_.assign(options_.shm_slots, true);
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Put(std::string_view ns, const PutOp& op) override {
    absl::StatusOr<const SharedBuffer*> in = DeviceCopy(op.data);
    if (!in.ok()) return in.status();
    client::PutChunk c{op.key, op.shape, client::Codec::FromPreset(op.preset), {},
                       &(*in)->region, 0};
    absl::StatusOr<client::PutResult> r = client_->Put(ns, c, Call());
    if (!r.ok()) return r.status();
    return r->info.stored_bytes;
  }

  absl::StatusOr<GetReply> Get(std::string_view ns, const client::ChunkKey& key) override {
    const uint32_t slot = TakeSlot();
    client::GetOptions g;
    g.output_region = &output_.region;
    g.output_offset = uint64_t{slot} * slot_bytes_;
    g.output_length = slot_bytes_;
    absl::StatusOr<client::GetResult> r = client_->Get(ns, key, g, Call());
    GetReply reply;
    absl::Status st = r.status();
    if (r.ok()) {
      reply.stored_bytes = r->info.stored_bytes;
      reply.logical_bytes = r->info.logical_bytes;
      if (options_.fetch_device_results) {
        reply.data.resize(r->info.logical_bytes);
        cudaSetDevice(options_.cuda_device);
        st = Cuda(cudaMemcpy(reply.data.data(),
                             static_cast<uint8_t*>(output_.data) + r->region_offset,
                             reply.data.size(), cudaMemcpyDeviceToHost),
                  "copy the result back for --verify");
      }
    }
    GiveSlot(slot);
    if (!st.ok()) return st;
    return reply;
  }

  absl::StatusOr<uint32_t> Lookup(std::string_view ns,
                                  std::span<const client::ChunkKey> chain) override {
    return client_->Lookup(ns, chain, Call());
  }

  absl::Status Delete(std::string_view ns, std::span<const client::ChunkKey> keys) override {
    return client_->Delete(ns, keys, Call()).status();
  }

 private:
  client::CallOptions Call() const {
    client::CallOptions c;
    c.timeout = options_.timeout;
    return c;
  }

  absl::StatusOr<SharedBuffer> Share(uint64_t bytes) {
    SharedBuffer b;
    if (auto st = Cuda(cudaMalloc(&b.data, bytes), "cudaMalloc"); !st.ok()) return st;
    cudaIpcMemHandle_t h;
    if (auto st = Cuda(cudaIpcGetMemHandle(&h, b.data), "cudaIpcGetMemHandle"); !st.ok()) {
      cudaFree(b.data);
      return st;
    }
    absl::StatusOr<client::Region> r = client_->RegisterCudaIpc(
        options_.ns, std::string(reinterpret_cast<const char*>(&h), sizeof(h)), uuid_, 0, 0,
        Call());
    if (!r.ok()) {
      cudaFree(b.data);
      return r.status();
    }
    b.region = *std::move(r);
    return b;
  }

  void Release(SharedBuffer& b) {
    if (b.data == nullptr) return;
    (void)client_->UnregisterRegion(b.region, Call());
    cudaFree(b.data);
    b.data = nullptr;
  }

  // The device copy of a host payload, uploaded on first use (the warm-up or pre-population
  // touches every payload before the measured phase).
  absl::StatusOr<const SharedBuffer*> DeviceCopy(std::span<const uint8_t> data) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = inputs_.find(data.data());
    if (it != inputs_.end()) return &it->second;
    cudaSetDevice(options_.cuda_device);
    absl::StatusOr<SharedBuffer> b = Share(data.size());
    if (!b.ok()) return b.status();
    if (auto st = Cuda(cudaMemcpy(b->data, data.data(), data.size(), cudaMemcpyHostToDevice),
                       "upload a payload");
        !st.ok()) {
      Release(*b);
      return st;
    }
    return &inputs_.emplace(data.data(), *std::move(b)).first->second;
  }

  uint32_t TakeSlot() {
    std::unique_lock<std::mutex> lock(mu_);
    uint32_t s = 0;
    slot_cv_.wait(lock, [&] {
      auto f = std::find(free_.begin(), free_.end(), true);
      if (f == free_.end()) return false;
      s = static_cast<uint32_t>(f - free_.begin());
      return true;
    });
    free_[s] = false;
    return s;
  }
  void GiveSlot(uint32_t s) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_[s] = true;
    }
    slot_cv_.notify_one();
  }

  const TransportOptions options_;
  std::unique_ptr<client::Client> client_;
  std::string uuid_;
  uint64_t slot_bytes_ = 0;
  SharedBuffer output_;
  std::mutex mu_;  // guards inputs_ and free_
  std::condition_variable slot_cv_;
  std::map<const uint8_t*, SharedBuffer> inputs_;
  std::vector<bool> free_;
};

double MedianGbps(std::vector<double> seconds, uint64_t bytes) {
  std::sort(seconds.begin(), seconds.end());
  return static_cast<double>(bytes) / seconds[seconds.size() / 2] / 1e9;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> OpenCudaIpcTransport(const TransportOptions& options) {
  if (options.shm_slot_bytes == 0 || options.shm_slots == 0) {
    return absl::InvalidArgumentError("cuda-ipc: slot bytes and slots must be positive");
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    cudaGetLastError();
    devices = 0;
  }
  if (options.cuda_device < 0 || options.cuda_device >= devices) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--transport cuda-ipc: no CUDA device ", options.cuda_device, " (", devices,
        " visible to kvstash-bench)"));
  }
  client::ClientOptions co;
  co.target = options.target;
  co.token = options.token;
  co.tls = options.tls;
  co.connect_timeout = options.connect_timeout;
  co.max_message_bytes = options.max_message_bytes;
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Connect(co);
  if (!c.ok()) return c.status();
  auto t = std::make_unique<CudaIpcTransport>(options, *std::move(c));
  if (auto st = t->Init(); !st.ok()) return st;
  return std::unique_ptr<Transport>(std::move(t));
}

absl::StatusOr<DeviceBaselines> MeasureDeviceBaselines(int cuda_device, uint64_t bytes) {
  if (auto st = Cuda(cudaSetDevice(cuda_device), "cudaSetDevice"); !st.ok()) return st;
  // Rotate through buffers larger than L2 in all, so the copies measure HBM.
  constexpr int kBuffers = 4, kReps = 20;
  std::vector<void*> src(kBuffers, nullptr), dst(kBuffers, nullptr);
  void* host = nullptr;
  cudaEvent_t a = nullptr, b = nullptr;
  DeviceBaselines out;
  absl::Status st = Cuda(cudaHostAlloc(&host, bytes, cudaHostAllocDefault), "cudaHostAlloc");
  for (int i = 0; st.ok() && i < kBuffers; ++i) {
    st = Cuda(cudaMalloc(&src[i], bytes), "cudaMalloc");
    if (st.ok()) st = Cuda(cudaMalloc(&dst[i], bytes), "cudaMalloc");
  }
  if (st.ok()) st = Cuda(cudaEventCreate(&a), "cudaEventCreate");
  if (st.ok()) st = Cuda(cudaEventCreate(&b), "cudaEventCreate");
  auto time = [&](auto&& copy) {
    std::vector<double> secs;
    for (int r = -3; r < kReps && st.ok(); ++r) {  // 3 warm-up copies
      cudaEventRecord(a);
      st = copy(r < 0 ? 0 : r % kBuffers);
      cudaEventRecord(b);
      cudaEventSynchronize(b);
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      if (r >= 0) secs.push_back(ms / 1e3);
    }
    return secs;
  };
  if (st.ok()) {
    out.d2d_gbps = MedianGbps(time([&](int i) {
                                return Cuda(cudaMemcpyAsync(dst[i], src[i], bytes,
                                                            cudaMemcpyDeviceToDevice),
                                            "d2d copy");
                              }),
                              bytes);
  }
  if (st.ok()) {
    out.h2d_pinned_gbps = MedianGbps(time([&](int i) {
                                       return Cuda(cudaMemcpyAsync(dst[i], host, bytes,
                                                                   cudaMemcpyHostToDevice),
                                                   "pinned h2d copy");
                                     }),
                                     bytes);
  }
  for (void* p : src) cudaFree(p);
  for (void* p : dst) cudaFree(p);
  if (host != nullptr) cudaFreeHost(host);
  if (a != nullptr) cudaEventDestroy(a);
  if (b != nullptr) cudaEventDestroy(b);
  if (!st.ok()) return st;
  return out;
}

#else  // !KVSTASH_BENCH_CUDA

absl::StatusOr<std::unique_ptr<Transport>> OpenCudaIpcTransport(const TransportOptions&) {
  return absl::UnimplementedError(
      "--transport cuda-ipc: this kvstash-bench was built without CUDA");
}

absl::StatusOr<DeviceBaselines> MeasureDeviceBaselines(int, uint64_t) {
  return absl::UnimplementedError("device baselines: built without CUDA");
}

#endif

}  // namespace kvstash::bench
