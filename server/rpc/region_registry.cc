#include "server/rpc/region_registry.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvstash::rpc {

namespace internal {
// One mapped region. Destroyed (unmapped, closed) when the index and every pin let go.
struct Region {
  std::string ns;
  std::string token;
  std::string path;
  int fd = -1;
  uint8_t* base = nullptr;
  uint64_t size = 0;
  std::chrono::steady_clock::time_point expiry;
  uint32_t lease_seconds = 0;
  // Shared memory: the GPU registration, dropped (cudaHostUnregister) before the munmap.
  std::shared_ptr<void> host_registration;
  // CUDA IPC: the store's mapping (base is its device pointer; fd stays -1).
  std::shared_ptr<const store::IpcMapping> ipc;

  int tier() const { return ipc != nullptr ? ipc->tier : -1; }

  ~Region() {
    host_registration.reset();
    if (ipc != nullptr) return;  // the store closes the mapping
    if (base != nullptr) munmap(base, size);
    if (fd >= 0) close(fd);
  }
};
}  // namespace internal

namespace {

// This Abseil's string_view is not std::string_view.
absl::string_view A(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string RandomToken() {
  // std::random_device reads the kernel's CSPRNG (getrandom) on Linux.
  std::random_device rd;
  std::string out;
  for (int i = 0; i < 4; ++i) absl::StrAppend(&out, absl::Hex(rd(), absl::kZeroPad8));
  return out;
}

// Constant-time comparison: the token is a secret.
bool TokenEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

absl::Status CheckRegionFile(const struct stat& st, uid_t euid, uint64_t size,
                             std::string_view path) {
  if (!S_ISREG(st.st_mode))
    return absl::FailedPreconditionError(absl::StrCat("path: '", A(path), "' is not a regular file"));
  if (st.st_uid != euid)
    return absl::PermissionDeniedError(absl::StrCat("path: '", A(path), "' belongs to uid ",
                                                    st.st_uid, ", not to the daemon's uid ",
                                                    euid));
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) < size)
    return absl::FailedPreconditionError(absl::StrCat("path: '", A(path), "' is ", st.st_size,
                                                      " bytes, shorter than size ", size));
  return absl::OkStatus();
}

RegionRegistry::RegionRegistry(const RegionOptions& options, store::Store* store,
                               std::function<Clock::time_point()> now,
                               std::function<void(size_t, size_t)> on_count)
    : options_(options),
      store_(store),
      now_(now ? std::move(now) : [] { return Clock::now(); }),
      on_count_(std::move(on_count)) {}

RegionRegistry::~RegionRegistry() = default;

absl::StatusOr<RegionRegistry::Registered> RegionRegistry::Register(std::string_view ns,
                                                                    std::string_view path,
                                                                    uint64_t size,
                                                                    uint32_t lease_seconds) {
  if (ns.empty()) return absl::InvalidArgumentError("namespace: empty");
  if (size == 0) return absl::InvalidArgumentError("size: must be positive");
  if (path.empty() || path.front() != '/' || path.size() >= PATH_MAX)
    return absl::InvalidArgumentError(
        absl::StrCat("path: '", A(path), "' is not an absolute path"));
  const std::string p(path);
  char resolved[PATH_MAX];
  if (realpath(p.c_str(), resolved) == nullptr) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("path: '", p, "' does not exist"));
    return absl::PermissionDeniedError(
        absl::StrCat("path: cannot resolve '", p, "': ", std::strerror(errno)));
  }
  const std::string root = options_.root + "/";
  if (std::string_view(resolved).substr(0, root.size()) != root)
    return absl::InvalidArgumentError(
        absl::StrCat("path: '", p, "' is not under ", options_.root));

  // O_NOFOLLOW: the last component must not be a symlink (realpath already followed any).
  const int fd = open(p.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT) return absl::NotFoundError(absl::StrCat("path: '", p, "' does not exist"));
    if (e == ELOOP)
      return absl::InvalidArgumentError(absl::StrCat("path: '", p, "' is a symbolic link"));
    return absl::PermissionDeniedError(
        absl::StrCat("path: cannot open '", p, "': ", std::strerror(e)));
  }
  auto region = std::make_shared<internal::Region>();
  region->fd = fd;
  struct stat st;
  if (fstat(fd, &st) != 0)
    return absl::InternalError(absl::StrCat("fstat '", p, "': ", std::strerror(errno)));
  if (absl::Status s = CheckRegionFile(st, geteuid(), size, p); !s.ok()) return s;
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED)
    return absl::ResourceExhaustedError(absl::StrCat("mmap of ", size, " bytes of '", p,
                                                     "' failed: ", std::strerror(errno)));
  region->base = static_cast<uint8_t*>(base);
  region->size = size;
  region->ns = std::string(ns);
  region->path = p;
  if (store_ != nullptr) {
    // Best effort: without it, copies to the GPUs go through staging buffers.
    absl::StatusOr<std::shared_ptr<void>> reg = store_->RegisterHostMemory(region->base, size);
    if (reg.ok()) region->host_registration = *std::move(reg);
  }
  return Insert(std::move(region), lease_seconds);
}

