// The job store's SQLite schema as an ordered list of versioned migrations, and the mapping of SQLite result codes
// to absl::Status. A database records every applied migration in schema_migrations(version, applied_at_micros,
// description); MigrateSchema applies the missing ones in order, each in its own transaction together with its
// version row, so a kill mid-migration leaves the database at the previous version. A database whose version is
// newer than this build knows, or a SQLite database that is not a job store, is refused (FAILED_PRECONDITION) and
// left untouched.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct sqlite3;

namespace fm::server {

// One schema step. `sql` may hold several statements; it runs inside the migration's transaction.
struct SchemaMigration {
  int version;  // 1, 2, ... without gaps
  std::string_view description;
  std::string_view sql;
};

// PRAGMA application_id of a job store ("FMJS"), set by migration 1.
inline constexpr int32_t kJobStoreApplicationId = 0x464D4A53;

// Every migration this build knows, ascending by version from 1.
std::span<const SchemaMigration> SchemaMigrations();

// The highest version in SchemaMigrations().
int LatestSchemaVersion();

// The version recorded in `db` (0 for a database without schema_migrations). `path` names the file in errors.
absl::StatusOr<int> ReadSchemaVersion(sqlite3* db, std::string_view path);

// Brings `db` to `target_version` (1..LatestSchemaVersion()), applying each missing migration in its own
// BEGIN IMMEDIATE transaction. FAILED_PRECONDITION if the database is newer than this build
// ("written by a newer flashmorphd") or is a SQLite database of something else; INVALID_ARGUMENT for a bad target.
absl::Status MigrateSchema(sqlite3* db, std::string_view path, int target_version);

// A Status for SQLite result code `rc` (extended codes understood) with sqlite's message for `db` (may be null):
// BUSY/LOCKED -> UNAVAILABLE, UNIQUE/PRIMARY KEY constraint -> ALREADY_EXISTS, NOTADB -> FAILED_PRECONDITION,
// CORRUPT -> DATA_LOSS, FULL -> RESOURCE_EXHAUSTED, READONLY -> FAILED_PRECONDITION, anything else -> INTERNAL.
// The message reads "job store <path>: <what>: <sqlite message> (<code name>)".
absl::Status SqliteStatus(sqlite3* db, int rc, std::string_view path, std::string_view what);

// Runs `sql` (one or more statements, no results) on `db`.
absl::Status SqliteExec(sqlite3* db, std::string_view sql, std::string_view path);

}  // namespace fm::server
