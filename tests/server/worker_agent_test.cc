// WorkerAgent (worker/agent) against a fake WorkerService on a real loopback gRPC server and a fake engine:
// registration (with retries while UNAVAILABLE, again after FAILED_PRECONDITION), leases, heartbeats (increasing
// sequence numbers, stage, progress, gate vectors, log lines, layouts, checkpoints; a retried heartbeat keeps its
// number), CompleteJob with a result / a classified failure / the cancellation, ABORTED (engine stopped, outputs
// discarded, no CompleteJob, polling again), shutdown, uploads in 1 MiB chunks with SHA-256, bearer tokens.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "flashmorph/v1/worker_service.grpc.pb.h"
#include "worker/agent/agent.h"
#include "worker/agent/attempt_dirs.h"
#include "worker/agent/failure.h"
#include "worker/agent/source_checksum.h"
#include "worker/agent/spec_options.h"
#include "worker/engine/formats/sha256.h"
#include "worker/engine/morph/layout.h"

namespace fm::worker {
namespace {

namespace fs = std::filesystem;
namespace pb = ::flashmorph::v1;
using google::protobuf::util::MessageDifferencer;
using std::chrono::milliseconds;

constexpr char kToken[] = "s3cret-token";

// ---------------------------------------------------------------------------------------------------------------------
// Fake scheduler.

class FakeWorkerService final : public pb::WorkerService::Service {
 public:
  struct Upload {
    std::string lease_id, path, data, sha256;
    std::vector<size_t> chunk_sizes;
    bool finished = false;
  };

  // Configuration (set before the agent starts, or under mu).
  int register_unavailable = 0;       // the first N RegisterWorker calls answer UNAVAILABLE
  int lease_failed_precondition = 0;  // the first N LeaseJob calls answer FAILED_PRECONDITION
  int heartbeat_interval_ms = 20;
  int max_lease_wait_ms = 100;
  grpc::Status register_status = grpc::Status::OK;  // after the UNAVAILABLE ones
  grpc::Status complete_status = grpc::Status::OK;
  std::function<grpc::Status(const pb::HeartbeatRequest&, int index, pb::HeartbeatResponse*)> heartbeat_hook;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<pb::Lease> leases;                  // handed out one per LeaseJob
  std::vector<std::string> calls;                // method names in order
  std::multimap<std::string, std::string> auth;  // method -> authorization metadata
  std::vector<pb::RegisterWorkerRequest> registrations;
  int lease_calls = 0;
  std::vector<pb::HeartbeatRequest> heartbeats;
  std::vector<pb::CompleteJobRequest> completions;
  std::vector<Upload> uploads;

  template <typename Pred>
  bool WaitUntil(Pred pred, milliseconds timeout = milliseconds(10000)) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, pred);
  }

  void AddLease(pb::Lease lease) {
    std::lock_guard<std::mutex> lock(mu);
    leases.push_back(std::move(lease));
    cv.notify_all();
  }

  grpc::Status RegisterWorker(grpc::ServerContext* ctx, const pb::RegisterWorkerRequest* req,
                              pb::RegisterWorkerResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu);
    Record(ctx, "RegisterWorker");
    registrations.push_back(*req);
    cv.notify_all();
    if (register_unavailable > 0) {
      --register_unavailable;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "starting up");
    }
    if (!register_status.ok()) return register_status;
    resp->mutable_heartbeat_interval()->set_nanos(heartbeat_interval_ms * 1'000'000);
    resp->mutable_lease_duration()->set_seconds(5);
    resp->mutable_max_lease_wait()->set_seconds(max_lease_wait_ms / 1000);
    resp->mutable_max_lease_wait()->set_nanos((max_lease_wait_ms % 1000) * 1'000'000);
    return grpc::Status::OK;
  }

  grpc::Status LeaseJob(grpc::ServerContext* ctx, const pb::LeaseJobRequest* req, pb::LeaseJobResponse* resp) override {
    std::unique_lock<std::mutex> lock(mu);
    Record(ctx, "LeaseJob");
    ++lease_calls;
    cv.notify_all();
    if (lease_failed_precondition > 0) {
      --lease_failed_precondition;
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "worker not registered");
    }
    const auto end =
        std::chrono::steady_clock::now() + milliseconds(req->wait().seconds() * 1000 + req->wait().nanos() / 1'000'000);
    while (leases.empty() && !ctx->IsCancelled() && std::chrono::steady_clock::now() < end)
      cv.wait_for(lock, milliseconds(5));
    if (!leases.empty()) {
      *resp->mutable_lease() = std::move(leases.front());
      leases.pop_front();
    }
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* ctx, const pb::HeartbeatRequest* req,
                         pb::HeartbeatResponse* resp) override {
    std::function<grpc::Status(const pb::HeartbeatRequest&, int, pb::HeartbeatResponse*)> hook;
    int index;
    {
      std::lock_guard<std::mutex> lock(mu);
      Record(ctx, "Heartbeat");
      index = static_cast<int>(heartbeats.size());
      heartbeats.push_back(*req);
      hook = heartbeat_hook;
    }
    grpc::Status s = hook ? hook(*req, index, resp) : grpc::Status::OK;
    std::lock_guard<std::mutex> lock(mu);
    cv.notify_all();
    return s;
  }

  grpc::Status CompleteJob(grpc::ServerContext* ctx, const pb::CompleteJobRequest* req,
                           pb::CompleteJobResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu);
    Record(ctx, "CompleteJob");
    completions.push_back(*req);
    cv.notify_all();
    if (!complete_status.ok()) return complete_status;
    resp->set_state(req->has_result()            ? pb::ConversionJob::SUCCEEDED
                    : req->has_cancelled()       ? pb::ConversionJob::CANCELLED
                    : req->failure().retryable() ? pb::ConversionJob::PENDING
                                                 : pb::ConversionJob::FAILED);
    cv.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status UploadArtifact(grpc::ServerContext* ctx, grpc::ServerReader<pb::UploadArtifactRequest>* reader,
                              pb::UploadArtifactResponse* resp) override {
    Upload u;
    pb::UploadArtifactRequest chunk;
    bool first = true;
    fm::Sha256 sha;
    while (reader->Read(&chunk)) {
      if (first) {
        u.lease_id = chunk.lease_id();
        u.path = chunk.path();
        first = false;
      } else if ((!chunk.lease_id().empty() && chunk.lease_id() != u.lease_id) ||
                 (!chunk.path().empty() && chunk.path() != u.path)) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "lease or path changed");
      }
      if (chunk.write_offset() != static_cast<int64_t>(u.data.size()))
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad write_offset");
      if (chunk.data().size() > (1u << 20)) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "chunk > 1 MiB");
      u.chunk_sizes.push_back(chunk.data().size());
      u.data += chunk.data();
      sha.Update(chunk.data());
      if (chunk.finish_write()) {
        u.finished = true;
        u.sha256 = chunk.sha256();
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    Record(ctx, "UploadArtifact");
    if (!u.finished || sha.HexDigest() != u.sha256) return grpc::Status(grpc::StatusCode::DATA_LOSS, "sha256");
    resp->set_committed_size_bytes(static_cast<int64_t>(u.data.size()));
    uploads.push_back(std::move(u));
    cv.notify_all();
    return grpc::Status::OK;
  }

 private:
  void Record(grpc::ServerContext* ctx, const std::string& method) {
    calls.push_back(method);
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    auth.emplace(method, it == md.end() ? "" : std::string(it->second.data(), it->second.size()));
  }
};

