// SqliteJobStore through real SQLite files in a temporary directory: round trips, idempotency, pagination, event
// logs, workers, persistence, migrations, refusal of foreign files, and durability under SIGKILL.
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "server/store/sqlite_job_store.h"
#include "server/store/sqlite_schema.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {
namespace {

using ::flashmorph::v1::ConversionJob;
using ::google::protobuf::util::MessageDifferencer;

JobRecord MakeJob(const std::string& id, const std::string& tenant, int state, int64_t create_micros,
                  const std::string& request_id = "") {
  JobRecord record;
  ConversionJob* job = record.mutable_job();
  job->set_name("jobs/" + id);
  job->set_tenant(tenant);
  job->set_state(static_cast<ConversionJob::State>(state));
  job->mutable_create_time()->set_seconds(create_micros / 1'000'000);
  job->mutable_create_time()->set_nanos(static_cast<int32_t>(create_micros % 1'000'000) * 1000);
  job->set_request_id(request_id);
  record.set_request_fingerprint("fp-" + id);
  return record;
}

JobEvent MakeEvent(const JobRecord& record, int64_t sequence) {
  JobEvent event;
  event.set_job(record.job().name());
  event.set_sequence(sequence);
  event.mutable_time()->set_seconds(1'700'000'000 + sequence);
  event.mutable_log()->set_message(StrCat("event ", sequence, " of ", record.job().name()));
  return event;
}

std::string IdOf(const JobRecord& record) { return record.job().name().substr(5); }

// Opens a raw connection (the test's view of the file, beside the store's own).
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK) << path;
    sqlite3_busy_timeout(db_, 5000);
  }
  ~RawDb() { sqlite3_close(db_); }
  sqlite3* get() { return db_; }
  void Exec(const std::string& sql) {
    char* error = nullptr;
    EXPECT_EQ(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK)
        << sql << ": " << (error ? error : "");
    sqlite3_free(error);
  }
  int64_t Int(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK) << sql;
    int64_t value = -1;
    if (stmt != nullptr && sqlite3_step(stmt) == SQLITE_ROW) value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return value;
  }

 private:
  sqlite3* db_ = nullptr;
};

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::path(::testing::TempDir()) / "job_store_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (std::filesystem::path(dir_) / name).string(); }

  std::unique_ptr<SqliteJobStore> OpenStore(const std::string& name = "jobs.db", SqliteOptions options = {}) {
    auto store = SqliteJobStore::Open(Path(name), options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  std::string dir_;
};

#define EXPECT_PROTO_EQ(a, b) \
  EXPECT_TRUE(MessageDifferencer::Equals(a, b)) << (a).DebugString() << "\nvs\n" << (b).DebugString()

TEST_F(JobStoreTest, InsertGetUpdateRoundTrip) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  JobRecord job = MakeJob("abc123", "acme", ConversionJob::PENDING, 1'700'000'000'123'456, "req-1");
  job.set_last_event_sequence(2);
  ASSERT_TRUE(store->InsertJob(job, {MakeEvent(job, 1), MakeEvent(job, 2)}).ok());

  auto got = store->GetJob("abc123");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_PROTO_EQ(*got, job);

  JobRecord updated = job;
  updated.mutable_job()->set_state(ConversionJob::RUNNING);
  updated.set_lease_id("lease-7");
  updated.set_last_event_sequence(4);
  ASSERT_TRUE(store->UpdateJob(updated, {MakeEvent(job, 3), MakeEvent(job, 4)}).ok());
  got = store->GetJob("abc123");
  ASSERT_TRUE(got.ok());
  EXPECT_PROTO_EQ(*got, updated);

  // An update without events replaces the record only.
  updated.set_gpus_held(2);
  ASSERT_TRUE(store->UpdateJob(updated, {}).ok());
  got = store->GetJob("abc123");
  ASSERT_TRUE(got.ok());
  EXPECT_PROTO_EQ(*got, updated);

  auto events = store->ReadEvents("abc123", 0, 100);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_PROTO_EQ((*events)[i], MakeEvent(job, i + 1));

  EXPECT_EQ(store->GetJob("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->UpdateJob(MakeJob("nope", "acme", 1, 5), {}).code(), absl::StatusCode::kNotFound);
  absl::Status dup = store->InsertJob(MakeJob("abc123", "other", 1, 5), {});
  EXPECT_EQ(dup.code(), absl::StatusCode::kAlreadyExists) << dup;
}

TEST_F(JobStoreTest, RejectsMalformedRecordsAndEvents) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  for (const std::string name : {"", "jobs/", "job/x", "jobs/a/b", "x/jobs/a"}) {
    JobRecord job = MakeJob("x", "t", 1, 5);
    job.mutable_job()->set_name(name);
    EXPECT_EQ(store->InsertJob(job, {}).code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(store->UpdateJob(job, {}).code(), absl::StatusCode::kInvalidArgument) << name;
  }
  JobRecord bad_time = MakeJob("t", "t", 1, 5);
  bad_time.mutable_job()->mutable_create_time()->set_nanos(-1);
  EXPECT_EQ(store->InsertJob(bad_time, {}).code(), absl::StatusCode::kInvalidArgument);

  JobRecord job = MakeJob("j1", "t", 1, 5);
  JobEvent other = MakeEvent(job, 1);
  other.set_job("jobs/j2");
  EXPECT_EQ(store->InsertJob(job, {other}).code(), absl::StatusCode::kInvalidArgument);
  JobEvent unnamed = MakeEvent(job, 1);
  unnamed.clear_job();
  EXPECT_EQ(store->InsertJob(job, {unnamed}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->InsertJob(job, {MakeEvent(job, 0)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->InsertJob(job, {MakeEvent(job, 2), MakeEvent(job, 2)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->InsertJob(job, {MakeEvent(job, 3), MakeEvent(job, 1)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->GetJob("j1").status().code(), absl::StatusCode::kNotFound);  // nothing stored by the failures
  EXPECT_TRUE(store->ReadEvents("j1", 0, 10)->empty());
}

TEST_F(JobStoreTest, RequestIdIsUniquePerTenant) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  JobRecord first = MakeJob("a1", "acme", 1, 10, "req");
  ASSERT_TRUE(store->InsertJob(first, {MakeEvent(first, 1)}).ok());
  absl::Status same = store->InsertJob(MakeJob("a2", "acme", 1, 11, "req"), {});
  EXPECT_EQ(same.code(), absl::StatusCode::kAlreadyExists) << same;
  EXPECT_NE(same.message().find("a1"), absl::string_view::npos) << same;
  EXPECT_EQ(store->GetJob("a2").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store->InsertJob(MakeJob("b1", "bolt", 1, 12, "req"), {}).ok());  // another tenant
  ASSERT_TRUE(store->InsertJob(MakeJob("a3", "acme", 1, 13, ""), {}).ok());     // empty never collides
  ASSERT_TRUE(store->InsertJob(MakeJob("a4", "acme", 1, 14, ""), {}).ok());

  auto found = store->FindByRequestId("acme", "req");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_PROTO_EQ(*found, first);
  found = store->FindByRequestId("bolt", "req");
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(IdOf(*found), "b1");
  EXPECT_EQ(store->FindByRequestId("acme", "").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->FindByRequestId("zeta", "req").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->FindByRequestId("acme", "other").status().code(), absl::StatusCode::kNotFound);

  // An update giving a3 the request_id of a1 collides: its events (appended before the record in the same
  // transaction) roll back with it.
  JobRecord a3 = MakeJob("a3", "acme", 2, 13, "req");
  absl::Status collide = store->UpdateJob(a3, {MakeEvent(a3, 1), MakeEvent(a3, 2)});
  EXPECT_EQ(collide.code(), absl::StatusCode::kAlreadyExists) << collide;
  auto a3_now = store->GetJob("a3");
  ASSERT_TRUE(a3_now.ok());
  EXPECT_PROTO_EQ(*a3_now, MakeJob("a3", "acme", 1, 13, ""));
  EXPECT_TRUE(store->ReadEvents("a3", 0, 10)->empty());
}

// Jobs with many create_time ties, random ids, three tenants and all states; the expected order is computed here.
class JobStoreListTest : public JobStoreTest {
 protected:
  void SetUp() override {
    JobStoreTest::SetUp();
    store_ = OpenStore();
    ASSERT_NE(store_, nullptr);
    std::mt19937 rng(1234);
    const std::string alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (int i = 0; i < 53; ++i) {
      std::string id;
      for (int c = 0; c < 20; ++c) id += alphabet[rng() % alphabet.size()];
      JobRecord job = MakeJob(id, StrCat("tenant", i % 3), 1 + static_cast<int>(rng() % 6),
                              1'700'000'000'000'000 + static_cast<int64_t>(rng() % 9) * 1000);
      ASSERT_TRUE(store_->InsertJob(job, {}).ok());
      jobs_.push_back(job);
    }
  }

  static std::tuple<int64_t, std::string> Key(const JobRecord& job) {
    const auto& t = job.job().create_time();
    return {t.seconds() * 1'000'000 + t.nanos() / 1000, IdOf(job)};
  }

  // Ids matching the filters, newest first.
  std::vector<std::string> Expected(const JobQuery& q) const {
    std::vector<JobRecord> match;
    for (const JobRecord& job : jobs_) {
      bool tenant_ok = q.tenants.empty() || std::count(q.tenants.begin(), q.tenants.end(), job.job().tenant());
      bool state_ok = q.states.empty() || std::count(q.states.begin(), q.states.end(), job.job().state());
      if (tenant_ok && state_ok) match.push_back(job);
    }
    std::sort(match.begin(), match.end(), [](const JobRecord& a, const JobRecord& b) { return Key(a) > Key(b); });
    std::vector<std::string> ids;
    for (const JobRecord& job : match) ids.push_back(IdOf(job));
    return ids;
  }

  // Pages through with `q.limit` per page; checks `more` on each page.
  std::vector<std::string> Paginate(JobQuery q) {
    std::vector<std::string> ids;
    for (int pages = 0; pages < 100; ++pages) {
      auto page = store_->ListJobs(q);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok()) break;
      EXPECT_LE(static_cast<int>(page->jobs.size()), q.limit);
      for (const JobRecord& job : page->jobs) ids.push_back(IdOf(job));
      if (!page->more) break;
      EXPECT_EQ(static_cast<int>(page->jobs.size()), q.limit);  // more => a full page
      auto [micros, id] = Key(page->jobs.back());
      q.after = JobCursor{micros, id};
    }
    return ids;
  }

  std::unique_ptr<SqliteJobStore> store_;
  std::vector<JobRecord> jobs_;
};

TEST_F(JobStoreListTest, PaginatesNewestFirstAcrossTies) {
  for (int limit : {1, 4, 7, 53, 1000}) {
    JobQuery q;
    q.limit = limit;
    EXPECT_EQ(Paginate(q), Expected(q)) << "limit " << limit;
  }
  JobQuery all;
  all.limit = 53;  // exactly every job: one page, nothing more
  auto page = store_->ListJobs(all);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->jobs.size(), 53u);
  EXPECT_FALSE(page->more);
  all.limit = 52;
  page = store_->ListJobs(all);
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->more);
  for (const JobRecord& job : page->jobs) {
    auto it = std::find_if(jobs_.begin(), jobs_.end(), [&](const JobRecord& j) { return IdOf(j) == IdOf(job); });
    ASSERT_NE(it, jobs_.end());
    EXPECT_PROTO_EQ(job, *it);
  }
}

TEST_F(JobStoreListTest, FiltersByTenantAndState) {
  std::vector<JobQuery> queries(5);
  queries[0].tenants = {"tenant0"};
  queries[1].tenants = {"tenant0", "tenant2"};
  queries[2].states = {ConversionJob::PENDING, ConversionJob::RUNNING};
  queries[3].tenants = {"tenant1", "tenant2"};
  queries[3].states = {ConversionJob::SUCCEEDED, ConversionJob::FAILED, ConversionJob::CANCELLED};
  queries[4].tenants = {"nobody"};
  for (size_t i = 0; i < queries.size(); ++i) {
    for (int limit : {2, 5, 100}) {
      queries[i].limit = limit;
      std::vector<std::string> expected = Expected(queries[i]);
      if (i < 4) {
        EXPECT_FALSE(expected.empty());
      }
      EXPECT_EQ(Paginate(queries[i]), expected) << "query " << i << " limit " << limit;
    }
  }
}

TEST_F(JobStoreListTest, RejectsBadLimits) {
  for (int limit : {0, -1, 1001}) {
    JobQuery q;
    q.limit = limit;
    EXPECT_EQ(store_->ListJobs(q).status().code(), absl::StatusCode::kInvalidArgument) << limit;
  }
}

TEST_F(JobStoreListTest, ListsUnfinishedJobsOldestFirst) {
  std::vector<JobRecord> expected;
  for (const JobRecord& job : jobs_) {
    int s = job.job().state();
    if (s == ConversionJob::PENDING || s == ConversionJob::RUNNING || s == ConversionJob::CANCELLING) {
      expected.push_back(job);
    }
  }
  std::sort(expected.begin(), expected.end(), [](const JobRecord& a, const JobRecord& b) { return Key(a) < Key(b); });
  auto unfinished = store_->ListUnfinishedJobs();
  ASSERT_TRUE(unfinished.ok()) << unfinished.status();
  ASSERT_EQ(unfinished->size(), expected.size());
  ASSERT_FALSE(expected.empty());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_PROTO_EQ((*unfinished)[i], expected[i]);
}

TEST_F(JobStoreTest, EventsAscendAndBadSequencesChangeNothing) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  JobRecord job = MakeJob("ev", "t", 1, 5);
  JobRecord other = MakeJob("ev2", "t", 1, 6);
  ASSERT_TRUE(store->InsertJob(job, {MakeEvent(job, 1), MakeEvent(job, 2)}).ok());
  ASSERT_TRUE(store->InsertJob(other, {MakeEvent(other, 1)}).ok());
  ASSERT_TRUE(store->UpdateJob(job, {MakeEvent(job, 5), MakeEvent(job, 9)}).ok());  // gaps are allowed

  auto sequences = [&](std::string_view id, int64_t after, int limit) {
    std::vector<int64_t> out;
    auto events = store->ReadEvents(id, after, limit);
    EXPECT_TRUE(events.ok()) << events.status();
    if (events.ok()) {
      for (const JobEvent& e : *events) out.push_back(e.sequence());
    }
    return out;
  };
  EXPECT_EQ(sequences("ev", 0, 100), (std::vector<int64_t>{1, 2, 5, 9}));
  EXPECT_EQ(sequences("ev", 2, 100), (std::vector<int64_t>{5, 9}));
  EXPECT_EQ(sequences("ev", 3, 1), (std::vector<int64_t>{5}));
  EXPECT_EQ(sequences("ev", -5, 2), (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(sequences("ev", 9, 10).empty());
  EXPECT_EQ(sequences("ev2", 0, 10), (std::vector<int64_t>{1}));
  EXPECT_TRUE(sequences("unknown", 0, 10).empty());
  EXPECT_EQ(store->ReadEvents("ev", 0, 0).status().code(), absl::StatusCode::kInvalidArgument);

  // Each bad update carries a changed record: neither it nor any of its events may land.
  JobRecord changed = job;
  changed.mutable_job()->set_state(ConversionJob::FAILED);
  changed.set_last_event_sequence(99);
  const std::vector<std::vector<int64_t>> bad = {{9}, {3}, {10, 8}, {10, 10}, {12, 11}, {8, 20}};
  for (const auto& seqs : bad) {
    std::vector<JobEvent> events;
    for (int64_t s : seqs) events.push_back(MakeEvent(job, s));
    absl::Status status = store->UpdateJob(changed, events);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    auto now = store->GetJob("ev");
    ASSERT_TRUE(now.ok());
    EXPECT_PROTO_EQ(*now, job);
    EXPECT_EQ(sequences("ev", 0, 100), (std::vector<int64_t>{1, 2, 5, 9}));
  }
}

TEST_F(JobStoreTest, WorkersPutListDelete) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<WorkerRecord> workers(3);
  for (int i = 0; i < 3; ++i) {
    workers[i].mutable_registration()->set_worker_id(StrCat("w", 2 - i));  // inserted out of order
    workers[i].set_registration_id(StrCat("reg", i));
    ASSERT_TRUE(store->PutWorker(workers[i]).ok());
  }
  auto listed = store->ListWorkers();
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_PROTO_EQ((*listed)[i], workers[2 - i]);  // by id

  workers[0].set_registration_id("reg-new");  // w2 registers again
  ASSERT_TRUE(store->PutWorker(workers[0]).ok());
  ASSERT_TRUE(store->DeleteWorker("w1").ok());
  ASSERT_TRUE(store->DeleteWorker("absent").ok());
  listed = store->ListWorkers();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_PROTO_EQ((*listed)[0], workers[2]);
  EXPECT_PROTO_EQ((*listed)[1], workers[0]);
  EXPECT_EQ(store->PutWorker(WorkerRecord()).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(JobStoreTest, ReopenKeepsEverything) {
  JobRecord job = MakeJob("keep", "acme", 2, 77, "rid");
  job.set_last_event_sequence(3);
  WorkerRecord worker;
  worker.mutable_registration()->set_worker_id("gpu-node-1");
  {
    auto store = OpenStore();
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->InsertJob(job, {MakeEvent(job, 1)}).ok());
    ASSERT_TRUE(store->UpdateJob(job, {MakeEvent(job, 2), MakeEvent(job, 3)}).ok());
    ASSERT_TRUE(store->PutWorker(worker).ok());
  }
  // WAL mode: file format bytes 18 and 19 of the header are 2.
  std::ifstream file(Path("jobs.db"), std::ios::binary);
  char header[20];
  ASSERT_TRUE(file.read(header, sizeof(header)));
  EXPECT_EQ(header[18], 2);
  EXPECT_EQ(header[19], 2);

  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  auto got = store->GetJob("keep");
  ASSERT_TRUE(got.ok());
  EXPECT_PROTO_EQ(*got, job);
  auto by_request = store->FindByRequestId("acme", "rid");
  ASSERT_TRUE(by_request.ok());
  EXPECT_PROTO_EQ(*by_request, job);
  auto events = store->ReadEvents("keep", 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_PROTO_EQ((*events)[i], MakeEvent(job, i + 1));
  auto workers = store->ListWorkers();
  ASSERT_TRUE(workers.ok());
  ASSERT_EQ(workers->size(), 1u);
  EXPECT_PROTO_EQ((*workers)[0], worker);
}

TEST_F(JobStoreTest, DeleteJournalAndFullSyncWork) {
  SqliteOptions options;
  options.journal_mode = "DELETE";
  options.synchronous = "FULL";
  JobRecord job = MakeJob("d", "t", 1, 1);
  {
    auto store = OpenStore("delete.db", options);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->InsertJob(job, {MakeEvent(job, 1)}).ok());
  }
  std::ifstream file(Path("delete.db"), std::ios::binary);
  char header[20];
  ASSERT_TRUE(file.read(header, sizeof(header)));
  EXPECT_EQ(header[18], 1);  // legacy (rollback journal) format
  auto store = OpenStore("delete.db", options);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->GetJob("d").ok());
}

TEST_F(JobStoreTest, MigratesOlderSchemas) {
  const int latest = LatestSchemaVersion();
  ASSERT_GE(latest, 2);
  for (int from = 1; from < latest; ++from) {
    const std::string name = StrCat("v", from, ".db");
    JobRecord job = MakeJob(StrCat("old", from), "acme", ConversionJob::RUNNING, 42, "rid");
    std::string blob = job.SerializeAsString();
    {
      RawDb raw(Path(name));
      ASSERT_TRUE(MigrateSchema(raw.get(), Path(name), from).ok());
      EXPECT_EQ(raw.Int("SELECT max(version) FROM schema_migrations"), from);
      // A row written by the older build (migration 1's columns).
      sqlite3_stmt* stmt = nullptr;
      ASSERT_EQ(sqlite3_prepare_v2(raw.get(),
                                   "INSERT INTO jobs (id, tenant, state, create_time_micros, request_id, record) "
                                   "VALUES (?, 'acme', 2, 42, 'rid', ?)",
                                   -1, &stmt, nullptr),
                SQLITE_OK);
      std::string id = IdOf(job);
      sqlite3_bind_text(stmt, 1, id.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_blob(stmt, 2, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
      ASSERT_EQ(sqlite3_step(stmt), SQLITE_DONE);
      sqlite3_finalize(stmt);
    }
    {
      auto store = OpenStore(name);
      ASSERT_NE(store, nullptr);
      auto got = store->GetJob(IdOf(job));
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_PROTO_EQ(*got, job);
      auto unfinished = store->ListUnfinishedJobs();
      ASSERT_TRUE(unfinished.ok());
      EXPECT_EQ(unfinished->size(), 1u);
    }
    RawDb raw(Path(name));
    auto version = ReadSchemaVersion(raw.get(), Path(name));
    ASSERT_TRUE(version.ok()) << version.status();
    EXPECT_EQ(*version, latest);
    EXPECT_EQ(raw.Int("SELECT count(*) FROM schema_migrations"), latest);
    for (const SchemaMigration& m : SchemaMigrations()) {
      EXPECT_EQ(raw.Int(StrCat("SELECT count(*) FROM schema_migrations WHERE version = ", m.version,
                               " AND applied_at_micros > 0 AND description != ''")),
                1);
    }
    EXPECT_EQ(raw.Int("PRAGMA application_id"), kJobStoreApplicationId);
    // Migration 2 replaced the state index.
    EXPECT_EQ(raw.Int("SELECT count(*) FROM sqlite_master WHERE name = 'jobs_by_state'"), 0);
    EXPECT_EQ(raw.Int("SELECT count(*) FROM sqlite_master WHERE name = 'jobs_by_state_create_time'"), 1);
  }
}

TEST_F(JobStoreTest, RefusesNewerSchema) {
  { ASSERT_NE(OpenStore(), nullptr); }
  {
    RawDb raw(Path("jobs.db"));
    raw.Exec(StrCat("INSERT INTO schema_migrations VALUES (", LatestSchemaVersion() + 1, ", 1, 'from the future')"));
  }
  auto store = SqliteJobStore::Open(Path("jobs.db"));
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("newer flashmorphd"), absl::string_view::npos) << store.status();
  EXPECT_NE(store.status().message().find(Path("jobs.db")), absl::string_view::npos) << store.status();
  RawDb raw(Path("jobs.db"));
  EXPECT_EQ(raw.Int("SELECT max(version) FROM schema_migrations"), LatestSchemaVersion() + 1);
}

TEST_F(JobStoreTest, RefusesFilesThatAreNotJobStores) {
  const std::string garbage = Path("garbage.db");
  {
    std::ofstream out(garbage, std::ios::binary);
    for (int i = 0; i < 200; ++i) out << "this is not a database, just text " << i << "\n";
  }
  auto store = SqliteJobStore::Open(garbage);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_NE(store.status().message().find(garbage), absl::string_view::npos) << store.status();

  const std::string foreign = Path("foreign.db");
  {
    RawDb raw(foreign);
    raw.Exec("CREATE TABLE customers (name TEXT)");
  }
  store = SqliteJobStore::Open(foreign);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_NE(store.status().message().find(foreign), absl::string_view::npos) << store.status();
  {
    RawDb raw(foreign);
    EXPECT_EQ(raw.Int("SELECT count(*) FROM sqlite_master"), 1);  // untouched
  }

  store = SqliteJobStore::Open(Path("missing/jobs.db"));
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound) << store.status();
  EXPECT_FALSE(std::filesystem::exists(Path("missing")));
  store = SqliteJobStore::Open(dir_);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  store = SqliteJobStore::Open(":memory:");  // SQLite keeps in-memory databases out of WAL
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  SqliteOptions bad;
  bad.synchronous = "OFF";
  EXPECT_EQ(SqliteJobStore::Open(Path("x.db"), bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = SqliteOptions();
  bad.journal_mode = "MEMORY";
  EXPECT_EQ(SqliteJobStore::Open(Path("x.db"), bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(JobStoreTest, CorruptBlobsAreDataLossNamingTheJob) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  JobRecord job = MakeJob("broken", "t", 1, 5);
  ASSERT_TRUE(store->InsertJob(job, {MakeEvent(job, 1)}).ok());
  {
    RawDb raw(Path("jobs.db"));
    raw.Exec("UPDATE jobs SET record = x'ffffffff0f' WHERE id = 'broken'");
    raw.Exec("UPDATE events SET event = x'0a' WHERE job_id = 'broken'");
  }
  absl::Status get = store->GetJob("broken").status();
  EXPECT_EQ(get.code(), absl::StatusCode::kDataLoss) << get;
  EXPECT_NE(get.message().find("broken"), absl::string_view::npos) << get;
  EXPECT_EQ(store->ListJobs(JobQuery()).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store->ListUnfinishedJobs().status().code(), absl::StatusCode::kDataLoss);
  absl::Status events = store->ReadEvents("broken", 0, 10).status();
  EXPECT_EQ(events.code(), absl::StatusCode::kDataLoss) << events;
  EXPECT_NE(events.message().find("broken"), absl::string_view::npos) << events;
}

TEST_F(JobStoreTest, ConcurrentCallersAreSerialised) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 4, kJobsEach = 40;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kJobsEach; ++i) {
        JobRecord job = MakeJob(StrCat("t", t, "j", i), StrCat("tenant", t), 1, i);
        job.set_last_event_sequence(1);
        EXPECT_TRUE(store->InsertJob(job, {MakeEvent(job, 1)}).ok());
        job.set_last_event_sequence(2);
        EXPECT_TRUE(store->UpdateJob(job, {MakeEvent(job, 2)}).ok());
        JobQuery q;
        q.tenants = {StrCat("tenant", t)};
        auto page = store->ListJobs(q);
        EXPECT_TRUE(page.ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  JobQuery all;
  all.limit = 1000;
  auto page = store->ListJobs(all);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->jobs.size(), static_cast<size_t>(kThreads * kJobsEach));
  for (const JobRecord& job : page->jobs) EXPECT_EQ(store->ReadEvents(IdOf(job), 0, 10)->size(), 2u);
}

// The child: opens the store and loops forever inserting a job and updating it with two more events, writing
// "<id> <last_event_sequence>\n" to `ack_fd` after each acknowledged call. Exits only by signal or on error.
[[noreturn]] void CrashChild(const std::string& path, int round, int ack_fd, SqliteOptions options) {
  auto store = SqliteJobStore::Open(path, options);
  if (!store.ok()) _exit(2);
  for (int i = 0;; ++i) {
    JobRecord job = MakeJob(StrCat("r", round, "j", i), StrCat("tenant", i % 2), ConversionJob::PENDING, i);
    job.set_last_event_sequence(1);
    if (!(*store)->InsertJob(job, {MakeEvent(job, 1)}).ok()) _exit(3);
    std::string ack = StrCat(IdOf(job), " 1\n");
    if (write(ack_fd, ack.data(), ack.size()) != static_cast<ssize_t>(ack.size())) _exit(4);
    for (int64_t seq = 1; seq < 7; seq += 2) {
      job.set_last_event_sequence(seq + 2);
      job.mutable_job()->set_state(seq + 2 < 7 ? ConversionJob::RUNNING : ConversionJob::SUCCEEDED);
      if (!(*store)->UpdateJob(job, {MakeEvent(job, seq + 1), MakeEvent(job, seq + 2)}).ok()) _exit(5);
      ack = StrCat(IdOf(job), " ", seq + 2, "\n");
      if (write(ack_fd, ack.data(), ack.size()) != static_cast<ssize_t>(ack.size())) _exit(4);
    }
  }
}

TEST_F(JobStoreTest, SigkillLosesNoAcknowledgedCallAndTearsNoTransaction) {
  const std::string path = Path("crash.db");
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  std::map<std::string, int64_t> acknowledged;  // job id -> highest acknowledged last_event_sequence
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE(StrCat("seed ", seed, " round ", round));
    SqliteOptions options;
    options.synchronous = round % 2 == 0 ? "NORMAL" : "FULL";
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      CrashChild(path, round, fds[1], options);
    }
    close(fds[1]);
    // Acknowledgements before the kill (fewer under FULL, which fsyncs every commit).
    const int kill_after = 5 + static_cast<int>(rng() % (options.synchronous == "FULL" ? 40 : 300));
    const int extra_micros = static_cast<int>(rng() % 3000);
    std::string pending;
    int acks = 0;
    bool killed = false;
    char buffer[4096];
    while (true) {
      ssize_t n = read(fds[0], buffer, sizeof(buffer));
      if (n <= 0) break;  // EOF: the child is gone
      pending.append(buffer, n);
      size_t newline;
      while ((newline = pending.find('\n')) != std::string::npos) {
        std::istringstream line(pending.substr(0, newline));
        pending.erase(0, newline + 1);
        std::string id;
        int64_t seq = 0;
        line >> id >> seq;
        acknowledged[id] = std::max(acknowledged[id], seq);
        ++acks;
      }
      if (!killed && acks >= kill_after) {
        usleep(extra_micros);
        kill(pid, SIGKILL);
        killed = true;  // keep reading: acknowledgements written before the kill are still in the pipe
      }
    }
    close(fds[0]);
    int wstatus = 0;
    ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL)
        << "child exited with " << (WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1);

    auto store = SqliteJobStore::Open(path, options);
    ASSERT_TRUE(store.ok()) << store.status();
    for (const auto& [id, seq] : acknowledged) {
      auto job = (*store)->GetJob(id);
      ASSERT_TRUE(job.ok()) << id << ": " << job.status();
      EXPECT_GE(job->last_event_sequence(), seq) << id;
    }
    JobQuery q;
    q.limit = 1000;
    size_t stored = 0;
    while (true) {
      auto page = (*store)->ListJobs(q);
      ASSERT_TRUE(page.ok()) << page.status();
      for (const JobRecord& job : page->jobs) {
        ++stored;
        auto events = (*store)->ReadEvents(IdOf(job), 0, 100);
        ASSERT_TRUE(events.ok());
        ASSERT_FALSE(events->empty()) << IdOf(job);
        EXPECT_EQ(events->back().sequence(), job.last_event_sequence()) << IdOf(job);
        for (size_t i = 0; i < events->size(); ++i) EXPECT_EQ((*events)[i].sequence(), static_cast<int64_t>(i + 1));
      }
      if (!page->more) break;
      const auto& t = page->jobs.back().job().create_time();
      q.after = JobCursor{t.seconds() * 1'000'000 + t.nanos() / 1000, IdOf(page->jobs.back())};
    }
    EXPECT_GE(stored, acknowledged.size());
    EXPECT_LE(stored, acknowledged.size() + round + 1);  // + one insert per kill committed unacknowledged
  }
}

}  // namespace
}  // namespace fm::server
