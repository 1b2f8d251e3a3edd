// fm::server::Scheduler on real parts: SqliteJobStore on a temporary file, ArtifactStore in a temporary directory,
// a real WatchHub and ServerMetrics, and a FakeClock driven by the test (tick_interval 0: the test calls Tick).
// Covers creation and idempotency, queue order and fitting, capabilities, tenant quotas, long polls, heartbeats,
// cancellation, lease expiry and retries, deadlines, completion and promotion, worker restarts, a scheduler restart
// on the same store, and a multi-threaded smoke test.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "server/artifacts/artifact_store.h"
#include "server/metrics/server_metrics.h"
#include "server/scheduler/clock.h"
#include "server/api/artifact_attempt_storage.h"
#include "server/scheduler/scheduler.h"
#include "server/scheduler/watch_hub.h"
#include "server/store/sqlite_job_store.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/sha256.h"

// The tests build JobSpec, WorkerSpec and TenantQuota with designated initializers that leave the other fields at
// their defaults on purpose; GCC 12 warns about every omitted field.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace fm::server {
namespace {

namespace v1 = ::flashmorph::v1;
using Job = v1::ConversionJob;

absl::Time TimeOf(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

google::protobuf::Timestamp ProtoTime(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t nanos = absl::ToUnixNanos(t);
  ts.set_seconds(nanos / 1'000'000'000);
  ts.set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
  return ts;
}

google::protobuf::Duration ProtoDuration(absl::Duration d) {
  google::protobuf::Duration out;
  out.set_seconds(absl::ToInt64Seconds(d));
  out.set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d - absl::Seconds(out.seconds()))));
  return out;
}

std::string IdOf(const JobRecord& record) { return JobIdFromName(record.job().name()); }

// The answer of one LeaseJob call (the callback may run on any thread).
struct PollResult {
  std::mutex mu;
  int calls = 0;
  absl::StatusOr<v1::LeaseJobResponse> value = absl::UnknownError("not answered");

  bool answered() {
    std::lock_guard<std::mutex> lock(mu);
    return calls > 0;
  }
  bool has_lease() {
    std::lock_guard<std::mutex> lock(mu);
    return calls > 0 && value.ok() && value->has_lease();
  }
  v1::Lease lease() {
    std::lock_guard<std::mutex> lock(mu);
    return value.ok() ? value->lease() : v1::Lease();
  }
};

struct WorkerSpec {
  std::string id;
  int gpus = 0;
  int64_t gpu_memory = 80LL << 30;
  int64_t host_memory = 256LL << 30;
  bool shared_filesystem = true;
  std::vector<v1::ConversionSpec::BranchKind> branch_kinds;
  std::vector<v1::ConversionSpec::SelectionMethod> selection_methods;
};

struct JobSpec {
  std::string tenant = "acme";
  std::string request_id;
  std::string fingerprint = "fp";
  int priority = 0;
  int gpus = 0;
  int64_t min_gpu_memory = 0;
  int64_t min_host_memory = 0;
  v1::ConversionSpec::BranchKind branch_kind = v1::ConversionSpec::GLA;
  v1::ConversionSpec::SelectionMethod selection_method = v1::ConversionSpec::FLASHMORPH;
  std::optional<absl::Time> deadline;
};

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = testing::TempDir() + "/scheduler_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    auto store = SqliteJobStore::Open(dir_ + "/jobs.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto artifacts = ArtifactStore::Open(dir_ + "/artifacts");
    ASSERT_TRUE(artifacts.ok()) << artifacts.status();
    artifacts_ = *std::move(artifacts);
    storage_ = std::make_unique<ArtifactAttemptStorage>(artifacts_.get());
    metrics_ = std::make_unique<ServerMetrics>();
    options_.tick_interval = absl::ZeroDuration();
    options_.quota = [this](std::string_view tenant) {
      std::lock_guard<std::mutex> lock(quota_mu_);
      auto it = quotas_.find(std::string(tenant));
      return it == quotas_.end() ? TenantQuota{} : it->second;
    };
  }

  void TearDown() override {
    scheduler_.reset();
    store_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void Start() {
    auto s = Scheduler::Create(store_.get(), storage_.get(), &clock_, &hub_, metrics_.get(), options_);
    ASSERT_TRUE(s.ok()) << s.status();
    scheduler_ = *std::move(s);
  }

  void SetQuota(const std::string& tenant, TenantQuota quota) {
    std::lock_guard<std::mutex> lock(quota_mu_);
    quotas_[tenant] = quota;
  }

  static CreateJobRequest Request(const JobSpec& j) {
    CreateJobRequest r;
    r.tenant = j.tenant;
    r.request_id = j.request_id;
    r.fingerprint = j.fingerprint;
    r.spec.mutable_model()->set_uri("hf://org/model");
    r.spec.add_budgets()->set_full_attention_layers(2);
    r.spec.set_priority(j.priority);
    r.spec.mutable_resources()->set_gpus(j.gpus);
    r.spec.mutable_resources()->set_min_gpu_memory_bytes(j.min_gpu_memory);
    r.spec.mutable_resources()->set_min_host_memory_bytes(j.min_host_memory);
    r.spec.set_branch_kind(j.branch_kind);
    r.spec.set_selection_method(j.selection_method);
    if (j.deadline) *r.spec.mutable_deadline() = ProtoTime(*j.deadline);
    return r;
  }

  // Creates a job that must be created; returns its id.
  std::string Create(const JobSpec& j = {}) {
    auto out = scheduler_->CreateJob(Request(j));
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return "";
    EXPECT_TRUE(out->created);
    return IdOf(out->record);
  }

  absl::Status Register(const WorkerSpec& w) {
    v1::RegisterWorkerRequest r;
    r.set_worker_id(w.id);
    r.set_hostname("host-" + w.id);
    if (w.gpus > 0) {
      auto* g = r.add_gpus();
      g->set_model("NVIDIA H200");
      g->set_count(w.gpus);
      g->set_memory_bytes(w.gpu_memory);
    }
    r.set_host_memory_bytes(w.host_memory);
    r.mutable_capabilities()->set_shared_filesystem(w.shared_filesystem);
    for (auto b : w.branch_kinds) r.mutable_capabilities()->add_branch_kinds(b);
    for (auto s : w.selection_methods) r.mutable_capabilities()->add_selection_methods(s);
    return scheduler_->RegisterWorker(r).status();
  }
  void RegisterOk(const WorkerSpec& w) { ASSERT_TRUE(Register(w).ok()); }

  std::shared_ptr<PollResult> Poll(const std::string& worker, absl::Duration wait = absl::ZeroDuration(),
                                   uint64_t* poll_id = nullptr) {
    auto result = std::make_shared<PollResult>();
    v1::LeaseJobRequest r;
    r.set_worker_id(worker);
    *r.mutable_wait() = ProtoDuration(wait);
    uint64_t id = scheduler_->LeaseJob(r, [result](absl::StatusOr<v1::LeaseJobResponse> v) {
      std::lock_guard<std::mutex> lock(result->mu);
      ++result->calls;
      result->value = std::move(v);
    });
    if (poll_id != nullptr) *poll_id = id;
    return result;
  }

  // Polls with wait 0 and expects a lease.
  v1::Lease LeaseNow(const std::string& worker) {
    auto p = Poll(worker);
    EXPECT_TRUE(p->answered());
    EXPECT_TRUE(p->has_lease()) << worker << " got no lease: "
                                << (p->value.ok() ? p->value->DebugString() : p->value.status().ToString());
    return p->lease();
  }

  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const std::string& lease_id, int64_t sequence,
                                                  Job::Stage stage = Job::STAGE_UNSPECIFIED,
                                                  std::vector<JobEvent> events = {}) {
    v1::HeartbeatRequest r;
    r.set_lease_id(lease_id);
    r.set_heartbeat_sequence(sequence);
    r.set_stage(stage);
    for (auto& e : events) *r.add_events() = std::move(e);
    return scheduler_->Heartbeat(r);
  }

  absl::StatusOr<v1::CompleteJobResponse> Fail(const std::string& lease_id, const absl::Status& error, bool retryable) {
    v1::CompleteJobRequest r;
    r.set_lease_id(lease_id);
    r.mutable_failure()->mutable_error()->set_code(static_cast<int>(error.code()));
    r.mutable_failure()->mutable_error()->set_message(std::string(error.message()));
    r.mutable_failure()->set_retryable(retryable);
    return scheduler_->CompleteJob(r);
  }

  absl::StatusOr<v1::CompleteJobResponse> AckCancel(const std::string& lease_id) {
    v1::CompleteJobRequest r;
    r.set_lease_id(lease_id);
    r.mutable_cancelled();
    return scheduler_->CompleteJob(r);
  }

  absl::StatusOr<v1::CompleteJobResponse> Succeed(const std::string& lease_id, v1::ConversionResult result = {}) {
    v1::CompleteJobRequest r;
    r.set_lease_id(lease_id);
    *r.mutable_result() = std::move(result);
    return scheduler_->CompleteJob(r);
  }

  JobRecord Get(const std::string& id) {
    auto r = scheduler_->GetJob(id);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : JobRecord();
  }

  JobRecord Stored(const std::string& id) {
    auto r = store_->GetJob(id);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : JobRecord();
  }

  std::vector<JobEvent> Events(const std::string& id, int64_t after = 0) {
    auto e = store_->ReadEvents(id, after, 10000);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *e : std::vector<JobEvent>();
  }

  // The state changes of a job's log, as (previous, current) pairs.
  std::vector<std::pair<int, int>> StateChanges(const std::string& id) {
    std::vector<std::pair<int, int>> out;
    for (const auto& e : Events(id)) {
      if (e.has_state_change()) out.emplace_back(e.state_change().previous(), e.state_change().current());
    }
    return out;
  }

  // The last state change event of a job.
  JobEvent LastStateChange(const std::string& id) {
    JobEvent last;
    for (const auto& e : Events(id)) {
      if (e.has_state_change()) last = e;
    }
    return last;
  }

  // A counter or gauge of metrics_ (0 when the labelled child does not exist yet).
  double Metric(const std::string& name, const std::map<std::string, std::string>& labels = {}) {
    return MetricOf(*metrics_, name, labels);
  }
  static double MetricOf(ServerMetrics& metrics, const std::string& name,
                         const std::map<std::string, std::string>& labels) {
    for (const auto& family : metrics.registry()->Collect()) {
      if (family.name != name) continue;
      for (const auto& m : family.metric) {
        std::map<std::string, std::string> have;
        for (const auto& l : m.label) have[l.name] = l.value;
        if (have != labels) continue;
        if (family.type == prometheus::MetricType::Counter) return m.counter.value;
        if (family.type == prometheus::MetricType::Gauge) return m.gauge.value;
        if (family.type == prometheus::MetricType::Histogram) return static_cast<double>(m.histogram.sample_count);
      }
    }
    return 0;
  }

  static void WriteFile(const std::string& path, const std::string& text) {
    std::error_code ec;  // the folder may be gone (a stale attempt): the write then fails quietly
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    std::ofstream out(path, std::ios::binary);
    out << text;
  }

  std::string dir_;
  FakeClock clock_;
  WatchHub hub_;
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<ArtifactStore> artifacts_;
  std::unique_ptr<ArtifactAttemptStorage> storage_;
  std::unique_ptr<ServerMetrics> metrics_;
  SchedulerOptions options_;
  std::mutex quota_mu_;
  std::map<std::string, TenantQuota> quotas_;
  std::unique_ptr<Scheduler> scheduler_;
};

