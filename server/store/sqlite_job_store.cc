#include "server/store/sqlite_job_store.h"

#include <sqlite3.h>

#include <climits>
#include <filesystem>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/synchronization/mutex.h"
#include "flashmorph/v1/conversion_job.pb.h"
#include "server/store/sqlite_schema.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {
namespace {

constexpr int kMaxListLimit = 1000;
constexpr size_t kMaxFilterValues = 1000;    // tenants + states of one ListJobs query
constexpr size_t kMaxCachedStatements = 64;  // ListJobs builds its SQL per filter shape
constexpr std::string_view kJobPrefix = "jobs/";
// google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
constexpr int64_t kMinTimestampSeconds = -62135596800;
constexpr int64_t kMaxTimestampSeconds = 253402300799;

// A cached prepared statement borrowed for one use: binds, steps, and is reset (bindings cleared) when it goes out
// of scope. A failed bind is reported by the next Step().
class Stmt {
 public:
  Stmt(sqlite3* db, sqlite3_stmt* stmt, const std::string& path) : db_(db), stmt_(stmt), path_(path) {}
  ~Stmt() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  void BindInt(int index, int64_t value) { Note(sqlite3_bind_int64(stmt_, index, value)); }
  void BindNull(int index) { Note(sqlite3_bind_null(stmt_, index)); }
  // The bytes must outlive the statement's use (SQLITE_STATIC). Empty text binds '' (not NULL).
  void BindText(int index, std::string_view text) {
    Note(sqlite3_bind_text64(stmt_, index, text.empty() ? "" : text.data(), text.size(), SQLITE_STATIC, SQLITE_UTF8));
  }
  void BindBlob(int index, std::string_view bytes) {
    Note(sqlite3_bind_blob64(stmt_, index, bytes.empty() ? "" : bytes.data(), bytes.size(), SQLITE_STATIC));
  }

  // True when a row is ready, false when the statement has finished.
  absl::StatusOr<bool> Step() {
    if (bind_rc_ != SQLITE_OK) return SqliteStatus(db_, bind_rc_, path_, StrCat("binding ", sqlite3_sql(stmt_)));
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteStatus(db_, rc, path_, sqlite3_sql(stmt_));
  }
  // Makes the statement runnable again (bindings are kept).
  void Reset() {
    sqlite3_reset(stmt_);
    bind_rc_ = SQLITE_OK;
  }
  // Steps a statement that returns no rows.
  absl::Status Run() {
    FM_ASSIGN_OR_RETURN(bool row, Step());
    if (row) return absl::InternalError(StrCat("job store ", path_, ": unexpected row from ", sqlite3_sql(stmt_)));
    return absl::OkStatus();
  }

