#include "server/rpc/region_registry.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvstash::rpc {

// --- The SIGBUS guard ---------------------------------------------------------------------
//
// A table of the live shared-memory mappings that the signal handler can read without
// locks: a slot per mapping, [begin, end) and a sticky `faulted` flag, all atomics. A slot
// is filled after its mmap and emptied before its munmap, so the handler never matches an
// address that is not a live region mapping. Slots are reused; `used` is claimed by CAS.
// The handler only scans slots below the high-water mark.
namespace {

struct GuardSlot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};  // 0: empty
  std::atomic<bool> faulted{false};
  std::atomic<bool> used{false};
};
static_assert(std::atomic<uintptr_t>::is_always_lock_free &&
              std::atomic<bool>::is_always_lock_free,
              "the SIGBUS handler needs lock-free atomics");

// The daemon's max_regions is at most 65536 (server/config); room for a few registries.
constexpr size_t kGuardSlots = 4 * 65536;
GuardSlot g_slots[kGuardSlots];
std::atomic<size_t> g_slots_used{0};  // high-water mark
uintptr_t g_page_size = 4096;
struct sigaction g_previous_sigbus;

void OnSigbus(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  // si_code > 0: raised by the kernel for this thread's own access (not kill/sigqueue).
  if (info != nullptr && info->si_code > 0) {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
    const size_t n = std::min(g_slots_used.load(std::memory_order_acquire), kGuardSlots);
    for (size_t i = 0; i < n; ++i) {
      GuardSlot& slot = g_slots[i];
      const uintptr_t end = slot.end.load(std::memory_order_acquire);
      const uintptr_t begin = slot.begin.load(std::memory_order_acquire);
      if (end == 0 || addr < begin || addr >= end) continue;
      // A private zero page in place of the one the file lost: the access completes (a
      // read sees zeros, a write goes nowhere) and the request sees the flag afterwards.
      // mmap is a plain system call here (not on POSIX's async-signal-safe list, but
      // glibc's wrapper keeps no state).
      void* page = reinterpret_cast<void*>(addr & ~(g_page_size - 1));
      if (mmap(page, g_page_size, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
        slot.faulted.store(true, std::memory_order_release);
        errno = saved_errno;
        return;
      }
      break;
    }
  }
  // Not a region's page: what would have happened without this handler.
  const struct sigaction& prev = g_previous_sigbus;
  if ((prev.sa_flags & SA_SIGINFO) != 0 && prev.sa_sigaction != nullptr) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if ((prev.sa_flags & SA_SIGINFO) == 0 && prev.sa_handler != SIG_DFL &&
      prev.sa_handler != SIG_IGN) {
    prev.sa_handler(sig);
    return;
  }
  // The default action (a SIGBUS from a fault cannot be ignored): re-raised, it stays
  // pending while this handler runs and kills the process (core dump) when it returns.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  raise(sig);
  errno = saved_errno;
}

void InstallSigbusHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_page_size = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    struct sigaction sa {};
    sa.sa_sigaction = OnSigbus;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigaction(SIGBUS, &sa, &g_previous_sigbus);
  });
}

// Claims a slot for [base, base + size); -1 when the table is full.
int GuardMapping(const uint8_t* base, uint64_t size) {
  const size_t n = std::min(g_slots_used.load(std::memory_order_acquire), kGuardSlots);
  size_t i = 0;
  bool claimed = false;
  for (; i < n && !claimed; ++i) {
    bool expected = false;
    claimed = g_slots[i].used.compare_exchange_strong(expected, true);
  }
  if (claimed) {
    --i;
  } else {
    i = g_slots_used.fetch_add(1, std::memory_order_acq_rel);
    if (i >= kGuardSlots) return -1;
    g_slots[i].used.store(true);
  }
  GuardSlot& slot = g_slots[i];
  slot.faulted.store(false, std::memory_order_relaxed);
  slot.begin.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
  slot.end.store(reinterpret_cast<uintptr_t>(base) + size, std::memory_order_release);
  return static_cast<int>(i);
}

