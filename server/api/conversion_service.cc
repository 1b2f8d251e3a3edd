#include "server/api/conversion_service.h"

#include <algorithm>
#include <deque>
#include <mutex>
#include <optional>

#include "server/api/caller.h"
#include "server/api/grpc_status.h"
#include "server/api/job_access.h"
#include "server/api/job_views.h"
#include "server/api/job_listing.h"
#include "server/artifacts/artifact_store.h"
#include "server/scheduler/scheduler.h"
#include "server/spec/request_fingerprint.h"
#include "server/spec/spec_validation.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {
namespace {

namespace v1 = ::flashmorph::v1;

constexpr int64_t kChunkBytes = int64_t{1} << 20;  // ReadArtifact chunks
constexpr int kEventBatch = 128;                   // events read from the store at a time by a watch

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

absl::Status CheckRequestId(std::string_view id) {
  if (id.size() > 64) return absl::InvalidArgumentError("request_id: at most 64 bytes");
  for (char c : id) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) {
      return absl::InvalidArgumentError("request_id: only [A-Za-z0-9_-] allowed");
    }
  }
  return absl::OkStatus();
}

// Streams a job's log: stored events first, then live ones (woken by the WatchHub), until the terminal event.
class WatchReactor final : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  WatchReactor(const ServiceDeps& deps, std::string job_id, int64_t after_sequence)
      : deps_(deps), job_id_(std::move(job_id)), last_sent_(after_sequence) {
    handle_ = deps_.hub->Subscribe(job_id_, [this] { Pump(); });
    Pump();
  }

  void OnWriteDone(bool ok) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) {
        if (finished_) return;
        finished_ = true;
        lock.unlock();
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the stream broke; resume with after_sequence"));
        return;
      }
      last_sent_ = buffer_.front().sequence();
      buffer_.pop_front();
    }
    Pump();
  }

  void OnCancel() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
    }
    Pump();
  }

  void OnDone() override {
    deps_.hub->Unsubscribe(handle_);
    delete this;
  }

 private:
  // Sends the next event if idle: from the buffer, else from the store; ends the stream after the terminal event.
  // Decides under the lock, then calls StartWrite / Finish without it (OnDone may follow Finish at once).
  void Pump() {
    std::unique_lock<std::mutex> lock(mu_);
    std::optional<grpc::Status> finish;
    for (int round = 0; round < 4 && !finish; ++round) {
      if (finished_ || writing_) return;
      if (cancelled_) {
        finish = grpc::Status::CANCELLED;
        break;
      }
      if (deps_.shutting_down != nullptr && deps_.shutting_down->load()) {
        finish = grpc::Status(grpc::StatusCode::UNAVAILABLE, "flashmorphd is shutting down; resume with after_sequence");
        break;
      }
      if (buffer_.empty()) {
        auto events = deps_.store->ReadEvents(job_id_, last_sent_, kEventBatch);
        if (!events.ok()) {
          finish = ToGrpcStatus(events.status());
          break;
        }
        for (auto& e : *events) buffer_.push_back(std::move(e));
      }
      if (!buffer_.empty()) {
        writing_ = true;
        const v1::JobEvent* next = &buffer_.front();
        lock.unlock();
        StartWrite(next);
        return;
      }
      // Caught up: end the stream if the job ended and its last event was sent.
      auto record = deps_.scheduler->GetJob(job_id_);
      if (!record.ok()) {
        finish = ToGrpcStatus(record.status());
        break;
      }
      if (record->last_event_sequence() > last_sent_) continue;  // committed between the read and now
      if (IsTerminal(record->job().state())) finish = grpc::Status::OK;
      break;  // else wait for the hub
    }
    if (!finish) return;
    finished_ = true;
    lock.unlock();
    Finish(*finish);
  }

  const ServiceDeps deps_;
  const std::string job_id_;
  uint64_t handle_ = 0;
  std::mutex mu_;
  std::deque<v1::JobEvent> buffer_;
  int64_t last_sent_;
  bool writing_ = false, finished_ = false, cancelled_ = false;
};

