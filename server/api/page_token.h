// Opaque page tokens of ListConversionJobs / ListOperations: the position after the last job of a page plus a
// digest of the query's filters, so a token used with different filters is INVALID_ARGUMENT, and a token that was
// not made by this server does not parse (INVALID_ARGUMENT).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "server/store/job_store.h"

namespace fm::server {

// `filters` is any canonical text of the filters (tenant, states) the token is bound to.
std::string EncodePageToken(const JobCursor& cursor, std::string_view filters);
absl::StatusOr<JobCursor> DecodePageToken(std::string_view token, std::string_view filters);

}  // namespace fm::server