  int64_t Int(int column) { return sqlite3_column_int64(stmt_, column); }
  bool IsNull(int column) { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
  std::string_view Bytes(int column) {
    const void* data = sqlite3_column_blob(stmt_, column);
    int size = sqlite3_column_bytes(stmt_, column);  // after column_blob, as SQLite requires
    return data == nullptr ? std::string_view() : std::string_view(static_cast<const char*>(data), size);
  }

 private:
  void Note(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  const std::string& path_;
  int bind_rc_ = SQLITE_OK;
};

// "jobs/<id>" -> "<id>"; the id is non-empty and has no '/'.
absl::StatusOr<std::string> JobIdFromName(std::string_view name) {
  if (name.substr(0, kJobPrefix.size()) != kJobPrefix || name.size() == kJobPrefix.size() ||
      name.find('/', kJobPrefix.size()) != std::string_view::npos) {
    return absl::InvalidArgumentError(StrCat("job.name \"", name, "\" is not of the form \"jobs/{job}\""));
  }
  return std::string(name.substr(kJobPrefix.size()));
}

// The indexed columns of a job, derived from its record.
struct JobColumns {
  std::string id;
  int64_t create_time_micros = 0;
};

absl::StatusOr<JobColumns> ColumnsOf(const JobRecord& record) {
  JobColumns columns;
  FM_ASSIGN_OR_RETURN(columns.id, JobIdFromName(record.job().name()));
  const auto& t = record.job().create_time();
  if (t.seconds() < kMinTimestampSeconds || t.seconds() > kMaxTimestampSeconds || t.nanos() < 0 ||
      t.nanos() > 999'999'999) {
    return absl::InvalidArgumentError(StrCat("job ", record.job().name(), ": create_time (", t.seconds(), " s, ",
                                             t.nanos(), " ns) is not a valid timestamp"));
  }
  columns.create_time_micros = t.seconds() * 1'000'000 + t.nanos() / 1000;
  return columns;
}

// Each event names the job and sequences strictly ascend, all above `after`.
absl::Status CheckEvents(const std::vector<JobEvent>& events, std::string_view name, int64_t after) {
  int64_t previous = after;
  for (size_t i = 0; i < events.size(); ++i) {
    const JobEvent& e = events[i];
    if (e.job() != name) {
      return absl::InvalidArgumentError(
          StrCat("job ", name, ": events[", i, "].job is \"", e.job(), "\", expected the job's name"));
    }
    if (e.sequence() <= previous) {
      return absl::InvalidArgumentError(StrCat("job ", name, ": events[", i, "].sequence ", e.sequence(),
                                               " is not above ", previous,
                                               i == 0 ? " (the job's last stored sequence)" : " (the previous event)"));
    }
    previous = e.sequence();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> SerializeEvents(const std::vector<JobEvent>& events, std::string_view name) {
  std::vector<std::string> blobs(events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    if (!events[i].SerializeToString(&blobs[i])) {
      return absl::InvalidArgumentError(StrCat("job ", name, ": events[", i, "] does not serialize"));
    }
  }
  return blobs;
}

}  // namespace

class SqliteJobStore::Impl {
 public:
  Impl(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}
  ~Impl() {
    absl::MutexLock lock(&mu_);
    ClearCache();
    sqlite3_close_v2(db_);
  }

  const std::string& path() const { return path_; }

  // Runs `body` (a callable returning absl::Status) inside one transaction under the mutex: BEGIN IMMEDIATE for
  // writes, BEGIN (a consistent snapshot that never blocks the writer in WAL mode) for reads. COMMIT if it
  // succeeds, ROLLBACK otherwise.
  template <typename Body>
  absl::Status Transact(bool write, Body&& body) {
    absl::MutexLock lock(&mu_);
    if (cache_.size() > kMaxCachedStatements) ClearCache();  // no statement is borrowed here
    if (!sqlite3_get_autocommit(db_)) Rollback();            // a transaction left open by a failed ROLLBACK
    FM_RETURN_IF_ERROR(Exec(write ? "BEGIN IMMEDIATE" : "BEGIN"));
    absl::Status status = body();
    if (status.ok()) status = Exec("COMMIT");
    if (!status.ok()) Rollback();
    return status;
  }

  // A cached statement for `sql`; call only inside Transact.
  absl::StatusOr<std::unique_ptr<Stmt>> Prepare(const std::string& sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = cache_.find(sql);
    if (it == cache_.end()) {
      sqlite3_stmt* stmt = nullptr;
      int rc = sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size()) + 1, SQLITE_PREPARE_PERSISTENT, &stmt,
                                  nullptr);
      if (rc != SQLITE_OK) return SqliteStatus(db_, rc, path_, StrCat("preparing ", sql));
      it = cache_.emplace(sql, stmt).first;
    }
    return std::make_unique<Stmt>(db_, it->second, path_);
  }

  absl::StatusOr<JobRecord> ParseJob(std::string_view id, std::string_view blob) const {
    JobRecord record;
    if (!record.ParseFromArray(blob.data(), static_cast<int>(blob.size()))) {
      return absl::DataLossError(StrCat("job store ", path_, ": the stored record of job ", id, " does not parse"));
    }
    if (record.job().name().size() != kJobPrefix.size() + id.size() ||
        record.job().name().compare(kJobPrefix.size(), std::string::npos, id.data(), id.size()) != 0) {
      return absl::DataLossError(
          StrCat("job store ", path_, ": the stored record of job ", id, " names \"", record.job().name(), "\""));
    }
    return record;
  }

 private:
  absl::Status Exec(const std::string& sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    FM_ASSIGN_OR_RETURN(std::unique_ptr<Stmt> stmt, Prepare(sql));
    return stmt->Run();
  }
  void Rollback() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void ClearCache() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto& [sql, stmt] : cache_) sqlite3_finalize(stmt);
    cache_.clear();
  }