class Server {
 public:
  explicit Server(FakeWorkerService* service) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(service);
    server_ = b.BuildAndStart();
  }
  ~Server() { server_->Shutdown(std::chrono::system_clock::now() + milliseconds(200)); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// ---------------------------------------------------------------------------------------------------------------------
// Fake engine.

class FakeEngine final : public EngineRunner {
 public:
  using Behaviour =
      std::function<absl::StatusOr<fm::ConversionResult>(const fm::ConversionOptions&, fm::ProgressSink*)>;
  explicit FakeEngine(Behaviour b) : behaviour_(std::move(b)) {}
  absl::StatusOr<fm::ConversionResult> Run(const fm::ConversionOptions& o, fm::ProgressSink* sink) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      seen_.push_back(o);
    }
    absl::StatusOr<fm::ConversionResult> r = behaviour_(o, sink);
    std::lock_guard<std::mutex> lock(mu_);
    returned_.push_back(r.status());
    return r;
  }
  std::vector<fm::ConversionOptions> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  std::vector<absl::Status> returned() {
    std::lock_guard<std::mutex> lock(mu_);
    return returned_;
  }

 private:
  Behaviour behaviour_;
  std::mutex mu_;
  std::vector<fm::ConversionOptions> seen_;
  std::vector<absl::Status> returned_;
};

// Emits progress until the sink asks to cancel, then returns CANCELLED (as the engine does).
absl::StatusOr<fm::ConversionResult> RunUntilCancelled(const fm::ConversionOptions& o, fm::ProgressSink* sink) {
  fs::create_directories(o.work_dir);
  fs::create_directories(o.output_dir + ".partial");
  std::ofstream(o.output_dir + ".partial/model.safetensors") << "partial";
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (int64_t step = 1; std::chrono::steady_clock::now() < give_up; ++step) {
    fm::ProgressEvent e;
    e.stage = fm::Stage::kCalibration;
    e.step = step;
    e.total_steps = 1'000'000;
    sink->OnProgress(e);
    if (sink->CancelRequested()) return absl::CancelledError("conversion cancelled");
    std::this_thread::sleep_for(milliseconds(2));
  }
  return absl::InternalError("never cancelled");
}

void WriteFile(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

// ---------------------------------------------------------------------------------------------------------------------
// Fixture.

class WorkerAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) / ("worker_agent_" + std::to_string(::getpid()) + "_" +
                                              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    server_ = std::make_unique<Server>(&service_);
  }
  void TearDown() override {
    server_.reset();
    fs::remove_all(root_);
  }

  AgentOptions Options() {
    AgentOptions o;
    o.server_address = server_->address();
    o.bearer_token = kToken;
    o.worker_id = "test-worker-1";
    o.hostname = "testhost";
    o.devices.cpu_count = 2;
    o.devices.host_memory_bytes = int64_t{8} << 30;
    o.work_root = (root_ / "local").string();
    o.max_jobs = 1;
    o.lease_wait = milliseconds(50);
    o.rpc_timeout = milliseconds(5000);
    o.min_heartbeat_gap = milliseconds(5);
    o.initial_backoff = milliseconds(10);
    o.max_backoff = milliseconds(40);
    o.engine_version = "fake-engine 1";
    o.log = [](LogLevel, const std::string&) {};
    return o;
  }

  // A lease in the artifact-store layout of issue 4: <root>/jobs/<id>/attempts/<n>/output.
  pb::Lease MakeLease(const std::string& id, int attempt, bool shared = true) {
    pb::Lease l;
    l.set_lease_id("lease-" + id + "-" + std::to_string(attempt));
    l.set_attempt(attempt);
    l.mutable_job()->set_name("jobs/" + id);
    pb::ConversionSpec* s = l.mutable_job()->mutable_spec();
    s->mutable_model()->set_uri((root_ / "models" / "absent").string());
    s->add_budgets()->set_full_attention_ratio(0.5);
    s->add_budgets()->set_full_attention_layers(1);
    s->set_selection_method(pb::ConversionSpec::FLASHMORPH);
    s->set_branch_kind(pb::ConversionSpec::GATED_DELTANET);
    s->set_seed(5);
    s->mutable_evaluation()->set_needle_samples_per_length(4);
    if (shared)
      l.set_output_uri((root_ / "artifacts" / "jobs" / id / "attempts" / std::to_string(attempt) / "output").string());
    return l;
  }

  // Runs the agent on a thread; returns its status (or a DEADLINE_EXCEEDED status if it did not return in time).
  absl::Status RunAgent(AgentOptions o, EngineRunner* engine, std::atomic<bool>* stop,
                        milliseconds timeout = milliseconds(20000)) {
    WorkerAgent agent(std::move(o), engine);
    auto f = std::async(std::launch::async, [&] { return agent.Run(stop); });
    if (f.wait_for(timeout) != std::future_status::ready) {
      stop->store(true);
      f.wait();
      return absl::DeadlineExceededError("agent did not return");
    }
    return f.get();
  }

  fs::path root_;
  FakeWorkerService service_;
  std::unique_ptr<Server> server_;
};