// Empties slot i. REQUIRES: nothing accesses its mapping any more (before the munmap).
void UnguardMapping(int i) {
  GuardSlot& slot = g_slots[i];
  slot.end.store(0, std::memory_order_release);
  slot.begin.store(0, std::memory_order_release);
  slot.faulted.store(false, std::memory_order_relaxed);
  slot.used.store(false, std::memory_order_release);
}

}  // namespace

namespace internal {
// One mapped region. Destroyed (unmapped, closed) when the index and every pin let go.
struct Region {
  std::string ns;
  std::string token;
  std::string path;
  int fd = -1;
  uint8_t* base = nullptr;
  uint64_t size = 0;
  int guard = -1;  // shared memory: its slot in the SIGBUS guard table
  std::chrono::steady_clock::time_point expiry;
  uint32_t lease_seconds = 0;
  // Shared memory: the GPU registration, dropped (cudaHostUnregister) before the munmap.
  std::shared_ptr<void> host_registration;
  // CUDA IPC: the store's mapping (base is its device pointer; fd stays -1).
  std::shared_ptr<const store::IpcMapping> ipc;

  int tier() const { return ipc != nullptr ? ipc->tier : -1; }
  bool faulted() const {
    return guard >= 0 && g_slots[guard].faulted.load(std::memory_order_acquire);
  }

  ~Region() {
    host_registration.reset();
    if (ipc != nullptr) return;  // the store closes the mapping
    if (guard >= 0) UnguardMapping(guard);
    if (base != nullptr) munmap(base, size);
    if (fd >= 0) close(fd);
  }
};
}  // namespace internal

bool RegionPin::faulted() const { return region_ != nullptr && region_->faulted(); }

absl::Status RegionPin::CheckNotFaulted(std::string_view field) const {
  if (!faulted()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      absl::string_view(field.data(), field.size()), ": the file of the region ('",
      region_->path, "') lost pages while this request used them (SIGBUS: truncated or "
      "punched while registered); nothing was read from or written to it reliably, and the "
      "region is refused from now on: unregister it and register a new one"));
}

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

