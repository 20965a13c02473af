// kvstash-bench's cuda-ipc transport: the bench plays a GPU worker on the daemon's node.
// Payloads live in device memory (each distinct payload uploaded once, as a worker's KV
// cache would already be there) and are shared with the daemon by CUDA IPC handles; Put
// names a registered buffer, Get decodes into a per-request output slot of another one.
// gRPC carries only the control messages. Also the device-side physical limits the
// transport is reported against: a device-to-device copy and a pinned host-to-device copy.
//
// Built only with CUDA (KVSTASH_BENCH_CUDA); without it OpenCudaIpcTransport answers
// Unimplemented.
#ifndef KVSTASH_CLIENT_BENCH_CUDA_IPC_TRANSPORT_H_
#define KVSTASH_CLIENT_BENCH_CUDA_IPC_TRANSPORT_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "transport.h"

namespace kvstash::bench {

// Opens the transport on CUDA device options.cuda_device: a gRPC connection, an output
// buffer of shm_slots × shm_slot_bytes registered with the daemon. Get replies carry the
// decoded bytes only when options.fetch_device_results (for --verify); otherwise
// GetReply::logical_bytes says how many stayed on the device.
absl::StatusOr<std::unique_ptr<Transport>> OpenCudaIpcTransport(const TransportOptions& options);

// Bandwidths of copying `bytes` on device options.cuda_device, median of several timed
// repetitions after a warm-up: device to device, and pinned host to device.
struct DeviceBaselines {
  double d2d_gbps = 0;
  double h2d_pinned_gbps = 0;
};
absl::StatusOr<DeviceBaselines> MeasureDeviceBaselines(int cuda_device, uint64_t bytes);

}  // namespace kvstash::bench

#endif  // KVSTASH_CLIENT_BENCH_CUDA_IPC_TRANSPORT_H_
