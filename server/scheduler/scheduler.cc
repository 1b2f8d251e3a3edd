#include "server/scheduler/scheduler.h"

#include <sys/random.h>

#include <algorithm>
#include <cmath>

#include "google/protobuf/util/time_util.h"
#include "server/metrics/server_metrics.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {
namespace {

namespace v1 = ::flashmorph::v1;
using State = v1::ConversionJob::State;

google::protobuf::Timestamp ToProto(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t micros = absl::ToUnixMicros(t);
  ts.set_seconds(micros / 1'000'000 - (micros % 1'000'000 < 0 ? 1 : 0));
  ts.set_nanos(static_cast<int32_t>(((micros % 1'000'000) + 1'000'000) % 1'000'000) * 1000);
  return ts;
}

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

google::protobuf::Duration DurationToProto(absl::Duration d) {
  google::protobuf::Duration out;
  const int64_t nanos = absl::ToInt64Nanoseconds(d);
  out.set_seconds(nanos / 1'000'000'000);
  out.set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
  return out;
}

absl::Duration DurationFromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

google::rpc::Status StatusToProto(const absl::Status& s) {
  google::rpc::Status out;
  out.set_code(static_cast<int>(s.code()));
  out.set_message(std::string(s.message()));
  return out;
}

absl::Status StatusFromProto(const google::rpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.code()), s.message());
}

std::string_view StateLabel(int state) {
  switch (state) {
    case v1::ConversionJob::PENDING: return "pending";
    case v1::ConversionJob::RUNNING: return "running";
    case v1::ConversionJob::SUCCEEDED: return "succeeded";
    case v1::ConversionJob::FAILED: return "failed";
    case v1::ConversionJob::CANCELLING: return "cancelling";
    case v1::ConversionJob::CANCELLED: return "cancelled";
    default: return "unspecified";
  }
}

std::string StageLabel(int stage) {
  std::string name = v1::ConversionJob::Stage_Name(static_cast<v1::ConversionJob::Stage>(stage));
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  return name;
}

int WorkerGpuCount(const WorkerRecord& w) {
  int n = 0;
  for (const auto& g : w.registration().gpus()) n += std::max(0, g.count());
  return n;
}

int64_t WorkerMinGpuMemory(const WorkerRecord& w) {
  int64_t m = -1;
  for (const auto& g : w.registration().gpus()) {
    if (g.count() > 0) m = m < 0 ? g.memory_bytes() : std::min(m, g.memory_bytes());
  }
  return std::max<int64_t>(m, 0);
}

int64_t WorkerGpuMemoryTotal(const WorkerRecord& w) {
  int64_t m = 0;
  for (const auto& g : w.registration().gpus()) m += std::max(0, g.count()) * g.memory_bytes();
  return m;
}

constexpr size_t kMaxLogLineBytes = 4096;

}  // namespace

std::string JobIdFromName(std::string_view name) {
  constexpr std::string_view kPrefix = "jobs/";
  if (name.substr(0, kPrefix.size()) != kPrefix) return "";
  std::string_view id = name.substr(kPrefix.size());
  if (id.empty() || id.size() > 64) return "";
  for (char c : id) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return "";
  }
  return std::string(id);
}

bool IsTerminal(int state) {
  return state == v1::ConversionJob::SUCCEEDED || state == v1::ConversionJob::FAILED ||
         state == v1::ConversionJob::CANCELLED;
}