// ---------------------------------------------------------------------------------------------------------------------

TEST_F(WorkerAgentTest, SuccessfulJobReportsEverythingThenCompletes) {
  const std::vector<double> gates = {0.9, 0.2, 0.6, 0.1};
  fm::ConversionResult canned;
  FakeEngine engine(
      [&](const fm::ConversionOptions& o, fm::ProgressSink* sink) -> absl::StatusOr<fm::ConversionResult> {
        auto saw = [&](std::function<bool(const pb::HeartbeatRequest&)> pred) {
          return service_.WaitUntil([&] {
            for (const auto& h : service_.heartbeats)
              if (pred(h)) return true;
            return false;
          });
        };
        fm::ProgressEvent load;
        load.stage = fm::Stage::kLoad;
        load.phase = "message";
        load.message = "loaded the model";
        sink->OnProgress(load);
        fm::ProgressEvent cal;
        cal.stage = fm::Stage::kCalibration;
        cal.phase = "calibration";
        cal.step = 3;
        cal.total_steps = 10;
        cal.tokens_per_second = 1000;
        cal.elapsed_seconds = 3;
        cal.metrics = {{"mse", 0.5}, {"lr", 1e-3}};
        sink->OnProgress(cal);
        EXPECT_TRUE(saw([](const pb::HeartbeatRequest& h) { return h.progress().step() == 3; }));
        fm::ProgressEvent g;
        g.stage = fm::Stage::kSelection;
        g.phase = "gates";
        g.step = 1;
        g.total_steps = 2;
        g.metrics = {{"loss", 1.5}, {"distance", 1.0}, {"penalty", 0.5}, {"lr", 0.05}};
        g.gates = gates;
        sink->OnProgress(g);
        EXPECT_TRUE(saw([](const pb::HeartbeatRequest& h) { return h.stage() == pb::ConversionJob::GATES; }));
        for (fm::Stage s :
             {fm::Stage::kDiscretization, fm::Stage::kPostTraining, fm::Stage::kEvaluation, fm::Stage::kExport}) {
          fm::ProgressEvent e;
          e.stage = s;
          e.phase = "message";
          e.message = "entered " + std::string(fm::StageName(s));
          sink->OnProgress(e);
        }
        WriteFile(fs::path(o.output_dir) / "config.json", "{}");
        fs::create_directories(o.work_dir);
        return canned;
      });
  for (const fm::Budget& b : {fm::Budget{fm::Budget::Unit::kRatio, 0.5}, fm::Budget{fm::Budget::Unit::kLayers, 1}}) {
    absl::StatusOr<fm::Layout> l = fm::SelectTopK(gates, b, 4, 2, false, "flashmorph");
    ASSERT_TRUE(l.ok());
    canned.layouts.push_back(*l);
  }
  canned.evaluation = fm::EvaluationResult{};
  canned.evaluation->needles = {{256, 1.0, 0.5, 1.0, 0.75}};
  canned.timings = {{"load", 0.5, 0}, {"calibration", 2.0, 4096}, {"selection", 1.0, 2048}};
  canned.report_json = R"({"engine": "flashmorph-engine 0.1.0", "source": {"sha256": "feed"}, "seed": 5})";

  const pb::Lease lease = MakeLease("job1", 2);
  service_.AddLease(lease);
  std::atomic<bool> stop{false};
  ASSERT_TRUE(RunAgent(Options(), &engine, &stop).ok());

  // Registration.
  ASSERT_EQ(service_.registrations.size(), 1u);
  const pb::RegisterWorkerRequest& reg = service_.registrations[0];
  EXPECT_EQ(reg.worker_id(), "test-worker-1");
  EXPECT_EQ(reg.hostname(), "testhost");
  EXPECT_EQ(reg.cpu_count(), 2);
  EXPECT_EQ(reg.host_memory_bytes(), int64_t{8} << 30);
  EXPECT_EQ(reg.engine_version(), "fake-engine 1");
  EXPECT_TRUE(reg.capabilities().shared_filesystem());
  EXPECT_EQ(reg.capabilities().branch_kinds_size(), 3);
  EXPECT_EQ(reg.capabilities().selection_methods_size(), 4);

  // The engine ran with the lease's folders: the attempt folder and the job's shared work dir.
  ASSERT_EQ(engine.seen().size(), 1u);
  const fm::ConversionOptions o = engine.seen()[0];
  EXPECT_EQ(o.output_dir, lease.output_uri());
  EXPECT_EQ(o.work_dir, (root_ / "artifacts" / "jobs" / "job1" / "work").string());
  EXPECT_EQ(o.seed, 5u);

  // Heartbeats: 1, 2, 3, ... for this lease; stages never go back; what the engine reported arrives.
  std::lock_guard<std::mutex> lock(service_.mu);
  ASSERT_GE(service_.heartbeats.size(), 3u);
  std::vector<pb::JobEvent> events;
  bool saw_calibration_progress = false, saw_gate_progress = false, saw_checkpoint = false;
  for (size_t i = 0; i < service_.heartbeats.size(); ++i) {
    const pb::HeartbeatRequest& h = service_.heartbeats[i];
    EXPECT_EQ(h.lease_id(), lease.lease_id());
    EXPECT_EQ(h.heartbeat_sequence(), static_cast<int64_t>(i + 1));
    if (i > 0) {
      EXPECT_GE(h.stage(), service_.heartbeats[i - 1].stage());
    }
    for (const auto& e : h.events()) events.push_back(e);
    if (h.stage() == pb::ConversionJob::CALIBRATE && h.progress().step() == 3) {
      saw_calibration_progress = true;
      EXPECT_EQ(h.progress().total_steps(), 10);
      EXPECT_EQ(h.progress().tokens_per_second(), 1000);
      EXPECT_EQ(h.progress().loss(), 0.5);  // the only loss term
      EXPECT_EQ(h.progress().loss_terms().count("mse"), 1u);
      EXPECT_EQ(h.progress().loss_terms().count("lr"), 0u);
      EXPECT_EQ(h.progress().estimated_remaining().seconds(), 7);  // 3 s for 3 of 10 steps
    }
    if (h.stage() == pb::ConversionJob::GATES && h.progress().step() == 1) {
      saw_gate_progress = true;
      EXPECT_EQ(h.progress().loss(), 1.5);
      EXPECT_EQ(h.progress().loss_terms().at("distance"), 1.0);
      EXPECT_EQ(h.progress().loss_terms().at("penalty"), 0.5);
    }
    if (h.has_checkpoint_written()) {
      saw_checkpoint = true;
      EXPECT_EQ(h.checkpoint_written().uri(), o.work_dir);
      EXPECT_EQ(h.checkpoint_written().worker_id(), "test-worker-1");
      EXPECT_EQ(h.checkpoint_written().attempt(), 2);
      EXPECT_LT(h.checkpoint_written().stage(), h.stage());
    }
  }
  EXPECT_EQ(service_.heartbeats.back().stage(), pb::ConversionJob::EXPORT);
  EXPECT_TRUE(saw_calibration_progress);
  EXPECT_TRUE(saw_gate_progress);
  EXPECT_TRUE(saw_checkpoint);

  std::vector<pb::GateVector> gate_events;
  std::vector<pb::Layout> layouts;
  std::vector<pb::LogLine> logs;
  for (const pb::JobEvent& e : events) {
    EXPECT_EQ(e.attempt(), 2);
    EXPECT_TRUE(e.job().empty());
    EXPECT_EQ(e.sequence(), 0);
    EXPECT_TRUE(e.has_time());
    if (e.has_gates()) gate_events.push_back(e.gates());
    if (e.has_layout_selected()) layouts.push_back(e.layout_selected());
    if (e.has_log()) logs.push_back(e.log());
    EXPECT_TRUE(e.has_gates() || e.has_layout_selected() || e.has_log());
  }
  ASSERT_EQ(gate_events.size(), 1u);
  EXPECT_EQ(gate_events[0].step(), 1);
  EXPECT_EQ(std::vector<double>(gate_events[0].layer_gates().begin(), gate_events[0].layer_gates().end()), gates);
  ASSERT_FALSE(logs.empty());
  EXPECT_EQ(logs[0].message(), "loaded the model");
  EXPECT_EQ(logs[0].source(), "engine/load");
  EXPECT_EQ(logs[0].severity(), pb::LogLine::SEVERITY_INFO);

  // CompleteJob with the result, after the heartbeat that carried the layouts.
  ASSERT_EQ(service_.completions.size(), 1u);
  const pb::CompleteJobRequest& c = service_.completions[0];
  EXPECT_EQ(c.lease_id(), lease.lease_id());
  ASSERT_TRUE(c.has_result());
  const pb::ConversionResult want = ResultToProto(canned, lease.job().spec(), {2, 4});
  EXPECT_TRUE(MessageDifferencer::Equals(c.result(), want)) << c.result().DebugString();
  ASSERT_EQ(layouts.size(), 2u);
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(MessageDifferencer::Equals(layouts[i], want.layouts(i)));
  // The layouts went out before CompleteJob, and no heartbeat came after it.
  EXPECT_EQ(service_.calls.back(), "CompleteJob");
  size_t heartbeats_before_complete = 0, layout_heartbeat = service_.heartbeats.size();
  for (const std::string& c : service_.calls) {
    if (c == "CompleteJob") break;
    if (c == "Heartbeat") ++heartbeats_before_complete;
  }
  for (size_t i = 0; i < service_.heartbeats.size() && layout_heartbeat == service_.heartbeats.size(); ++i)
    for (const auto& e : service_.heartbeats[i].events())
      if (e.has_layout_selected()) layout_heartbeat = i;
  EXPECT_LT(layout_heartbeat, heartbeats_before_complete);
  // Shared filesystem: the outputs stay in the attempt folder for the server to promote.
  EXPECT_TRUE(fs::exists(fs::path(lease.output_uri()) / "config.json"));
}

