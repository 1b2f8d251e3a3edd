// The scheduler: the one place that changes jobs. It keeps every unfinished job and every registered worker in
// memory, writes each change through to the JobStore in one transaction (the new record plus the events that
// describe it) before the change becomes visible, and so survives a restart with no job or event lost.
//
// What it promises:
//  - Create is idempotent on (tenant, request_id): the same fingerprint returns the first job, a different one is
//    ALREADY_EXISTS. The tenant's queued-job limit and GPU limit are checked at creation (RESOURCE_EXHAUSTED).
//  - Leases go to waiting workers in priority order, then FIFO, skipping jobs that cannot fit the polling worker
//    (GPUs, memory, capabilities) or whose tenant is at its running-job or GPU limit, and jobs in retry backoff.
//  - Every worker write carries its lease id; a stale one is ABORTED. A lapsed lease, a worker that re-registers,
//    or a retryable failure returns the job to PENDING with attempt + 1 after an exponential backoff, at most
//    max_attempts times in all; user errors fail the job at once. A spec deadline fails the job wherever it is.
//  - Cancel: PENDING -> CANCELLED at once; RUNNING -> CANCELLING, reported to the worker in its next heartbeat
//    reply, then CANCELLED when the worker acknowledges or its lease lapses.
//  - After every commit, WatchHub subscribers of the job are notified (outside the scheduler's lock).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "flashmorph/v1/artifact.pb.h"
#include "flashmorph/v1/conversion_job.pb.h"
#include "flashmorph/v1/worker_service.pb.h"
#include "server/scheduler/clock.h"
#include "server/scheduler/watch_hub.h"
#include "server/store/job_store.h"

namespace fm::server {

class ServerMetrics;

// Where attempts write and how a finished attempt becomes the job's artifact (the artifact store in flashmorphd).
class AttemptStorage {
 public:
  struct Paths {
    std::string output_dir;  // the attempt folder
    std::string work_dir;    // stage checkpoints shared by every attempt of the job
  };
  virtual ~AttemptStorage() = default;
  virtual absl::StatusOr<Paths> PrepareAttempt(std::string_view job_id, int attempt) = 0;
  virtual absl::StatusOr<flashmorph::v1::ArtifactManifest> Promote(std::string_view job_id, int attempt) = 0;
  virtual absl::Status DiscardAttempt(std::string_view job_id, int attempt) = 0;
  // Where Promote put the job's artifact (for operators; ConversionResult.artifact_uri).
  virtual std::string ArtifactDir(std::string_view job_id) { return ""; }
};

// A tenant's limits; 0 means unlimited.
struct TenantQuota {
  int max_queued_jobs = 0;
  int max_running_jobs = 0;
  int max_gpus = 0;
};

struct SchedulerOptions {
  absl::Duration lease_duration = absl::Seconds(30);
  absl::Duration heartbeat_interval = absl::Seconds(5);
  absl::Duration max_lease_wait = absl::Seconds(30);
  absl::Duration worker_lost_after = absl::Seconds(90);  // metrics: a worker silent this long counts as lost
  int max_attempts = 3;                                  // attempts in all, including the first
  absl::Duration retry_backoff_initial = absl::Seconds(1);
  absl::Duration retry_backoff_max = absl::Seconds(60);
  absl::Duration tick_interval = absl::Milliseconds(100);  // expiry checks; 0: no ticker thread (tests call Tick)
  std::function<TenantQuota(std::string_view tenant)> quota;  // unset: unlimited
};

// A validated create request (the API layer authenticates, resolves the tenant and validates the spec).
struct CreateJobRequest {
  std::string tenant;
  std::string request_id;   // may be empty
  std::string fingerprint;  // RequestFingerprint(tenant, submitted spec)
  flashmorph::v1::ConversionSpec spec;  // resolved
};

struct CreateJobOutcome {
  JobRecord record;
  bool created = false;  // false: an idempotent retry returned the existing job
};

using LeaseCallback = std::function<void(absl::StatusOr<flashmorph::v1::LeaseJobResponse>)>;

class Scheduler {
 public:
  // Loads unfinished jobs and workers from the store. Leases of running jobs are extended by one lease duration
  // (their workers could not heartbeat while the server was down). `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(JobStore* store, AttemptStorage* storage, Clock* clock,
                                                           WatchHub* hub, ServerMetrics* metrics,
                                                           SchedulerOptions options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // --- Users --------------------------------------------------------------------------------------------------
  absl::StatusOr<CreateJobOutcome> CreateJob(const CreateJobRequest& request);
  absl::StatusOr<JobRecord> GetJob(std::string_view job_id);
  absl::StatusOr<JobRecord> CancelJob(std::string_view job_id);