std::string NewRandomId(size_t length) {
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string out;
  out.reserve(length);
  while (out.size() < length) {
    unsigned char buf[64];
    ssize_t got = getrandom(buf, sizeof(buf), 0);
    if (got <= 0) continue;
    for (ssize_t i = 0; i < got && out.size() < length; ++i) {
      if (buf[i] >= 252) continue;  // 252 = 7 * 36: keeps the draw uniform
      out.push_back(kAlphabet[buf[i] % 36]);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------

Scheduler::Scheduler(JobStore* store, AttemptStorage* storage, Clock* clock, WatchHub* hub, ServerMetrics* metrics,
                     SchedulerOptions options)
    : store_(store), storage_(storage), clock_(clock), hub_(hub), metrics_(metrics), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(JobStore* store, AttemptStorage* storage, Clock* clock,
                                                             WatchHub* hub, ServerMetrics* metrics,
                                                             SchedulerOptions options) {
  if (options.max_attempts < 1) return absl::InvalidArgumentError("scheduler: max_attempts must be >= 1");
  if (options.lease_duration <= absl::ZeroDuration() || options.heartbeat_interval <= absl::ZeroDuration() ||
      options.heartbeat_interval >= options.lease_duration) {
    return absl::InvalidArgumentError("scheduler: need 0 < heartbeat_interval < lease_duration");
  }
  std::unique_ptr<Scheduler> s(new Scheduler(store, storage, clock, hub, metrics, std::move(options)));
  FM_RETURN_IF_ERROR(s->Load());
  if (s->options_.tick_interval > absl::ZeroDuration()) {
    Scheduler* self = s.get();
    s->ticker_ = std::thread([self] {
      std::mutex m;
      std::unique_lock<std::mutex> lock(m);
      while (!self->stop_ticker_.load()) {
        self->ticker_cv_.wait_for(lock, absl::ToChronoMilliseconds(self->options_.tick_interval));
        if (self->stop_ticker_.load()) break;
        self->Tick();
      }
    });
  }
  return s;
}

Scheduler::~Scheduler() { Shutdown(); }

absl::Status Scheduler::Load() {
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Time now = clock_->Now();
  FM_ASSIGN_OR_RETURN(auto workers, store_->ListWorkers());
  for (auto& w : workers) {
    WorkerState state;
    state.record = std::move(w);
    state.last_seen = now;  // give every worker a fresh start after a restart
    workers_.emplace(state.record.registration().worker_id(), std::move(state));
  }
  FM_ASSIGN_OR_RETURN(auto jobs, store_->ListUnfinishedJobs());
  for (auto& rec : jobs) {
    if (!rec.lease_id().empty()) {
      // The workers could not heartbeat while we were down: give them one lease duration to reach us again.
      *rec.mutable_lease_expire_time() = ToProto(std::max(FromProto(rec.lease_expire_time()),
                                                          now + options_.lease_duration));
    }
    Install(nullptr, rec);
  }
  UpdateGauges();
  return absl::OkStatus();
}

void Scheduler::RunDeferred(Deferred& deferred) {
  for (auto& call : deferred.calls) call();
  if (hub_ != nullptr) {
    for (auto& id : deferred.notify) hub_->Notify(id);
  }
  deferred.calls.clear();
  deferred.notify.clear();
}

void Scheduler::Install(const JobRecord* old, const JobRecord& next) {
  const std::string id = JobIdFromName(next.job().name());
  auto remove = [&](const JobRecord& r) {
    TenantUsage& u = usage_[r.job().tenant()];
    const int st = r.job().state();
    if (st == v1::ConversionJob::PENDING) {
      queue_.erase(QueueKey{-r.job().spec().priority(), absl::ToUnixMicros(FromProto(r.job().create_time())), id});
      --u.queued;
    } else if (st == v1::ConversionJob::RUNNING || st == v1::ConversionJob::CANCELLING) {
      --u.running;
      u.gpus -= r.gpus_held();
      lease_to_job_.erase(r.lease_id());
      auto w = workers_.find(r.job().worker());
      if (w != workers_.end() && w->second.job_id == id) w->second.job_id.clear();
    }
  };
  auto add = [&](const JobRecord& r) {
    TenantUsage& u = usage_[r.job().tenant()];
    const int st = r.job().state();
    if (st == v1::ConversionJob::PENDING) {
      queue_.insert(QueueKey{-r.job().spec().priority(), absl::ToUnixMicros(FromProto(r.job().create_time())), id});
      ++u.queued;
    } else if (st == v1::ConversionJob::RUNNING || st == v1::ConversionJob::CANCELLING) {
      ++u.running;
      u.gpus += r.gpus_held();
      lease_to_job_[r.lease_id()] = id;
      auto w = workers_.find(r.job().worker());
      if (w != workers_.end()) w->second.job_id = id;
    }
  };
  if (old != nullptr) remove(*old);
  if (IsTerminal(next.job().state())) {
    active_.erase(id);
    return;
  }
  add(next);
  active_[id] = next;
}

JobEvent Scheduler::NewEvent(const JobRecord& record) const {
  JobEvent e;
  e.set_job(record.job().name());
  e.set_attempt(record.job().attempt());
  *e.mutable_time() = ToProto(clock_->Now());
  return e;
}

JobEvent Scheduler::StateChangeEvent(const JobRecord& record, int previous, int current,
                                     const absl::Status& reason) const {
  JobEvent e = NewEvent(record);
  auto* sc = e.mutable_state_change();
  sc->set_previous(static_cast<State>(previous));
  sc->set_current(static_cast<State>(current));
  if (!reason.ok()) *sc->mutable_reason() = StatusToProto(reason);
  return e;
}

JobEvent Scheduler::LogEvent(const JobRecord& record, std::string message, int severity) const {
  JobEvent e = NewEvent(record);
  auto* log = e.mutable_log();
  if (message.size() > kMaxLogLineBytes) message.resize(kMaxLogLineBytes);
  log->set_message(std::move(message));
  log->set_severity(static_cast<v1::LogLine::Severity>(severity));
  log->set_source("scheduler");
  return e;
}

absl::Status Scheduler::Commit(const JobRecord* old, JobRecord next, std::vector<JobEvent> events,
                               Deferred& deferred) {
  int64_t seq = next.last_event_sequence();
  for (auto& e : events) {
    e.set_sequence(++seq);
    if (e.job().empty()) e.set_job(next.job().name());
  }
  next.set_last_event_sequence(seq);
  *next.mutable_job()->mutable_update_time() = ToProto(clock_->Now());
  if (old == nullptr) {
    FM_RETURN_IF_ERROR(store_->InsertJob(next, events));
  } else {
    FM_RETURN_IF_ERROR(store_->UpdateJob(next, events));
  }
  // `old` may point into active_, which Install modifies: copy it first.
  std::optional<JobRecord> old_copy;
  if (old != nullptr) old_copy = *old;
  Install(old_copy ? &*old_copy : nullptr, next);
  deferred.notify.push_back(JobIdFromName(next.job().name()));
  return absl::OkStatus();
}

TenantQuota Scheduler::QuotaFor(std::string_view tenant) const {
  return options_.quota ? options_.quota(tenant) : TenantQuota{};
}

// --- Users -----------------------------------------------------------------------------------------------------

absl::StatusOr<CreateJobOutcome> Scheduler::CreateJob(const CreateJobRequest& request) {
  Deferred deferred;
  CreateJobOutcome outcome;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return absl::UnavailableError("flashmorphd is shutting down");
    if (!request.request_id.empty()) {
      auto existing = store_->FindByRequestId(request.tenant, request.request_id);
      if (existing.ok()) {
        if (existing->request_fingerprint() != request.fingerprint) {
          return absl::AlreadyExistsError(StrCat("request_id '", request.request_id,
                                                 "' was already used with a different tenant or spec (job ",
                                                 existing->job().name(), ")"));
        }
        outcome.record = *std::move(existing);
        outcome.created = false;
        return outcome;
      }
      if (!absl::IsNotFound(existing.status())) return existing.status();
    }
    const TenantQuota quota = QuotaFor(request.tenant);
    const TenantUsage& usage = usage_[request.tenant];
    if (quota.max_queued_jobs > 0 && usage.queued >= quota.max_queued_jobs) {
      if (metrics_) metrics_->QuotaRejected(request.tenant, "queued_jobs");
      return absl::ResourceExhaustedError(StrCat("tenant '", request.tenant, "' has ", usage.queued,
                                                 " queued jobs, its limit is ", quota.max_queued_jobs));
    }
    if (quota.max_gpus > 0 && request.spec.resources().gpus() > quota.max_gpus) {
      if (metrics_) metrics_->QuotaRejected(request.tenant, "gpus");
      return absl::ResourceExhaustedError(StrCat("the job needs ", request.spec.resources().gpus(),
                                                 " GPUs; tenant '", request.tenant, "' may use at most ",
                                                 quota.max_gpus));
    }
    JobRecord rec;
    auto* job = rec.mutable_job();
    std::string id;
    do {
      id = NewRandomId(20);
    } while (active_.contains(id));
    job->set_name(StrCat("jobs/", id));
    job->set_tenant(request.tenant);
    *job->mutable_spec() = request.spec;
    job->set_state(v1::ConversionJob::PENDING);
    *job->mutable_create_time() = ToProto(clock_->Now());
    job->set_request_id(request.request_id);
    rec.set_request_fingerprint(request.fingerprint);
    std::vector<JobEvent> events{StateChangeEvent(rec, v1::ConversionJob::STATE_UNSPECIFIED,
                                                  v1::ConversionJob::PENDING)};
    auto status = Commit(nullptr, rec, std::move(events), deferred);
    if (absl::IsAlreadyExists(status) && !request.request_id.empty()) {
      return absl::AlreadyExistsError(StrCat("request_id '", request.request_id, "' is already in use"));
    }
    FM_RETURN_IF_ERROR(status);
    outcome.record = active_.at(id);
    outcome.created = true;
    if (metrics_) metrics_->JobSubmitted(request.tenant);
    TryAssign(deferred);
  }
  RunDeferred(deferred);
  return outcome;
}

absl::StatusOr<JobRecord> Scheduler::GetJob(std::string_view job_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(std::string(job_id));
    if (it != active_.end()) return it->second;
  }
  return store_->GetJob(job_id);
}

absl::StatusOr<JobRecord> Scheduler::CancelJob(std::string_view job_id) {
  Deferred deferred;
  JobRecord result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(std::string(job_id));
    if (it == active_.end()) {
      FM_ASSIGN_OR_RETURN(JobRecord stored, store_->GetJob(job_id));
      return absl::FailedPreconditionError(StrCat(stored.job().name(), " already ended (",
                                                  v1::ConversionJob::State_Name(stored.job().state()), ")"));
    }
    const JobRecord& cur = it->second;
    const int state = cur.job().state();
    if (state == v1::ConversionJob::CANCELLING) return cur;
    const std::string id(job_id);
    if (state == v1::ConversionJob::PENDING) {
      JobRecord next = cur;
      FM_RETURN_IF_ERROR(Finish(cur, v1::ConversionJob::CANCELLED, absl::CancelledError("cancelled by the user"), {},
                                next, deferred));
      FM_ASSIGN_OR_RETURN(result, store_->GetJob(id));
    } else {  // RUNNING
      JobRecord next = cur;
      next.mutable_job()->set_state(v1::ConversionJob::CANCELLING);
      std::vector<JobEvent> events{StateChangeEvent(cur, state, v1::ConversionJob::CANCELLING)};
      FM_RETURN_IF_ERROR(Commit(&cur, std::move(next), std::move(events), deferred));
      result = active_.at(id);
    }
  }
  RunDeferred(deferred);
  return result;
}