TEST_F(WorkerAgentTest, CancelRequestedStopsTheEngineAndCompletesCancelled) {
  service_.heartbeat_hook = [](const pb::HeartbeatRequest&, int index, pb::HeartbeatResponse* r) {
    if (index >= 2) r->set_cancel_requested(true);
    return grpc::Status::OK;
  };
  FakeEngine engine(RunUntilCancelled);
  const pb::Lease lease = MakeLease("job2", 1);
  service_.AddLease(lease);
  std::atomic<bool> stop{false};
  ASSERT_TRUE(RunAgent(Options(), &engine, &stop).ok());
  ASSERT_EQ(engine.returned().size(), 1u);
  EXPECT_TRUE(absl::IsCancelled(engine.returned()[0]));
  std::lock_guard<std::mutex> lock(service_.mu);
  ASSERT_EQ(service_.completions.size(), 1u);
  EXPECT_TRUE(service_.completions[0].has_cancelled());
  EXPECT_EQ(service_.completions[0].lease_id(), lease.lease_id());
  // The cancelled attempt's partial export is gone; the job's checkpoints are not.
  EXPECT_FALSE(fs::exists(lease.output_uri() + ".partial"));
  EXPECT_TRUE(fs::exists(root_ / "artifacts" / "jobs" / "job2" / "work"));
}

