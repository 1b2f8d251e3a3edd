#include "server/api/job_listing.h"

#include <algorithm>

#include "flashmorph/v1/conversion_job.pb.h"
#include "server/api/page_token.h"
#include "server/scheduler/scheduler.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {

absl::StatusOr<ListedJobs> ListVisibleJobs(const ServiceDeps& deps, const Principal& principal,
                                           const std::string& tenant, const std::vector<int>& states_in,
                                           int page_size, const std::string& page_token) {
  namespace v1 = ::flashmorph::v1;
  ListedJobs out;
  if (page_size < 0) return absl::InvalidArgumentError("page_size: must be >= 0");
  JobQuery query;
  query.limit = page_size == 0 ? 50 : std::min(page_size, 1000);
  if (!tenant.empty()) {
    if (!Authenticator::CanSee(principal, tenant)) {
      return absl::PermissionDeniedError(StrCat("tenant '", tenant, "' is not visible to the caller"));
    }
    query.tenants.push_back(tenant);
  } else if (!principal.admin) {
    query.tenants = principal.tenants;
    if (query.tenants.empty()) return out;
  }
  std::vector<int> states;
  for (int s : states_in) {
    if (!v1::ConversionJob::State_IsValid(s) || s == v1::ConversionJob::STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(StrCat("states: unknown state ", s));
    }
    states.push_back(s);
  }
  std::sort(states.begin(), states.end());
  states.erase(std::unique(states.begin(), states.end()), states.end());
  query.states = states;
  std::string filters = StrCat("tenant=", tenant, ";states=");
  for (int s : states) filters += StrCat(s, ",");
  if (!page_token.empty()) {
    FM_ASSIGN_OR_RETURN(query.after, DecodePageToken(page_token, filters));
  }
  FM_ASSIGN_OR_RETURN(JobPage page, deps.store->ListJobs(query));
  out.jobs = std::move(page.jobs);
  if (page.more && !out.jobs.empty()) {
    const auto& last = out.jobs.back().job();
    JobCursor cursor{last.create_time().seconds() * 1'000'000 + last.create_time().nanos() / 1000,
                     JobIdFromName(last.name())};
    out.next_page_token = EncodePageToken(cursor, filters);
  }
  return out;
}

}  // namespace fm::server