absl::Status Scheduler::Finish(const JobRecord& current, int state, const absl::Status& error,
                               std::vector<JobEvent> before, JobRecord next, Deferred& deferred) {
  const int previous = current.job().state();
  auto* job = next.mutable_job();
  job->set_state(static_cast<State>(state));
  *job->mutable_end_time() = ToProto(clock_->Now());
  if (!error.ok()) *job->mutable_error() = StatusToProto(error);
  next.clear_lease_id();
  next.clear_lease_expire_time();
  std::vector<JobEvent> events = std::move(before);
  events.push_back(StateChangeEvent(next, previous, state, error));
  const std::string id = JobIdFromName(current.job().name());
  const std::string tenant = current.job().tenant();
  const int attempt = current.job().attempt();
  const bool had_attempt = previous == v1::ConversionJob::RUNNING || previous == v1::ConversionJob::CANCELLING;
  FM_RETURN_IF_ERROR(Commit(&current, std::move(next), std::move(events), deferred));
  if (had_attempt && state != v1::ConversionJob::SUCCEEDED && storage_ != nullptr) {
    (void)storage_->DiscardAttempt(id, attempt);
  }
  if (metrics_) metrics_->JobFinished(tenant, StateLabel(state));
  return absl::OkStatus();
}

absl::Status Scheduler::RetryOrFail(const JobRecord& current, const absl::Status& reason,
                                    std::string_view metric_reason, Deferred& deferred) {
  const int state = current.job().state();
  if (state == v1::ConversionJob::CANCELLING) {
    return Finish(current, v1::ConversionJob::CANCELLED,
                  absl::CancelledError(StrCat("cancelled by the user (the worker stopped: ", reason.message(), ")")),
                  {}, current, deferred);
  }
  JobRecord next = current;
  next.set_infrastructure_failures(current.infrastructure_failures() + 1);
  if (current.job().attempt() >= options_.max_attempts) {
    absl::Status final_error(reason.code(), StrCat("gave up after ", current.job().attempt(),
                                                   " attempts; last: ", reason.message()));
    return Finish(current, v1::ConversionJob::FAILED, final_error, {}, std::move(next), deferred);
  }
  absl::Duration backoff = options_.retry_backoff_initial;
  for (int i = 1; i < next.infrastructure_failures() && backoff < options_.retry_backoff_max; ++i) backoff *= 2;
  backoff = std::min(backoff, options_.retry_backoff_max);
  const std::string id = JobIdFromName(current.job().name());
  const int attempt = current.job().attempt();
  next.mutable_job()->set_state(v1::ConversionJob::PENDING);
  next.clear_lease_id();
  next.clear_lease_expire_time();
  next.set_gpus_held(0);
  *next.mutable_not_before() = ToProto(clock_->Now() + backoff);
  std::vector<JobEvent> events{
      StateChangeEvent(current, state, v1::ConversionJob::PENDING, reason),
      LogEvent(current,
               StrCat("attempt ", attempt, " failed (", reason.message(), "); retrying in ",
                      absl::FormatDuration(backoff)),
               3)};
  FM_RETURN_IF_ERROR(Commit(&current, std::move(next), std::move(events), deferred));
  if (storage_ != nullptr) (void)storage_->DiscardAttempt(id, attempt);
  if (metrics_) metrics_->JobRetried(metric_reason);
  return absl::OkStatus();
}

