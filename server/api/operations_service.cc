#include "server/api/operations_service.h"

#include <mutex>

#include "server/api/caller.h"
#include "server/api/grpc_status.h"
#include "server/api/job_access.h"
#include "server/api/job_listing.h"
#include "server/api/job_views.h"
#include "server/scheduler/scheduler.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {
namespace {

namespace lro = ::google::longrunning;

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

constexpr absl::Duration kMaxWait = absl::Seconds(60);

// Finishes when the job is done, at the timeout, at shutdown, or when the client goes away. The timeout arrives as a
// WatchHub notification from the service's TimerNotifier, so every wake-up goes through the hub, which never calls
// a subscriber after Unsubscribe returned.
class WaitReactor final : public grpc::ServerUnaryReactor {
 public:
  WaitReactor(const ServiceDeps& deps, std::string job_id, lro::Operation* response, absl::Time deadline,
              TimerNotifier* timer)
      : deps_(deps), job_id_(std::move(job_id)), response_(response), deadline_(deadline) {
    handle_ = deps_.hub->Subscribe(job_id_, [this] { Check(); });
    timer->NotifyAt(deadline, job_id_);
    Check();
  }
  void OnCancel() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    Finish(grpc::Status::CANCELLED);
  }
  void OnDone() override {
    deps_.hub->Unsubscribe(handle_);
    delete this;
  }

 private:
  void Check() {
    auto record = deps_.scheduler->GetJob(job_id_);
    grpc::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      const bool shutting_down = deps_.shutting_down != nullptr && deps_.shutting_down->load();
      if (!record.ok()) {
        status = ToGrpcStatus(record.status());
      } else if (IsTerminal(record->job().state()) || absl::Now() >= deadline_ || shutting_down) {
        *response_ = OperationOf(*record);
      } else {
        return;
      }
      finished_ = true;
    }
    Finish(status);
  }

  const ServiceDeps deps_;
  const std::string job_id_;
  lro::Operation* response_;
  const absl::Time deadline_;
  uint64_t handle_ = 0;
  std::mutex mu_;
  bool finished_ = false;
};

}  // namespace

grpc::ServerUnaryReactor* OperationsServiceImpl::ListOperations(grpc::CallbackServerContext* ctx,
                                                                const lro::ListOperationsRequest* request,
                                                                lro::ListOperationsResponse* response) {
  auto run = [&]() -> absl::Status {
    FM_ASSIGN_OR_RETURN(Principal principal, AuthenticateCall(ctx, deps_));
    if (!request->name().empty() && request->name() != "operations") {
      return absl::InvalidArgumentError("name: must be empty or \"operations\"");
    }
    if (!request->filter().empty()) {
      return absl::InvalidArgumentError("filter: not supported; use ListConversionJobs to filter by state");
    }
    FM_ASSIGN_OR_RETURN(ListedJobs listed, ListVisibleJobs(deps_, principal, "", {}, request->page_size(),
                                                           request->page_token()));
    for (const auto& rec : listed.jobs) *response->add_operations() = OperationOf(rec);
    response->set_next_page_token(listed.next_page_token);
    return absl::OkStatus();
  };
  return Done(ctx, run());
}

grpc::ServerUnaryReactor* OperationsServiceImpl::GetOperation(grpc::CallbackServerContext* ctx,
                                                              const lro::GetOperationRequest* request,
                                                              lro::Operation* response) {
  auto access = AccessJob(ctx, deps_, request->name(), "operations/", "name");
  if (access.ok()) *response = OperationOf(access->record);
  return Done(ctx, access.status());
}

grpc::ServerUnaryReactor* OperationsServiceImpl::DeleteOperation(grpc::CallbackServerContext* ctx,
                                                                 const lro::DeleteOperationRequest* request,
                                                                 google::protobuf::Empty* response) {
  auto access = AccessJob(ctx, deps_, request->name(), "operations/", "name");
  if (!access.ok()) return Done(ctx, access.status());
  return Done(ctx, absl::UnimplementedError("DeleteOperation: jobs and their operations are kept"));
}

grpc::ServerUnaryReactor* OperationsServiceImpl::CancelOperation(grpc::CallbackServerContext* ctx,
                                                                 const lro::CancelOperationRequest* request,
                                                                 google::protobuf::Empty* response) {
  auto run = [&]() -> absl::Status {
    FM_ASSIGN_OR_RETURN(JobAccess access, AccessJob(ctx, deps_, request->name(), "operations/", "name"));
    return deps_.scheduler->CancelJob(access.job_id).status();
  };
  return Done(ctx, run());
}

grpc::ServerUnaryReactor* OperationsServiceImpl::WaitOperation(grpc::CallbackServerContext* ctx,
                                                               const lro::WaitOperationRequest* request,
                                                               lro::Operation* response) {
  auto access = AccessJob(ctx, deps_, request->name(), "operations/", "name");
  if (!access.ok()) return Done(ctx, access.status());
  absl::Duration timeout = kMaxWait;
  if (request->has_timeout()) {
    if (request->timeout().seconds() < 0 || request->timeout().nanos() < 0) {
      return Done(ctx, absl::InvalidArgumentError("timeout: must be >= 0"));
    }
    timeout = std::min(kMaxWait, absl::Seconds(request->timeout().seconds()) +
                                     absl::Nanoseconds(request->timeout().nanos()));
  }
  return new WaitReactor(deps_, access->job_id, response, absl::Now() + timeout, &timer_);
}

}  // namespace fm::server
