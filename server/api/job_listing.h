// One page of jobs the caller may see, newest first, with an opaque next-page token bound to the filters. Shared by
// ListConversionJobs and ListOperations.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/api/service_deps.h"
#include "server/auth/authenticator.h"
#include "server/store/job_store.h"

namespace fm::server {

struct ListedJobs {
  std::vector<JobRecord> jobs;
  std::string next_page_token;  // empty on the last page
};

// `tenant` empty: every tenant the principal sees. page_size 0 -> 50, above 1000 -> 1000, negative ->
// INVALID_ARGUMENT; unknown states -> INVALID_ARGUMENT; a tenant the principal cannot see -> PERMISSION_DENIED.
absl::StatusOr<ListedJobs> ListVisibleJobs(const ServiceDeps& deps, const Principal& principal,
                                           const std::string& tenant, const std::vector<int>& states,
                                           int page_size, const std::string& page_token);

}  // namespace fm::server