// --- Workers ---------------------------------------------------------------------------------------------------

absl::StatusOr<v1::RegisterWorkerResponse> Scheduler::RegisterWorker(const v1::RegisterWorkerRequest& request) {
  const std::string& id = request.worker_id();
  auto valid_char = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; };
  if (id.empty() || id.size() > 63 || !std::all_of(id.begin(), id.end(), valid_char)) {
    return absl::InvalidArgumentError("worker_id: must be 1-63 bytes of [a-z0-9-]");
  }
  for (const auto& g : request.gpus()) {
    if (g.count() < 0 || g.memory_bytes() < 0) {
      return absl::InvalidArgumentError("gpus: count and memory_bytes must be >= 0");
    }
  }
  Deferred deferred;
  v1::RegisterWorkerResponse response;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return absl::UnavailableError("flashmorphd is shutting down");
    const absl::Time now = clock_->Now();
    WorkerRecord rec;
    *rec.mutable_registration() = request;
    rec.set_registration_id(NewRandomId(16));
    *rec.mutable_register_time() = ToProto(now);
    *rec.mutable_last_seen_time() = ToProto(now);
    FM_RETURN_IF_ERROR(store_->PutWorker(rec));
    // A re-registering worker restarted: whatever it ran is lost.
    auto old = workers_.find(id);
    std::string lost_job = old != workers_.end() ? old->second.job_id : "";
    // End this worker's pending polls (a new process polls anew).
    for (auto p = polls_.begin(); p != polls_.end();) {
      if (p->worker_id == id) {
        auto done = std::move(p->done);
        deferred.calls.push_back([done] { done(v1::LeaseJobResponse()); });
        p = polls_.erase(p);
      } else {
        ++p;
      }
    }
    WorkerState& ws = workers_[id];
    ws.record = rec;
    ws.last_seen = now;
    ws.job_id.clear();
    for (auto& [job_id, job] : active_) {
      (void)job_id;
      if (job.job().worker() == id && !job.lease_id().empty() && job.job().state() != v1::ConversionJob::PENDING) {
        lost_job = JobIdFromName(job.job().name());
      }
    }
    if (!lost_job.empty()) {
      auto it = active_.find(lost_job);
      if (it != active_.end() && !it->second.lease_id().empty() && !completing_.contains(lost_job)) {
        JobRecord cur = it->second;
        (void)RetryOrFail(cur, absl::UnavailableError(StrCat("worker ", id, " restarted")), "worker_restarted",
                          deferred);
      }
    }
    if (metrics_) metrics_->SetWorkerGpuMemory(id, static_cast<double>(WorkerGpuMemoryTotal(rec)));
    UpdateGauges();
    TryAssign(deferred);
  }
  RunDeferred(deferred);
  *response.mutable_heartbeat_interval() = DurationToProto(options_.heartbeat_interval);
  *response.mutable_lease_duration() = DurationToProto(options_.lease_duration);
  *response.mutable_max_lease_wait() = DurationToProto(options_.max_lease_wait);
  return response;
}