JobEvent LogLineEvent(const std::string& message) {
  JobEvent e;
  e.mutable_log()->set_message(message);
  e.mutable_log()->set_severity(v1::LogLine::SEVERITY_INFO);
  e.mutable_log()->set_source("engine/test");
  return e;
}

// --- Creation --------------------------------------------------------------------------------------------------

TEST_F(SchedulerTest, CreateJobIsPendingWithAStateChangeEvent) {
  Start();
  int notified = 0;
  auto out = scheduler_->CreateJob(Request({.tenant = "acme"}));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->created);
  const std::string id = IdOf(out->record);
  ASSERT_EQ(id.size(), 20u) << out->record.job().name();
  EXPECT_EQ(out->record.job().state(), Job::PENDING);
  EXPECT_EQ(out->record.job().tenant(), "acme");
  EXPECT_EQ(out->record.job().attempt(), 0);
  EXPECT_EQ(TimeOf(out->record.job().create_time()), clock_.Now());
  EXPECT_EQ(out->record.job().spec().model().uri(), "hf://org/model");
  EXPECT_EQ(out->record.last_event_sequence(), 1);

  EXPECT_EQ(Stored(id).job().state(), Job::PENDING);
  EXPECT_EQ(Get(id).job().state(), Job::PENDING);
  auto events = Events(id);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].sequence(), 1);
  EXPECT_EQ(events[0].job(), out->record.job().name());
  ASSERT_TRUE(events[0].has_state_change());
  EXPECT_EQ(events[0].state_change().previous(), Job::STATE_UNSPECIFIED);
  EXPECT_EQ(events[0].state_change().current(), Job::PENDING);

  // Watchers of the job hear about later changes.
  uint64_t handle = hub_.Subscribe(id, [&] { ++notified; });
  ASSERT_TRUE(scheduler_->CancelJob(id).ok());
  hub_.Unsubscribe(handle);
  EXPECT_GE(notified, 1);

  EXPECT_EQ(Metric("flashmorph_jobs_submitted_total", {{"tenant", "acme"}}), 1);
  EXPECT_EQ(Metric("flashmorph_jobs_finished_total", {{"tenant", "acme"}, {"result", "cancelled"}}), 1);
}

TEST_F(SchedulerTest, CreateIsIdempotentOnTenantAndRequestId) {
  Start();
  auto first = scheduler_->CreateJob(Request({.tenant = "acme", .request_id = "r1", .fingerprint = "fp1"}));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->created);
  clock_.Advance(absl::Seconds(3));

  auto again = scheduler_->CreateJob(Request({.tenant = "acme", .request_id = "r1", .fingerprint = "fp1"}));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->record.job().name(), first->record.job().name());
  EXPECT_EQ(Events(IdOf(first->record)).size(), 1u);  // nothing appended by the retry

  auto other = scheduler_->CreateJob(Request({.tenant = "acme", .request_id = "r1", .fingerprint = "fp2"}));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kAlreadyExists) << other.status();

  // The same request id of another tenant is another job; an empty request id never deduplicates.
  auto tenant2 = scheduler_->CreateJob(Request({.tenant = "other", .request_id = "r1", .fingerprint = "fp9"}));
  ASSERT_TRUE(tenant2.ok()) << tenant2.status();
  EXPECT_TRUE(tenant2->created);
  EXPECT_NE(tenant2->record.job().name(), first->record.job().name());
  const std::string a = Create({.tenant = "acme"});
  const std::string b = Create({.tenant = "acme"});
  EXPECT_NE(a, b);

  // A finished job is still found by its request id.
  ASSERT_TRUE(scheduler_->CancelJob(IdOf(first->record)).ok());
  auto after_end = scheduler_->CreateJob(Request({.tenant = "acme", .request_id = "r1", .fingerprint = "fp1"}));
  ASSERT_TRUE(after_end.ok()) << after_end.status();
  EXPECT_FALSE(after_end->created);
  EXPECT_EQ(after_end->record.job().state(), Job::CANCELLED);
  EXPECT_EQ(Metric("flashmorph_jobs_submitted_total", {{"tenant", "acme"}}), 3);
}

// --- Queue -----------------------------------------------------------------------------------------------------

TEST_F(SchedulerTest, LeasesInPriorityThenFifoOrder) {
  Start();
  std::vector<std::pair<std::string, int>> created;  // (id, priority) in creation order
  for (int priority : {0, 5, 0, 5, -1, 9}) {
    created.emplace_back(Create({.priority = priority}), priority);
    clock_.Advance(absl::Seconds(1));
  }
  std::vector<std::string> expected = {created[5].first, created[1].first, created[3].first,
                                       created[0].first, created[2].first, created[4].first};
  for (size_t i = 0; i < expected.size(); ++i) {
    const std::string worker = StrCat("w", i);
    RegisterOk({.id = worker});
    v1::Lease lease = LeaseNow(worker);
    EXPECT_EQ(JobIdFromName(lease.job().name()), expected[i]) << "lease " << i;
  }
  RegisterOk({.id = "late"});
  EXPECT_FALSE(Poll("late")->has_lease());
}

TEST_F(SchedulerTest, SkipsHeadsThatCannotFitTheWorker) {
  Start();
  const std::string big = Create({.priority = 10, .gpus = 2});
  clock_.Advance(absl::Seconds(1));
  const std::string needs_memory = Create({.priority = 5, .gpus = 1, .min_gpu_memory = 100LL << 30});
  clock_.Advance(absl::Seconds(1));
  const std::string needs_host = Create({.priority = 5, .min_host_memory = 1LL << 40});
  clock_.Advance(absl::Seconds(1));
  const std::string small = Create({.priority = 0, .gpus = 0});

  RegisterOk({.id = "one-gpu", .gpus = 1, .gpu_memory = 80LL << 30, .host_memory = 64LL << 30});
  v1::Lease lease = LeaseNow("one-gpu");
  EXPECT_EQ(JobIdFromName(lease.job().name()), small);
  EXPECT_EQ(Get(small).gpus_held(), 1);  // a 0-GPU job on a GPU worker holds one GPU
  EXPECT_EQ(Get(big).job().state(), Job::PENDING);
  EXPECT_EQ(Get(needs_memory).job().state(), Job::PENDING);
  EXPECT_EQ(Get(needs_host).job().state(), Job::PENDING);

  RegisterOk({.id = "two-gpu", .gpus = 2, .gpu_memory = 80LL << 30, .host_memory = 2LL << 40});
  lease = LeaseNow("two-gpu");
  EXPECT_EQ(JobIdFromName(lease.job().name()), big);
  EXPECT_EQ(Get(big).gpus_held(), 2);

  RegisterOk({.id = "big-mem", .gpus = 1, .gpu_memory = 141LL << 30, .host_memory = 2LL << 40});
  lease = LeaseNow("big-mem");
  EXPECT_EQ(JobIdFromName(lease.job().name()), needs_memory);  // created before needs_host, same priority
  RegisterOk({.id = "cpu-only", .gpus = 0, .host_memory = 2LL << 40});
  lease = LeaseNow("cpu-only");
  EXPECT_EQ(JobIdFromName(lease.job().name()), needs_host);
  EXPECT_EQ(Get(needs_host).gpus_held(), 0);
}