  const std::string path_;
  absl::Mutex mu_;
  sqlite3* const db_;
  std::unordered_map<std::string, sqlite3_stmt*> cache_ ABSL_GUARDED_BY(mu_);
};

namespace {

// Runs `sql` on a connection not yet shared and returns the first column of its first row as text.
absl::StatusOr<std::string> PragmaText(sqlite3* db, const std::string& sql, const std::string& path) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr);
  if (rc != SQLITE_OK) return SqliteStatus(db, rc, path, sql);
  rc = sqlite3_step(stmt);
  std::string value;
  if (rc == SQLITE_ROW) {
    const unsigned char* text = sqlite3_column_text(stmt, 0);
    if (text != nullptr) value = reinterpret_cast<const char*>(text);
    rc = SQLITE_DONE;
  }
  absl::Status status = rc == SQLITE_DONE ? absl::OkStatus() : SqliteStatus(db, rc, path, sql);
  sqlite3_finalize(stmt);
  FM_RETURN_IF_ERROR(status);
  return value;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::string& path, SqliteOptions options) {
  const std::string synchronous = absl::AsciiStrToUpper(options.synchronous);
  const std::string journal_mode = absl::AsciiStrToUpper(options.journal_mode);
  if (synchronous != "NORMAL" && synchronous != "FULL") {
    return absl::InvalidArgumentError(
        StrCat("job store ", path, ": synchronous \"", options.synchronous, "\" is neither NORMAL nor FULL"));
  }
  if (journal_mode != "WAL" && journal_mode != "DELETE") {
    return absl::InvalidArgumentError(
        StrCat("job store ", path, ": journal_mode \"", options.journal_mode, "\" is neither WAL nor DELETE"));
  }
  const int64_t busy_ms = absl::ToInt64Milliseconds(options.busy_timeout);
  if (busy_ms < 0 || busy_ms > INT_MAX) {
    return absl::InvalidArgumentError(StrCat("job store ", path, ": busy_timeout of ", busy_ms, " ms is out of range"));
  }
  if (path.empty()) return absl::InvalidArgumentError("job store: empty path");

  std::error_code ec;
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::NotFoundError(
        StrCat("job store ", path, ": directory ", dir.string(), " does not exist (it is not created)"));
  }
  if (std::filesystem::is_directory(path, ec)) {
    return absl::FailedPreconditionError(StrCat("job store ", path, ": is a directory, not a database file"));
  }

  sqlite3* db = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = SqliteStatus(db, rc, path, "opening");
    sqlite3_close_v2(db);  // a no-op for a null handle
    return status;
  }
  auto impl = std::make_unique<Impl>(path, db);  // closes the connection on every return below
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, static_cast<int>(busy_ms));

  // The first statement reads the file header: a file that is not SQLite fails here (NOTADB).
  FM_ASSIGN_OR_RETURN(std::string mode, PragmaText(db, StrCat("PRAGMA journal_mode = ", journal_mode), path));
  if (absl::AsciiStrToUpper(mode) != journal_mode) {
    return absl::FailedPreconditionError(StrCat("job store ", path, ": SQLite refused journal_mode=", journal_mode,
                                                " (the database stays in mode \"", mode, "\")"));
  }
  FM_RETURN_IF_ERROR(SqliteExec(db, StrCat("PRAGMA synchronous = ", synchronous), path));
  FM_ASSIGN_OR_RETURN(std::string sync_level, PragmaText(db, "PRAGMA synchronous", path));
  if (sync_level != (synchronous == "FULL" ? "2" : "1")) {
    return absl::FailedPreconditionError(
        StrCat("job store ", path, ": SQLite refused synchronous=", synchronous, " (level ", sync_level, ")"));
  }
  FM_RETURN_IF_ERROR(MigrateSchema(db, path, LatestSchemaVersion()));
  return std::unique_ptr<SqliteJobStore>(new SqliteJobStore(std::move(impl)));
}

