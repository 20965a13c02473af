// The gRPC channel and per-call metadata that Client::Connect uses, for front ends that
// call the generated stub directly (kvstash-bench), so every client authenticates and
// encrypts the same way (docs/api.md, "Authentication and TLS (clients)"). Unlike
// client.h, this header includes grpcpp: link gRPC::grpc++ to use it.
//
// Thread-safe: pure functions of their arguments (CreateChannel reads the TLS files).
#ifndef KVSTASH_CLIENT_GRPC_CHANNEL_H_
#define KVSTASH_CLIENT_GRPC_CHANNEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "kvstash/client/client.h"

namespace kvstash::client {

// The metadata key of the bearer token; its value is "Bearer <token>".
inline constexpr char kAuthorizationMetadataKey[] = "authorization";

// Validates options.token and options.tls (InvalidArgument naming the field, as
// Client::Connect does), reads the TLS files and creates a channel to options.target with
// `args` plus the TLS server-name override. Does not wait for a connection and ignores
// the timeouts and max_message_bytes of `options` (set those in `args` and on each call).
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const ClientOptions& options,
                                                             grpc::ChannelArguments args);

// Per-call metadata for options.token: "authorization: Bearer <token>", or nothing when
// the token is empty. Sent with every ClientContext (AddToContext), because gRPC refuses
// call credentials on plaintext channels and a token must also work over loopback and
// Unix sockets.
class CallAuth {
 public:
  CallAuth() = default;
  explicit CallAuth(const std::string& token)
      : value_(token.empty() ? std::string() : "Bearer " + token) {}

  // Adds the authorization metadata to `ctx` (nothing without a token).
  void AddToContext(grpc::ClientContext* ctx) const {
    if (!value_.empty()) ctx->AddMetadata(kAuthorizationMetadataKey, value_);
  }

 private:
  std::string value_;  // "Bearer <token>", or empty
};

}  // namespace kvstash::client

#endif  // KVSTASH_CLIENT_GRPC_CHANNEL_H_