int OpenBeneath(int root_fd, std::string_view relative, int flags, bool use_openat2) {
  const std::string rel(relative);
  if (use_openat2) {
    open_how how{};
    how.flags = static_cast<uint64_t>(flags | O_NOFOLLOW | O_CLOEXEC);
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    for (int attempt = 0; attempt < 8; ++attempt) {
      const long fd = syscall(SYS_openat2, root_fd, rel.c_str(), &how, sizeof(how));
      if (fd >= 0) return static_cast<int>(fd);
      // EAGAIN: a concurrent rename kept the kernel from proving ".." stayed beneath.
      if (errno == EAGAIN || errno == EINTR) continue;
      if (errno != ENOSYS) return -errno;
      break;  // a kernel before 5.6 (or a seccomp filter hiding openat2): walk instead
    }
    if (errno != ENOSYS) return -errno;
  }
  // One component at a time, each opened O_NOFOLLOW relative to the directory descriptor
  // of the one before: a component swapped for a symbolic link between two steps is
  // refused by the open itself, so there is no window between checking and opening.
  std::vector<std::string_view> parts;
  for (size_t i = 0; i <= relative.size();) {
    const size_t j = std::min(relative.find('/', i), relative.size());
    const std::string_view part = relative.substr(i, j - i);
    if (part == "..") return -EXDEV;
    if (!part.empty() && part != ".") parts.push_back(part);
    i = j + 1;
  }
  if (parts.empty()) return -EISDIR;  // the root itself
  int dir = root_fd;
  for (size_t k = 0; k + 1 < parts.size(); ++k) {
    const std::string part(parts[k]);
    const int next = openat(dir, part.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    const int e = errno;
    if (next < 0) {
      // O_PATH|O_NOFOLLOW opens a symbolic link itself, which O_DIRECTORY then refuses.
      struct stat st;
      const bool link = e == ENOTDIR && fstatat(dir, part.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                        S_ISLNK(st.st_mode);
      if (dir != root_fd) close(dir);
      return link ? -ELOOP : -e;
    }
    if (dir != root_fd) close(dir);
    dir = next;
  }
  const std::string last(parts.back());
  const int fd = openat(dir, last.c_str(), flags | O_NOFOLLOW | O_CLOEXEC);
  const int e = errno;
  if (dir != root_fd) close(dir);
  return fd >= 0 ? fd : -e;
}

RegionRegistry::RegionRegistry(const RegionOptions& options, store::Store* store,
                               std::function<Clock::time_point()> now,
                               std::function<void(size_t, size_t)> on_count)
    : options_(options),
      store_(store),
      now_(now ? std::move(now) : [] { return Clock::now(); }),
      on_count_(std::move(on_count)) {
  InstallSigbusHandler();
}

RegionRegistry::~RegionRegistry() = default;

absl::StatusOr<RegionRegistry::Registered> RegionRegistry::Register(std::string_view ns,
                                                                    std::string_view path,
                                                                    uint64_t size,
                                                                    uint32_t lease_seconds) {
  if (ns.empty()) return absl::InvalidArgumentError("namespace: empty");
  if (size == 0) return absl::InvalidArgumentError("size: must be positive");
  // A NUL would end the path early for the kernel: refused, not cut.
  if (path.find('\0') != std::string_view::npos)
    return absl::InvalidArgumentError(
        absl::StrCat("path: holds a NUL byte at offset ", path.find('\0')));
  const std::string p(path);
  if (path.empty() || path.front() != '/' || path.size() >= PATH_MAX)
    return absl::InvalidArgumentError(absl::StrCat("path: '", p, "' is not an absolute path"));
  // Lexically first, before the file system is touched: the answer for a path outside the
  // root must not depend on whether it exists there.
  const std::string& root = options_.root;
  std::string_view rel;  // the path below the root
  if (p.size() > root.size() && p.compare(0, root.size(), root) == 0 && p[root.size()] == '/')
    rel = std::string_view(p).substr(root.size() + 1);
  while (!rel.empty() && rel.front() == '/') rel.remove_prefix(1);  // "/dev/shm//x"
  if (rel.empty())
    return absl::InvalidArgumentError(absl::StrCat("path: '", p, "' is not under ", root));
  {
    absl::MutexLock lock(&mu_);
    SweepLocked(now_());
    if (absl::Status s = CheckRoomLocked(ns); !s.ok()) return s;  // before any work
  }

  const int root_fd = open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0)
    return absl::FailedPreconditionError(absl::StrCat(
        "path: the daemon cannot open its region root ", root, ": ", std::strerror(errno)));
  const int fd = OpenBeneath(root_fd, rel, O_RDWR);
  close(root_fd);
  if (fd < 0) {
    const int e = -fd;
    if (e == ENOENT || e == ENOTDIR)
      return absl::NotFoundError(absl::StrCat("path: '", p, "' does not exist"));
    if (e == ELOOP)
      return absl::InvalidArgumentError(absl::StrCat(
          "path: '", p, "' goes through a symbolic link (no component may be one)"));
    if (e == EXDEV)
      return absl::InvalidArgumentError(absl::StrCat("path: '", p, "' is not under ", root));
    if (e == EISDIR)
      return absl::FailedPreconditionError(
          absl::StrCat("path: '", p, "' is a directory, not a regular file"));
    return absl::PermissionDeniedError(
        absl::StrCat("path: cannot open '", p, "': ", std::strerror(e)));
  }
  auto region = std::make_shared<internal::Region>();
  region->fd = fd;
  struct stat st;
  if (fstat(fd, &st) != 0)
    return absl::InternalError(absl::StrCat("fstat '", p, "': ", std::strerror(errno)));
  if (absl::Status s = CheckRegionFile(st, geteuid(), size, p); !s.ok()) return s;
  // Reserve the pages now: a sparse file (ftruncate) on a /dev/shm with less room than the
  // region would otherwise fail only when a request touches a page (SIGBUS). fallocate(2)
  // rather than posix_fallocate: where the file system cannot reserve, glibc's fallback
  // would write a zero byte into every block that reads as zero, racing the client's writes.
  for (;;) {
    if (fallocate(fd, 0, 0, static_cast<off_t>(size)) == 0) break;
    const int e = errno;
    if (e == EINTR) continue;
    if (e == EOPNOTSUPP || e == ENOSYS) break;  // not reservable here; the guard remains
    struct statvfs vfs;
    const std::string room =
        fstatvfs(fd, &vfs) == 0
            ? absl::StrCat(uint64_t{vfs.f_bavail} * vfs.f_frsize, " bytes are free there")
            : std::string("its free space is unknown");
    if (e == ENOSPC || e == ENOMEM || e == EDQUOT)
      return absl::ResourceExhaustedError(absl::StrCat(
          "size: cannot reserve ", size, " bytes of '", p, "' (", std::strerror(e), "); ",
          room, " (", root, "); free space or register a smaller region"));
    return absl::FailedPreconditionError(absl::StrCat(
        "path: cannot reserve ", size, " bytes of '", p, "': ", std::strerror(e)));
  }
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED)
    return absl::ResourceExhaustedError(absl::StrCat("mmap of ", size, " bytes of '", p,
                                                     "' failed: ", std::strerror(errno)));
  region->base = static_cast<uint8_t*>(base);
  region->size = size;
  region->ns = std::string(ns);
  region->path = p;
  region->guard = GuardMapping(region->base, size);
  if (region->guard < 0)
    return absl::ResourceExhaustedError(absl::StrCat(
        "regions: the daemon's table of ", kGuardSlots, " guarded mappings is full"));
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
    if (absl::Status s = CheckRoomLocked(region->ns); !s.ok()) return s;
    ++per_namespace_[region->ns];
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

absl::Status RegionRegistry::CheckRoomLocked(std::string_view ns) const {
  if (regions_.size() >= options_.max_regions)
    return absl::ResourceExhaustedError(
        absl::StrCat("regions: ", regions_.size(), " registered, the daemon's limit (",
                     options_.max_regions, "); unregister unused regions"));
  uint32_t limit = options_.max_regions_per_namespace;
  const std::string key(ns);
  if (auto it = options_.namespace_max_regions.find(key);
      it != options_.namespace_max_regions.end())
    limit = it->second;
  if (limit == 0) return absl::OkStatus();
  const auto it = per_namespace_.find(ns);
  const uint32_t have = it == per_namespace_.end() ? 0 : it->second;
  if (have >= limit)
    return absl::ResourceExhaustedError(absl::StrCat(
        "namespace: '", key, "' has ", have, " regions registered, its limit (", limit,
        "); unregister unused regions"));
  return absl::OkStatus();
}

std::map<uint64_t, std::shared_ptr<internal::Region>>::iterator RegionRegistry::EraseLocked(
    std::map<uint64_t, std::shared_ptr<internal::Region>>::iterator it) {
  if (auto n = per_namespace_.find(it->second->ns); n != per_namespace_.end() && --n->second == 0)
    per_namespace_.erase(n);
  return regions_.erase(it);
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
    EraseLocked(regions_.find(region_id));
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
  // A region whose mapping faulted holds zero pages where the file's were: never again.
  if (region->faulted())
    return absl::FailedPreconditionError(absl::StrCat(
        f, "region_id: the file of region ", region_id, " ('", region->path,
        "') lost pages while a request used them (SIGBUS: truncated while registered); "
        "unregister it"));
  // The mapping would SIGBUS on pages the file no longer backs: check before any byte is
  // touched (a truncation during the request is caught by the SIGBUS guard instead).
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
      it = EraseLocked(it);
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
