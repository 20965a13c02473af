// The gRPC front end of the store: kvstash.v1.KvStash on the callback API.
// Semantics, limits and error codes of every RPC are in docs/api.md.
//
// The handler logic lives in plain functions (Validate*/Handle*) that take the store and a
// request and fill a response, so it is testable without a network. KvStashService only
// adapts them to gRPC: Lookup, Delete and Stats are short and run on gRPC's callback
// thread; Put and Get (encode, decode) are handed to a bounded WorkerPool and the reactor
// is finished from there, so callback threads never block on codec work.
//
// With a metrics::Metrics every call is counted (method, transport, status code), timed
// and sized, Lookups record their hit length, and every Nth successful Put is decoded
// again after its reply (the fidelity probe, ProbeFidelity below). docs/operators.md.
//
// Thread-safe: every function and method may be called concurrently.
#ifndef KVSTASH_SERVER_RPC_SERVICE_H_
#define KVSTASH_SERVER_RPC_SERVICE_H_

#include <atomic>
#include <functional>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "kvstash/v1/kvstash.pb.h"
#include "server/metrics/metrics.h"
#include "server/rpc/auth.h"
#include "server/rpc/region_registry.h"
#include "server/rpc/worker_pool.h"
#include "server/store/store.h"

namespace kvstash::rpc {

struct ServiceOptions {
  // Threads that run Put and Get (encode and decode). 0 = one per hardware thread. Default 0.
  uint32_t worker_threads = 0;
  // Largest request and response in bytes; must equal what the ServerBuilder is given.
  // A Get whose response would exceed it fails with RESOURCE_EXHAUSTED. Also the budget
  // of a request's buffers sized by the request (a paged payload gathered out of shared memory, a
  // paged result staged for it). Default 256 MiB.
  uint64_t max_message_bytes = 256ull << 20;
  // Longest accepted namespace in bytes; keep equal to StoreOptions::max_namespace_bytes so
  // that a whole Put is validated before anything is stored. Default 256.
  uint32_t max_namespace_bytes = 256;
  // Fidelity probe: decode the first chunk of every Nth successful Put again, after the
  // reply, on the worker, and record its relative error. 0 = never. Needs metrics.
  // Default 64.
  uint32_t fidelity_probe_every = 64;
  // Shared-memory regions (RegisterRegion; docs/api.md, "Shared-memory regions").
  RegionOptions regions;
};

// --- Handler logic, no gRPC types -------------------------------------------------------
// Each Validate* checks every field of a request and returns InvalidArgument naming the
// field path ("chunks[2].layout.head_dim: ..."). Each Handle* validates first, then acts;
// on error the response is unspecified and must not be sent.

// Checks everything but the payload values (which ValidateInput scans in HandlePut).
absl::Status ValidatePutRequest(const v1::PutRequest& request, const ServiceOptions& options);
absl::Status ValidateGetRequest(const v1::GetRequest& request, const ServiceOptions& options);
absl::Status ValidateLookupRequest(const v1::LookupRequest& request,
                                   const ServiceOptions& options);
absl::Status ValidateDeleteRequest(const v1::DeleteRequest& request,
                                   const ServiceOptions& options);

// Validates the whole request (including NaN/Inf in every payload), then stores the chunks
// in order, each atomically. On a storage error the chunks before the failing index stay
// stored and the message names the failing index. A chunk with data_region is read from
// that region of `regions` (pinned for the call; RegionRegistry::Acquire's errors, named
// "chunks[i].data_region..."); FailedPrecondition when `regions` is null, or when the
// region's file lost pages under the copy (SIGBUS; nothing of that chunk is stored).
// Before anything is allocated for a region's chunk: ResourceExhausted when it encodes to
// more than the store's capacity, or when a paged payload gathered out of shared memory exceeds
// options.max_message_bytes (the per-request budget; docs/api.md, "Limits").
absl::Status HandlePut(store::Store& store, const ServiceOptions& options,
                       const v1::PutRequest& request, v1::PutResponse* response,
                       RegionRegistry* regions = nullptr);
// Decodes each key's slice straight into its result's `data` string, or with output_region
// into that region of `regions` (consecutive 64-byte-aligned offsets, region_offset set).
// NotFound for a missing key unless allow_missing; ResourceExhausted when the response
// would exceed options.max_message_bytes (each result's exact wire size), or a paged
// result staged for shared memory would; InvalidArgument when the output would not fit in
// output_region.length (all checked before anything is decoded); FailedPrecondition when
// an output region's file lost pages under the decode (SIGBUS). With no output_dtype, each
// result's info, dtype and data come from the one version of its chunk that was read.
absl::Status HandleGet(store::Store& store, const ServiceOptions& options,
                       const v1::GetRequest& request, v1::GetResponse* response,
                       RegionRegistry* regions = nullptr);
absl::Status HandleRegisterRegion(RegionRegistry& regions, const ServiceOptions& options,
                                  const v1::RegisterRegionRequest& request,
                                  v1::RegisterRegionResponse* response);
absl::Status HandleLookup(store::Store& store, const ServiceOptions& options,
                          const v1::LookupRequest& request, v1::LookupResponse* response);
absl::Status HandleDelete(store::Store& store, const ServiceOptions& options,
                          const v1::DeleteRequest& request, v1::DeleteResponse* response);
void HandleStats(const store::Store& store, const ServiceOptions& options,
                 v1::StatsResponse* response);
// What a tenant without the admin right may see of a Stats response: the daemon's
// configuration (capacity, page size, limits, version) and its own namespaces; the
// store-wide counters, which sum every tenant's traffic, are zeroed.
void RestrictStats(const auth::Principal& principal, v1::StatsResponse* response);

// Relative reconstruction error ||x - x_hat|| / ||x|| of the keys and of the values of a
// chunk (0 when both are all zeros).
struct FidelityError {
  double key = 0;
  double value = 0;
};
// Decodes the whole chunk (ns, key) from `store` and compares it with `original`, the
// 16-bit payload it was put with ([L][2][T][H][D] in shape.dtype). NotFound when the chunk
// is gone or was replaced by one of another shape; the store's error otherwise. Counts as
// a Get for the store's statistics.
absl::StatusOr<FidelityError> ProbeFidelity(store::Store& store, std::string_view ns,
                                            const store::ChunkKey& key,
                                            const kernels::ChunkShape& shape,
                                            std::span<const uint8_t> original);

// --- The gRPC service -------------------------------------------------------------------

class KvStashService final : public v1::KvStash::CallbackService {
 public:
  // `store`, `metrics` (null = no metrics, no fidelity probe) and `auth` (null =
  // authentication off) are not owned and must outlive the service.
  KvStashService(store::Store* store, const ServiceOptions& options,
                 metrics::Metrics* metrics = nullptr, const CallAuthenticator* auth = nullptr);
  // Runs every queued Put/Get to completion, then joins the workers. REQUIRES: the server
  // this service is registered with has been shut down (no new calls arrive).
  ~KvStashService() override;