TEST_F(WorkerAgentTest, AbortedHeartbeatStopsTheEngineDiscardsOutputsAndPollsAgain) {
  service_.heartbeat_hook = [](const pb::HeartbeatRequest&, int index, pb::HeartbeatResponse*) {
    return index >= 2 ? grpc::Status(grpc::StatusCode::ABORTED, "stale lease") : grpc::Status::OK;
  };
  FakeEngine engine([](const fm::ConversionOptions& o, fm::ProgressSink* sink) {
    fs::create_directories(o.output_dir);
    std::ofstream(o.output_dir + "/config.json") << "{}";
    return RunUntilCancelled(o, sink);
  });
  const pb::Lease lease = MakeLease("job3", 1);
  service_.AddLease(lease);
  AgentOptions opts = Options();
  opts.max_jobs = 0;  // keep polling
  std::atomic<bool> stop{false};
  WorkerAgent agent(opts, &engine);
  auto f = std::async(std::launch::async, [&] { return agent.Run(&stop); });
  ASSERT_TRUE(service_.WaitUntil([&] { return engine.returned().size() == 1 && service_.lease_calls >= 2; }));
  stop.store(true);
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(f.get().ok());
  EXPECT_TRUE(absl::IsCancelled(engine.returned()[0]));
  std::lock_guard<std::mutex> lock(service_.mu);
  EXPECT_TRUE(service_.completions.empty());
  EXPECT_EQ(service_.registrations.size(), 1u);  // ABORTED does not need a new registration
  EXPECT_FALSE(fs::exists(lease.output_uri()));
  EXPECT_FALSE(fs::exists(lease.output_uri() + ".partial"));
  EXPECT_TRUE(fs::exists(root_ / "artifacts" / "jobs" / "job3" / "work"));  // checkpoints for the next attempt
  // No heartbeat after the ABORTED one.
  EXPECT_EQ(service_.heartbeats.size(), 3u);
}

TEST_F(WorkerAgentTest, AbortedCompleteJobDiscardsTheOutputs) {
  service_.complete_status = grpc::Status(grpc::StatusCode::ABORTED, "lease expired");
  FakeEngine engine([](const fm::ConversionOptions& o, fm::ProgressSink*) -> absl::StatusOr<fm::ConversionResult> {
    WriteFile(fs::path(o.output_dir) / "config.json", "{}");
    return fm::ConversionResult{};
  });
  const pb::Lease lease = MakeLease("job12", 1);
  service_.AddLease(lease);
  std::atomic<bool> stop{false};
  ASSERT_TRUE(RunAgent(Options(), &engine, &stop).ok());
  std::lock_guard<std::mutex> lock(service_.mu);
  EXPECT_EQ(service_.completions.size(), 1u);  // not retried
  EXPECT_FALSE(fs::exists(lease.output_uri()));
}

TEST_F(WorkerAgentTest, RetriedHeartbeatKeepsItsSequenceAndEvents) {
  std::atomic<bool> failed_once{false};
  service_.heartbeat_hook = [&](const pb::HeartbeatRequest& h, int, pb::HeartbeatResponse*) {
    if (h.events_size() > 0 && !failed_once.exchange(true)) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "blip");
    return grpc::Status::OK;
  };
  FakeEngine engine([&](const fm::ConversionOptions&, fm::ProgressSink* sink) -> absl::StatusOr<fm::ConversionResult> {
    fm::ProgressEvent e;
    e.stage = fm::Stage::kLoad;
    e.message = "hello";
    sink->OnProgress(e);
    service_.WaitUntil([&] {
      int accepted = 0;
      for (const auto& h : service_.heartbeats)
        if (h.events_size() > 0) ++accepted;
      return accepted >= 2;
    });
    return absl::InvalidArgumentError("spec.budgets: does not fit");
  });
  service_.AddLease(MakeLease("job4", 1));
  std::atomic<bool> stop{false};
  ASSERT_TRUE(RunAgent(Options(), &engine, &stop).ok());
  std::lock_guard<std::mutex> lock(service_.mu);
  std::vector<const pb::HeartbeatRequest*> with_hello;
  for (const auto& h : service_.heartbeats)
    for (const auto& e : h.events())
      if (e.has_log() && e.log().message() == "hello") with_hello.push_back(&h);
  ASSERT_EQ(with_hello.size(), 2u);  // sent, refused with UNAVAILABLE, sent again
  EXPECT_EQ(with_hello[0]->heartbeat_sequence(), with_hello[1]->heartbeat_sequence());
  EXPECT_TRUE(MessageDifferencer::Equals(*with_hello[0], *with_hello[1]));
  for (size_t i = 1; i < service_.heartbeats.size(); ++i)
    EXPECT_GE(service_.heartbeats[i].heartbeat_sequence(), service_.heartbeats[i - 1].heartbeat_sequence());
}

