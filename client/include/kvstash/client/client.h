// The kvstash C++ client: a thin, typed front end to the daemon's gRPC API
// (proto/kvstash/v1/kvstash.proto; semantics in docs/api.md). No generated protobuf or gRPC
// type appears in this header.
//
// Thread-safe: one Client may be shared by any number of threads; calls are independent
// and each carries its own deadline.
//
// Errors: every method returns the daemon's status with its code and message unchanged
// (InvalidArgument, NotFound, ResourceExhausted, ...). A daemon that cannot be reached is
// Unavailable; a call that runs past its deadline is DeadlineExceeded.
#ifndef KVSTASH_CLIENT_CLIENT_H_
#define KVSTASH_CLIENT_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvstash/client/chunk_key.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"

namespace kvstash::client {

// TLS on the gRPC connection (docs/api.md, "Authentication and TLS (clients)"). Files are
// read once, by Client::Connect.
struct TlsOptions {
  // Use TLS and verify the daemon's certificate. Default false: plaintext (loopback and
  // Unix-socket deployments). The other fields require enabled.
  bool enabled = false;
  // PEM bundle of the CAs that may sign the daemon's certificate. Default empty: the
  // system's roots (as gRPC finds them).
  std::string ca_file;
  // Mutual TLS: PEM certificate chain and PEM private key this client presents. Both or
  // neither. Default empty: no client certificate.
  std::string cert_file;
  std::string key_file;
  // Name the daemon's certificate must carry instead of the target's host (test
  // certificates, an IP address without an IP SAN). Default empty: the target's host, and
  // "localhost" for unix: targets.
  std::string server_name_override;
};

struct ClientOptions {
  // Daemon address: "host:port", "unix:/abs/path.sock" (a Unix domain socket), or any
  // other gRPC target. Default "127.0.0.1:7450".
  std::string target = "127.0.0.1:7450";
  // Bearer token sent as metadata "authorization: Bearer <token>" on every call, over TLS
  // or plaintext alike. Visible ASCII only (0x21-0x7e). Default empty: no authorization
  // metadata. The library reads no environment variable; LoadTokenFile reads a token file.
  std::string token;
  // TLS on the connection. Default: plaintext.
  TlsOptions tls;
  // Deadline of a call that does not set its own. Default 30 s.
  std::chrono::milliseconds default_timeout{30'000};
  // Largest message sent or received, bytes. Default 256 MiB; the daemon has its own limit
  // (Stats().max_message_bytes).
  int max_message_bytes = 256 << 20;
  // When > 0, Connect waits this long for the channel to be ready and fails with
  // Unavailable otherwise. Default 0: connect lazily on the first call.
  std::chrono::milliseconds connect_timeout{0};
};

// Reads a bearer token from the file at `path`: its contents less leading and trailing
// whitespace (so a trailing newline is fine). InvalidArgument naming the path when the file
// cannot be read, is empty, or holds a character a token cannot have.
absl::StatusOr<std::string> LoadTokenFile(const std::string& path);

// OK when `token` can be sent as a bearer token (visible ASCII, 0x21-0x7e; empty is OK);
// InvalidArgument "<field>: byte N (0x..) is not visible ASCII; ..." otherwise.
absl::Status ValidateToken(std::string_view token, std::string_view field = "token");

// Per-call settings.
struct CallOptions {
  // Overrides ClientOptions::default_timeout for this call.
  std::optional<std::chrono::milliseconds> timeout;
};

// How a chunk is encoded: a named preset, or a custom configuration.
struct Codec {
  // The preset; kCustom means `config` is sent as is (config.raw must be false: use the
  // fp16 preset for lossless storage).
  kernels::Preset preset = kernels::Preset::kXQuant;
  kernels::CodecConfig config;  // used only when preset == kCustom

  static Codec FromPreset(kernels::Preset p) { return Codec{p, {}}; }
  static Codec Custom(const kernels::CodecConfig& c) {
    return Codec{kernels::Preset::kCustom, c};
  }
};

// What a stored chunk is and what it costs.
struct ChunkInfo {
  kernels::ChunkShape shape;           // geometry and stored dtype
  kernels::Preset preset = kernels::Preset::kCustom;  // kCustom for a custom configuration
  kernels::CodecConfig config;         // the effective configuration (also for presets)
  uint64_t logical_bytes = 0;          // 16-bit payload bytes
  uint64_t stored_bytes = 0;           // encoded bytes the daemon keeps
  double equivalent_bits = 0;          // B_eq, code bits only
  double true_bits = 0;                // every stored bit per element