uint64_t Scheduler::LeaseJob(const v1::LeaseJobRequest& request, LeaseCallback done) {
  Deferred deferred;
  uint64_t poll_id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto w = workers_.find(request.worker_id());
    if (shut_down_) {
      deferred.calls.push_back([done] { done(v1::LeaseJobResponse()); });
    } else if (w == workers_.end()) {
      deferred.calls.push_back([done, id = request.worker_id()] {
        done(absl::FailedPreconditionError(StrCat("worker '", id, "' is not registered; call RegisterWorker")));
      });
    } else {
      const absl::Time now = clock_->Now();
      w->second.last_seen = now;
      // A single-job worker that polls while holding a lease has lost that job (it crashed and came back).
      if (!w->second.job_id.empty()) {
        auto it = active_.find(w->second.job_id);
        if (it != active_.end() && !completing_.contains(it->first)) {
          JobRecord cur = it->second;
          (void)RetryOrFail(cur,
                            absl::UnavailableError(StrCat("worker ", request.worker_id(),
                                                          " asked for new work while holding this job's lease")),
                            "worker_lost_job", deferred);
        }
        w->second.job_id.clear();
      }
      absl::Duration wait = std::clamp(DurationFromProto(request.wait()), absl::ZeroDuration(),
                                       options_.max_lease_wait);
      poll_id = next_poll_id_++;
      polls_.push_back(Poll{poll_id, request.worker_id(), now + wait, std::move(done)});
      TryAssign(deferred);
      // A zero wait that found nothing is answered now.
      if (wait == absl::ZeroDuration()) {
        for (auto p = polls_.begin(); p != polls_.end(); ++p) {
          if (p->id == poll_id) {
            auto cb = std::move(p->done);
            deferred.calls.push_back([cb] { cb(v1::LeaseJobResponse()); });
            polls_.erase(p);
            break;
          }
        }
      }
    }
  }
  RunDeferred(deferred);
  return poll_id;
}

void Scheduler::CancelPoll(uint64_t poll_id) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto p = polls_.begin(); p != polls_.end(); ++p) {
    if (p->id == poll_id) {
      polls_.erase(p);  // the caller is gone: nobody to answer
      return;
    }
  }
}

bool Scheduler::Fits(const JobRecord& rec, const WorkerState& worker, int* gpus_held) const {
  const auto& spec = rec.job().spec();
  const auto& reg = worker.record.registration();
  const int worker_gpus = WorkerGpuCount(worker.record);
  const int wanted = spec.resources().gpus();
  if (wanted > worker_gpus) return false;
  const int held = wanted > 0 ? wanted : (worker_gpus > 0 ? 1 : 0);
  if (spec.resources().min_gpu_memory_bytes() > 0 &&
      (held == 0 || WorkerMinGpuMemory(worker.record) < spec.resources().min_gpu_memory_bytes())) {
    return false;
  }
  if (spec.resources().min_host_memory_bytes() > 0 &&
      reg.host_memory_bytes() < spec.resources().min_host_memory_bytes()) {
    return false;
  }
  const auto& caps = reg.capabilities();
  if (caps.selection_methods_size() > 0 &&
      std::find(caps.selection_methods().begin(), caps.selection_methods().end(), spec.selection_method()) ==
          caps.selection_methods().end()) {
    return false;
  }
  if (caps.branch_kinds_size() > 0 &&
      std::find(caps.branch_kinds().begin(), caps.branch_kinds().end(), spec.branch_kind()) ==
          caps.branch_kinds().end()) {
    return false;
  }
  const TenantQuota quota = QuotaFor(rec.job().tenant());
  auto u = usage_.find(rec.job().tenant());
  const TenantUsage usage = u == usage_.end() ? TenantUsage{} : u->second;
  if (quota.max_running_jobs > 0 && usage.running >= quota.max_running_jobs) return false;
  if (quota.max_gpus > 0 && usage.gpus + held > quota.max_gpus) return false;
  *gpus_held = held;
  return true;
}

void Scheduler::TryAssign(Deferred& deferred) {
  if (queue_.empty() || polls_.empty()) return;
  const absl::Time now = clock_->Now();
  for (auto p = polls_.begin(); p != polls_.end() && !queue_.empty();) {
    auto w = workers_.find(p->worker_id);
    if (w == workers_.end() || !w->second.job_id.empty()) {
      ++p;
      continue;
    }
    std::string chosen;
    int gpus_held = 0;
    for (const auto& key : queue_) {
      const JobRecord& rec = active_.at(std::get<2>(key));
      if (rec.has_not_before() && FromProto(rec.not_before()) > now) continue;
      if (rec.job().spec().has_deadline() && FromProto(rec.job().spec().deadline()) <= now) continue;  // Tick fails it
      if (Fits(rec, w->second, &gpus_held)) {
        chosen = std::get<2>(key);
        break;
      }
    }
    if (chosen.empty()) {
      ++p;
      continue;
    }
    auto response = Grant(chosen, w->second, gpus_held, deferred);
    auto done = std::move(p->done);
    p = polls_.erase(p);
    if (response.ok()) {
      deferred.calls.push_back([done, r = *std::move(response)] { done(r); });
    } else {
      deferred.calls.push_back([done, s = response.status()] { done(s); });
    }
  }
}