// Streams one artifact file in chunks of at most 1 MiB.
class ReadArtifactReactor final : public grpc::ServerWriteReactor<v1::ReadArtifactResponse> {
 public:
  ReadArtifactReactor(std::unique_ptr<ArtifactFileReader> reader, int64_t offset, int64_t end)
      : reader_(std::move(reader)), offset_(offset), end_(end) {
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the stream broke; resume with read_offset"));
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (offset_ >= end_) {
      Finish(grpc::Status::OK);
      return;
    }
    auto data = reader_->ReadAt(offset_, std::min(kChunkBytes, end_ - offset_));
    if (!data.ok()) {
      Finish(ToGrpcStatus(data.status()));
      return;
    }
    if (data->empty()) {
      Finish(grpc::Status(grpc::StatusCode::DATA_LOSS, "the artifact file shrank"));
      return;
    }
    response_.set_offset(offset_);
    offset_ += static_cast<int64_t>(data->size());
    response_.set_data(*std::move(data));
    StartWrite(&response_);
  }

  std::unique_ptr<ArtifactFileReader> reader_;
  int64_t offset_, end_;
  v1::ReadArtifactResponse response_;
};

template <typename T>
class ErrorWriteReactor final : public grpc::ServerWriteReactor<T> {
 public:
  explicit ErrorWriteReactor(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerUnaryReactor* ConversionServiceImpl::CreateConversionJob(grpc::CallbackServerContext* ctx,
                                                                     const v1::CreateConversionJobRequest* request,
                                                                     google::longrunning::Operation* response) {
  auto run = [&]() -> absl::Status {
    FM_ASSIGN_OR_RETURN(Principal principal, AuthenticateCall(ctx, deps_));
    FM_ASSIGN_OR_RETURN(std::string tenant, deps_.auth->ResolveTenant(principal, request->tenant()));
    FM_RETURN_IF_ERROR(CheckRequestId(request->request_id()));
    if (!request->has_spec()) return absl::InvalidArgumentError("spec: required");
    const std::string fingerprint = RequestFingerprint(tenant, request->spec());
    // An idempotent retry answers with the first job even if the model has moved since.
    if (!request->request_id().empty()) {
      auto existing = deps_.store->FindByRequestId(tenant, request->request_id());
      if (existing.ok()) {
        if (existing->request_fingerprint() != fingerprint) {
          return absl::AlreadyExistsError(StrCat("request_id '", request->request_id(),
                                                 "' was already used with a different tenant or spec"));
        }
        *response = OperationOf(*deps_.scheduler->GetJob(JobIdFromName(existing->job().name())));
        return absl::OkStatus();
      }
      if (!absl::IsNotFound(existing.status())) return existing.status();
    }
    SpecContext spec_ctx;
    spec_ctx.roots = deps_.roots;
    spec_ctx.max_priority = deps_.auth->LimitsFor(tenant).max_priority;
    spec_ctx.now = absl::Now();
    FM_ASSIGN_OR_RETURN(auto resolved, ValidateAndResolveSpec(request->spec(), spec_ctx));
    CreateJobRequest create{tenant, request->request_id(), fingerprint, std::move(resolved)};
    FM_ASSIGN_OR_RETURN(CreateJobOutcome outcome, deps_.scheduler->CreateJob(create));
    *response = OperationOf(outcome.record);
    return absl::OkStatus();
  };
  return Done(ctx, run());
}

grpc::ServerUnaryReactor* ConversionServiceImpl::GetConversionJob(grpc::CallbackServerContext* ctx,
                                                                  const v1::GetConversionJobRequest* request,
                                                                  v1::ConversionJob* response) {
  auto access = AccessJob(ctx, deps_, request->name(), "jobs/", "name");
  if (access.ok()) *response = access->record.job();
  return Done(ctx, access.status());
}

grpc::ServerUnaryReactor* ConversionServiceImpl::ListConversionJobs(grpc::CallbackServerContext* ctx,
                                                                    const v1::ListConversionJobsRequest* request,
                                                                    v1::ListConversionJobsResponse* response) {
  auto run = [&]() -> absl::Status {
    FM_ASSIGN_OR_RETURN(Principal principal, AuthenticateCall(ctx, deps_));
    std::vector<int> states(request->states().begin(), request->states().end());
    FM_ASSIGN_OR_RETURN(ListedJobs listed, ListVisibleJobs(deps_, principal, request->tenant(), states,
                                                           request->page_size(), request->page_token()));
    for (auto& rec : listed.jobs) *response->add_jobs() = rec.job();
    response->set_next_page_token(listed.next_page_token);
    return absl::OkStatus();
  };
  return Done(ctx, run());
}

grpc::ServerUnaryReactor* ConversionServiceImpl::CancelConversionJob(grpc::CallbackServerContext* ctx,
                                                                     const v1::CancelConversionJobRequest* request,
                                                                     v1::ConversionJob* response) {
  auto run = [&]() -> absl::Status {
    FM_ASSIGN_OR_RETURN(JobAccess access, AccessJob(ctx, deps_, request->name(), "jobs/", "name"));
    FM_ASSIGN_OR_RETURN(JobRecord after, deps_.scheduler->CancelJob(access.job_id));
    *response = after.job();
    return absl::OkStatus();
  };
  return Done(ctx, run());
}

grpc::ServerWriteReactor<v1::JobEvent>* ConversionServiceImpl::WatchConversionJob(
    grpc::CallbackServerContext* ctx, const v1::WatchConversionJobRequest* request) {
  auto access = AccessJob(ctx, deps_, request->name(), "jobs/", "name");
  if (!access.ok()) return new ErrorWriteReactor<v1::JobEvent>(access.status());
  if (request->after_sequence() < 0) {
    return new ErrorWriteReactor<v1::JobEvent>(absl::InvalidArgumentError("after_sequence: must be >= 0"));
  }
  return new WatchReactor(deps_, access->job_id, request->after_sequence());
}

grpc::ServerWriteReactor<v1::ReadArtifactResponse>* ConversionServiceImpl::ReadArtifact(
    grpc::CallbackServerContext* ctx, const v1::ReadArtifactRequest* request) {
  auto open = [&]() -> absl::StatusOr<ReadArtifactReactor*> {
    FM_ASSIGN_OR_RETURN(JobAccess access, AccessJob(ctx, deps_, request->job(), "jobs/", "job"));
    if (request->read_offset() < 0) return absl::InvalidArgumentError("read_offset: must be >= 0");
    if (request->read_limit() < 0) return absl::InvalidArgumentError("read_limit: must be >= 0");
    if (access.record.job().state() != v1::ConversionJob::SUCCEEDED) {
      return absl::FailedPreconditionError(StrCat("jobs/", access.job_id, " has not SUCCEEDED; it is ",
                                                  v1::ConversionJob::State_Name(access.record.job().state())));
    }
    FM_ASSIGN_OR_RETURN(auto reader, deps_.artifacts->OpenFile(access.job_id, request->path()));
    const int64_t size = reader->size();
    if (request->read_offset() > size) {
      return absl::OutOfRangeError(StrCat("read_offset ", request->read_offset(), " is past the end of ",
                                          request->path(), " (", size, " bytes)"));
    }
    int64_t end = size;
    if (request->read_limit() > 0) end = std::min(size, request->read_offset() + request->read_limit());
    return new ReadArtifactReactor(std::move(reader), request->read_offset(), end);
  };
  auto reactor = open();
  if (!reactor.ok()) return new ErrorWriteReactor<v1::ReadArtifactResponse>(reactor.status());
  return *reactor;
}

grpc::ServerUnaryReactor* ConversionServiceImpl::GetArtifactManifest(grpc::CallbackServerContext* ctx,
                                                                     const v1::GetArtifactManifestRequest* request,
                                                                     v1::ArtifactManifest* response) {
  auto run = [&]() -> absl::Status {
    FM_ASSIGN_OR_RETURN(JobAccess access, AccessJob(ctx, deps_, request->job(), "jobs/", "job"));
    if (access.record.job().state() != v1::ConversionJob::SUCCEEDED) {
      return absl::FailedPreconditionError(StrCat("jobs/", access.job_id, " has not SUCCEEDED; it is ",
                                                  v1::ConversionJob::State_Name(access.record.job().state())));
    }
    FM_ASSIGN_OR_RETURN(*response, deps_.artifacts->GetManifest(access.job_id));
    return absl::OkStatus();
  };
  return Done(ctx, run());
}

}  // namespace fm::server
