#include "server/api/worker_service.h"

#include <memory>
#include <thread>

#include "server/api/caller.h"
#include "server/api/grpc_status.h"
#include "server/artifacts/artifact_store.h"
#include "server/scheduler/scheduler.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {
namespace {

namespace v1 = ::flashmorph::v1;

constexpr size_t kMaxUploadChunk = size_t{1} << 20;

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A long poll. The scheduler's callback may come at once, later from another thread, or never before the client
// hangs up; the shared state decides who finishes the RPC, and outlives the reactor.
class LeaseReactor final : public grpc::ServerUnaryReactor {
 public:
  LeaseReactor(Scheduler* scheduler, const v1::LeaseJobRequest& request, v1::LeaseJobResponse* response)
      : scheduler_(scheduler), state_(std::make_shared<State>()) {
    state_->reactor = this;
    state_->response = response;
    uint64_t id = scheduler_->LeaseJob(request, [state = state_](absl::StatusOr<v1::LeaseJobResponse> r) {
      LeaseReactor* reactor;
      {
        std::lock_guard<std::mutex> lock(state->mu);
        if (state->done) return;
        state->done = true;
        if (r.ok()) *state->response = *std::move(r);
        reactor = state->reactor;
      }
      reactor->Finish(ToGrpcStatus(r.status()));
    });
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->poll_id = id;
  }
  void OnCancel() override {
    uint64_t poll_id;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->done) return;
      state_->done = true;
      poll_id = state_->poll_id;
    }
    if (poll_id != 0) scheduler_->CancelPoll(poll_id);
    Finish(grpc::Status::CANCELLED);
  }
  void OnDone() override { delete this; }

 private:
  struct State {
    std::mutex mu;
    bool done = false;
    uint64_t poll_id = 0;
    LeaseReactor* reactor = nullptr;
    v1::LeaseJobResponse* response = nullptr;
  };
  Scheduler* const scheduler_;
  std::shared_ptr<State> state_;
};

// One uploaded file: validated against the lease on the first message and again before answering.
class UploadReactor final : public grpc::ServerReadReactor<v1::UploadArtifactRequest> {
 public:
  UploadReactor(const ServiceDeps& deps, v1::UploadArtifactResponse* response) : deps_(deps), response_(response) {
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the stream ended before finish_write"));
      return;
    }
    absl::Status status = Handle();
    if (!status.ok()) {
      upload_.reset();  // removes the partial file
      Finish(ToGrpcStatus(status));
      return;
    }
    if (finished_) {
      Finish(grpc::Status::OK);
      return;
    }
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  absl::Status Handle() {
    if (upload_ == nullptr) {
      if (request_.lease_id().empty()) return absl::InvalidArgumentError("lease_id: required in the first message");
      if (request_.path().empty()) return absl::InvalidArgumentError("path: required in the first message");
      lease_id_ = request_.lease_id();
      path_ = request_.path();
      FM_ASSIGN_OR_RETURN(auto lease, deps_.scheduler->CheckLease(lease_id_));
      FM_ASSIGN_OR_RETURN(upload_, deps_.artifacts->BeginUpload(lease.first, lease.second, path_));
    } else {
      if (!request_.lease_id().empty() && request_.lease_id() != lease_id_) {
        return absl::InvalidArgumentError("lease_id: differs from the first message");
      }
      if (!request_.path().empty() && request_.path() != path_) {
        return absl::InvalidArgumentError("path: differs from the first message");
      }
    }
    if (request_.data().size() > kMaxUploadChunk) return absl::InvalidArgumentError("data: at most 1 MiB per message");
    FM_RETURN_IF_ERROR(upload_->Append(request_.write_offset(), request_.data()));
    if (request_.finish_write()) {
      FM_RETURN_IF_ERROR(deps_.scheduler->CheckLease(lease_id_).status());
      FM_RETURN_IF_ERROR(upload_->Finish(request_.sha256()));
      response_->set_committed_size_bytes(upload_->bytes_written());
      finished_ = true;
    }
    return absl::OkStatus();
  }

  const ServiceDeps deps_;
  v1::UploadArtifactResponse* response_;
  v1::UploadArtifactRequest request_;
  std::unique_ptr<ArtifactUpload> upload_;
  std::string lease_id_, path_;
  bool finished_ = false;
};

template <typename T>
class ErrorReadReactor final : public grpc::ServerReadReactor<T> {
 public:
  explicit ErrorReadReactor(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

WorkerServiceImpl::~WorkerServiceImpl() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait(lock, [this] { return completions_in_flight_ == 0; });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::RegisterWorker(grpc::CallbackServerContext* ctx,
                                                            const v1::RegisterWorkerRequest* request,
                                                            v1::RegisterWorkerResponse* response) {
  auto run = [&]() -> absl::Status {
    FM_RETURN_IF_ERROR(AuthenticateWorker(ctx, deps_).status());
    FM_ASSIGN_OR_RETURN(*response, deps_.scheduler->RegisterWorker(*request));
    return absl::OkStatus();
  };
  return Done(ctx, run());
}

grpc::ServerUnaryReactor* WorkerServiceImpl::LeaseJob(grpc::CallbackServerContext* ctx,
                                                      const v1::LeaseJobRequest* request,
                                                      v1::LeaseJobResponse* response) {
  auto principal = AuthenticateWorker(ctx, deps_);
  if (!principal.ok()) return Done(ctx, principal.status());
  return new LeaseReactor(deps_.scheduler, *request, response);
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Heartbeat(grpc::CallbackServerContext* ctx,
                                                       const v1::HeartbeatRequest* request,
                                                       v1::HeartbeatResponse* response) {
  auto run = [&]() -> absl::Status {
    FM_RETURN_IF_ERROR(AuthenticateWorker(ctx, deps_).status());
    FM_ASSIGN_OR_RETURN(*response, deps_.scheduler->Heartbeat(*request));
    return absl::OkStatus();
  };
  return Done(ctx, run());
}

grpc::ServerUnaryReactor* WorkerServiceImpl::CompleteJob(grpc::CallbackServerContext* ctx,
                                                         const v1::CompleteJobRequest* request,
                                                         v1::CompleteJobResponse* response) {
  auto principal = AuthenticateWorker(ctx, deps_);
  if (!principal.ok()) return Done(ctx, principal.status());
  auto* reactor = ctx->DefaultReactor();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++completions_in_flight_;
  }
  // Promotion hashes the whole artifact: keep it off gRPC's callback threads.
  std::thread([this, reactor, request, response] {
    auto result = deps_.scheduler->CompleteJob(*request);
    if (result.ok()) *response = *result;
    reactor->Finish(ToGrpcStatus(result.status()));
    std::lock_guard<std::mutex> lock(mu_);
    if (--completions_in_flight_ == 0) idle_.notify_all();
  }).detach();
  return reactor;
}

grpc::ServerReadReactor<v1::UploadArtifactRequest>* WorkerServiceImpl::UploadArtifact(
    grpc::CallbackServerContext* ctx, v1::UploadArtifactResponse* response) {
  auto principal = AuthenticateWorker(ctx, deps_);
  if (!principal.ok()) return new ErrorReadReactor<v1::UploadArtifactRequest>(principal.status());
  return new UploadReactor(deps_, response);
}

}  // namespace fm::server