TEST_F(WorkerAgentTest, FailuresAreClassifiedUserErrorOrRetryable) {
  const std::vector<std::pair<absl::StatusCode, bool>> cases = {
      {absl::StatusCode::kInvalidArgument, false},  {absl::StatusCode::kNotFound, false},
      {absl::StatusCode::kPermissionDenied, false}, {absl::StatusCode::kFailedPrecondition, false},
      {absl::StatusCode::kOutOfRange, false},       {absl::StatusCode::kUnimplemented, false},
      {absl::StatusCode::kAlreadyExists, false},    {absl::StatusCode::kResourceExhausted, true},
      {absl::StatusCode::kUnavailable, true},       {absl::StatusCode::kInternal, true},
      {absl::StatusCode::kUnknown, true},           {absl::StatusCode::kDataLoss, false},
      {absl::StatusCode::kAborted, true},           {absl::StatusCode::kDeadlineExceeded, true}};
  for (const auto& [code, retryable] : cases) {
    EXPECT_EQ(IsRetryable(code), retryable) << absl::StatusCodeToString(code);
    const auto f = FailureFromStatus(absl::Status(code, "boom"));
    EXPECT_EQ(f.error().code(), static_cast<int>(code));
    EXPECT_EQ(f.error().message(), "boom");
    EXPECT_EQ(f.retryable(), retryable);
  }
  // Through the agent: a user error and an infrastructure error.
  for (const auto& [code, retryable] :
       {std::pair{absl::StatusCode::kNotFound, false}, std::pair{absl::StatusCode::kResourceExhausted, true}}) {
    FakeEngine engine(
        [code = code](const fm::ConversionOptions&, fm::ProgressSink*) -> absl::StatusOr<fm::ConversionResult> {
          return absl::Status(code, "engine says no");
        });
    const pb::Lease lease = MakeLease(retryable ? "jobretry" : "jobuser", 1);
    service_.AddLease(lease);
    std::atomic<bool> stop{false};
    ASSERT_TRUE(RunAgent(Options(), &engine, &stop).ok());
    std::lock_guard<std::mutex> lock(service_.mu);
    const pb::CompleteJobRequest& c = service_.completions.back();
    EXPECT_EQ(c.lease_id(), lease.lease_id());
    ASSERT_TRUE(c.has_failure());
    EXPECT_EQ(c.failure().error().code(), static_cast<int>(code));
    EXPECT_EQ(c.failure().error().message(), "engine says no");
    EXPECT_EQ(c.failure().retryable(), retryable);
  }
}