TEST_F(SchedulerTest, FiltersByWorkerCapabilities) {
  Start();
  const std::string gla = Create({.priority = 9, .branch_kind = v1::ConversionSpec::GLA});
  clock_.Advance(absl::Seconds(1));
  const std::string nll = Create(
      {.priority = 8, .branch_kind = v1::ConversionSpec::LIGHTNING, .selection_method = v1::ConversionSpec::NLL});
  clock_.Advance(absl::Seconds(1));
  const std::string fits = Create({.priority = 0,
                                   .branch_kind = v1::ConversionSpec::LIGHTNING,
                                   .selection_method = v1::ConversionSpec::FLASHMORPH});
  RegisterOk({.id = "narrow",
              .branch_kinds = {v1::ConversionSpec::LIGHTNING},
              .selection_methods = {v1::ConversionSpec::FLASHMORPH, v1::ConversionSpec::UNIFORM}});
  EXPECT_EQ(JobIdFromName(LeaseNow("narrow").job().name()), fits);
  EXPECT_EQ(Get(gla).job().state(), Job::PENDING);
  EXPECT_EQ(Get(nll).job().state(), Job::PENDING);
  RegisterOk({.id = "narrow2", .branch_kinds = {v1::ConversionSpec::LIGHTNING}});  // any selection method
  EXPECT_EQ(JobIdFromName(LeaseNow("narrow2").job().name()), nll);
  RegisterOk({.id = "any"});  // empty lists: everything
  EXPECT_EQ(JobIdFromName(LeaseNow("any").job().name()), gla);
}

// --- Quotas ----------------------------------------------------------------------------------------------------

TEST_F(SchedulerTest, QueuedJobLimitRefusesCreation) {
  SetQuota("acme", {.max_queued_jobs = 2});
  Start();
  Create({.tenant = "acme"});
  Create({.tenant = "acme"});
  auto third = scheduler_->CreateJob(Request({.tenant = "acme"}));
  ASSERT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
  EXPECT_NE(third.status().message().find("queued"), std::string_view::npos) << third.status();
  EXPECT_NE(third.status().message().find("acme"), std::string_view::npos) << third.status();
  EXPECT_EQ(Metric("flashmorph_quota_rejections_total", {{"tenant", "acme"}, {"limit", "queued_jobs"}}), 1);
  Create({.tenant = "other", .priority = -1});  // other tenants are not limited (leased last below)

  // A leased job no longer counts as queued.
  RegisterOk({.id = "w"});
  LeaseNow("w");
  Create({.tenant = "acme"});
  EXPECT_EQ(scheduler_->CreateJob(Request({.tenant = "acme"})).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(SchedulerTest, GpuLimitRefusesJobsThatCanNeverFit) {
  SetQuota("acme", {.max_gpus = 2});
  Start();
  auto big = scheduler_->CreateJob(Request({.tenant = "acme", .gpus = 3}));
  ASSERT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted) << big.status();
  EXPECT_NE(big.status().message().find("GPU"), std::string_view::npos) << big.status();
  EXPECT_EQ(Metric("flashmorph_quota_rejections_total", {{"tenant", "acme"}, {"limit", "gpus"}}), 1);
  Create({.tenant = "acme", .gpus = 2});
}

TEST_F(SchedulerTest, RunningJobLimitKeepsJobsQueuedUntilOneFinishes) {
  SetQuota("acme", {.max_running_jobs = 1});
  Start();
  const std::string a = Create({.tenant = "acme"});
  clock_.Advance(absl::Seconds(1));
  const std::string b = Create({.tenant = "acme"});
  clock_.Advance(absl::Seconds(1));
  const std::string c = Create({.tenant = "other"});
  RegisterOk({.id = "w1"});
  RegisterOk({.id = "w2"});
  RegisterOk({.id = "w3"});
  v1::Lease la = LeaseNow("w1");
  EXPECT_EQ(JobIdFromName(la.job().name()), a);
  // acme is at its limit: w2 gets the other tenant's job, w3 waits.
  EXPECT_EQ(JobIdFromName(LeaseNow("w2").job().name()), c);
  auto waiting = Poll("w3", absl::Seconds(20));
  EXPECT_FALSE(waiting->answered());
  clock_.Advance(absl::Seconds(1));
  scheduler_->Tick();
  EXPECT_FALSE(waiting->answered());
  EXPECT_EQ(Get(b).job().state(), Job::PENDING);

  auto done = Fail(la.lease_id(), absl::InvalidArgumentError("bad model"), /*retryable=*/false);
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_TRUE(waiting->has_lease());
  EXPECT_EQ(JobIdFromName(waiting->lease().job().name()), b);
}

TEST_F(SchedulerTest, GpuLimitKeepsJobsQueuedUntilGpusAreFreed) {
  SetQuota("acme", {.max_gpus = 2});
  Start();
  const std::string a = Create({.tenant = "acme", .gpus = 2});
  clock_.Advance(absl::Seconds(1));
  const std::string b = Create({.tenant = "acme", .gpus = 0});  // holds one GPU on a GPU worker
  RegisterOk({.id = "w1", .gpus = 2});
  RegisterOk({.id = "w2", .gpus = 2});
  v1::Lease la = LeaseNow("w1");
  EXPECT_EQ(JobIdFromName(la.job().name()), a);
  auto waiting = Poll("w2", absl::Seconds(20));
  EXPECT_FALSE(waiting->answered());
  EXPECT_EQ(Get(b).job().state(), Job::PENDING);
  ASSERT_TRUE(scheduler_->CancelJob(a).ok());
  EXPECT_FALSE(waiting->answered());  // CANCELLING still holds its GPUs
  ASSERT_TRUE(AckCancel(la.lease_id()).ok());
  ASSERT_TRUE(waiting->has_lease());
  EXPECT_EQ(JobIdFromName(waiting->lease().job().name()), b);
  EXPECT_EQ(Get(b).gpus_held(), 1);
}

// --- Long polls ------------------------------------------------------------------------------------------------

TEST_F(SchedulerTest, WaitingPollGetsAJobCreatedLater) {
  Start();
  RegisterOk({.id = "w", .shared_filesystem = true});
  auto poll = Poll("w", absl::Seconds(10));
  EXPECT_FALSE(poll->answered());
  clock_.Advance(absl::Seconds(4));
  scheduler_->Tick();
  EXPECT_FALSE(poll->answered());

  const std::string id = Create();
  ASSERT_TRUE(poll->has_lease());
  EXPECT_EQ(poll->calls, 1);
  const v1::Lease lease = poll->lease();
  EXPECT_EQ(JobIdFromName(lease.job().name()), id);
  EXPECT_EQ(lease.job().state(), Job::RUNNING);
  EXPECT_EQ(lease.job().worker(), "w");
  EXPECT_EQ(lease.attempt(), 1);
  EXPECT_FALSE(lease.lease_id().empty());
  EXPECT_FALSE(lease.has_resume_from());
  EXPECT_EQ(TimeOf(lease.expire_time()), clock_.Now() + options_.lease_duration);
  ASSERT_FALSE(lease.output_uri().empty());
  EXPECT_TRUE(std::filesystem::is_directory(lease.output_uri())) << lease.output_uri();

  auto check = scheduler_->CheckLease(lease.lease_id());
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->first, id);
  EXPECT_EQ(check->second, 1);
  const JobRecord rec = Get(id);
  EXPECT_EQ(rec.job().state(), Job::RUNNING);
  EXPECT_EQ(rec.job().attempt(), 1);
  EXPECT_EQ(TimeOf(rec.job().start_time()), clock_.Now());
  EXPECT_EQ(Stored(id).lease_id(), lease.lease_id());
  EXPECT_EQ(StateChanges(id),
            (std::vector<std::pair<int, int>>{{Job::STATE_UNSPECIFIED, Job::PENDING}, {Job::PENDING, Job::RUNNING}}));
  EXPECT_EQ(LastStateChange(id).attempt(), 1);
  EXPECT_EQ(Metric("flashmorph_job_queue_wait_seconds"), 1);  // one observation

  // The answered poll is gone: a later tick past its wait does not answer it again.
  clock_.Advance(absl::Seconds(30));
  scheduler_->Tick();
  EXPECT_EQ(poll->calls, 1);
}

TEST_F(SchedulerTest, WaitingPollEndsEmptyWhenItsWaitPasses) {
  options_.max_lease_wait = absl::Seconds(30);
  Start();
  RegisterOk({.id = "w"});
  RegisterOk({.id = "capped"});
  auto poll = Poll("w", absl::Seconds(10));
  auto capped = Poll("capped", absl::Hours(1));
  clock_.Advance(absl::Seconds(9));
  scheduler_->Tick();
  EXPECT_FALSE(poll->answered());
  clock_.Advance(absl::Seconds(2));
  EXPECT_FALSE(poll->answered());  // only Tick ends polls
  scheduler_->Tick();
  ASSERT_TRUE(poll->answered());
  ASSERT_TRUE(poll->value.ok()) << poll->value.status();
  EXPECT_FALSE(poll->value->has_lease());
  EXPECT_EQ(poll->calls, 1);

  EXPECT_FALSE(capped->answered());
  clock_.Advance(absl::Seconds(20));  // 31 s after the poll: past max_lease_wait
  scheduler_->Tick();
  ASSERT_TRUE(capped->answered());
  EXPECT_FALSE(capped->has_lease());

  // A job created after the polls ended stays pending.
  const std::string id = Create();
  EXPECT_EQ(Get(id).job().state(), Job::PENDING);
  EXPECT_EQ(poll->calls, 1);
}

