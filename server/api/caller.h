// Who is calling an RPC: authenticates the `authorization` metadata of a call (bearer token) against the
// configured principals, or the embedded workers' internal token. UNAUTHENTICATED otherwise.
#pragma once

#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"
#include "server/api/service_deps.h"
#include "server/auth/authenticator.h"

namespace fm::server {

absl::StatusOr<Principal> AuthenticateCall(const grpc::CallbackServerContext* ctx, const ServiceDeps& deps);

// Workers must be admins (or the embedded workers, or anyone in anonymous mode). PERMISSION_DENIED otherwise.
absl::StatusOr<Principal> AuthenticateWorker(const grpc::CallbackServerContext* ctx, const ServiceDeps& deps);

}  // namespace fm::server
