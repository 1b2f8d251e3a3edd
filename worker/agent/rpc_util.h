// Small gRPC helpers of the agent: client contexts that carry the bearer token and a deadline, and status
// conversion (gRPC and absl share the canonical codes).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace fm::worker {

// A context with "authorization: Bearer <token>" (when the token is not empty) and a deadline `timeout` from now.
std::unique_ptr<grpc::ClientContext> NewClientContext(const std::string& bearer_token,
                                                      std::chrono::milliseconds timeout);

absl::Status FromGrpc(const grpc::Status& status);

// UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED: the server (or the path to it) is busy or away; call again.
bool IsTransient(absl::StatusCode code);

}  // namespace fm::worker