TEST_F(SchedulerTest, ZeroWaitCancelledPollsAndShutdown) {
  Start();
  RegisterOk({.id = "w"});
  auto now = Poll("w");
  ASSERT_TRUE(now->answered());
  ASSERT_TRUE(now->value.ok());
  EXPECT_FALSE(now->value->has_lease());

  uint64_t poll_id = 0;
  auto abandoned = Poll("w", absl::Seconds(10), &poll_id);
  ASSERT_NE(poll_id, 0u);
  scheduler_->CancelPoll(poll_id);
  const std::string id = Create();
  EXPECT_FALSE(abandoned->answered());
  EXPECT_EQ(Get(id).job().state(), Job::PENDING);

  RegisterOk({.id = "w2", .gpus = 0, .host_memory = 1});
  auto waiting = Poll("w2", absl::Seconds(10));
  ASSERT_TRUE(waiting->has_lease());  // the pending job
  auto waiting2 = Poll("w", absl::Seconds(10));
  EXPECT_FALSE(waiting2->answered());
  scheduler_->Shutdown();
  ASSERT_TRUE(waiting2->answered());
  EXPECT_TRUE(waiting2->value.ok());
  EXPECT_FALSE(waiting2->has_lease());
  auto late = Poll("w", absl::Seconds(10));
  ASSERT_TRUE(late->answered());
  EXPECT_FALSE(late->has_lease());
  EXPECT_EQ(scheduler_->CreateJob(Request({})).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(SchedulerTest, UnregisteredWorkerIsFailedPrecondition) {
  Start();
  Create();
  auto poll = Poll("ghost", absl::Seconds(10));
  ASSERT_TRUE(poll->answered());
  EXPECT_EQ(poll->value.status().code(), absl::StatusCode::kFailedPrecondition) << poll->value.status();
  EXPECT_EQ(Register({.id = "Bad_Id"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Register({.id = ""}).code(), absl::StatusCode::kInvalidArgument);
  v1::RegisterWorkerRequest negative;
  negative.set_worker_id("neg");
  negative.add_gpus()->set_count(-1);
  EXPECT_EQ(scheduler_->RegisterWorker(negative).status().code(), absl::StatusCode::kInvalidArgument);
  auto still = Poll("neg");
  EXPECT_EQ(still->value.status().code(), absl::StatusCode::kFailedPrecondition);

  v1::RegisterWorkerRequest good;
  good.set_worker_id("good");
  auto reg = scheduler_->RegisterWorker(good);
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_EQ(reg->lease_duration().seconds(), absl::ToInt64Seconds(options_.lease_duration));
  EXPECT_EQ(reg->heartbeat_interval().seconds(), absl::ToInt64Seconds(options_.heartbeat_interval));
  EXPECT_EQ(reg->max_lease_wait().seconds(), absl::ToInt64Seconds(options_.max_lease_wait));
  EXPECT_TRUE(Poll("good")->has_lease());
}

// --- Heartbeats ------------------------------------------------------------------------------------------------

TEST_F(SchedulerTest, HeartbeatsStoreProgressAndAppendEvents) {
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w"});
  const v1::Lease lease = LeaseNow("w");
  const int64_t base = Get(id).last_event_sequence();

  // 1: enters LOAD with progress.
  v1::HeartbeatRequest hb;
  hb.set_lease_id(lease.lease_id());
  hb.set_heartbeat_sequence(1);
  hb.set_stage(Job::LOAD);
  hb.mutable_progress()->set_step(3);
  hb.mutable_progress()->set_total_steps(10);
  hb.mutable_progress()->set_tokens_per_second(1234.5);
  clock_.Advance(absl::Seconds(5));
  auto r1 = scheduler_->Heartbeat(hb);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_FALSE(r1->cancel_requested());
  EXPECT_EQ(TimeOf(r1->lease_expire_time()), clock_.Now() + options_.lease_duration);
  JobRecord rec = Get(id);
  EXPECT_EQ(rec.job().stage(), Job::LOAD);
  EXPECT_EQ(rec.job().progress().step(), 3);
  EXPECT_EQ(rec.job().progress().total_steps(), 10);
  EXPECT_EQ(Stored(id).job().progress().step(), 3);
  EXPECT_EQ(TimeOf(Stored(id).lease_expire_time()), clock_.Now() + options_.lease_duration);
  EXPECT_EQ(Metric("flashmorph_engine_tokens_per_second", {{"worker", "w"}}), 1234.5);

  // 2: same stage, worker events (job and sequence are the server's to set).
  JobEvent gates;
  gates.mutable_gates()->set_step(7);
  gates.mutable_gates()->add_layer_gates(0.25);
  gates.mutable_gates()->add_layer_gates(0.75);
  gates.set_job("jobs/someoneelse");
  gates.set_sequence(999);
  JobEvent layout;
  layout.mutable_layout_selected()->set_method(v1::ConversionSpec::FLASHMORPH);
  layout.mutable_layout_selected()->add_layer_types(v1::Layout::FULL_ATTENTION);
  auto r2 = Heartbeat(lease.lease_id(), 2, Job::LOAD, {LogLineEvent("hello"), gates, layout});
  ASSERT_TRUE(r2.ok()) << r2.status();
  // 3: next stage.
  auto r3 = Heartbeat(lease.lease_id(), 3, Job::CALIBRATE, {LogLineEvent("calibrating")});
  ASSERT_TRUE(r3.ok()) << r3.status();

  auto events = Events(id, base);
  std::vector<std::string> kinds;
  int64_t previous = base;
  for (const auto& e : events) {
    EXPECT_GT(e.sequence(), previous);
    previous = e.sequence();
    EXPECT_EQ(e.job(), lease.job().name());
    EXPECT_EQ(e.attempt(), 1);
    if (e.has_stage_change()) {
      kinds.push_back(StrCat("stage:", Job::Stage_Name(e.stage_change().previous()), ">",
                             Job::Stage_Name(e.stage_change().current())));
      EXPECT_FALSE(e.stage_change().resumed_from_checkpoint());
    } else if (e.has_progress()) {
      kinds.push_back(StrCat("progress:", e.progress().step()));
    } else if (e.has_log()) {
      kinds.push_back(StrCat("log:", e.log().message()));
    } else if (e.has_gates()) {
      kinds.push_back(StrCat("gates:", e.gates().step()));
    } else if (e.has_layout_selected()) {
      kinds.push_back("layout");
    } else {
      kinds.push_back("other");
    }
  }
  EXPECT_EQ(kinds, (std::vector<std::string>{"stage:STAGE_UNSPECIFIED>LOAD", "progress:3", "log:hello", "gates:7",
                                             "layout", "stage:LOAD>CALIBRATE", "log:calibrating"}));
  EXPECT_EQ(Get(id).last_event_sequence(), previous);
  EXPECT_EQ(Stored(id).last_event_sequence(), previous);
  EXPECT_EQ(Get(id).latest_gates().layer_gates_size(), 2);
  EXPECT_EQ(Get(id).job().stage(), Job::CALIBRATE);

  // A retried heartbeat (same sequence) renews the lease but appends nothing.
  clock_.Advance(absl::Seconds(5));
  auto again = Heartbeat(lease.lease_id(), 3, Job::GATES, {LogLineEvent("duplicate")});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(TimeOf(again->lease_expire_time()), clock_.Now() + options_.lease_duration);
  EXPECT_EQ(Events(id, previous).size(), 0u);
  EXPECT_EQ(Get(id).job().stage(), Job::CALIBRATE);
  auto older = Heartbeat(lease.lease_id(), 2, Job::GATES, {LogLineEvent("older")});
  ASSERT_TRUE(older.ok()) << older.status();
  EXPECT_EQ(Events(id, previous).size(), 0u);
  // A long log line is cut to 4096 bytes.
  ASSERT_TRUE(Heartbeat(lease.lease_id(), 4, Job::CALIBRATE, {LogLineEvent(std::string(10000, 'x'))}).ok());
  auto tail = Events(id, previous);
  ASSERT_EQ(tail.size(), 1u);
  EXPECT_EQ(tail[0].log().message().size(), 4096u);
  EXPECT_GT(tail[0].sequence(), previous);
}

TEST_F(SchedulerTest, HeartbeatRefusesServerEventKindsAndStaleLeases) {
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w"});
  const v1::Lease lease = LeaseNow("w");
  const int64_t before = Get(id).last_event_sequence();

  JobEvent state;
  state.mutable_state_change()->set_current(Job::SUCCEEDED);
  JobEvent stage;
  stage.mutable_stage_change()->set_current(Job::EXPORT);
  JobEvent progress;
  progress.mutable_progress()->set_step(1);
  JobEvent result;
  result.mutable_result()->set_engine_version("x");
  JobEvent empty;
  for (const JobEvent& bad : {state, stage, progress, result, empty}) {
    auto r = Heartbeat(lease.lease_id(), 1, Job::LOAD, {LogLineEvent("ok"), bad});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad.DebugString();
  }
  v1::HeartbeatRequest bad_stage;
  bad_stage.set_lease_id(lease.lease_id());
  bad_stage.set_heartbeat_sequence(1);
  bad_stage.set_stage(static_cast<Job::Stage>(42));
  EXPECT_EQ(scheduler_->Heartbeat(bad_stage).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Get(id).last_event_sequence(), before);
  EXPECT_EQ(Events(id, before).size(), 0u);
  EXPECT_EQ(Get(id).job().state(), Job::RUNNING);

  EXPECT_EQ(Heartbeat("no-such-lease", 1).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Heartbeat("", 1).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(scheduler_->CheckLease("no-such-lease").status().code(), absl::StatusCode::kAborted);
  v1::CompleteJobRequest no_outcome;
  no_outcome.set_lease_id(lease.lease_id());
  EXPECT_EQ(scheduler_->CompleteJob(no_outcome).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Heartbeat(lease.lease_id(), 1, Job::LOAD).ok());  // the lease survived all of that
}

TEST_F(SchedulerTest, CheckpointIsResumedByTheNextAttempt) {
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w1"});
  RegisterOk({.id = "w2"});
  const v1::Lease first = LeaseNow("w1");
  v1::HeartbeatRequest hb;
  hb.set_lease_id(first.lease_id());
  hb.set_heartbeat_sequence(1);
  hb.set_stage(Job::CALIBRATE);
  hb.mutable_checkpoint_written()->set_stage(Job::CALIBRATE);
  hb.mutable_checkpoint_written()->set_uri("/data/work/calibrate");
  ASSERT_TRUE(scheduler_->Heartbeat(hb).ok());
  const JobRecord rec = Stored(id);
  EXPECT_EQ(rec.checkpoint().stage(), Job::CALIBRATE);
  EXPECT_EQ(rec.checkpoint().uri(), "/data/work/calibrate");
  EXPECT_EQ(rec.checkpoint().attempt(), 1);
  EXPECT_EQ(rec.checkpoint().worker_id(), "w1");

  auto retried = Fail(first.lease_id(), absl::ResourceExhaustedError("CUDA out of memory"), /*retryable=*/true);
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->state(), Job::PENDING);
  clock_.Advance(options_.retry_backoff_initial);
  const v1::Lease second = LeaseNow("w2");
  EXPECT_EQ(second.attempt(), 2);
  ASSERT_TRUE(second.has_resume_from());
  EXPECT_EQ(second.resume_from().stage(), Job::CALIBRATE);
  EXPECT_EQ(second.resume_from().uri(), "/data/work/calibrate");
  EXPECT_EQ(second.resume_from().attempt(), 1);
  EXPECT_EQ(second.resume_from().worker_id(), "w1");
  EXPECT_EQ(second.job().stage(), Job::STAGE_UNSPECIFIED);

  // The first stage the new attempt reports says it resumed.
  const int64_t before = Get(id).last_event_sequence();
  ASSERT_TRUE(Heartbeat(second.lease_id(), 1, Job::GATES).ok());
  auto events = Events(id, before);
  ASSERT_EQ(events.size(), 1u);
  ASSERT_TRUE(events[0].has_stage_change());
  EXPECT_EQ(events[0].stage_change().current(), Job::GATES);
  EXPECT_TRUE(events[0].stage_change().resumed_from_checkpoint());
  EXPECT_EQ(events[0].attempt(), 2);
}

// --- Cancellation ----------------------------------------------------------------------------------------------

TEST_F(SchedulerTest, CancelPendingJobEndsItAtOnce) {
  Start();
  const std::string id = Create();
  auto cancelled = scheduler_->CancelJob(id);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->job().state(), Job::CANCELLED);
  EXPECT_EQ(cancelled->job().error().code(), static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_EQ(TimeOf(cancelled->job().end_time()), clock_.Now());
  EXPECT_EQ(Stored(id).job().state(), Job::CANCELLED);
  EXPECT_EQ(Get(id).job().state(), Job::CANCELLED);
  EXPECT_EQ(StateChanges(id),
            (std::vector<std::pair<int, int>>{{Job::STATE_UNSPECIFIED, Job::PENDING}, {Job::PENDING, Job::CANCELLED}}));
  EXPECT_EQ(LastStateChange(id).state_change().reason().code(), static_cast<int>(absl::StatusCode::kCancelled));

  auto again = scheduler_->CancelJob(id);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition) << again.status();
  EXPECT_EQ(scheduler_->CancelJob("nosuchjob").status().code(), absl::StatusCode::kNotFound);
  RegisterOk({.id = "w"});
  EXPECT_FALSE(Poll("w")->has_lease());
}

TEST_F(SchedulerTest, CancelRunningJobGoesThroughCancelling) {
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w"});
  const v1::Lease lease = LeaseNow("w");
  auto hb = Heartbeat(lease.lease_id(), 1, Job::LOAD);
  ASSERT_TRUE(hb.ok());
  EXPECT_FALSE(hb->cancel_requested());

  auto cancelling = scheduler_->CancelJob(id);
  ASSERT_TRUE(cancelling.ok()) << cancelling.status();
  EXPECT_EQ(cancelling->job().state(), Job::CANCELLING);
  EXPECT_EQ(Stored(id).job().state(), Job::CANCELLING);
  auto twice = scheduler_->CancelJob(id);
  ASSERT_TRUE(twice.ok()) << twice.status();
  EXPECT_EQ(twice->job().state(), Job::CANCELLING);

  hb = Heartbeat(lease.lease_id(), 2, Job::LOAD);
  ASSERT_TRUE(hb.ok()) << hb.status();
  EXPECT_TRUE(hb->cancel_requested());

  auto done = AckCancel(lease.lease_id());
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), Job::CANCELLED);
  EXPECT_EQ(Get(id).job().state(), Job::CANCELLED);
  EXPECT_EQ(StateChanges(id), (std::vector<std::pair<int, int>>{{Job::STATE_UNSPECIFIED, Job::PENDING},
                                                                {Job::PENDING, Job::RUNNING},
                                                                {Job::RUNNING, Job::CANCELLING},
                                                                {Job::CANCELLING, Job::CANCELLED}}));
  EXPECT_EQ(Heartbeat(lease.lease_id(), 3).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(scheduler_->CancelJob(id).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(std::filesystem::exists(lease.output_uri()));  // the attempt was discarded
  EXPECT_EQ(Metric("flashmorph_jobs_finished_total", {{"tenant", "acme"}, {"result", "cancelled"}}), 1);
}

TEST_F(SchedulerTest, CancellingJobWhoseLeaseLapsesIsCancelled) {
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w"});
  const v1::Lease lease = LeaseNow("w");
  ASSERT_TRUE(scheduler_->CancelJob(id).ok());
  clock_.Advance(options_.lease_duration + absl::Seconds(1));
  scheduler_->Tick();
  EXPECT_EQ(Get(id).job().state(), Job::CANCELLED);
  EXPECT_EQ(Get(id).job().error().code(), static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_EQ(AckCancel(lease.lease_id()).status().code(), absl::StatusCode::kAborted);
}

TEST_F(SchedulerTest, FailureWhileCancellingIsCancelledAndUnaskedStopIsRetried) {
  Start();
  const std::string a = Create();
  clock_.Advance(absl::Seconds(1));
  const std::string b = Create();
  RegisterOk({.id = "w1"});
  RegisterOk({.id = "w2"});
  const v1::Lease la = LeaseNow("w1");
  const v1::Lease lb = LeaseNow("w2");
  ASSERT_TRUE(scheduler_->CancelJob(a).ok());
  auto r = Fail(la.lease_id(), absl::InternalError("crashed while stopping"), /*retryable=*/false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state(), Job::CANCELLED);
  // A worker that stops on its own (no cancel asked): an interruption, retried.
  r = AckCancel(lb.lease_id());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state(), Job::PENDING);
  EXPECT_EQ(LastStateChange(b).state_change().reason().code(), static_cast<int>(absl::StatusCode::kUnavailable));
}

// --- Lease expiry and retries ----------------------------------------------------------------------------------

TEST_F(SchedulerTest, LapsedLeaseRequeuesWithBackoff) {
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w1"});
  RegisterOk({.id = "w2"});
  const v1::Lease first = LeaseNow("w1");

  // Heartbeats keep the lease alive past its first expiry.
  clock_.Advance(options_.lease_duration - absl::Seconds(1));
  scheduler_->Tick();
  ASSERT_TRUE(Heartbeat(first.lease_id(), 1, Job::LOAD).ok());
  clock_.Advance(options_.lease_duration - absl::Seconds(1));
  scheduler_->Tick();
  EXPECT_EQ(Get(id).job().state(), Job::RUNNING);

  clock_.Advance(absl::Seconds(2));
  scheduler_->Tick();
  JobRecord rec = Get(id);
  EXPECT_EQ(rec.job().state(), Job::PENDING);
  EXPECT_EQ(rec.job().attempt(), 1);
  EXPECT_TRUE(rec.lease_id().empty());
  EXPECT_EQ(Stored(id).job().state(), Job::PENDING);
  JobEvent change = LastStateChange(id);
  EXPECT_EQ(change.state_change().previous(), Job::RUNNING);
  EXPECT_EQ(change.state_change().current(), Job::PENDING);
  EXPECT_EQ(change.attempt(), 1);
  EXPECT_EQ(change.state_change().reason().code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_NE(change.state_change().reason().message().find("lapsed"), std::string::npos)
      << change.state_change().reason().message();
  EXPECT_EQ(Metric("flashmorph_lease_expirations_total"), 1);
  EXPECT_EQ(Metric("flashmorph_job_retries_total", {{"reason", "lease_expired"}}), 1);
  EXPECT_FALSE(std::filesystem::exists(first.output_uri()));  // attempt 1's folder was discarded

  // The old lease is stale for every worker write.
  EXPECT_EQ(Heartbeat(first.lease_id(), 2, Job::LOAD).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Fail(first.lease_id(), absl::InternalError("x"), true).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Succeed(first.lease_id()).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(scheduler_->CheckLease(first.lease_id()).status().code(), absl::StatusCode::kAborted);

  // Backoff: not leased before retry_backoff_initial (1 s) passed.
  EXPECT_FALSE(Poll("w2")->has_lease());
  clock_.Advance(absl::Milliseconds(900));
  EXPECT_FALSE(Poll("w2")->has_lease());
  auto waiting = Poll("w2", absl::Seconds(10));
  EXPECT_FALSE(waiting->answered());
  clock_.Advance(absl::Milliseconds(100));
  scheduler_->Tick();  // the backoff ended: the waiting poll gets the job
  ASSERT_TRUE(waiting->has_lease());
  const v1::Lease second = waiting->lease();
  EXPECT_EQ(second.attempt(), 2);
  EXPECT_NE(second.lease_id(), first.lease_id());
  EXPECT_EQ(second.job().worker(), "w2");
  auto check = scheduler_->CheckLease(second.lease_id());
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->second, 2);

  // The second lapse doubles the backoff.
  clock_.Advance(options_.lease_duration + absl::Seconds(1));
  scheduler_->Tick();
  EXPECT_EQ(Get(id).job().state(), Job::PENDING);
  EXPECT_EQ(Get(id).infrastructure_failures(), 2);
  clock_.Advance(absl::Milliseconds(1900));
  EXPECT_FALSE(Poll("w1")->has_lease());
  clock_.Advance(absl::Milliseconds(100));
  EXPECT_EQ(LeaseNow("w1").attempt(), 3);
}

TEST_F(SchedulerTest, GivesUpAfterMaxAttempts) {
  options_.max_attempts = 2;
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w"});
  LeaseNow("w");
  clock_.Advance(options_.lease_duration + absl::Seconds(1));
  scheduler_->Tick();
  ASSERT_EQ(Get(id).job().state(), Job::PENDING);
  clock_.Advance(options_.retry_backoff_max);
  EXPECT_EQ(LeaseNow("w").attempt(), 2);
  clock_.Advance(options_.lease_duration + absl::Seconds(1));
  scheduler_->Tick();
  const JobRecord rec = Get(id);
  EXPECT_EQ(rec.job().state(), Job::FAILED);
  EXPECT_EQ(rec.job().attempt(), 2);
  EXPECT_EQ(rec.job().error().code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_NE(rec.job().error().message().find("gave up after 2 attempts"), std::string::npos)
      << rec.job().error().message();
  EXPECT_EQ(Stored(id).job().state(), Job::FAILED);
  clock_.Advance(options_.retry_backoff_max);
  EXPECT_FALSE(Poll("w")->has_lease());
  EXPECT_EQ(Metric("flashmorph_jobs_finished_total", {{"tenant", "acme"}, {"result", "failed"}}), 1);
}

TEST_F(SchedulerTest, RetryableFailureRetriesAndUserErrorFailsAtOnce) {
  Start();
  const std::string retry = Create();
  clock_.Advance(absl::Seconds(1));
  const std::string user = Create();
  RegisterOk({.id = "w1"});
  RegisterOk({.id = "w2"});
  const v1::Lease lr = LeaseNow("w1");
  const v1::Lease lu = LeaseNow("w2");
  ASSERT_EQ(JobIdFromName(lr.job().name()), retry);

  auto r = Fail(lr.lease_id(), absl::UnavailableError("GPU fell off the bus"), /*retryable=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state(), Job::PENDING);
  JobEvent change = LastStateChange(retry);
  EXPECT_EQ(change.state_change().current(), Job::PENDING);
  EXPECT_EQ(change.state_change().reason().code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_EQ(change.state_change().reason().message(), "GPU fell off the bus");
  EXPECT_EQ(Metric("flashmorph_job_retries_total", {{"reason", "worker_failure"}}), 1);
  EXPECT_EQ(Heartbeat(lr.lease_id(), 1).status().code(), absl::StatusCode::kAborted);

  r = Fail(lu.lease_id(), absl::InvalidArgumentError("config.json: model_type 'bert' is not a decoder"),
           /*retryable=*/false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state(), Job::FAILED);
  const JobRecord rec = Get(user);
  EXPECT_EQ(rec.job().state(), Job::FAILED);
  EXPECT_EQ(rec.job().attempt(), 1);
  EXPECT_EQ(rec.job().error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(rec.job().error().message(), "config.json: model_type 'bert' is not a decoder");
  EXPECT_EQ(LastStateChange(user).state_change().reason().message(), rec.job().error().message());
  EXPECT_EQ(Stored(user).infrastructure_failures(), 0);

  // Only the retried job comes back.
  clock_.Advance(options_.retry_backoff_max);
  const v1::Lease next = LeaseNow("w2");
  EXPECT_EQ(JobIdFromName(next.job().name()), retry);
  EXPECT_EQ(next.attempt(), 2);
  EXPECT_FALSE(Poll("w1")->has_lease());

  // A failure without an error code is still a failure.
  v1::CompleteJobRequest no_code;
  no_code.set_lease_id(next.lease_id());
  no_code.mutable_failure()->set_retryable(false);
  auto nc = scheduler_->CompleteJob(no_code);
  ASSERT_TRUE(nc.ok()) << nc.status();
  EXPECT_EQ(nc->state(), Job::FAILED);
  EXPECT_EQ(Get(retry).job().error().code(), static_cast<int>(absl::StatusCode::kUnknown));
}

// --- Deadlines -------------------------------------------------------------------------------------------------

TEST_F(SchedulerTest, DeadlineFailsPendingAndRunningJobs) {
  Start();
  const absl::Time deadline = clock_.Now() + absl::Seconds(20);
  const std::string pending = Create({.priority = 0, .deadline = deadline});
  clock_.Advance(absl::Seconds(1));
  const std::string running = Create({.priority = 9, .deadline = deadline});
  const std::string unbounded = Create({.priority = -1});
  RegisterOk({.id = "w"});
  const v1::Lease lease = LeaseNow("w");
  ASSERT_EQ(JobIdFromName(lease.job().name()), running);

  clock_.Advance(absl::Seconds(18));  // 19 s after the first create: 1 s before the deadline
  ASSERT_TRUE(Heartbeat(lease.lease_id(), 1, Job::LOAD).ok());
  scheduler_->Tick();
  EXPECT_EQ(Get(pending).job().state(), Job::PENDING);
  EXPECT_EQ(Get(running).job().state(), Job::RUNNING);

  clock_.Advance(absl::Seconds(1));
  scheduler_->Tick();
  for (const std::string& id : {pending, running}) {
    const JobRecord rec = Get(id);
    EXPECT_EQ(rec.job().state(), Job::FAILED) << id;
    EXPECT_EQ(rec.job().error().code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded)) << id;
    EXPECT_EQ(LastStateChange(id).state_change().reason().code(),
              static_cast<int>(absl::StatusCode::kDeadlineExceeded));
    EXPECT_EQ(Stored(id).job().state(), Job::FAILED);
  }
  EXPECT_EQ(StateChanges(running).back(), (std::pair<int, int>{Job::RUNNING, Job::FAILED}));
  EXPECT_EQ(StateChanges(pending).back(), (std::pair<int, int>{Job::PENDING, Job::FAILED}));
  EXPECT_EQ(Heartbeat(lease.lease_id(), 2, Job::LOAD).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Succeed(lease.lease_id()).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Get(unbounded).job().state(), Job::PENDING);
  EXPECT_FALSE(std::filesystem::exists(lease.output_uri()));
}

TEST_F(SchedulerTest, JobPastItsDeadlineIsNeverLeased) {
  Start();
  const std::string late = Create({.priority = 9, .deadline = clock_.Now() + absl::Seconds(5)});
  const std::string fine = Create({.priority = 0});
  RegisterOk({.id = "w"});
  clock_.Advance(absl::Seconds(5));  // the deadline passed; no Tick has run yet
  const v1::Lease lease = LeaseNow("w");
  EXPECT_EQ(JobIdFromName(lease.job().name()), fine);
  EXPECT_EQ(Get(late).job().state(), Job::PENDING);
  scheduler_->Tick();
  EXPECT_EQ(Get(late).job().state(), Job::FAILED);
  EXPECT_EQ(Get(late).job().attempt(), 0);
  EXPECT_EQ(Get(late).job().error().code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded));
}

// --- Completion ------------------------------------------------------------------------------------------------

TEST_F(SchedulerTest, SuccessPromotesTheOutputAndRecordsTheResult) {
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w", .shared_filesystem = true});
  const v1::Lease lease = LeaseNow("w");
  ASSERT_FALSE(lease.output_uri().empty());
  const std::string config = R"({"model_type": "llama", "layer_types": ["full_attention"]})";
  const std::string weights(3000, '\x7f');
  WriteFile(lease.output_uri() + "/config.json", config);
  WriteFile(lease.output_uri() + "/sub/model.safetensors", weights);
  ASSERT_TRUE(Heartbeat(lease.lease_id(), 1, Job::EXPORT).ok());

  v1::ConversionResult result;
  result.set_engine_version("flashmorph-test 1.0");
  result.set_seed(1234);
  result.set_source_sha256(std::string(64, 'a'));
  auto* timing = result.add_stage_timings();
  timing->set_stage(Job::CALIBRATE);
  timing->mutable_wall_time()->set_seconds(12);
  result.set_artifact_size_bytes(1);             // the server's to set
  result.set_artifact_manifest_sha256("bogus");  // the server's to set
  auto done = Succeed(lease.lease_id(), result);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), Job::SUCCEEDED);

  auto manifest = artifacts_->GetManifest(id);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->files_size(), 2);
  EXPECT_EQ(manifest->total_size_bytes(), static_cast<int64_t>(config.size() + weights.size()));
  auto read = artifacts_->Read(id, "config.json", 0, 1 << 20);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, config);

  const JobRecord rec = Get(id);
  EXPECT_EQ(rec.job().state(), Job::SUCCEEDED);
  EXPECT_FALSE(rec.job().has_error());
  EXPECT_TRUE(rec.lease_id().empty());
  EXPECT_EQ(TimeOf(rec.job().end_time()), clock_.Now());
  EXPECT_EQ(rec.job().result().engine_version(), "flashmorph-test 1.0");
  EXPECT_EQ(rec.job().result().seed(), 1234u);
  EXPECT_EQ(rec.job().result().artifact_manifest_sha256(), manifest->manifest_sha256());
  EXPECT_EQ(rec.job().result().artifact_size_bytes(), manifest->total_size_bytes());
  EXPECT_FALSE(rec.job().result().artifact_uri().empty());
  EXPECT_TRUE(std::filesystem::is_directory(rec.job().result().artifact_uri())) << rec.job().result().artifact_uri();
  EXPECT_EQ(Stored(id).job().result().artifact_manifest_sha256(), manifest->manifest_sha256());

  // The result event comes just before the terminal state change.
  auto events = Events(id);
  ASSERT_GE(events.size(), 2u);
  const JobEvent& last = events.back();
  const JobEvent& before_last = events[events.size() - 2];
  ASSERT_TRUE(before_last.has_result());
  EXPECT_EQ(before_last.result().artifact_manifest_sha256(), manifest->manifest_sha256());
  ASSERT_TRUE(last.has_state_change());
  EXPECT_EQ(last.state_change().previous(), Job::RUNNING);
  EXPECT_EQ(last.state_change().current(), Job::SUCCEEDED);
  EXPECT_LT(before_last.sequence(), last.sequence());
  int results = 0;
  for (const auto& e : events) results += e.has_result() ? 1 : 0;
  EXPECT_EQ(results, 1);

  EXPECT_EQ(Succeed(lease.lease_id(), result).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(scheduler_->CancelJob(id).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Metric("flashmorph_jobs_finished_total", {{"tenant", "acme"}, {"result", "succeeded"}}), 1);
  EXPECT_EQ(Metric("flashmorph_stage_duration_seconds", {{"stage", "calibrate"}}), 1);
}

TEST_F(SchedulerTest, SuccessWithAnEmptyOutputFailsTheJobWithoutRetry) {
  // An empty output is the attempt's fault (FAILED_PRECONDITION from the artifact store), not the infrastructure's.
  options_.max_attempts = 3;
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w"});
  const v1::Lease first = LeaseNow("w");
  auto r = Succeed(first.lease_id());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state(), Job::FAILED);
  const auto record = Get(id);
  const auto& job = record.job();
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(job.error().message().find("promoting"), std::string::npos) << job.error().message();
  EXPECT_EQ(job.attempt(), 1);
  EXPECT_EQ(Metric("flashmorph_job_retries_total", {{"reason", "promotion_failed"}}), 0);
  EXPECT_EQ(artifacts_->GetManifest(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Heartbeat(first.lease_id(), 1).status().code(), absl::StatusCode::kAborted);
  for (const auto& e : Events(id)) EXPECT_FALSE(e.has_result());
}

TEST_F(SchedulerTest, UploadingWorkerGetsNoOutputUri) {
  Start();
  const std::string id = Create();
  RegisterOk({.id = "remote", .shared_filesystem = false});
  const v1::Lease lease = LeaseNow("remote");
  EXPECT_TRUE(lease.output_uri().empty());
  // Its uploads land in the attempt folder, which promotion picks up.
  auto check = scheduler_->CheckLease(lease.lease_id());
  ASSERT_TRUE(check.ok());
  auto upload = artifacts_->BeginUpload(check->first, check->second, "config.json");
  ASSERT_TRUE(upload.ok()) << upload.status();
  const std::string body = "{}";
  ASSERT_TRUE((*upload)->Append(0, body).ok());
  ASSERT_TRUE((*upload)->Finish(Sha256Hex(body.data(), body.size())).ok());
  auto done = Succeed(lease.lease_id());
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), Job::SUCCEEDED);
  EXPECT_EQ(*artifacts_->Read(id, "config.json", 0, 100), "{}");
}

