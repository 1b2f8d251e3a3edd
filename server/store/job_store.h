// The scheduler's durable state behind one small interface: jobs (as JobRecord blobs with a few indexed columns),
// each job's append-only event log, and registered workers. Every call is one transaction: a job's new record and
// the events that describe the change commit together or not at all, so a restart of flashmorphd (even a kill -9
// mid-call) loses no job and no event. The store assigns nothing and decides nothing: the scheduler (one writer,
// under its own lock) sets event sequence numbers and job names; the store only persists and queries. SQLite is the
// default implementation (sqlite_job_store.h); the interface leaves room for PostgreSQL.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashmorph/server/v1/job_record.pb.h"
#include "flashmorph/v1/job_event.pb.h"

namespace fm::server {

using JobRecord = ::flashmorph::server::v1::JobRecord;
using WorkerRecord = ::flashmorph::server::v1::WorkerRecord;
using JobEvent = ::flashmorph::v1::JobEvent;

// Position in the "newest first" order of ListJobs: (create_time descending, job id descending).
struct JobCursor {
  int64_t create_time_micros = 0;
  std::string job_id;  // the {job} part of "jobs/{job}"
};

// A query of ListJobs. Empty vectors mean "no filter".
struct JobQuery {
  std::vector<std::string> tenants;  // any of these tenants
  std::vector<int> states;           // any of these flashmorph.v1.ConversionJob.State values
  std::optional<JobCursor> after;    // start strictly after this position (the previous page's last job)
  int limit = 50;                    // at most this many jobs
};

struct JobPage {
  std::vector<JobRecord> jobs;  // newest first
  bool more = false;            // true when jobs past the last returned one match the query
};

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Inserts a new job (id = job.name without "jobs/") with its first events, atomically. ALREADY_EXISTS if a job
  // with that id, or with the same non-empty (tenant, request_id), is already stored.
  virtual absl::Status InsertJob(const JobRecord& record, const std::vector<JobEvent>& events) = 0;

  // Replaces an existing job's record and appends events, atomically. Each event's sequence must be larger than
  // every sequence already stored for the job (INVALID_ARGUMENT otherwise); NOT_FOUND if the job does not exist.
  virtual absl::Status UpdateJob(const JobRecord& record, const std::vector<JobEvent>& events) = 0;

  // One job by id; NOT_FOUND if absent.
  virtual absl::StatusOr<JobRecord> GetJob(std::string_view job_id) = 0;

  // The job created with (tenant, request_id); NOT_FOUND if none.
  virtual absl::StatusOr<JobRecord> FindByRequestId(std::string_view tenant, std::string_view request_id) = 0;

  // One page of jobs, newest first (create_time descending, then id descending).
  virtual absl::StatusOr<JobPage> ListJobs(const JobQuery& query) = 0;

  // Every job not in a terminal state (PENDING, RUNNING, CANCELLING), for the scheduler's start-up.
  virtual absl::StatusOr<std::vector<JobRecord>> ListUnfinishedJobs() = 0;

  // Events of one job with sequence > after_sequence, ascending, at most `limit`. An unknown job gives an empty list.
  virtual absl::StatusOr<std::vector<JobEvent>> ReadEvents(std::string_view job_id, int64_t after_sequence,
                                                           int limit) = 0;

  // Inserts or replaces a worker (keyed by registration.worker_id).
  virtual absl::Status PutWorker(const WorkerRecord& worker) = 0;

  // Removes a worker; OK if absent.
  virtual absl::Status DeleteWorker(std::string_view worker_id) = 0;

  // Every registered worker.
  virtual absl::StatusOr<std::vector<WorkerRecord>> ListWorkers() = 0;
};

}  // namespace fm::server