absl::StatusOr<v1::LeaseJobResponse> Scheduler::Grant(const std::string& job_id, WorkerState& worker, int gpus_held,
                                                      Deferred& deferred) {
  const JobRecord& cur = active_.at(job_id);
  const absl::Time now = clock_->Now();
  JobRecord next = cur;
  auto* job = next.mutable_job();
  const int attempt = cur.job().attempt() + 1;
  job->set_state(v1::ConversionJob::RUNNING);
  job->set_attempt(attempt);
  job->set_worker(worker.record.registration().worker_id());
  job->set_stage(v1::ConversionJob::STAGE_UNSPECIFIED);
  job->clear_progress();
  if (!job->has_start_time()) *job->mutable_start_time() = ToProto(now);
  next.set_lease_id(StrCat(NewRandomId(24), "-", worker.record.registration_id()));
  *next.mutable_lease_expire_time() = ToProto(now + options_.lease_duration);
  next.set_last_heartbeat_sequence(0);
  next.set_gpus_held(gpus_held);
  next.clear_not_before();
  if (storage_ != nullptr) {
    FM_ASSIGN_OR_RETURN(auto paths, storage_->PrepareAttempt(job_id, attempt));
    next.set_output_uri(paths.output_dir);
    next.set_work_uri(paths.work_dir);
  }
  const absl::Time queued_since = FromProto(cur.job().update_time());
  std::vector<JobEvent> events;
  JobEvent sc = StateChangeEvent(next, v1::ConversionJob::PENDING, v1::ConversionJob::RUNNING);
  events.push_back(sc);
  events.push_back(LogEvent(next, StrCat("attempt ", attempt, " leased to worker ",
                                         worker.record.registration().worker_id())));
  FM_RETURN_IF_ERROR(Commit(&cur, next, std::move(events), deferred));
  if (metrics_) metrics_->ObserveQueueWait(std::max(0.0, absl::ToDoubleSeconds(now - queued_since)));

  v1::LeaseJobResponse response;
  auto* lease = response.mutable_lease();
  lease->set_lease_id(next.lease_id());
  *lease->mutable_job() = next.job();
  lease->set_attempt(attempt);
  *lease->mutable_expire_time() = next.lease_expire_time();
  if (next.has_checkpoint() && next.checkpoint().stage() != v1::ConversionJob::STAGE_UNSPECIFIED) {
    *lease->mutable_resume_from() = next.checkpoint();
  }
  if (worker.record.registration().capabilities().shared_filesystem()) lease->set_output_uri(next.output_uri());
  return response;
}

absl::StatusOr<JobRecord*> Scheduler::FindLease(std::string_view lease_id) {
  auto it = lease_to_job_.find(std::string(lease_id));
  if (lease_id.empty() || it == lease_to_job_.end()) {
    return absl::AbortedError("lease is stale (expired, reassigned, ended, or the worker re-registered)");
  }
  auto job = active_.find(it->second);
  if (job == active_.end() || job->second.lease_id() != lease_id) {
    return absl::AbortedError("lease is stale");
  }
  return &job->second;
}

absl::StatusOr<std::pair<std::string, int>> Scheduler::CheckLease(std::string_view lease_id) {
  std::lock_guard<std::mutex> lock(mu_);
  FM_ASSIGN_OR_RETURN(JobRecord * rec, FindLease(lease_id));
  return std::make_pair(JobIdFromName(rec->job().name()), rec->job().attempt());
}

