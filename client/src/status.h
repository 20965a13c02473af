// The client's one conversion from gRPC status to absl::Status.
#ifndef KVSTASH_CLIENT_SRC_STATUS_H_
#define KVSTASH_CLIENT_SRC_STATUS_H_

#include <string_view>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace kvstash::client::internal {

// Same code, same message. gRPC and absl share code numbers (both follow
// google.rpc.Code), so the code maps one to one.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace kvstash::client::internal

#endif  // KVSTASH_CLIENT_SRC_STATUS_H_
