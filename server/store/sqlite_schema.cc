#include "server/store/sqlite_schema.h"

#include <sqlite3.h>

#include <array>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {
namespace {

// Append only: never edit a migration that has shipped; add a new one.
constexpr std::array<SchemaMigration, 2> kMigrations = {{
    {1, "jobs, events and workers",
     R"sql(
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  state INTEGER NOT NULL,
  create_time_micros INTEGER NOT NULL,
  request_id TEXT,
  record BLOB NOT NULL
);
CREATE INDEX jobs_by_create_time ON jobs (create_time_micros DESC, id DESC);
CREATE INDEX jobs_by_tenant_create_time ON jobs (tenant, create_time_micros DESC, id DESC);
CREATE UNIQUE INDEX jobs_by_request_id ON jobs (tenant, request_id)
  WHERE request_id IS NOT NULL AND request_id != '';
CREATE INDEX jobs_by_state ON jobs (state);
CREATE TABLE events (
  job_id TEXT NOT NULL,
  sequence INTEGER NOT NULL,
  event BLOB NOT NULL,
  PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE workers (
  id TEXT PRIMARY KEY,
  record BLOB NOT NULL
);
)sql"},
    {2, "jobs by (state, create_time): unfinished jobs oldest first from the index",
     R"sql(
DROP INDEX jobs_by_state;
CREATE INDEX jobs_by_state_create_time ON jobs (state, create_time_micros, id);
)sql"},
}};

absl::Status StatusForCode(int rc, std::string text) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(text);
    case SQLITE_CONSTRAINT:
      if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) return absl::AlreadyExistsError(text);
      return absl::InternalError(text);
    case SQLITE_NOTADB:
    case SQLITE_READONLY:
      return absl::FailedPreconditionError(text);
    case SQLITE_CORRUPT:
      return absl::DataLossError(text);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(text);
    default:
      return absl::InternalError(text);
  }
}

// Runs a query whose first row's first column is an integer (0 when there is no row or it is NULL).
absl::StatusOr<int64_t> QueryInt(sqlite3* db, const char* sql, std::string_view path) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr);
  if (rc != SQLITE_OK) return SqliteStatus(db, rc, path, sql);
  rc = sqlite3_step(stmt);
  int64_t value = 0;
  if (rc == SQLITE_ROW) {
    value = sqlite3_column_int64(stmt, 0);
    rc = SQLITE_DONE;
  }
  absl::Status status = rc == SQLITE_DONE ? absl::OkStatus() : SqliteStatus(db, rc, path, sql);
  sqlite3_finalize(stmt);
  FM_RETURN_IF_ERROR(status);
  return value;
}

// Refuses a SQLite database that is not a job store: a job store carries our application_id; a fresh database
// has no application_id and no tables.
absl::Status CheckIsJobStore(sqlite3* db, std::string_view path) {
  FM_ASSIGN_OR_RETURN(int64_t app_id, QueryInt(db, "PRAGMA application_id", path));
  if (app_id == kJobStoreApplicationId) return absl::OkStatus();
  FM_ASSIGN_OR_RETURN(int64_t objects, QueryInt(db, "SELECT count(*) FROM sqlite_master", path));
  if (app_id == 0 && objects == 0) return absl::OkStatus();
  return absl::FailedPreconditionError(StrCat("job store ", path,
                                              ": a SQLite database but not a flashmorphd job store (",
                                              "application_id ", app_id, ", ", objects, " schema objects)"));
}

