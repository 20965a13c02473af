// Regions registered by same-host clients (docs/api.md, "Shared-memory regions" and "CUDA
// IPC"). A region is either a file under /dev/shm that the client created and the daemon
// maps MAP_SHARED (registered with the GPUs for DMA when the daemon has any), or a device
// buffer the client shared with cudaIpcGetMemHandle, which the daemon opens once through
// the store and keeps mapped while the region lives. Put reads payloads from a region and
// Get writes decoded output into it, so payload bytes never travel in gRPC messages.
//
// Ownership: Register returns an id and a random 128-bit token; every use must present both
// and the namespace the region was registered under (PermissionDenied otherwise). Regions
// expire when their lease runs out without RenewRegion; expired regions are swept on every
// call into the registry.
//
// Lifetime: Acquire returns a RegionPin that keeps the mapping alive (a reference count):
// Unregister or expiry during a request only removes the region from the index, and the
// mapping is unmapped when the last pin is dropped.
//
// Faults: Register reserves the file's pages (fallocate), so a /dev/shm short of room fails
// the registration (ResourceExhausted) instead of a later access. A client that truncates
// (or hole-punches) a registered file anyway makes the daemon touch unbacked pages, which
// raises SIGBUS. A process-wide handler, installed by the first RegionRegistry, catches a
// SIGBUS whose address lies in a live shared-memory mapping: it maps a private zero page
// over the lost page (the access completes, reading zeros or writing nowhere) and marks the
// region faulted. Requests check RegionPin::faulted() after touching a region and fail with
// FailedPrecondition; a Put never stores a payload read from a faulted region, and a
// faulted region is refused by Acquire from then on. A SIGBUS anywhere else gets the
// previous disposition (by default: the process dies). See docs/api.md.
//
// Thread-safe: every method may be called concurrently.
#ifndef KVSTASH_SERVER_RPC_REGION_REGISTRY_H_
#define KVSTASH_SERVER_RPC_REGION_REGISTRY_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/store/store.h"

namespace kvstash::rpc {

struct RegionOptions {
  // Regions registered at once, all clients together; more → ResourceExhausted. Default 256.
  uint32_t max_regions = 256;
  // Lease given when a request asks for 0 seconds. Default 300 s.
  uint32_t default_lease_seconds = 300;
  // Longest lease granted; longer requests are cut to it. Default 3600 s.
  uint32_t max_lease_seconds = 3600;
  // Regions one namespace may have registered at once; more → ResourceExhausted naming the
  // namespace. 0 = no limit beyond max_regions. Default 0.
  uint32_t max_regions_per_namespace = 0;
  // Per-namespace overrides of max_regions_per_namespace (0 = no limit beyond
  // max_regions). Default empty.
  std::map<std::string, uint32_t> namespace_max_regions;
  // Directory every region path must name a file beneath: the path must start with
  // root + "/", and is opened relative to it without following any symbolic link or
  // leaving it. Default "/dev/shm".
  std::string root = "/dev/shm";
};

// Checks the fstat of a region file: a regular file, owned by `euid`, at least `size`
// bytes. FailedPrecondition naming `path` and what is wrong, PermissionDenied for another
// owner. Separate so the ownership rule is testable without a second user.
absl::Status CheckRegionFile(const struct stat& st, uid_t euid, uint64_t size,
                             std::string_view path);

namespace internal {
struct Region;
}

// Opens `relative` (a path relative to the directory `root_fd`, e.g. "a/b") with `flags`
// beneath that directory: no component may be a symbolic link or ".." out of it. Uses
// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS); where the kernel lacks openat2 (ENOSYS),
// or when `use_openat2` is false (tests), walks the components one openat at a time, each
// O_NOFOLLOW relative to the directory opened before it. Returns the descriptor, or -errno:
// ELOOP (a symbolic link), EXDEV (".." leaving the root), ENOENT, ENOTDIR, EISDIR, EACCES...
int OpenBeneath(int root_fd, std::string_view relative, int flags, bool use_openat2 = true);

// A pinned byte range of a registered region; keeps the mapping alive while held.
// Move-only.
class RegionPin {
 public:
  RegionPin() = default;
  RegionPin(std::shared_ptr<internal::Region> region, uint8_t* data, uint64_t size, int tier)
      : region_(std::move(region)), data_(data), size_(size), tier_(tier) {}
  uint8_t* data() const { return data_; }  // host memory, or device memory when on_device()
  uint64_t size() const { return size_; }
  bool on_device() const { return tier_ >= 0; }
  int tier() const { return tier_; }  // the store's GPU tier of a CUDA IPC region, else -1
  // Whether an access to the region's mapping has hit a page its file no longer backs
  // (SIGBUS; see the header comment). Sticky. Always false for CUDA IPC and empty pins.
  bool faulted() const;
  // OK, or FailedPrecondition naming `field` (e.g. "chunks[2].data_region") when faulted():
  // whatever was read from or written to the region by this request is not what the file
  // holds. Call after the request's last access to the mapping.
  absl::Status CheckNotFaulted(std::string_view field) const;