absl::StatusOr<v1::HeartbeatResponse> Scheduler::Heartbeat(const v1::HeartbeatRequest& request) {
  for (const auto& e : request.events()) {
    if (!(e.has_gates() || e.has_layout_selected() || e.has_log())) {
      return absl::InvalidArgumentError(
          "events: workers may send gate vectors, selected layouts and log lines only");
    }
  }
  if (request.stage() < 0 || request.stage() > v1::ConversionJob::EXPORT ||
      !v1::ConversionJob::Stage_IsValid(request.stage())) {
    return absl::InvalidArgumentError("stage: unknown value");
  }
  Deferred deferred;
  v1::HeartbeatResponse response;
  {
    std::lock_guard<std::mutex> lock(mu_);
    FM_ASSIGN_OR_RETURN(JobRecord * cur_ptr, FindLease(request.lease_id()));
    const JobRecord& cur = *cur_ptr;
    const absl::Time now = clock_->Now();
    auto w = workers_.find(cur.job().worker());
    if (w != workers_.end()) w->second.last_seen = now;
    JobRecord next = cur;
    *next.mutable_lease_expire_time() = ToProto(now + options_.lease_duration);
    std::vector<JobEvent> events;
    if (request.heartbeat_sequence() > cur.last_heartbeat_sequence()) {
      next.set_last_heartbeat_sequence(request.heartbeat_sequence());
      const int stage = request.stage();
      if (stage != v1::ConversionJob::STAGE_UNSPECIFIED && stage != cur.job().stage()) {
        JobEvent e = NewEvent(cur);
        auto* change = e.mutable_stage_change();
        change->set_previous(cur.job().stage());
        change->set_current(static_cast<v1::ConversionJob::Stage>(stage));
        // The first stage past an earlier attempt's checkpoint is where this attempt resumed.
        const auto& cp = cur.checkpoint();
        change->set_resumed_from_checkpoint(cur.has_checkpoint() && cp.attempt() < cur.job().attempt() &&
                                            cur.job().stage() <= cp.stage() && stage > cp.stage());
        events.push_back(std::move(e));
        next.mutable_job()->set_stage(static_cast<v1::ConversionJob::Stage>(stage));
      }
      for (const auto& in : request.events()) {
        JobEvent e = in;
        e.set_job(cur.job().name());
        e.set_attempt(cur.job().attempt());
        e.clear_sequence();
        if (!e.has_time()) *e.mutable_time() = ToProto(now);
        if (e.has_log() && e.log().message().size() > kMaxLogLineBytes) {
          e.mutable_log()->mutable_message()->resize(kMaxLogLineBytes);
        }
        if (e.has_gates()) *next.mutable_latest_gates() = e.gates();
        events.push_back(std::move(e));
      }
      if (request.has_progress()) {
        *next.mutable_job()->mutable_progress() = request.progress();
        JobEvent e = NewEvent(cur);
        *e.mutable_progress() = request.progress();
        events.push_back(std::move(e));
        if (metrics_) metrics_->SetWorkerTokensPerSecond(cur.job().worker(), request.progress().tokens_per_second());
      }
      // Checkpoints only move forward: an attempt that restores stages reports them again.
      if (request.has_checkpoint_written() &&
          (!cur.has_checkpoint() || request.checkpoint_written().stage() >= cur.checkpoint().stage())) {
        *next.mutable_checkpoint() = request.checkpoint_written();
        next.mutable_checkpoint()->set_attempt(cur.job().attempt());
        next.mutable_checkpoint()->set_worker_id(cur.job().worker());
      }
    }
    FM_RETURN_IF_ERROR(Commit(&cur, next, std::move(events), deferred));
    *response.mutable_lease_expire_time() = next.lease_expire_time();
    response.set_cancel_requested(next.job().state() == v1::ConversionJob::CANCELLING);
  }
  RunDeferred(deferred);
  return response;
}

absl::StatusOr<v1::CompleteJobResponse> Scheduler::CompleteJob(const v1::CompleteJobRequest& request) {
  std::string job_id;
  int attempt = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    FM_ASSIGN_OR_RETURN(JobRecord * cur, FindLease(request.lease_id()));
    if (request.outcome_case() == v1::CompleteJobRequest::OUTCOME_NOT_SET) {
      return absl::InvalidArgumentError("outcome: set exactly one of result, failure, cancelled");
    }
    job_id = JobIdFromName(cur->job().name());
    attempt = cur->job().attempt();
    if (completing_.contains(job_id)) return absl::AbortedError("this attempt is already being completed");
    completing_.insert(job_id);
  }
  // Promotion hashes the whole artifact: do it without holding the scheduler's lock.
  absl::StatusOr<v1::ArtifactManifest> manifest = absl::InternalError("no artifact storage");
  if (request.has_result() && storage_ != nullptr) manifest = storage_->Promote(job_id, attempt);

  Deferred deferred;
  v1::CompleteJobResponse response;
  absl::Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    completing_.erase(job_id);
    auto found = FindLease(request.lease_id());
    if (!found.ok()) return found.status();
    const JobRecord cur = **found;
    const absl::Time now = clock_->Now();
    auto w = workers_.find(cur.job().worker());
    if (w != workers_.end()) w->second.last_seen = now;
    if (request.has_result()) {
      if (!manifest.ok()) {
        // The outputs are unusable: a bad artifact (FAILED_PRECONDITION: empty, foreign files) is the attempt's
        // fault and fails the job; a storage problem is the infrastructure's and is retried.
        absl::Status why(manifest.status().code(),
                         StrCat("promoting the attempt's output failed: ", manifest.status().message()));
        if (absl::IsFailedPrecondition(manifest.status())) {
          status = Finish(cur, v1::ConversionJob::FAILED, why, {}, cur, deferred);
        } else {
          status = RetryOrFail(cur, why, "promotion_failed", deferred);
        }
      } else {
        JobRecord next = cur;
        auto* result = next.mutable_job()->mutable_result();
        *result = request.result();
        result->set_artifact_uri(storage_->ArtifactDir(job_id));
        result->set_artifact_manifest_sha256(manifest->manifest_sha256());
        result->set_artifact_size_bytes(manifest->total_size_bytes());
        next.mutable_job()->clear_error();
        next.mutable_job()->clear_progress();
        JobEvent result_event = NewEvent(cur);
        *result_event.mutable_result() = *result;
        status = Finish(cur, v1::ConversionJob::SUCCEEDED, absl::OkStatus(), {std::move(result_event)},
                        std::move(next), deferred);
        if (status.ok() && metrics_) {
          for (const auto& t : request.result().stage_timings()) {
            metrics_->ObserveStageDuration(StageLabel(t.stage()),
                                           t.wall_time().seconds() + t.wall_time().nanos() * 1e-9);
          }
        }
      }
    } else if (request.has_failure()) {
      absl::Status error = StatusFromProto(request.failure().error());
      if (error.ok()) error = absl::UnknownError("the worker reported a failure without an error code");
      if (request.failure().retryable()) {
        status = RetryOrFail(cur, error, "worker_failure", deferred);
      } else if (cur.job().state() == v1::ConversionJob::CANCELLING) {
        status = Finish(cur, v1::ConversionJob::CANCELLED, absl::CancelledError("cancelled by the user"), {}, cur,
                        deferred);
      } else {
        status = Finish(cur, v1::ConversionJob::FAILED, error, {}, cur, deferred);
      }
    } else {  // cancelled
      if (cur.job().state() != v1::ConversionJob::CANCELLING) {
        // The worker stopped on its own (e.g. it is shutting down): an infrastructure interruption.
        status = RetryOrFail(cur, absl::UnavailableError("the worker stopped the attempt"), "worker_stopped",
                             deferred);
      } else {
        status = Finish(cur, v1::ConversionJob::CANCELLED, absl::CancelledError("cancelled by the user"), {}, cur,
                        deferred);
      }
    }
    if (status.ok()) {
      auto after = active_.find(job_id);
      if (after != active_.end()) {
        response.set_state(after->second.job().state());
      } else {
        auto stored = store_->GetJob(job_id);
        if (stored.ok()) response.set_state(stored->job().state());
      }
      UpdateGauges();
      TryAssign(deferred);
    }
  }
  RunDeferred(deferred);
  if (!status.ok()) return status;
  return response;
}