// Inside an open transaction: applies the next migration if the database is below `target`. True if one was applied.
absl::StatusOr<bool> MigrateOneStep(sqlite3* db, std::string_view path, int target) {
  FM_RETURN_IF_ERROR(CheckIsJobStore(db, path));
  FM_RETURN_IF_ERROR(SqliteExec(db,
                                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                                "applied_at_micros INTEGER, description TEXT)",
                                path));
  FM_ASSIGN_OR_RETURN(int version, ReadSchemaVersion(db, path));
  if (version >= target) return false;
  const SchemaMigration& m = kMigrations[version];  // version + 1 == m.version
  absl::Status applied = SqliteExec(db, m.sql, path);
  if (!applied.ok()) {
    return absl::Status(applied.code(), StrCat("job store ", path, ": migration ", m.version, " (", m.description,
                                               ") failed: ", std::string(applied.message())));
  }
  FM_RETURN_IF_ERROR(SqliteExec(db, StrCat("PRAGMA application_id = ", kJobStoreApplicationId), path));
  sqlite3_stmt* stmt = nullptr;
  const char* insert = "INSERT INTO schema_migrations (version, applied_at_micros, description) VALUES (?, ?, ?)";
  int rc = sqlite3_prepare_v2(db, insert, -1, &stmt, nullptr);
  if (rc != SQLITE_OK) return SqliteStatus(db, rc, path, insert);
  sqlite3_bind_int(stmt, 1, m.version);
  sqlite3_bind_int64(stmt, 2, absl::ToUnixMicros(absl::Now()));
  sqlite3_bind_text(stmt, 3, m.description.data(), static_cast<int>(m.description.size()), SQLITE_STATIC);
  rc = sqlite3_step(stmt);
  absl::Status status =
      rc == SQLITE_DONE ? absl::OkStatus() : SqliteStatus(db, rc, path, StrCat("recording migration ", m.version));
  sqlite3_finalize(stmt);
  FM_RETURN_IF_ERROR(status);
  return true;
}

}  // namespace

std::span<const SchemaMigration> SchemaMigrations() { return kMigrations; }

int LatestSchemaVersion() { return kMigrations.back().version; }

absl::StatusOr<int> ReadSchemaVersion(sqlite3* db, std::string_view path) {
  FM_ASSIGN_OR_RETURN(
      int64_t has_table,
      QueryInt(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'", path));
  if (has_table == 0) return 0;
  FM_ASSIGN_OR_RETURN(int64_t version, QueryInt(db, "SELECT max(version) FROM schema_migrations", path));
  FM_ASSIGN_OR_RETURN(int64_t rows, QueryInt(db, "SELECT count(*) FROM schema_migrations", path));
  if (version > LatestSchemaVersion()) {
    return absl::FailedPreconditionError(StrCat("job store ", path, ": schema version ", version,
                                                " was written by a newer flashmorphd (this build knows up to version ",
                                                LatestSchemaVersion(), ")"));
  }
  if (version < 0 || rows != version) {
    return absl::DataLossError(StrCat("job store ", path, ": schema_migrations holds ", rows, " rows for version ",
                                      version, " (expected one row per version from 1)"));
  }
  return static_cast<int>(version);
}

absl::Status MigrateSchema(sqlite3* db, std::string_view path, int target_version) {
  if (target_version < 1 || target_version > LatestSchemaVersion()) {
    return absl::InvalidArgumentError(
        StrCat("job store ", path, ": no schema version ", target_version, " (known: 1..", LatestSchemaVersion(), ")"));
  }
  while (true) {
    FM_RETURN_IF_ERROR(SqliteExec(db, "BEGIN IMMEDIATE", path));
    absl::StatusOr<bool> applied = MigrateOneStep(db, path, target_version);
    absl::Status status = applied.status();
    if (status.ok()) status = SqliteExec(db, "COMMIT", path);
    if (!status.ok()) {
      if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return status;
    }
    if (!*applied) return absl::OkStatus();
  }
}

absl::Status SqliteStatus(sqlite3* db, int rc, std::string_view path, std::string_view what) {
  const char* message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return StatusForCode(
      rc, StrCat("job store ", path, ": ", what, ": ", message, " (", sqlite3_errstr(rc), ", code ", rc, ")"));
}

absl::Status SqliteExec(sqlite3* db, std::string_view sql, std::string_view path) {
  std::string text(sql);  // sqlite3_exec needs a NUL-terminated string
  char* error = nullptr;
  int rc = sqlite3_exec(db, text.c_str(), nullptr, nullptr, &error);
  if (rc == SQLITE_OK) return absl::OkStatus();
  std::string message = error != nullptr ? error : sqlite3_errstr(rc);
  sqlite3_free(error);
  std::string what = text.size() > 60 ? StrCat(text.substr(0, 60), "...") : text;
  return StatusForCode(
      rc, StrCat("job store ", path, ": ", what, ": ", message, " (", sqlite3_errstr(rc), ", code ", rc, ")"));
}

}  // namespace fm::server