 private:
  std::shared_ptr<internal::Region> region_;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  int tier_ = -1;
};

class RegionRegistry {
 public:
  using Clock = std::chrono::steady_clock;

  struct Registered {
    uint64_t region_id = 0;
    std::string token;
    uint64_t size = 0;
    uint32_t lease_seconds = 0;
    bool pinned = false;  // shared memory registered with the GPUs (cudaHostRegister)
  };

  // `store` (may be null: no GPU features) opens CUDA IPC handles and registers shared
  // memory with the GPUs. `now` (default steady_clock::now) is injectable for lease tests;
  // `on_count` is called with the numbers of shared-memory and CUDA IPC regions whenever
  // they change (the metrics gauges).
  explicit RegionRegistry(const RegionOptions& options, store::Store* store = nullptr,
                          std::function<Clock::time_point()> now = nullptr,
                          std::function<void(size_t shm, size_t cuda_ipc)> on_count = nullptr);
  ~RegionRegistry();
  RegionRegistry(const RegionRegistry&) = delete;
  RegionRegistry& operator=(const RegionRegistry&) = delete;

  // Checks `path` lexically (absolute, no NUL byte, options.root + "/" followed by a
  // relative path) before touching the file system, opens it O_RDWR beneath the root
  // (OpenBeneath), checks it (a regular file of the daemon's user, at least `size` bytes),
  // reserves its first `size` bytes (fallocate) and maps them. InvalidArgument (ns empty,
  // size 0, path not absolute, holding a NUL byte or not under the root, a symbolic link
  // in any component, ".." leaving the root), NotFound (no such file under the root),
  // PermissionDenied (another user's file, or not openable), FailedPrecondition (not a
  // regular file, e.g. a directory; shorter than size), ResourceExhausted (max_regions or
  // the namespace's limit reached; no room to reserve the pages; mmap failed).
  absl::StatusOr<Registered> Register(std::string_view ns, std::string_view path,
                                      uint64_t size, uint32_t lease_seconds);
  // Registers a CUDA IPC buffer: `handle` (cudaIpcMemHandle_t bytes) of the device with
  // UUID `device_uuid`, opened through the store (cached there). size 0 = the whole
  // allocation. InvalidArgument (ns empty, handle or uuid sizes, a handle the driver
  // refuses, size larger than the allocation), FailedPrecondition (no GPU, or not one of
  // the daemon's devices), ResourceExhausted (max_regions reached).
  absl::StatusOr<Registered> RegisterCudaIpc(std::string_view ns, std::string_view handle,
                                             std::string_view device_uuid, uint64_t size,
                                             uint32_t lease_seconds);
  // NotFound (unknown or expired id), PermissionDenied (wrong token). The mapping goes when
  // the last in-flight request using it ends.
  absl::Status Unregister(uint64_t region_id, std::string_view token);
  // Restarts the lease; returns its length in seconds. Errors as Unregister.
  absl::StatusOr<uint32_t> Renew(uint64_t region_id, std::string_view token);

  // Pins [offset, offset + length) of the region for one request. `field` (e.g.
  // "chunks[2].data_region") prefixes every message. NotFound (unknown or expired id),
  // PermissionDenied (wrong token or namespace), InvalidArgument (range outside the
  // region), FailedPrecondition (the file was truncated below the mapped size, or an
  // earlier request faulted on it).
  absl::StatusOr<RegionPin> Acquire(std::string_view ns, uint64_t region_id,
                                    std::string_view token, uint64_t offset, uint64_t length,
                                    std::string_view field);

  // Whether region_id is a registered CUDA IPC region (false when unknown); for metrics.
  bool OnDevice(uint64_t region_id) const;

  // Drops expired regions now (also done by every call above).
  void Sweep();
  size_t size() const;

 private:
  void SweepLocked(Clock::time_point now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReportCount() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::shared_ptr<internal::Region>> FindLocked(uint64_t region_id,
                                                               std::string_view token,
                                                               std::string_view field)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Gives `region` an id and a lease and indexes it. ResourceExhausted at max_regions or
  // at the limit of the region's namespace.
  absl::StatusOr<Registered> Insert(std::shared_ptr<internal::Region> region,
                                    uint32_t lease_seconds);
  // ResourceExhausted when one more region would exceed max_regions or ns's limit.
  absl::Status CheckRoomLocked(std::string_view ns) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes an indexed region (the index's reference) and its namespace's count.
  std::map<uint64_t, std::shared_ptr<internal::Region>>::iterator EraseLocked(
      std::map<uint64_t, std::shared_ptr<internal::Region>>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RegionOptions options_;
  store::Store* const store_;
  const std::function<Clock::time_point()> now_;
  const std::function<void(size_t, size_t)> on_count_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, std::shared_ptr<internal::Region>> regions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint32_t, std::less<>> per_namespace_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvstash::rpc

#endif  // KVSTASH_SERVER_RPC_REGION_REGISTRY_H_