SqliteJobStore::SqliteJobStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SqliteJobStore::~SqliteJobStore() = default;

const std::string& SqliteJobStore::path() const { return impl_->path(); }

absl::Status SqliteJobStore::InsertJob(const JobRecord& record, const std::vector<JobEvent>& events) {
  FM_ASSIGN_OR_RETURN(JobColumns columns, ColumnsOf(record));
  const std::string& name = record.job().name();
  FM_RETURN_IF_ERROR(CheckEvents(events, name, 0));
  std::string blob;
  if (!record.SerializeToString(&blob)) return absl::InvalidArgumentError(StrCat("job ", name, ": does not serialize"));
  FM_ASSIGN_OR_RETURN(std::vector<std::string> event_blobs, SerializeEvents(events, name));
  const std::string& tenant = record.job().tenant();
  const std::string& request_id = record.job().request_id();

  return impl_->Transact(/*write=*/true, [&]() -> absl::Status {
    {
      FM_ASSIGN_OR_RETURN(auto find, impl_->Prepare("SELECT 1 FROM jobs WHERE id = ?"));
      find->BindText(1, columns.id);
      FM_ASSIGN_OR_RETURN(bool exists, find->Step());
      if (exists) return absl::AlreadyExistsError(StrCat("job ", name, " already exists"));
    }
    if (!request_id.empty()) {
      FM_ASSIGN_OR_RETURN(auto find, impl_->Prepare("SELECT id FROM jobs WHERE tenant = ? AND request_id = ? AND "
                                                    "request_id IS NOT NULL AND request_id != ''"));
      find->BindText(1, tenant);
      find->BindText(2, request_id);
      FM_ASSIGN_OR_RETURN(bool exists, find->Step());
      if (exists) {
        return absl::AlreadyExistsError(StrCat("tenant \"", tenant, "\" already has job jobs/", find->Bytes(0),
                                               " with request_id \"", request_id, "\""));
      }
    }
    FM_ASSIGN_OR_RETURN(auto insert, impl_->Prepare("INSERT INTO jobs (id, tenant, state, create_time_micros, "
                                                    "request_id, record) VALUES (?, ?, ?, ?, ?, ?)"));
    insert->BindText(1, columns.id);
    insert->BindText(2, tenant);
    insert->BindInt(3, record.job().state());
    insert->BindInt(4, columns.create_time_micros);
    if (request_id.empty()) {
      insert->BindNull(5);
    } else {
      insert->BindText(5, request_id);
    }
    insert->BindBlob(6, blob);
    FM_RETURN_IF_ERROR(insert->Run());
    FM_ASSIGN_OR_RETURN(auto append, impl_->Prepare("INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)"));
    for (size_t i = 0; i < events.size(); ++i) {
      append->BindText(1, columns.id);
      append->BindInt(2, events[i].sequence());
      append->BindBlob(3, event_blobs[i]);
      FM_RETURN_IF_ERROR(append->Run());
      append->Reset();
    }
    return absl::OkStatus();
  });
}

