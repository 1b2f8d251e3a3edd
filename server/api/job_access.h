// The checks every job-scoped RPC starts with: authenticate the caller, parse "jobs/{id}" (or
// "operations/{id}"), load the job, and hide jobs of tenants the caller cannot see (NOT_FOUND, as if absent).
#pragma once

#include <grpcpp/server_context.h>

#include <string_view>

#include "absl/status/statusor.h"
#include "server/api/service_deps.h"
#include "server/auth/authenticator.h"
#include "server/store/job_store.h"

namespace fm::server {

struct JobAccess {
  Principal principal;
  JobRecord record;
  std::string job_id;
};

// `name` is "<prefix>{id}"; `field` names the request field in errors.
absl::StatusOr<JobAccess> AccessJob(const grpc::CallbackServerContext* ctx, const ServiceDeps& deps,
                                    std::string_view name, std::string_view prefix, std::string_view field);

// Parses "<prefix>{id}" -> id, or INVALID_ARGUMENT naming `field`.
absl::StatusOr<std::string> ParseJobName(std::string_view name, std::string_view prefix, std::string_view field);

}  // namespace fm::server