  // --- Workers ------------------------------------------------------------------------------------------------
  absl::StatusOr<flashmorph::v1::RegisterWorkerResponse> RegisterWorker(
      const flashmorph::v1::RegisterWorkerRequest& request);
  // Long poll: `done` runs exactly once, with a lease, with an empty response when `wait` passes (or at shutdown),
  // or with an error (FAILED_PRECONDITION: not registered). It may run before LeaseJob returns. The returned id
  // lets the caller abandon the poll (client gone) with CancelPoll.
  uint64_t LeaseJob(const flashmorph::v1::LeaseJobRequest& request, LeaseCallback done);
  void CancelPoll(uint64_t poll_id);
  absl::StatusOr<flashmorph::v1::HeartbeatResponse> Heartbeat(const flashmorph::v1::HeartbeatRequest& request);
  absl::StatusOr<flashmorph::v1::CompleteJobResponse> CompleteJob(const flashmorph::v1::CompleteJobRequest& request);
  // For UploadArtifact: the (job id, attempt) a current lease belongs to; ABORTED if stale.
  absl::StatusOr<std::pair<std::string, int>> CheckLease(std::string_view lease_id);

  // --- Time ---------------------------------------------------------------------------------------------------
  // Expires leases, fails jobs past their deadline, ends timed-out polls, starts jobs whose backoff ended, and
  // refreshes gauges. The ticker thread calls it every tick_interval; tests with a FakeClock call it directly.
  void Tick();

  // Ends every poll with an empty response and stops the ticker. Later polls are answered at once.
  void Shutdown();

  const SchedulerOptions& options() const { return options_; }

 private:
  struct Poll {
    uint64_t id;
    std::string worker_id;
    absl::Time deadline;
    LeaseCallback done;
  };
  struct WorkerState {
    WorkerRecord record;
    std::string job_id;  // the job this worker runs; empty when idle
    absl::Time last_seen;
  };
  struct TenantUsage {
    int queued = 0, running = 0, gpus = 0;
  };
  // Queue order: priority descending, then create time, then id.
  using QueueKey = std::tuple<int, int64_t, std::string>;
  // Work to run after the lock is released (poll callbacks, watch notifications).
  struct Deferred {
    std::vector<std::function<void()>> calls;
    std::vector<std::string> notify;
  };

  Scheduler(JobStore* store, AttemptStorage* storage, Clock* clock, WatchHub* hub, ServerMetrics* metrics,
            SchedulerOptions options);
  absl::Status Load();
  void RunDeferred(Deferred& deferred);

  // Replaces the in-memory record of a job (old may be null for a new job) and updates the indexes.
  void Install(const JobRecord* old, const JobRecord& next);
  // Assigns sequences to `events`, writes `next` and the events to the store, then installs `next`.
  absl::Status Commit(const JobRecord* old, JobRecord next, std::vector<JobEvent> events, Deferred& deferred);

  JobEvent NewEvent(const JobRecord& record) const;
  JobEvent StateChangeEvent(const JobRecord& record, int previous, int current,
                            const absl::Status& reason = absl::OkStatus()) const;
  JobEvent LogEvent(const JobRecord& record, std::string message, int severity = 2) const;

  // An attempt ended without success for an infrastructure reason: PENDING with backoff, or FAILED when no
  // attempt is left; a CANCELLING job becomes CANCELLED instead.
  absl::Status RetryOrFail(const JobRecord& current, const absl::Status& reason, std::string_view metric_reason,
                           Deferred& deferred);
  // Moves a job to a terminal state with `error` (OK for SUCCEEDED) and extra events before the state change.
  absl::Status Finish(const JobRecord& current, int state, const absl::Status& error, std::vector<JobEvent> before,
                      JobRecord next, Deferred& deferred);

  bool Fits(const JobRecord& job, const WorkerState& worker, int* gpus_held) const;
  TenantQuota QuotaFor(std::string_view tenant) const;
  void TryAssign(Deferred& deferred);
  absl::StatusOr<flashmorph::v1::LeaseJobResponse> Grant(const std::string& job_id, WorkerState& worker,
                                                          int gpus_held, Deferred& deferred);
  // The job of a current lease, or ABORTED.
  absl::StatusOr<JobRecord*> FindLease(std::string_view lease_id);
  void UpdateGauges();

  JobStore* const store_;
  AttemptStorage* const storage_;
  Clock* const clock_;
  WatchHub* const hub_;
  ServerMetrics* const metrics_;
  const SchedulerOptions options_;

  std::mutex mu_;
  bool shut_down_ = false;
  absl::flat_hash_map<std::string, JobRecord> active_;  // unfinished jobs by id
  std::set<QueueKey> queue_;                            // PENDING jobs
  absl::flat_hash_map<std::string, std::string> lease_to_job_;
  absl::flat_hash_set<std::string> completing_;  // jobs whose CompleteJob is promoting outside the lock
  absl::flat_hash_map<std::string, TenantUsage> usage_;
  absl::flat_hash_map<std::string, WorkerState> workers_;
  std::list<Poll> polls_;
  uint64_t next_poll_id_ = 1;

  std::thread ticker_;
  std::condition_variable ticker_cv_;
  std::atomic<bool> stop_ticker_{false};
};

// Helpers shared with the API layer.
std::string JobIdFromName(std::string_view name);  // "jobs/abc" -> "abc"; "" if malformed
bool IsTerminal(int state);
std::string NewRandomId(size_t length);  // [a-z0-9] from the OS's CSPRNG

}  // namespace fm::server