TEST_F(WorkerAgentTest, UnmappableSpecFailsWithoutRunningTheEngine) {
  FakeEngine engine(RunUntilCancelled);
  pb::Lease lease = MakeLease("job5", 1);
  lease.mutable_job()->mutable_spec()->mutable_data()->mutable_token_file()->set_path("/tokens.bin");
  service_.AddLease(lease);
  std::atomic<bool> stop{false};
  ASSERT_TRUE(RunAgent(Options(), &engine, &stop).ok());
  EXPECT_TRUE(engine.seen().empty());
  std::lock_guard<std::mutex> lock(service_.mu);
  ASSERT_EQ(service_.completions.size(), 1u);
  const pb::CompleteJobRequest& c = service_.completions[0];
  ASSERT_TRUE(c.has_failure());
  EXPECT_EQ(c.failure().error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(c.failure().error().message().find("spec.data.token_file.dtype"), std::string::npos);
  EXPECT_FALSE(c.failure().retryable());
}

TEST_F(WorkerAgentTest, SourceChecksumIsCheckedBeforeTheEngineRuns) {
  const fs::path model = root_ / "models" / "m";
  const std::string a = "first shard bytes", b = "second shard";
  WriteFile(model / "model-00002-of-00002.safetensors", b);
  WriteFile(model / "model-00001-of-00002.safetensors", a);
  WriteFile(model / "tokenizer.json", "{}");  // not part of the checksum
  const std::string want = fm::Sha256Hex((a + b).data(), a.size() + b.size());
  absl::StatusOr<std::string> got = SourceChecksum(model.string(), nullptr);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
  EXPECT_TRUE(VerifySourceChecksum(model.string(), "", nullptr).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(VerifySourceChecksum(model.string(), std::string(64, '0'), nullptr)));
  EXPECT_TRUE(absl::IsNotFound(SourceChecksum((root_ / "nope").string(), nullptr).status()));

  FakeEngine engine([](const fm::ConversionOptions&, fm::ProgressSink*) -> absl::StatusOr<fm::ConversionResult> {
    return absl::InternalError("should not run");
  });
  pb::Lease lease = MakeLease("job6", 1);
  lease.mutable_job()->mutable_spec()->mutable_model()->set_uri("file://" + model.string());
  lease.mutable_job()->mutable_spec()->mutable_model()->set_source_sha256(std::string(64, 'a'));
  service_.AddLease(lease);
  std::atomic<bool> stop{false};
  ASSERT_TRUE(RunAgent(Options(), &engine, &stop).ok());
  EXPECT_TRUE(engine.seen().empty());
  std::lock_guard<std::mutex> lock(service_.mu);
  ASSERT_EQ(service_.completions.size(), 1u);
  ASSERT_TRUE(service_.completions[0].has_failure());
  EXPECT_EQ(service_.completions[0].failure().error().code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_FALSE(service_.completions[0].failure().retryable());
}

TEST_F(WorkerAgentTest, UploadModeSendsEveryFileInChunksWithSha256) {
  std::mt19937 rng(7);
  std::string big(2 * (1 << 20) + 12345, '\0');
  for (char& c : big) c = static_cast<char>(rng());
  const std::map<std::string, std::string> files = {
      {"model.safetensors", big}, {"config.json", "{\"a\": 1}"}, {"empty.txt", ""}, {"sub/dir/notes.md", "# hi\n"}};
  std::string output_dir;
  FakeEngine engine([&](const fm::ConversionOptions& o, fm::ProgressSink*) -> absl::StatusOr<fm::ConversionResult> {
    output_dir = o.output_dir;
    for (const auto& [path, bytes] : files) WriteFile(fs::path(o.output_dir) / path, bytes);
    fs::create_directories(o.work_dir);
    fm::ConversionResult r;
    absl::StatusOr<fm::Layout> l = fm::UniformLayout(fm::Budget{fm::Budget::Unit::kRatio, 0.5}, 4, 2);
    r.layouts.push_back(*l);
    return r;
  });
  pb::Lease lease = MakeLease("job7", 1, /*shared=*/false);
  lease.mutable_job()->mutable_spec()->mutable_budgets()->DeleteSubrange(1, 1);
  service_.AddLease(lease);
  AgentOptions opts = Options();
  opts.shared_filesystem = false;
  std::atomic<bool> stop{false};
  ASSERT_TRUE(RunAgent(opts, &engine, &stop).ok());

  ASSERT_EQ(engine.seen().size(), 1u);
  EXPECT_EQ(engine.seen()[0].output_dir, (root_ / "local" / "job7" / "attempt-1" / "output").string());
  EXPECT_EQ(engine.seen()[0].work_dir, (root_ / "local" / "job7" / "work").string());
  std::lock_guard<std::mutex> lock(service_.mu);
  EXPECT_FALSE(service_.registrations[0].capabilities().shared_filesystem());
  ASSERT_EQ(service_.uploads.size(), files.size());
  for (const auto& u : service_.uploads) {
    ASSERT_EQ(files.count(u.path), 1u) << u.path;
    EXPECT_EQ(u.lease_id, lease.lease_id());
    EXPECT_EQ(u.data, files.at(u.path));
    EXPECT_EQ(u.sha256, fm::Sha256Hex(u.data.data(), u.data.size()));
    for (size_t i = 0; i < u.chunk_sizes.size(); ++i) {
      if (i + 1 < u.chunk_sizes.size()) {
        EXPECT_EQ(u.chunk_sizes[i], 1u << 20);
      } else {
        EXPECT_LE(u.chunk_sizes[i], 1u << 20);
      }
    }
    if (u.path == "model.safetensors") {
      EXPECT_EQ(u.chunk_sizes.size(), 3u);
    }
  }
  // Uploads, then CompleteJob; the local copies are gone, and so are the checkpoints of the finished job.
  ASSERT_EQ(service_.completions.size(), 1u);
  EXPECT_TRUE(service_.completions[0].has_result());
  EXPECT_EQ(service_.calls.back(), "CompleteJob");
  EXPECT_FALSE(fs::exists(output_dir));
  EXPECT_FALSE(fs::exists(root_ / "local" / "job7"));
}

TEST_F(WorkerAgentTest, EveryCallCarriesTheBearerToken) {
  FakeEngine engine([](const fm::ConversionOptions& o, fm::ProgressSink*) -> absl::StatusOr<fm::ConversionResult> {
    WriteFile(fs::path(o.output_dir) / "config.json", "{}");
    return fm::ConversionResult{};
  });
  service_.AddLease(MakeLease("job8", 1, /*shared=*/false));
  AgentOptions opts = Options();
  opts.shared_filesystem = false;
  std::atomic<bool> stop{false};
  ASSERT_TRUE(RunAgent(opts, &engine, &stop).ok());
  std::lock_guard<std::mutex> lock(service_.mu);
  std::set<std::string> methods;
  for (const auto& [method, value] : service_.auth) {
    methods.insert(method);
    EXPECT_EQ(value, std::string("Bearer ") + kToken) << method;
  }
  EXPECT_EQ(methods,
            (std::set<std::string>{"RegisterWorker", "LeaseJob", "Heartbeat", "UploadArtifact", "CompleteJob"}));
}

TEST_F(WorkerAgentTest, RegistersAgainAfterFailedPreconditionAndRetriesWhileUnavailable) {
  service_.register_unavailable = 2;
  service_.lease_failed_precondition = 1;
  FakeEngine engine([](const fm::ConversionOptions& o, fm::ProgressSink*) -> absl::StatusOr<fm::ConversionResult> {
    return fm::ConversionResult{};
  });
  service_.AddLease(MakeLease("job9", 1));
  std::atomic<bool> stop{false};
  ASSERT_TRUE(RunAgent(Options(), &engine, &stop).ok());
  std::lock_guard<std::mutex> lock(service_.mu);
  // UNAVAILABLE, UNAVAILABLE, OK; then LeaseJob FAILED_PRECONDITION -> RegisterWorker again.
  EXPECT_EQ(service_.registrations.size(), 4u);
  std::vector<std::string> head(service_.calls.begin(), service_.calls.begin() + 6);
  EXPECT_EQ(head, (std::vector<std::string>{"RegisterWorker", "RegisterWorker", "RegisterWorker", "LeaseJob",
                                            "RegisterWorker", "LeaseJob"}));
  ASSERT_EQ(service_.completions.size(), 1u);
  EXPECT_TRUE(service_.completions[0].has_result());
}

TEST_F(WorkerAgentTest, RefusedRegistrationOrBadIdEndsRun) {
  FakeEngine engine(RunUntilCancelled);
  AgentOptions opts = Options();
  std::atomic<bool> stop{false};
  service_.register_status = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "who are you");
  EXPECT_EQ(RunAgent(opts, &engine, &stop).code(), absl::StatusCode::kUnauthenticated);
  opts.worker_id = "Bad_Id";
  EXPECT_TRUE(absl::IsInvalidArgument(RunAgent(opts, &engine, &stop)));
  EXPECT_TRUE(IsValidWorkerId("gpu-node-7"));
  EXPECT_FALSE(IsValidWorkerId(""));
  EXPECT_FALSE(IsValidWorkerId(std::string(64, 'a')));
  EXPECT_TRUE(IsValidWorkerId(std::string(63, 'a')));
}

TEST_F(WorkerAgentTest, StopCancelsTheRunningJobAndReportsARetryableFailure) {
  std::atomic<bool> stop{false};
  FakeEngine engine([&](const fm::ConversionOptions& o, fm::ProgressSink* sink) {
    stop.store(true);  // as SIGTERM would, mid-run
    return RunUntilCancelled(o, sink);
  });
  const pb::Lease lease = MakeLease("job10", 1);
  service_.AddLease(lease);
  AgentOptions opts = Options();
  opts.max_jobs = 0;
  ASSERT_TRUE(RunAgent(opts, &engine, &stop).ok());
  ASSERT_EQ(engine.returned().size(), 1u);
  EXPECT_TRUE(absl::IsCancelled(engine.returned()[0]));
  std::lock_guard<std::mutex> lock(service_.mu);
  ASSERT_EQ(service_.completions.size(), 1u);
  ASSERT_TRUE(service_.completions[0].has_failure());
  EXPECT_EQ(service_.completions[0].failure().error().code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(service_.completions[0].failure().retryable());
}

TEST_F(WorkerAgentTest, StopInterruptsTheLongPoll) {
  FakeEngine engine(RunUntilCancelled);
  AgentOptions opts = Options();
  opts.max_jobs = 0;
  opts.lease_wait = milliseconds(60000);
  service_.max_lease_wait_ms = 60000;
  std::atomic<bool> stop{false};
  WorkerAgent agent(opts, &engine);
  auto f = std::async(std::launch::async, [&] { return agent.Run(&stop); });
  ASSERT_TRUE(service_.WaitUntil([&] { return service_.lease_calls >= 1; }));
  stop.store(true);
  // A 60 s long poll, cancelled at once.
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_TRUE(f.get().ok());
}

TEST_F(WorkerAgentTest, HeadGatesCarryHeadsPerLayerAndTheSourceDtypeIsExported) {
  const fs::path model = root_ / "models" / "tiny";
  WriteFile(model / "config.json",
            R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "torch_dtype": "float32"})");
  const std::vector<double> head_gates = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8};
  FakeEngine engine([&](const fm::ConversionOptions&, fm::ProgressSink* sink) -> absl::StatusOr<fm::ConversionResult> {
    fm::ProgressEvent e;
    e.stage = fm::Stage::kSelection;
    e.phase = "gates";
    e.step = 4;
    e.total_steps = 5;
    e.gates = head_gates;
    sink->OnProgress(e);
    return fm::ConversionResult{};
  });
  pb::Lease lease = MakeLease("job11", 1);
  pb::ConversionSpec* spec = lease.mutable_job()->mutable_spec();
  spec->mutable_model()->set_uri(model.string());
  spec->set_selection_method(pb::ConversionSpec::HEAD);
  spec->clear_budgets();
  spec->add_budgets()->set_full_attention_heads(3);
  service_.AddLease(lease);
  std::atomic<bool> stop{false};
  ASSERT_TRUE(RunAgent(Options(), &engine, &stop).ok());
  ASSERT_EQ(engine.seen().size(), 1u);
  EXPECT_EQ(engine.seen()[0].export_dtype, "float32");  // DTYPE_UNSPECIFIED: the source's dtype
  std::lock_guard<std::mutex> lock(service_.mu);
  std::vector<pb::GateVector> gates;
  for (const auto& h : service_.heartbeats)
    for (const auto& e : h.events())
      if (e.has_gates()) gates.push_back(e.gates());
  ASSERT_EQ(gates.size(), 1u);
  EXPECT_EQ(gates[0].heads_per_layer(), 4);
  EXPECT_EQ(gates[0].layer_gates_size(), 0);
  EXPECT_EQ(std::vector<double>(gates[0].head_gates().begin(), gates[0].head_gates().end()), head_gates);
}