absl::StatusOr<RegionRegistry::Registered> RegionRegistry::RegisterCudaIpc(
    std::string_view ns, std::string_view handle, std::string_view device_uuid, uint64_t size,
    uint32_t lease_seconds) {
  if (ns.empty()) return absl::InvalidArgumentError("namespace: empty");
  if (store_ == nullptr)
    return absl::FailedPreconditionError("cuda_ipc: this daemon has no GPU tier");
  absl::StatusOr<std::shared_ptr<const store::IpcMapping>> ipc =
      store_->OpenIpcBuffer(handle, device_uuid);
  if (!ipc.ok()) return ipc.status();
  if (size > (*ipc)->size)
    return absl::InvalidArgumentError(absl::StrCat("size: ", size,
                                                   " bytes, but the shared allocation has ",
                                                   (*ipc)->size));
  auto region = std::make_shared<internal::Region>();
  region->ipc = *std::move(ipc);
  region->base = region->ipc->data;
  region->size = size == 0 ? region->ipc->size : size;
  region->ns = std::string(ns);
  region->path = absl::StrCat("cuda-ipc:tier", region->ipc->tier);
  return Insert(std::move(region), lease_seconds);
}

absl::StatusOr<RegionRegistry::Registered> RegionRegistry::Insert(
    std::shared_ptr<internal::Region> region, uint32_t lease_seconds) {
  region->token = RandomToken();
  region->lease_seconds = lease_seconds == 0 ? options_.default_lease_seconds
                                             : std::min(lease_seconds, options_.max_lease_seconds);
  Registered out;
  {
    absl::MutexLock lock(&mu_);
    const Clock::time_point now = now_();
    SweepLocked(now);
    if (regions_.size() >= options_.max_regions)
      return absl::ResourceExhaustedError(
          absl::StrCat("regions: ", regions_.size(), " registered, the daemon's limit (",
                       options_.max_regions, "); unregister unused regions"));
    region->expiry = now + std::chrono::seconds(region->lease_seconds);
    out.region_id = next_id_++;
    out.token = region->token;
    out.size = region->size;
    out.lease_seconds = region->lease_seconds;
    out.pinned = region->host_registration != nullptr;
    regions_.emplace(out.region_id, std::move(region));
    ReportCount();
  }
  return out;
}

absl::StatusOr<std::shared_ptr<internal::Region>> RegionRegistry::FindLocked(
    uint64_t region_id, std::string_view token, std::string_view field) {
  auto it = regions_.find(region_id);
  if (it == regions_.end())
    return absl::NotFoundError(absl::StrCat(A(field), "region_id: region ", region_id,
                                            " is not registered (unregistered or lease expired)"));
  if (!TokenEquals(it->second->token, token))
    return absl::PermissionDeniedError(
        absl::StrCat(A(field), "token: does not match region ", region_id));
  return it->second;
}