  double compression_ratio() const {
    return stored_bytes ? static_cast<double>(logical_bytes) / stored_bytes : 0.0;
  }
};

// A shared-memory region registered with the daemon (Client::RegisterRegion; docs/api.md,
// "Shared-memory regions"). Usable only with the namespace it was registered under.
// A CUDA IPC buffer registered with Client::RegisterCudaIpc is a Region too: offsets count
// from the start of the shared allocation.
struct Region {
  uint64_t id = 0;
  std::string token;                   // ownership proof, sent with every use
  uint64_t size = 0;                   // bytes the daemon mapped
  uint32_t lease_seconds = 0;          // expires this long after registering or renewing
  bool pinned = false;                 // shared memory registered with the daemon's GPUs
};

// A paged KV cache in registered regions (docs/api.md, "Paged caches"): per layer a K and a
// V plane of 16-bit values, and the blocks that hold the tokens in order. Token t is slot
// s = (first_slot + t) % block_size of block b = block_ids[(first_slot + t) / block_size],
// and its element (head h, dim d) is at byte
//   offset + b * block_stride + s * token_stride + h * head_stride + 2 * d
// of its plane. The default strides (0) give [num_blocks][block_size][heads][head_dim];
// docs/api.md lists the values for vLLM's and SGLang's layouts.
struct PagedPlane {
  const Region* region = nullptr;      // not owned; must outlive the call
  uint64_t offset = 0;                 // block 0 of the plane, a multiple of 16
  uint64_t length = 0;                 // bytes of the plane (0 = to the end of the region)
};
struct PagedCache {
  std::vector<PagedPlane> planes;      // 2 per layer: layer 0 K, layer 0 V, layer 1 K, ...
  uint32_t block_size = 0;             // tokens per block
  uint64_t block_stride = 0;           // bytes from a block to the next (multiple of 16)
  std::vector<uint32_t> block_ids;
  uint32_t first_slot = 0;             // slot of the first token in block_ids[0]
  uint64_t token_stride = 0;           // bytes from a slot to the next (multiple of 16);
                                       //   0 = heads * head_dim * 2
  uint64_t head_stride = 0;            // bytes from a head to the next (multiple of 16);
                                       //   0 = head_dim * 2
};

// One chunk to store. `data` is borrowed for the duration of the call.
struct PutChunk {
  ChunkKey key;
  kernels::ChunkShape shape;           // payload layout [L][2][T][H][D] in shape.dtype
  Codec codec;
  std::span<const uint8_t> data;       // exactly shape.payload_bytes() bytes
  // Instead of `data` (which must then be empty): the daemon reads shape.payload_bytes()
  // bytes at `region_offset` of this registered region. Not owned; must outlive the call.
  const Region* region = nullptr;
  uint64_t region_offset = 0;
  // Instead of `data` and `region`: gather the chunk from a paged cache (all its layers).
  const PagedCache* paged = nullptr;
};

struct PutResult {
  ChunkKey key;
  ChunkInfo info;
  bool replaced = false;               // an existing chunk of this key was replaced
};

struct GetOptions {
  // Layers and heads to decode; an end of 0 means "to the last". Default: everything.
  kernels::Slice slice;
  // Output dtype; kUnspecified returns the chunk's own dtype.
  kernels::DType output_dtype = kernels::DType::kUnspecified;
  // false: one missing key fails the whole call with NotFound. true: missing keys come
  // back with found == false.
  bool allow_missing = false;
  // When set, the daemon writes the decoded bytes into this registered region instead of
  // the reply: the first found result at output_offset, each next one at the following
  // multiple of 64 bytes past output_offset (GetResult::region_offset); all must fit in
  // output_length bytes (0 = to the end of the region). Not owned; must outlive the call.
  const Region* output_region = nullptr;
  uint64_t output_offset = 0;
  uint64_t output_length = 0;
  // Instead of output_region: scatter the found results' tokens, in order, into a paged
  // cache (planes for the requested layers, rows of the requested heads).
  const PagedCache* output_paged = nullptr;
};

struct GetResult {
  ChunkKey key;
  bool found = false;
  ChunkInfo info;                      // the whole stored chunk
  kernels::DType dtype = kernels::DType::kUnspecified;  // dtype of data
  // [l1-l0][2][T][h1-h0][D] 16-bit little-endian values of the requested slice; empty
  // with GetOptions::output_region.
  std::string data;
  // With GetOptions::output_region: where in the region the slice was written.
  uint64_t region_offset = 0;
  // With GetOptions::output_paged: this result's first token in the concatenation.
  uint64_t first_token = 0;
};

struct DeleteResult {
  uint32_t deleted = 0;
  uint32_t not_found = 0;
};

// One namespace's share of the store (Stats; docs/api.md).
struct NamespaceStats {
  std::string name;
  uint64_t chunks = 0;
  uint64_t allocated_bytes = 0;     // whole pool pages, every tier
  uint64_t stored_bytes = 0;
  uint64_t logical_bytes = 0;       // 16-bit payload bytes
  uint64_t quota_evictions = 0;     // evicted to keep the namespace within its quota
  uint64_t capacity_evictions = 0;  // evicted for the store's capacity
  uint64_t quota_bytes = 0;         // 0 = no quota
};

// With authentication on, a tenant without the admin right gets the configuration fields
// and its own namespaces only; the store-wide counters are 0 (docs/security.md).
struct StoreStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t page_bytes = 0;
  uint64_t chunks = 0;
  uint64_t logical_bytes = 0;
  uint64_t stored_bytes = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t puts = 0;
  uint64_t gets = 0;
  uint64_t deletes = 0;
  double equivalent_bits = 0;  // element-weighted mean B_eq over stored chunks
  double true_bits = 0;        // 8 · stored_bytes / stored elements
  std::string version;
  std::string codec_path;      // "avx2", "scalar" or "cuda"
  uint64_t max_message_bytes = 0;
  uint64_t quota_evictions = 0;
  std::vector<NamespaceStats> namespaces;  // largest first
  uint32_t namespaces_omitted = 0;         // namespaces beyond those listed

