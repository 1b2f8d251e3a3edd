#include "server/api/job_access.h"

#include "server/api/caller.h"
#include "server/scheduler/scheduler.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {

absl::StatusOr<std::string> ParseJobName(std::string_view name, std::string_view prefix, std::string_view field) {
  if (name.substr(0, prefix.size()) == prefix) {
    std::string id = JobIdFromName(StrCat("jobs/", name.substr(prefix.size())));
    if (!id.empty()) return id;
  }
  std::string shown(name.substr(0, 80));
  return absl::InvalidArgumentError(StrCat(field, ": expected \"", prefix, "{id}\", got \"", shown, "\""));
}

absl::StatusOr<JobAccess> AccessJob(const grpc::CallbackServerContext* ctx, const ServiceDeps& deps,
                                    std::string_view name, std::string_view prefix, std::string_view field) {
  JobAccess access;
  FM_ASSIGN_OR_RETURN(access.principal, AuthenticateCall(ctx, deps));
  FM_ASSIGN_OR_RETURN(access.job_id, ParseJobName(name, prefix, field));
  auto record = deps.scheduler->GetJob(access.job_id);
  if (!record.ok() || !Authenticator::CanSee(access.principal, record->job().tenant())) {
    if (record.ok() || absl::IsNotFound(record.status())) {
      return absl::NotFoundError(StrCat(prefix, access.job_id, " not found"));
    }
    return record.status();
  }
  access.record = *std::move(record);
  return access;
}

}  // namespace fm::server
