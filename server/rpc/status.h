// The one conversion from the engine's absl::Status to the wire's grpc::Status.
// Thread-safe (a pure function).
#ifndef KVSTASH_SERVER_RPC_STATUS_H_
#define KVSTASH_SERVER_RPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace kvstash::rpc {

// Maps the code 1:1 (absl and gRPC share the canonical code space) and keeps the message.
// A code outside the canonical space becomes UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace kvstash::rpc

#endif  // KVSTASH_SERVER_RPC_STATUS_H_