  double compression_ratio() const {
    return stored_bytes ? static_cast<double>(logical_bytes) / stored_bytes : 0.0;
  }
};

class Client {
 public:
  // Creates a channel to options.target. Fails with InvalidArgument for a bad option (the
  // message names it: "token: ...", "tls.ca_file: cannot read '...'") and, when
  // options.connect_timeout > 0, with Unavailable if the daemon is not reachable or the TLS
  // handshake fails. A daemon that refuses the token answers each call with
  // Unauthenticated (no or unknown token) or PermissionDenied (token not allowed).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  virtual ~Client() = default;

  // Stores chunks in namespace `ns` (non-empty), all in one request; results in the order
  // of `chunks`. The daemon validates everything (shape, codec, payload size, NaN/Inf:
  // InvalidArgument) and stores all or nothing.
  virtual absl::StatusOr<std::vector<PutResult>> Put(std::string_view ns,
                                                     std::span<const PutChunk> chunks,
                                                     const CallOptions& call = {}) = 0;
  // One chunk.
  absl::StatusOr<PutResult> Put(std::string_view ns, const PutChunk& chunk,
                                const CallOptions& call = {});

  // Decodes `options.slice` of each key; results in the order of `keys`.
  virtual absl::StatusOr<std::vector<GetResult>> Get(std::string_view ns,
                                                     std::span<const ChunkKey> keys,
                                                     const GetOptions& options = {},
                                                     const CallOptions& call = {}) = 0;
  // One key; NotFound when it is absent (options.allow_missing is ignored).
  absl::StatusOr<GetResult> Get(std::string_view ns, const ChunkKey& key,
                                const GetOptions& options = {}, const CallOptions& call = {});

  // How many leading keys of `chain` are stored. A miss is not an error.
  virtual absl::StatusOr<uint32_t> Lookup(std::string_view ns, std::span<const ChunkKey> chain,
                                          const CallOptions& call = {}) = 0;

  // Removes the keys; absent keys are counted, not an error.
  virtual absl::StatusOr<DeleteResult> Delete(std::string_view ns,
                                              std::span<const ChunkKey> keys,
                                              const CallOptions& call = {}) = 0;

  virtual absl::StatusOr<StoreStats> Stats(const CallOptions& call = {}) = 0;

  // Registers `path` (an existing file under /dev/shm owned by the daemon's user, at least
  // `size` bytes; see SharedRegion) for zero-copy Put/Get in namespace `ns`. lease_seconds
  // 0 = the daemon's default (300 s). Errors: docs/api.md, "RegisterRegion".
  virtual absl::StatusOr<Region> RegisterRegion(std::string_view ns, std::string_view path,
                                                uint64_t size, uint32_t lease_seconds = 0,
                                                const CallOptions& call = {}) = 0;
  // Releases the region; requests already using it finish first.
  // Registers a device buffer shared by cudaIpcGetMemHandle: `handle` is the 64 bytes of the
  // cudaIpcMemHandle_t, `device_uuid` the 16 bytes of its device's cudaDeviceProp::uuid.
  // size 0 = the whole allocation. Errors: docs/api.md, "CUDA IPC".
  virtual absl::StatusOr<Region> RegisterCudaIpc(std::string_view ns, std::string_view handle,
                                                 std::string_view device_uuid, uint64_t size = 0,
                                                 uint32_t lease_seconds = 0,
                                                 const CallOptions& call = {}) = 0;
  virtual absl::Status UnregisterRegion(const Region& region, const CallOptions& call = {}) = 0;
  // Restarts the region's lease.
  virtual absl::Status RenewRegion(const Region& region, const CallOptions& call = {}) = 0;

  // The target this client talks to.
  virtual const std::string& target() const = 0;
};

// A shared-memory file the client creates for RegisterRegion: /dev/shm/kvstash-<pid>-<random>,
// mode 0600, `size` bytes, mapped read-write. The file is unlinked and unmapped on
// destruction (unregister it first; the daemon's mapping keeps the memory alive until then).
// Move-only; not thread-safe itself, but its bytes may be used from any thread.
class SharedRegion {
 public:
  // InvalidArgument for size 0; Internal with the errno text when the file cannot be made.
  static absl::StatusOr<SharedRegion> Create(uint64_t size);
  SharedRegion() = default;
  SharedRegion(SharedRegion&& other) noexcept;
  SharedRegion& operator=(SharedRegion&& other) noexcept;
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;
  ~SharedRegion();

  const std::string& path() const { return path_; }
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  void Reset();
  std::string path_;
  int fd_ = -1;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace kvstash::client

#endif  // KVSTASH_CLIENT_CLIENT_H_