absl::Status SqliteJobStore::UpdateJob(const JobRecord& record, const std::vector<JobEvent>& events) {
  FM_ASSIGN_OR_RETURN(JobColumns columns, ColumnsOf(record));
  const std::string& name = record.job().name();
  FM_RETURN_IF_ERROR(CheckEvents(events, name, 0));
  std::string blob;
  if (!record.SerializeToString(&blob)) return absl::InvalidArgumentError(StrCat("job ", name, ": does not serialize"));
  FM_ASSIGN_OR_RETURN(std::vector<std::string> event_blobs, SerializeEvents(events, name));
  const std::string& request_id = record.job().request_id();

  return impl_->Transact(/*write=*/true, [&]() -> absl::Status {
    {
      FM_ASSIGN_OR_RETURN(auto find, impl_->Prepare("SELECT 1 FROM jobs WHERE id = ?"));
      find->BindText(1, columns.id);
      FM_ASSIGN_OR_RETURN(bool exists, find->Step());
      if (!exists) return absl::NotFoundError(StrCat("job ", name, " does not exist"));
    }
    if (!events.empty()) {
      FM_ASSIGN_OR_RETURN(auto last, impl_->Prepare("SELECT max(sequence) FROM events WHERE job_id = ?"));
      last->BindText(1, columns.id);
      FM_ASSIGN_OR_RETURN(bool row, last->Step());
      FM_RETURN_IF_ERROR(CheckEvents(events, name, row && !last->IsNull(0) ? last->Int(0) : 0));
    }
    // Events first, then the record: a failure of the record's update (e.g. a colliding request_id) rolls the
    // appended events back with it.
    FM_ASSIGN_OR_RETURN(auto append, impl_->Prepare("INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)"));
    for (size_t i = 0; i < events.size(); ++i) {
      append->BindText(1, columns.id);
      append->BindInt(2, events[i].sequence());
      append->BindBlob(3, event_blobs[i]);
      FM_RETURN_IF_ERROR(append->Run());
      append->Reset();
    }
    FM_ASSIGN_OR_RETURN(auto update, impl_->Prepare("UPDATE jobs SET tenant = ?, state = ?, create_time_micros = ?, "
                                                    "request_id = ?, record = ? WHERE id = ?"));
    update->BindText(1, record.job().tenant());
    update->BindInt(2, record.job().state());
    update->BindInt(3, columns.create_time_micros);
    if (request_id.empty()) {
      update->BindNull(4);
    } else {
      update->BindText(4, request_id);
    }
    update->BindBlob(5, blob);
    update->BindText(6, columns.id);
    return update->Run();
  });
}

absl::StatusOr<JobRecord> SqliteJobStore::GetJob(std::string_view job_id) {
  JobRecord record;
  FM_RETURN_IF_ERROR(impl_->Transact(/*write=*/false, [&]() -> absl::Status {
    FM_ASSIGN_OR_RETURN(auto get, impl_->Prepare("SELECT record FROM jobs WHERE id = ?"));
    get->BindText(1, job_id);
    FM_ASSIGN_OR_RETURN(bool found, get->Step());
    if (!found) return absl::NotFoundError(StrCat("job jobs/", job_id, " does not exist"));
    FM_ASSIGN_OR_RETURN(record, impl_->ParseJob(job_id, get->Bytes(0)));
    return absl::OkStatus();
  }));
  return record;
}

absl::StatusOr<JobRecord> SqliteJobStore::FindByRequestId(std::string_view tenant, std::string_view request_id) {
  if (request_id.empty()) return absl::NotFoundError("no job is found by an empty request_id");
  JobRecord record;
  FM_RETURN_IF_ERROR(impl_->Transact(/*write=*/false, [&]() -> absl::Status {
    FM_ASSIGN_OR_RETURN(auto find, impl_->Prepare("SELECT id, record FROM jobs WHERE tenant = ? AND request_id = ? AND "
                                                  "request_id IS NOT NULL AND request_id != ''"));
    find->BindText(1, tenant);
    find->BindText(2, request_id);
    FM_ASSIGN_OR_RETURN(bool found, find->Step());
    if (!found) {
      return absl::NotFoundError(StrCat("tenant \"", tenant, "\" has no job with request_id \"", request_id, "\""));
    }
    FM_ASSIGN_OR_RETURN(record, impl_->ParseJob(find->Bytes(0), find->Bytes(1)));
    return absl::OkStatus();
  }));
  return record;
}