TEST(AttemptDirs, SharedDerivedResumedAndLocal) {
  const fs::path root = fs::path(::testing::TempDir()) / ("attempt_dirs_" + std::to_string(::getpid()));
  fs::remove_all(root);
  pb::Lease lease;
  lease.set_attempt(3);
  lease.mutable_job()->set_name("jobs/abc123");
  lease.set_output_uri("file://" + (root / "artifacts/jobs/abc123/attempts/3/output").string());
  absl::StatusOr<AttemptDirs> d = ChooseAttemptDirs(lease, true, (root / "local").string());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->upload);
  EXPECT_EQ(d->job_id, "abc123");
  EXPECT_EQ(d->output_dir, (root / "artifacts/jobs/abc123/attempts/3/output").string());
  EXPECT_EQ(d->work_dir, (root / "artifacts/jobs/abc123/work").string());

  // resume_from names an existing directory: used as the work dir.
  fs::create_directories(root / "elsewhere/work");
  lease.mutable_resume_from()->set_uri((root / "elsewhere/work").string());
  d = ChooseAttemptDirs(lease, true, (root / "local").string());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->work_dir, (root / "elsewhere/work").string());
  // ... not when it is not readable here.
  lease.mutable_resume_from()->set_uri((root / "missing").string());
  d = ChooseAttemptDirs(lease, true, (root / "local").string());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->work_dir, (root / "artifacts/jobs/abc123/work").string());

  // An output_uri of another layout: local work dir.
  lease.set_output_uri((root / "somewhere/out").string());
  d = ChooseAttemptDirs(lease, true, (root / "local").string());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->work_dir, (root / "local/abc123/work").string());

  // No shared filesystem (or no output_uri): everything local, uploaded.
  for (bool shared : {false, true}) {
    if (shared) lease.clear_output_uri();
    d = ChooseAttemptDirs(lease, shared, (root / "local").string());
    ASSERT_TRUE(d.ok());
    EXPECT_TRUE(d->upload);
    EXPECT_EQ(d->output_dir, (root / "local/abc123/attempt-3/output").string());
    EXPECT_EQ(d->work_dir, (root / "local/abc123/work").string());
  }

  for (const char* bad : {"abc", "jobs/", "jobs/../x", "jobs/a/b", "jobs/A B"}) {
    lease.mutable_job()->set_name(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(ChooseAttemptDirs(lease, false, "/tmp").status())) << bad;
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace fm::worker
