// JobStore on one SQLite file (WAL journal by default). Every call is one transaction on one connection guarded by
// a mutex, so the store is thread-safe and a kill -9 mid-call leaves either the whole call or none of it. Durability
// of an acknowledged call: synchronous=NORMAL survives a process kill; FULL also survives power loss (an fsync per
// commit). Jobs are stored as JobRecord blobs next to the columns the queries need, all derived from the record:
// id ("jobs/<id>" -> "<id>"), tenant, state, create_time (microseconds), request_id (empty stored as NULL).
// Events are stored as given; each event's `job` must equal the record's job.name (an empty `job` is refused too),
// so ReadEvents returns exactly what WatchConversionJob streams. Stored blobs that do not parse give DATA_LOSS
// naming the job. The schema is versioned (sqlite_schema.h) and migrated by Open.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/store/job_store.h"

namespace fm::server {

struct SqliteOptions {
  // PRAGMA synchronous: "NORMAL" (an acknowledged call survives a process kill) or "FULL" (also power loss).
  std::string synchronous = "NORMAL";
  // PRAGMA journal_mode: "WAL" (readers never block the writer) or "DELETE" (for filesystems without the shared
  // memory WAL needs, e.g. NFS).
  std::string journal_mode = "WAL";
  // How long a call waits for another process's lock on the file before failing with UNAVAILABLE.
  absl::Duration busy_timeout = absl::Seconds(5);
};

class SqliteJobStore final : public JobStore {
 public:
  // Opens or creates the database file at `path` and migrates its schema to the latest version.
  // NOT_FOUND if the directory of `path` does not exist (it is not created); FAILED_PRECONDITION (naming the file)
  // for a file that is not a SQLite database or not a job store, a schema written by a newer flashmorphd, or a
  // journal mode SQLite refuses; DATA_LOSS for a corrupt database; INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::string& path, SqliteOptions options = {});

  ~SqliteJobStore() override;
  SqliteJobStore(const SqliteJobStore&) = delete;
  SqliteJobStore& operator=(const SqliteJobStore&) = delete;

  // INVALID_ARGUMENT if job.name is not "jobs/<id>", create_time is out of range, an event's job differs from
  // job.name, or event sequences are not strictly ascending from >= 1.
  absl::Status InsertJob(const JobRecord& record, const std::vector<JobEvent>& events) override;
  // As InsertJob; the first event's sequence must exceed the job's largest stored sequence. The columns are
  // re-derived from the new record (a changed request_id that collides gives ALREADY_EXISTS).
  absl::Status UpdateJob(const JobRecord& record, const std::vector<JobEvent>& events) override;
  absl::StatusOr<JobRecord> GetJob(std::string_view job_id) override;
  // NOT_FOUND for an empty request_id (empty ids are never indexed).
  absl::StatusOr<JobRecord> FindByRequestId(std::string_view tenant, std::string_view request_id) override;
  // INVALID_ARGUMENT unless 1 <= limit <= 1000.
  absl::StatusOr<JobPage> ListJobs(const JobQuery& query) override;
  // Oldest first (create_time ascending, then id ascending).
  absl::StatusOr<std::vector<JobRecord>> ListUnfinishedJobs() override;
  // INVALID_ARGUMENT unless limit >= 1.
  absl::StatusOr<std::vector<JobEvent>> ReadEvents(std::string_view job_id, int64_t after_sequence, int limit) override;
  // INVALID_ARGUMENT for an empty registration.worker_id.
  absl::Status PutWorker(const WorkerRecord& worker) override;
  absl::Status DeleteWorker(std::string_view worker_id) override;
  // Ordered by worker id.
  absl::StatusOr<std::vector<WorkerRecord>> ListWorkers() override;

  const std::string& path() const;

 private:
  class Impl;
  explicit SqliteJobStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fm::server