  // From now on new calls fail with UNAVAILABLE; calls already accepted run to completion.
  // Call before grpc::Server::Shutdown to close the window in which it still accepts calls.
  void StartDraining() { draining_.store(true, std::memory_order_release); }

  const ServiceOptions& options() const { return options_; }

  grpc::ServerUnaryReactor* Put(grpc::CallbackServerContext* context,
                                const v1::PutRequest* request,
                                v1::PutResponse* response) override;
  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* context,
                                const v1::GetRequest* request,
                                v1::GetResponse* response) override;
  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* context,
                                   const v1::LookupRequest* request,
                                   v1::LookupResponse* response) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* context,
                                   const v1::DeleteRequest* request,
                                   v1::DeleteResponse* response) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* context,
                                  const v1::StatsRequest* request,
                                  v1::StatsResponse* response) override;
  // Region RPCs are short (open, fstat, mmap of a tmpfs file) and run on the callback thread.
  grpc::ServerUnaryReactor* RegisterRegion(grpc::CallbackServerContext* context,
                                           const v1::RegisterRegionRequest* request,
                                           v1::RegisterRegionResponse* response) override;
  grpc::ServerUnaryReactor* UnregisterRegion(grpc::CallbackServerContext* context,
                                             const v1::UnregisterRegionRequest* request,
                                             v1::UnregisterRegionResponse* response) override;
  grpc::ServerUnaryReactor* RenewRegion(grpc::CallbackServerContext* context,
                                        const v1::RenewRegionRequest* request,
                                        v1::RenewRegionResponse* response) override;

  RegionRegistry& regions() { return regions_; }

 private:
  using Clock = std::chrono::steady_clock;
  // What Finish needs to account for one call.
  struct Call {
    metrics::Method method;
    Clock::time_point start;
    uint64_t bytes_in = 0;
    metrics::Transport transport = metrics::Transport::kGrpc;
  };
  // Starts accounting for a call (in-flight gauge, start time, request size).
  Call Begin(metrics::Method method, const google::protobuf::Message& request,
             metrics::Transport transport = metrics::Transport::kGrpc);
  // Finishes the reactor with UNAVAILABLE and returns true when draining.
  // The transport a Put/Get's payload takes, by the kind of its first region (none: gRPC).
  metrics::Transport TransportOf(const v1::RegionRef* ref) const;
  bool RefuseIfDraining(grpc::ServerUnaryReactor* reactor, const Call& call);
  // Refuses (finishing the reactor, returning nullopt) when draining, unauthenticated, or
  // not allowed `rights` on namespace `ns` (the request field `field`; "" = authenticate
  // only). Returns the caller's principal otherwise.
  std::optional<auth::Principal> Admit(grpc::CallbackServerContext* context,
                                       grpc::ServerUnaryReactor* reactor, const Call& call,
                                       absl::string_view ns, uint32_t rights,
                                       absl::string_view field = "namespace");
  // Logs failures worth an operator's attention, records the call, then finishes.
  // `response` is measured only when `status` is OK.
  void Finish(grpc::ServerUnaryReactor* reactor, const Call& call,
              const google::protobuf::Message* response, const absl::Status& status);
  // On the worker, after a successful Put: per-preset bit accounting, and the fidelity
  // probe when this Put is the Nth. Takes the first chunk's payload out of `request`
  // (nothing reads the request after the handler), so call it before Finish and run the
  // returned probe after.
  std::function<void()> AfterPut(const v1::PutRequest& request, const v1::PutResponse& response);

  store::Store* const store_;
  const ServiceOptions options_;
  metrics::Metrics* const metrics_;
  const CallAuthenticator* const auth_;
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> puts_ok_{0};  // successful Puts, for the probe's sampling
  RegionRegistry regions_;
  WorkerPool pool_;  // last: destroyed (drained and joined) first
};

}  // namespace kvstash::rpc

#endif  // KVSTASH_SERVER_RPC_SERVICE_H_