absl::StatusOr<JobPage> SqliteJobStore::ListJobs(const JobQuery& query) {
  if (query.limit < 1 || query.limit > kMaxListLimit) {
    return absl::InvalidArgumentError(StrCat("ListJobs: limit ", query.limit, " is not in 1..", kMaxListLimit));
  }
  if (query.tenants.size() + query.states.size() > kMaxFilterValues) {
    return absl::InvalidArgumentError(StrCat("ListJobs: ", query.tenants.size() + query.states.size(),
                                             " tenant and state filter values (at most ", kMaxFilterValues, ")"));
  }
  // The SQL depends only on the filters' shape (how many values of each), so it is cached per shape.
  std::string sql = "SELECT id, record FROM jobs";
  std::string_view glue = " WHERE ";
  auto placeholders = [](size_t n) {
    std::string list = "(";
    for (size_t i = 0; i < n; ++i) list += i == 0 ? "?" : ", ?";
    return list + ")";
  };
  if (!query.tenants.empty()) {
    sql += StrCat(glue, "tenant IN ", placeholders(query.tenants.size()));
    glue = " AND ";
  }
  if (!query.states.empty()) {
    sql += StrCat(glue, "state IN ", placeholders(query.states.size()));
    glue = " AND ";
  }
  if (query.after.has_value()) sql += StrCat(glue, "(create_time_micros, id) < (?, ?)");
  sql += " ORDER BY create_time_micros DESC, id DESC LIMIT ?";

  JobPage page;
  FM_RETURN_IF_ERROR(impl_->Transact(/*write=*/false, [&]() -> absl::Status {
    page.jobs.clear();
    FM_ASSIGN_OR_RETURN(auto list, impl_->Prepare(sql));
    int index = 1;
    for (const std::string& tenant : query.tenants) list->BindText(index++, tenant);
    for (int state : query.states) list->BindInt(index++, state);
    if (query.after.has_value()) {
      list->BindInt(index++, query.after->create_time_micros);
      list->BindText(index++, query.after->job_id);
    }
    list->BindInt(index, query.limit + 1);  // one more row tells whether there are more
    while (true) {
      FM_ASSIGN_OR_RETURN(bool row, list->Step());
      if (!row) break;
      if (static_cast<int>(page.jobs.size()) == query.limit) {
        page.more = true;
        break;
      }
      FM_ASSIGN_OR_RETURN(JobRecord record, impl_->ParseJob(list->Bytes(0), list->Bytes(1)));
      page.jobs.push_back(std::move(record));
    }
    return absl::OkStatus();
  }));
  return page;
}

absl::StatusOr<std::vector<JobRecord>> SqliteJobStore::ListUnfinishedJobs() {
  using ConversionJob = ::flashmorph::v1::ConversionJob;
  const std::string sql =
      StrCat("SELECT id, record FROM jobs WHERE state IN (", static_cast<int>(ConversionJob::PENDING), ", ",
             static_cast<int>(ConversionJob::RUNNING), ", ", static_cast<int>(ConversionJob::CANCELLING),
             ") ORDER BY create_time_micros, id");
  std::vector<JobRecord> jobs;
  FM_RETURN_IF_ERROR(impl_->Transact(/*write=*/false, [&]() -> absl::Status {
    jobs.clear();
    FM_ASSIGN_OR_RETURN(auto list, impl_->Prepare(sql));
    while (true) {
      FM_ASSIGN_OR_RETURN(bool row, list->Step());
      if (!row) return absl::OkStatus();
      FM_ASSIGN_OR_RETURN(JobRecord record, impl_->ParseJob(list->Bytes(0), list->Bytes(1)));
      jobs.push_back(std::move(record));
    }
  }));
  return jobs;
}

