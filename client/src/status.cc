#include "status.h"

#include <string>

namespace kvstash::client::internal {

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  // Codes 1..16 are shared; anything else a peer might send is Unknown.
  const absl::StatusCode mapped = (code >= 1 && code <= 16)
                                      ? static_cast<absl::StatusCode>(code)
                                      : absl::StatusCode::kUnknown;
  return absl::Status(mapped, status.error_message());
}

}  // namespace kvstash::client::internal