absl::Status RegionRegistry::Unregister(uint64_t region_id, std::string_view token) {
  std::shared_ptr<internal::Region> dropped;  // unmapped after the lock (if the last ref)
  {
    absl::MutexLock lock(&mu_);
    SweepLocked(now_());
    absl::StatusOr<std::shared_ptr<internal::Region>> r = FindLocked(region_id, token, "");
    if (!r.ok()) return r.status();
    dropped = std::move(*r);
    regions_.erase(region_id);
    ReportCount();
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> RegionRegistry::Renew(uint64_t region_id, std::string_view token) {
  absl::MutexLock lock(&mu_);
  const Clock::time_point now = now_();
  SweepLocked(now);
  absl::StatusOr<std::shared_ptr<internal::Region>> r = FindLocked(region_id, token, "");
  if (!r.ok()) return r.status();
  (*r)->expiry = now + std::chrono::seconds((*r)->lease_seconds);
  return (*r)->lease_seconds;
}

absl::StatusOr<RegionPin> RegionRegistry::Acquire(std::string_view ns, uint64_t region_id,
                                                  std::string_view token, uint64_t offset,
                                                  uint64_t length, std::string_view field) {
  const std::string f = field.empty() ? std::string() : absl::StrCat(A(field), ".");
  std::shared_ptr<internal::Region> region;
  {
    absl::MutexLock lock(&mu_);
    SweepLocked(now_());
    absl::StatusOr<std::shared_ptr<internal::Region>> r = FindLocked(region_id, token, f);
    if (!r.ok()) return r.status();
    region = std::move(*r);
  }
  if (region->ns != ns)
    return absl::PermissionDeniedError(absl::StrCat(
        f, "region_id: region ", region_id, " belongs to another namespace than '", A(ns), "'"));
  if (offset > region->size)
    return absl::InvalidArgumentError(absl::StrCat(f, "offset: ", offset,
                                                   " is past the end of region ", region_id,
                                                   " (", region->size, " bytes)"));
  if (length > region->size - offset)
    return absl::InvalidArgumentError(absl::StrCat(
        f, "length: ", length, " bytes from offset ", offset, " run past the end of region ",
        region_id, " (", region->size, " bytes)"));
  // The mapping would SIGBUS on pages the file no longer backs: check before any byte is
  // touched (the residual race is in the header comment).
  struct stat st;
  if (region->ipc == nullptr &&
      (fstat(region->fd, &st) != 0 || st.st_size < 0 ||
       static_cast<uint64_t>(st.st_size) < region->size))
    return absl::FailedPreconditionError(absl::StrCat(
        f, "region_id: the file of region ", region_id, " ('", region->path,
        "') was truncated to ", st.st_size, " bytes, below its registered size ",
        region->size, "; unregister it"));
  uint8_t* data = region->base + offset;
  const int tier = region->tier();
  return RegionPin(std::move(region), data, length, tier);
}

void RegionRegistry::Sweep() {
  absl::MutexLock lock(&mu_);
  SweepLocked(now_());
}

bool RegionRegistry::OnDevice(uint64_t region_id) const {
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(region_id);
  return it != regions_.end() && it->second->ipc != nullptr;
}

size_t RegionRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return regions_.size();
}

void RegionRegistry::SweepLocked(Clock::time_point now) {
  // Erasing drops the index's reference; an in-flight pin keeps the mapping until it ends.
  // munmap of a last reference runs here under the lock: rare (one per expired region)
  // and short, so not worth a deferral list.
  bool changed = false;
  for (auto it = regions_.begin(); it != regions_.end();) {
    if (it->second->expiry <= now) {
      it = regions_.erase(it);
      changed = true;
    } else {
      ++it;
    }
  }
  if (changed) ReportCount();
}

void RegionRegistry::ReportCount() {
  if (!on_count_) return;
  size_t cuda = 0;
  for (const auto& [id, r] : regions_) cuda += r->ipc != nullptr ? 1 : 0;
  on_count_(regions_.size() - cuda, cuda);
}

}  // namespace kvstash::rpc