// --- Worker restarts -------------------------------------------------------------------------------------------

TEST_F(SchedulerTest, RegisteringEndsTheWorkersPolls) {
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w"});
  const v1::Lease lease = LeaseNow("w");
  RegisterOk({.id = "other"});
  auto other_poll = Poll("other", absl::Seconds(10));
  auto own_poll = Poll("w", absl::Seconds(10));  // polling while holding the lease already loses the job
  EXPECT_FALSE(own_poll->answered());            // the job is in backoff

  RegisterOk({.id = "w"});  // the worker process restarted: its waiting poll ends
  ASSERT_TRUE(own_poll->answered());
  EXPECT_FALSE(own_poll->has_lease());
  const JobRecord rec = Get(id);
  EXPECT_EQ(rec.job().state(), Job::PENDING);
  EXPECT_EQ(Heartbeat(lease.lease_id(), 1).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(scheduler_->CheckLease(lease.lease_id()).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Get(id).infrastructure_failures(), 1);  // lost once, not twice
  EXPECT_FALSE(other_poll->answered());
  clock_.Advance(options_.retry_backoff_initial);
  scheduler_->Tick();
  ASSERT_TRUE(other_poll->has_lease());
  EXPECT_EQ(other_poll->lease().attempt(), 2);
}

TEST_F(SchedulerTest, ReRegisteringWorkerRequeuesItsRunningJob) {
  Start();
  const std::string id = Create();
  RegisterOk({.id = "w"});
  const v1::Lease lease = LeaseNow("w");
  RegisterOk({.id = "w"});
  EXPECT_EQ(Get(id).job().state(), Job::PENDING);
  JobEvent change = LastStateChange(id);
  EXPECT_EQ(change.state_change().previous(), Job::RUNNING);
  EXPECT_NE(change.state_change().reason().message().find("restarted"), std::string::npos)
      << change.state_change().reason().message();
  EXPECT_EQ(Metric("flashmorph_job_retries_total", {{"reason", "worker_restarted"}}), 1);
  EXPECT_EQ(Heartbeat(lease.lease_id(), 1).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(AckCancel(lease.lease_id()).status().code(), absl::StatusCode::kAborted);
  clock_.Advance(options_.retry_backoff_max);
  EXPECT_EQ(LeaseNow("w").attempt(), 2);
}

TEST_F(SchedulerTest, PollingWhileHoldingALeaseLosesTheLease) {
  Start();
  const std::string id = Create();
  clock_.Advance(absl::Seconds(1));
  const std::string second = Create();
  RegisterOk({.id = "w"});
  const v1::Lease lease = LeaseNow("w");
  ASSERT_EQ(JobIdFromName(lease.job().name()), id);
  const v1::Lease next = LeaseNow("w");                 // crashed and came back without re-registering
  EXPECT_EQ(JobIdFromName(next.job().name()), second);  // the lost job is in backoff
  JobRecord rec = Get(id);
  EXPECT_EQ(rec.job().state(), Job::PENDING);
  EXPECT_NE(LastStateChange(id).state_change().reason().message().find("new work"), std::string::npos);
  EXPECT_EQ(Heartbeat(lease.lease_id(), 1).status().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(Heartbeat(next.lease_id(), 1).ok());
  EXPECT_EQ(Metric("flashmorph_job_retries_total", {{"reason", "worker_lost_job"}}), 1);
}

// --- Scheduler restart -----------------------------------------------------------------------------------------

TEST_F(SchedulerTest, RestartKeepsJobsLeasesAndEvents) {
  Start();
  const std::string pending = Create({.priority = 0});
  clock_.Advance(absl::Seconds(1));
  const std::string running = Create({.priority = 5});
  clock_.Advance(absl::Seconds(1));
  const std::string finished = Create({.priority = 9});
  RegisterOk({.id = "w1"});
  RegisterOk({.id = "idle"});
  const v1::Lease done_lease = LeaseNow("w1");
  ASSERT_EQ(JobIdFromName(done_lease.job().name()), finished);
  ASSERT_TRUE(Fail(done_lease.lease_id(), absl::InvalidArgumentError("nope"), false).ok());
  const v1::Lease lease = LeaseNow("w1");
  ASSERT_EQ(JobIdFromName(lease.job().name()), running);
  ASSERT_TRUE(Heartbeat(lease.lease_id(), 1, Job::CALIBRATE, {LogLineEvent("before restart")}).ok());
  const std::vector<JobEvent> events_before = Events(running);
  const int64_t seq_before = Get(running).last_event_sequence();
  ASSERT_EQ(events_before.back().sequence(), seq_before);

  scheduler_.reset();
  // The server was down longer than a lease: the lease is extended on start-up, not expired.
  clock_.Advance(options_.lease_duration + absl::Seconds(10));
  auto fresh_metrics = std::make_unique<ServerMetrics>();
  auto s = Scheduler::Create(store_.get(), storage_.get(), &clock_, &hub_, fresh_metrics.get(), options_);
  ASSERT_TRUE(s.ok()) << s.status();
  scheduler_ = *std::move(s);
  EXPECT_EQ(MetricOf(*fresh_metrics, "flashmorph_jobs", {{"state", "pending"}}), 1);
  EXPECT_EQ(MetricOf(*fresh_metrics, "flashmorph_jobs", {{"state", "running"}}), 1);
  EXPECT_EQ(MetricOf(*fresh_metrics, "flashmorph_workers", {{"state", "busy"}}), 1);
  EXPECT_EQ(MetricOf(*fresh_metrics, "flashmorph_workers", {{"state", "idle"}}), 1);

  EXPECT_EQ(Get(pending).job().state(), Job::PENDING);
  EXPECT_EQ(Get(running).job().state(), Job::RUNNING);
  EXPECT_EQ(Get(finished).job().state(), Job::FAILED);
  EXPECT_EQ(Events(running).size(), events_before.size());
  scheduler_->Tick();
  EXPECT_EQ(Get(running).job().state(), Job::RUNNING);  // the lease was extended

  auto check = scheduler_->CheckLease(lease.lease_id());
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->first, running);
  auto hb = Heartbeat(lease.lease_id(), 2, Job::GATES, {LogLineEvent("after restart")});
  ASSERT_TRUE(hb.ok()) << hb.status();
  auto after = Events(running, seq_before);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[0].sequence(), seq_before + 1);
  EXPECT_TRUE(after[0].has_stage_change());
  EXPECT_EQ(after[1].log().message(), "after restart");

  // Workers registered before the restart poll without registering again; the busy one is still busy.
  EXPECT_EQ(JobIdFromName(LeaseNow("idle").job().name()), pending);
  scheduler_->Tick();
  EXPECT_EQ(MetricOf(*fresh_metrics, "flashmorph_jobs", {{"state", "pending"}}), 0);
  EXPECT_EQ(MetricOf(*fresh_metrics, "flashmorph_jobs", {{"state", "running"}}), 2);
  EXPECT_EQ(MetricOf(*fresh_metrics, "flashmorph_workers", {{"state", "busy"}}), 2);

  // Leases still lapse after the restart.
  clock_.Advance(options_.lease_duration + absl::Seconds(1));
  scheduler_->Tick();
  EXPECT_EQ(Get(running).job().state(), Job::PENDING);
  EXPECT_EQ(Get(pending).job().state(), Job::PENDING);
  scheduler_.reset();  // before fresh_metrics goes
}

TEST_F(SchedulerTest, RestartKeepsCancellingAndQuotaUsage) {
  SetQuota("acme", {.max_running_jobs = 1});
  Start();
  const std::string a = Create();
  clock_.Advance(absl::Seconds(1));
  const std::string b = Create();
  RegisterOk({.id = "w1"});
  RegisterOk({.id = "w2"});
  const v1::Lease lease = LeaseNow("w1");
  ASSERT_TRUE(scheduler_->CancelJob(a).ok());
  scheduler_.reset();
  Start();
  EXPECT_EQ(Get(a).job().state(), Job::CANCELLING);
  auto hb = Heartbeat(lease.lease_id(), 1);
  ASSERT_TRUE(hb.ok()) << hb.status();
  EXPECT_TRUE(hb->cancel_requested());
  EXPECT_FALSE(Poll("w2")->has_lease());  // the CANCELLING job still counts against the running limit
  auto waiting = Poll("w2", absl::Seconds(10));
  ASSERT_TRUE(AckCancel(lease.lease_id()).ok());
  ASSERT_TRUE(waiting->has_lease());
  EXPECT_EQ(JobIdFromName(waiting->lease().job().name()), b);
}

// --- Concurrency -----------------------------------------------------------------------------------------------

TEST_F(SchedulerTest, ConcurrentCallsKeepJobsConsistent) {
  options_.max_attempts = 4;
  Start();
  std::mutex ids_mu;
  std::vector<std::string> ids;
  std::atomic<bool> stop{false};
  std::atomic<int> unexpected{0};
  auto expect = [&](const absl::Status& s, std::initializer_list<absl::StatusCode> allowed) {
    if (s.ok()) return;
    for (auto c : allowed) {
      if (s.code() == c) return;
    }
    ++unexpected;
    ADD_FAILURE() << s;
  };
  auto pick = [&](std::mt19937& rng) -> std::string {
    std::lock_guard<std::mutex> lock(ids_mu);
    if (ids.empty()) return "";
    return ids[std::uniform_int_distribution<size_t>(0, ids.size() - 1)(rng)];
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {  // creators
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      int n = 0;
      while (!stop.load()) {
        JobSpec j{.tenant = t == 0 ? "acme" : "beta", .priority = static_cast<int>(rng() % 3)};
        if (n % 3 == 0) {
          j.request_id = StrCat("req-", t, "-", n / 3);
          j.fingerprint = "same";
        }
        auto out = scheduler_->CreateJob(Request(j));
        expect(out.status(), {});
        if (out.ok() && out->created) {
          std::lock_guard<std::mutex> lock(ids_mu);
          ids.push_back(IdOf(out->record));
        }
        ++n;
      }
    });
  }
  threads.emplace_back([&] {  // canceller
    std::mt19937 rng(7);
    while (!stop.load()) {
      const std::string id = pick(rng);
      if (!id.empty() && rng() % 4 == 0) {
        expect(scheduler_->CancelJob(id).status(), {absl::StatusCode::kFailedPrecondition});
      }
      auto got = id.empty() ? absl::StatusOr<JobRecord>(JobRecord()) : scheduler_->GetJob(id);
      expect(got.status(), {});
    }
  });
  threads.emplace_back([&] {  // ticker
    while (!stop.load()) {
      clock_.Advance(absl::Milliseconds(500));
      scheduler_->Tick();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  for (int w = 0; w < 4; ++w) {  // workers
    threads.emplace_back([&, w] {
      std::mt19937 rng(100 + w);
      const std::string worker = StrCat("worker-", w);
      expect(Register({.id = worker}), {});
      while (!stop.load()) {
        auto poll = Poll(worker);
        if (!poll->answered()) {
          ++unexpected;
          ADD_FAILURE() << "a zero-wait poll was not answered at once";
          continue;
        }
        expect(poll->value.status(), {});
        if (!poll->has_lease()) continue;
        const v1::Lease lease = poll->lease();
        const int beats = static_cast<int>(rng() % 4);
        bool cancel = false;
        for (int i = 1; i <= beats; ++i) {
          auto hb = Heartbeat(lease.lease_id(), i, static_cast<Job::Stage>(1 + i), {LogLineEvent(StrCat("beat ", i))});
          expect(hb.status(), {absl::StatusCode::kAborted});
          if (!hb.ok()) break;
          if (hb->cancel_requested()) cancel = true;
          if (rng() % 3 == 0) expect(Heartbeat(lease.lease_id(), i).status(), {absl::StatusCode::kAborted});
        }
        absl::StatusOr<v1::CompleteJobResponse> end;
        const int outcome = static_cast<int>(rng() % 5);
        if (cancel) {
          end = AckCancel(lease.lease_id());
        } else if (outcome == 0) {
          WriteFile(lease.output_uri() + "/config.json", "{}");
          end = Succeed(lease.lease_id());
        } else if (outcome == 1) {
          end = Fail(lease.lease_id(), absl::UnavailableError("flaky"), true);
        } else if (outcome == 2) {
          end = Fail(lease.lease_id(), absl::InvalidArgumentError("bad"), false);
        } else if (outcome == 3) {
          continue;  // walk away: the lease lapses
        } else {
          end = AckCancel(lease.lease_id());
        }
        expect(end.status(), {absl::StatusCode::kAborted});
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));
  stop.store(true);
  for (auto& t : threads) t.join();
  EXPECT_EQ(unexpected.load(), 0);
  ASSERT_FALSE(ids.empty());

  // Drain: cancel everything left, let leases lapse.
  for (const auto& id : ids) {
    auto r = scheduler_->CancelJob(id);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    }
  }
  clock_.Advance(options_.lease_duration + absl::Seconds(1));
  scheduler_->Tick();

  int succeeded = 0;
  for (const auto& id : ids) {
    const JobRecord rec = Get(id);
    const JobRecord stored = Stored(id);
    EXPECT_TRUE(IsTerminal(rec.job().state())) << id << " " << Job::State_Name(rec.job().state());
    EXPECT_EQ(stored.job().state(), rec.job().state());
    EXPECT_TRUE(stored.lease_id().empty());
    const auto events = Events(id);
    ASSERT_FALSE(events.empty());
    int64_t last = 0;
    int state = Job::STATE_UNSPECIFIED;
    for (const auto& e : events) {
      EXPECT_GT(e.sequence(), last) << id;
      last = e.sequence();
      if (e.has_state_change()) {
        EXPECT_EQ(e.state_change().previous(), state) << id << " at " << e.sequence();
        state = e.state_change().current();
      }
    }
    EXPECT_EQ(stored.last_event_sequence(), last) << id;
    EXPECT_EQ(state, stored.job().state()) << id;
    if (stored.job().state() == Job::SUCCEEDED) {
      ++succeeded;
      auto manifest = artifacts_->GetManifest(id);
      ASSERT_TRUE(manifest.ok()) << manifest.status();
      EXPECT_EQ(stored.job().result().artifact_manifest_sha256(), manifest->manifest_sha256());
    }
  }
  scheduler_->Tick();
  EXPECT_EQ(Metric("flashmorph_jobs", {{"state", "pending"}}), 0);
  EXPECT_EQ(Metric("flashmorph_jobs", {{"state", "running"}}), 0);
  EXPECT_EQ(Metric("flashmorph_jobs", {{"state", "cancelling"}}), 0);
  RecordProperty("jobs", static_cast<int>(ids.size()));
  RecordProperty("succeeded", succeeded);
}

}  // namespace
}  // namespace fm::server