absl::StatusOr<std::vector<JobEvent>> SqliteJobStore::ReadEvents(std::string_view job_id, int64_t after_sequence,
                                                                 int limit) {
  if (limit < 1) return absl::InvalidArgumentError(StrCat("ReadEvents: limit ", limit, " is below 1"));
  std::vector<JobEvent> events;
  FM_RETURN_IF_ERROR(impl_->Transact(/*write=*/false, [&]() -> absl::Status {
    events.clear();
    FM_ASSIGN_OR_RETURN(auto read, impl_->Prepare("SELECT sequence, event FROM events WHERE job_id = ? AND "
                                                  "sequence > ? ORDER BY sequence LIMIT ?"));
    read->BindText(1, job_id);
    read->BindInt(2, after_sequence);
    read->BindInt(3, limit);
    while (true) {
      FM_ASSIGN_OR_RETURN(bool row, read->Step());
      if (!row) return absl::OkStatus();
      const int64_t sequence = read->Int(0);
      std::string_view blob = read->Bytes(1);
      JobEvent& event = events.emplace_back();
      if (!event.ParseFromArray(blob.data(), static_cast<int>(blob.size())) || event.sequence() != sequence) {
        return absl::DataLossError(StrCat("job store ", path(), ": event ", sequence, " of job jobs/", job_id,
                                          " does not parse or has another sequence"));
      }
    }
  }));
  return events;
}

absl::Status SqliteJobStore::PutWorker(const WorkerRecord& worker) {
  const std::string& id = worker.registration().worker_id();
  if (id.empty()) return absl::InvalidArgumentError("PutWorker: registration.worker_id is empty");
  std::string blob;
  if (!worker.SerializeToString(&blob)) {
    return absl::InvalidArgumentError(StrCat("worker ", id, ": does not serialize"));
  }
  return impl_->Transact(/*write=*/true, [&]() -> absl::Status {
    FM_ASSIGN_OR_RETURN(auto put, impl_->Prepare("INSERT INTO workers (id, record) VALUES (?, ?) "
                                                 "ON CONFLICT (id) DO UPDATE SET record = excluded.record"));
    put->BindText(1, id);
    put->BindBlob(2, blob);
    return put->Run();
  });
}

absl::Status SqliteJobStore::DeleteWorker(std::string_view worker_id) {
  return impl_->Transact(/*write=*/true, [&]() -> absl::Status {
    FM_ASSIGN_OR_RETURN(auto remove, impl_->Prepare("DELETE FROM workers WHERE id = ?"));
    remove->BindText(1, worker_id);
    return remove->Run();
  });
}

absl::StatusOr<std::vector<WorkerRecord>> SqliteJobStore::ListWorkers() {
  std::vector<WorkerRecord> workers;
  FM_RETURN_IF_ERROR(impl_->Transact(/*write=*/false, [&]() -> absl::Status {
    workers.clear();
    FM_ASSIGN_OR_RETURN(auto list, impl_->Prepare("SELECT id, record FROM workers ORDER BY id"));
    while (true) {
      FM_ASSIGN_OR_RETURN(bool row, list->Step());
      if (!row) return absl::OkStatus();
      std::string_view blob = list->Bytes(1);
      WorkerRecord& worker = workers.emplace_back();
      if (!worker.ParseFromArray(blob.data(), static_cast<int>(blob.size())) ||
          worker.registration().worker_id() != list->Bytes(0)) {
        return absl::DataLossError(StrCat("job store ", path(), ": the stored record of worker ", list->Bytes(0),
                                          " does not parse or names another worker"));
      }
    }
  }));
  return workers;
}

}  // namespace fm::server