// --- Time ------------------------------------------------------------------------------------------------------

void Scheduler::Tick() {
  Deferred deferred;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    const absl::Time now = clock_->Now();
    // Polls that waited long enough.
    for (auto p = polls_.begin(); p != polls_.end();) {
      if (p->deadline <= now) {
        auto done = std::move(p->done);
        deferred.calls.push_back([done] { done(v1::LeaseJobResponse()); });
        p = polls_.erase(p);
      } else {
        ++p;
      }
    }
    // Deadlines and lapsed leases. Collect first: the handlers change active_.
    std::vector<std::string> past_deadline, lapsed;
    for (const auto& [id, rec] : active_) {
      if (completing_.contains(id)) continue;
      const auto& spec = rec.job().spec();
      if (spec.has_deadline() && FromProto(spec.deadline()) <= now) {
        past_deadline.push_back(id);
      } else if (!rec.lease_id().empty() && FromProto(rec.lease_expire_time()) <= now) {
        lapsed.push_back(id);
      }
    }
    for (const auto& id : past_deadline) {
      const JobRecord cur = active_.at(id);
      if (cur.job().state() == v1::ConversionJob::CANCELLING) {
        (void)Finish(cur, v1::ConversionJob::CANCELLED,
                     absl::CancelledError("cancelled by the user (the deadline passed before the worker stopped)"),
                     {}, cur, deferred);
      } else {
        (void)Finish(cur, v1::ConversionJob::FAILED,
                     absl::DeadlineExceededError("the job's deadline passed before it finished"), {}, cur, deferred);
      }
    }
    for (const auto& id : lapsed) {
      const JobRecord cur = active_.at(id);
      if (metrics_) metrics_->LeaseExpired();
      (void)RetryOrFail(cur,
                        absl::UnavailableError(StrCat("the lease of worker ", cur.job().worker(),
                                                      " lapsed (no heartbeat for ",
                                                      absl::FormatDuration(options_.lease_duration), ")")),
                        "lease_expired", deferred);
    }
    TryAssign(deferred);
    UpdateGauges();
  }
  RunDeferred(deferred);
}

void Scheduler::UpdateGauges() {
  if (metrics_ == nullptr) return;
  int pending = 0, running = 0, cancelling = 0;
  for (const auto& [id, rec] : active_) {
    switch (rec.job().state()) {
      case v1::ConversionJob::PENDING: ++pending; break;
      case v1::ConversionJob::RUNNING: ++running; break;
      case v1::ConversionJob::CANCELLING: ++cancelling; break;
      default: break;
    }
  }
  metrics_->SetJobsInState("pending", pending);
  metrics_->SetJobsInState("running", running);
  metrics_->SetJobsInState("cancelling", cancelling);
  const absl::Time now = clock_->Now();
  int idle = 0, busy = 0, lost = 0;
  for (const auto& [id, w] : workers_) {
    if (now - w.last_seen > options_.worker_lost_after) {
      ++lost;
    } else if (!w.job_id.empty()) {
      ++busy;
    } else {
      ++idle;
    }
  }
  metrics_->SetWorkersInState("idle", idle);
  metrics_->SetWorkersInState("busy", busy);
  metrics_->SetWorkersInState("lost", lost);
}

void Scheduler::Shutdown() {
  Deferred deferred;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!shut_down_) {
      shut_down_ = true;
      for (auto& p : polls_) {
        auto done = std::move(p.done);
        deferred.calls.push_back([done] { done(v1::LeaseJobResponse()); });
      }
      polls_.clear();
    }
  }
  RunDeferred(deferred);
  stop_ticker_.store(true);
  ticker_cv_.notify_all();
  if (ticker_.joinable()) ticker_.join();
}

}  // namespace fm::server
