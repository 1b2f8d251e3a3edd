// End-to-end tests of the service through its real processes: flashmorphd and flashmorph-worker on loopback,
// converting the bundled demo model with CPU-sized budgets. Each test owns its data directory and processes.
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "flashmorph/v1/conversion_service.grpc.pb.h"
#include "google/longrunning/operations.grpc.pb.h"
#include "tests/integration/service_processes.h"
#include "worker/engine/formats/sha256.h"

namespace fm::testing {
namespace {

namespace v1 = ::flashmorph::v1;
using Job = v1::ConversionJob;

struct Cluster {
  std::string root = MakeTempDir("fm-it");
  std::string data = root + "/data";
  std::unique_ptr<ServerProcess> server;
  std::unique_ptr<v1::ConversionService::Stub> stub;

  void StartServer(int port = 0, std::vector<std::string> extra = {}) {
    // Short leases so a lost worker is noticed in seconds.
    std::vector<std::string> args = {"--lease-seconds", "4", "--heartbeat-seconds", "1",
                                     "--retry-backoff-seconds", "0.5"};
    args.insert(args.end(), extra.begin(), extra.end());
    server = ServerProcess::Start({data, port, args}, root + "/server.log");
    stub = v1::ConversionService::NewStub(server->Channel());
  }
  std::unique_ptr<ChildProcess> Worker(const std::string& id, std::vector<std::string> extra = {}) {
    return StartWorker(server->address(), id, root + "/work-" + id, root + "/" + id + ".log", std::move(extra));
  }
  std::string Create(const v1::ConversionSpec& spec, grpc::Status* status = nullptr) {
    grpc::ClientContext ctx;
    v1::CreateConversionJobRequest req;
    *req.mutable_spec() = spec;
    google::longrunning::Operation op;
    grpc::Status s = stub->CreateConversionJob(&ctx, req, &op);
    if (status != nullptr) *status = s;
    if (!s.ok()) return "";
    return "jobs/" + op.name().substr(std::string("operations/").size());
  }
  Job Get(const std::string& name) {
    grpc::ClientContext ctx;
    v1::GetConversionJobRequest req;
    req.set_name(name);
    Job job;
    EXPECT_TRUE(stub->GetConversionJob(&ctx, req, &job).ok());
    return job;
  }
  bool Healthy() {
    grpc::ClientContext ctx;
    v1::ListConversionJobsRequest req;
    v1::ListConversionJobsResponse resp;
    return stub->ListConversionJobs(&ctx, req, &resp).ok();
  }
  std::string Logs() {
    std::string out;
    for (auto& entry : std::filesystem::directory_iterator(root)) {
      if (entry.path().extension() == ".log") out += "== " + entry.path().string() + "\n" + ReadFile(entry.path());
    }
    return out.size() > 20000 ? out.substr(out.size() - 20000) : out;
  }
  ~Cluster() {
    server.reset();
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
  }
};

bool Terminal(const Job& j) {
  return j.state() == Job::SUCCEEDED || j.state() == Job::FAILED || j.state() == Job::CANCELLED;
}

std::vector<int> FaLayers(const v1::Layout& layout) {
  return {layout.full_attention_layer_indices().begin(), layout.full_attention_layer_indices().end()};
}

void ExpectStrictlyIncreasing(const std::vector<v1::JobEvent>& events) {
  for (size_t i = 1; i < events.size(); ++i) EXPECT_LT(events[i - 1].sequence(), events[i].sequence());
}

TEST(ServiceE2E, ConvertsTheDemoModelAndStreamsEverything) {
  Cluster c;
  c.StartServer();
  auto worker = c.Worker("w-a");
  const std::string name = c.Create(SmallDemoSpec(7));
  ASSERT_FALSE(name.empty());
  grpc::Status watch_status;
  auto events = ReadEvents(*c.stub, name, 0, &watch_status);
  ASSERT_TRUE(watch_status.ok()) << watch_status.error_message();
  Job job = c.Get(name);
  ASSERT_EQ(job.state(), Job::SUCCEEDED) << job.error().message() << "\n" << c.Logs();
  ExpectStrictlyIncreasing(events);

  // Every kind of event arrived, the result just before the terminal state change.
  int stage_changes = 0, progress = 0, gates = 0, layouts = 0, results = 0;
  for (const auto& e : events) {
    stage_changes += e.has_stage_change();
    progress += e.has_progress();
    gates += e.has_gates();
    layouts += e.has_layout_selected();
    results += e.has_result();
  }
  EXPECT_GE(stage_changes, 5);
  EXPECT_GT(progress, 0);
  EXPECT_GT(gates, 0);
  EXPECT_EQ(layouts, 2);
  EXPECT_EQ(results, 1);
  ASSERT_GE(events.size(), 2u);
  EXPECT_TRUE(events.back().has_state_change());
  EXPECT_EQ(events.back().state_change().current(), Job::SUCCEEDED);
  EXPECT_TRUE(events[events.size() - 2].has_result());
  EXPECT_EQ(events.front().state_change().current(), Job::PENDING);

  // The result: two layouts (ratio 0.25 of 8 layers = 2, and 4 layers), an evaluation, stage timings.
  ASSERT_EQ(job.result().layouts_size(), 2);
  EXPECT_EQ(job.result().layouts(0).full_attention_layer_indices_size(), 2);
  EXPECT_EQ(job.result().layouts(1).full_attention_layer_indices_size(), 4);
  EXPECT_GT(job.result().stage_timings_size(), 0);
  EXPECT_EQ(job.result().evaluation().needle_recall_size(), 1);
  EXPECT_EQ(job.result().seed(), 7u);

  // The artifact: a manifest with sha256 per file, and ReadArtifact's chunks hash to it.
  grpc::ClientContext mctx;
  v1::GetArtifactManifestRequest mreq;
  mreq.set_job(name);
  v1::ArtifactManifest manifest;
  ASSERT_TRUE(c.stub->GetArtifactManifest(&mctx, mreq, &manifest).ok());
  EXPECT_EQ(manifest.manifest_sha256(), job.result().artifact_manifest_sha256());
  bool saw_config = false;
  for (const auto& f : manifest.files()) {
    if (f.path() != "config.json" && f.path().find(".safetensors") == std::string::npos) continue;
    saw_config |= f.path() == "config.json";
    grpc::ClientContext rctx;
    v1::ReadArtifactRequest rreq;
    rreq.set_job(name);
    rreq.set_path(f.path());
    auto reader = c.stub->ReadArtifact(&rctx, rreq);
    v1::ReadArtifactResponse chunk;
    Sha256 hash;
    int64_t expected_offset = 0;
    while (reader->Read(&chunk)) {
      EXPECT_EQ(chunk.offset(), expected_offset);
      EXPECT_LE(chunk.data().size(), 1u << 20);
      expected_offset += chunk.data().size();
      hash.Update(chunk.data());
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(expected_offset, f.size_bytes()) << f.path();
    EXPECT_EQ(hash.HexDigest(), f.sha256()) << f.path();
  }
  EXPECT_TRUE(saw_config);

  // A watch resumed mid-history gets exactly the tail.
  grpc::Status tail_status;
  auto tail = ReadEvents(*c.stub, name, events[events.size() / 2].sequence(), &tail_status);
  ASSERT_TRUE(tail_status.ok());
  ASSERT_EQ(tail.size(), events.size() - events.size() / 2 - 1);
  EXPECT_EQ(tail.front().sequence(), events[events.size() / 2 + 1].sequence());
  ASSERT_TRUE(worker->Running()) << c.Logs();
}

TEST(ServiceE2E, CancelMidRunStopsTheWorkerAndTheWorkerTakesTheNextJob) {
  Cluster c;
  c.StartServer();
  auto worker = c.Worker("w-a");
  v1::ConversionSpec spec = SmallDemoSpec(11);
  spec.mutable_gates()->set_train_tokens(200000);  // long enough to be cancelled while running
  const std::string name = c.Create(spec);
  Job running = WaitForJob(*c.stub, name, [](const Job& j) { return j.stage() >= Job::GATES || Terminal(j); });
  ASSERT_EQ(running.state(), Job::RUNNING) << c.Logs();
  grpc::ClientContext ctx;
  v1::CancelConversionJobRequest req;
  req.set_name(name);
  Job after;
  ASSERT_TRUE(c.stub->CancelConversionJob(&ctx, req, &after).ok());
  EXPECT_EQ(after.state(), Job::CANCELLING);
  Job end = WaitForJob(*c.stub, name, Terminal, std::chrono::seconds(60));
  EXPECT_EQ(end.state(), Job::CANCELLED) << c.Logs();
  EXPECT_EQ(end.error().code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(end.attempt(), 1);
  // The worker is free again: a uniform job (no gate stage) runs to completion on it.
  v1::ConversionSpec quick = SmallDemoSpec(12);
  quick.set_selection_method(v1::ConversionSpec::UNIFORM);
  const std::string next = c.Create(quick);
  Job done = WaitForJob(*c.stub, next, Terminal);
  EXPECT_EQ(done.state(), Job::SUCCEEDED) << done.error().message() << c.Logs();
  EXPECT_EQ(done.worker(), "w-a");
}

TEST(ServiceE2E, KillingTheWorkerMidStageFinishesOnASecondWorkerWithTheSameLayout) {
  Cluster c;
  c.StartServer();
  // Reference: the same spec, uninterrupted.
  auto ref_worker = c.Worker("w-ref");
  const std::string ref_name = c.Create(SmallDemoSpec(21));
  Job ref = WaitForJob(*c.stub, ref_name, Terminal);
  ASSERT_EQ(ref.state(), Job::SUCCEEDED) << ref.error().message() << c.Logs();
  ref_worker->Signal(SIGTERM);
  ref_worker->Wait();

  auto worker_a = c.Worker("w-a");
  const std::string name = c.Create(SmallDemoSpec(21));
  Job mid = WaitForJob(*c.stub, name, [](const Job& j) { return j.stage() == Job::GATES || Terminal(j); });
  ASSERT_EQ(mid.state(), Job::RUNNING) << c.Logs();
  ASSERT_EQ(mid.worker(), "w-a");
  worker_a->Signal(SIGKILL);
  worker_a->Wait();
  auto worker_b = c.Worker("w-b");
  Job end = WaitForJob(*c.stub, name, Terminal);
  ASSERT_EQ(end.state(), Job::SUCCEEDED) << end.error().message() << c.Logs();
  EXPECT_EQ(end.worker(), "w-b");
  EXPECT_EQ(end.attempt(), 2);
  ASSERT_EQ(end.result().layouts_size(), ref.result().layouts_size());
  for (int i = 0; i < end.result().layouts_size(); ++i) {
    EXPECT_EQ(FaLayers(end.result().layouts(i)), FaLayers(ref.result().layouts(i))) << "budget " << i;
  }
  // The second attempt resumed from the first one's checkpoint (it did not start again from LOAD's data).
  grpc::Status status;
  auto events = ReadEvents(*c.stub, name, 0, &status);
  bool back_to_pending = false, resumed = false;
  for (const auto& e : events) {
    if (e.has_state_change() && e.state_change().current() == Job::PENDING && e.attempt() == 1) back_to_pending = true;
    if (e.has_stage_change() && e.attempt() == 2 && e.stage_change().resumed_from_checkpoint()) resumed = true;
  }
  EXPECT_TRUE(back_to_pending);
  EXPECT_TRUE(resumed);
}

TEST(ServiceE2E, RestartingTheServerMidRunLosesNoJobAndNoEvent) {
  Cluster c;
  c.StartServer();
  auto worker = c.Worker("w-a");
  const std::string name = c.Create(SmallDemoSpec(31));
  Job mid = WaitForJob(*c.stub, name, [](const Job& j) { return j.stage() >= Job::CALIBRATE || Terminal(j); });
  ASSERT_EQ(mid.state(), Job::RUNNING) << c.Logs();
  // Events so far, then kill -9 the server and start it again on the same port and data.
  std::vector<v1::JobEvent> before;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    v1::WatchConversionJobRequest req;
    req.set_name(name);
    auto reader = c.stub->WatchConversionJob(&ctx, req);
    v1::JobEvent e;
    while (reader->Read(&e)) before.push_back(e);
  }
  ASSERT_FALSE(before.empty());
  const int port = c.server->port();
  c.server->process().Signal(SIGKILL);
  c.server->process().Wait();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  c.StartServer(port);
  Job end = WaitForJob(*c.stub, name, Terminal);
  EXPECT_EQ(end.state(), Job::SUCCEEDED) << end.error().message() << c.Logs();
  EXPECT_EQ(end.attempt(), 1) << "the worker kept its lease across the restart";
  grpc::Status status;
  auto after = ReadEvents(*c.stub, name, 0, &status);
  ASSERT_TRUE(status.ok());
  ASSERT_GE(after.size(), before.size());
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(after[i].SerializeAsString(), before[i].SerializeAsString()) << "event " << i;
  }
  ExpectStrictlyIncreasing(after);
}

TEST(ServiceE2E, BadSpecAndBadCheckpointGetClearErrorsAndTheServerStaysHealthy) {
  Cluster c;
  c.StartServer();
  auto worker = c.Worker("w-a");
  // A bad spec: refused at creation, naming the field.
  v1::ConversionSpec bad = SmallDemoSpec(1);
  bad.mutable_budgets(0)->set_full_attention_ratio(1.5);
  grpc::Status status;
  EXPECT_EQ(c.Create(bad, &status), "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("budgets[0]"), std::string::npos) << status.error_message();

  // A bad checkpoint: a valid config.json with a truncated weights file. Accepted at creation (the config is
  // fine), then FAILED in LOAD with a reason naming the file, without a retry.
  const std::string model = c.root + "/broken-model";
  std::filesystem::create_directories(model);
  const std::string demo = std::string(FM_SOURCE_DIR) + "/models/demo/qwen3-demo";
  for (auto& entry : std::filesystem::directory_iterator(demo)) {
    std::filesystem::copy(entry.path(), model + "/" + entry.path().filename().string());
  }
  std::filesystem::resize_file(model + "/model.safetensors", 1000);
  v1::ConversionSpec broken = SmallDemoSpec(2);
  broken.mutable_model()->set_uri(model);
  const std::string name = c.Create(broken, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  Job end = WaitForJob(*c.stub, name, Terminal);
  EXPECT_EQ(end.state(), Job::FAILED) << c.Logs();
  EXPECT_EQ(end.attempt(), 1);
  EXPECT_NE(end.error().message().find("model.safetensors"), std::string::npos) << end.error().message();
  EXPECT_NE(end.error().code(), grpc::StatusCode::OK);
  EXPECT_TRUE(c.Healthy());
  EXPECT_TRUE(worker->Running());
}

TEST(ServiceE2E, AWorkerWithoutTheSharedFilesystemUploadsItsArtifact) {
  Cluster c;
  c.StartServer();
  auto worker = c.Worker("w-remote", {"--shared-filesystem", "false"});
  v1::ConversionSpec spec = SmallDemoSpec(51);
  spec.set_selection_method(v1::ConversionSpec::UNIFORM);
  const std::string name = c.Create(spec);
  Job end = WaitForJob(*c.stub, name, Terminal);
  ASSERT_EQ(end.state(), Job::SUCCEEDED) << end.error().message() << c.Logs();
  // The files came through UploadArtifact into the attempt folder, were promoted, and match their hashes.
  grpc::ClientContext mctx;
  v1::GetArtifactManifestRequest mreq;
  mreq.set_job(name);
  v1::ArtifactManifest manifest;
  ASSERT_TRUE(c.stub->GetArtifactManifest(&mctx, mreq, &manifest).ok());
  bool saw_weights = false;
  for (const auto& f : manifest.files()) {
    const std::string path = end.result().artifact_uri() + "/" + f.path();
    const std::string bytes = ReadFile(path);
    EXPECT_EQ(static_cast<int64_t>(bytes.size()), f.size_bytes()) << path;
    EXPECT_EQ(Sha256Hex(bytes.data(), bytes.size()), f.sha256()) << path;
    saw_weights |= f.path().find(".safetensors") != std::string::npos;
  }
  EXPECT_TRUE(saw_weights);
  // Nothing was written by the worker into the server's attempt folders directly: its local work root has the
  // attempt's outputs, the server's artifact the uploaded copy.
  EXPECT_TRUE(std::filesystem::exists(c.root + "/work-w-remote"));
}

TEST(ServiceE2E, EmbeddedWorkersConvertAndARestartedWorkerPicksTheJobUpAgain) {
  Cluster c;
  c.StartServer(0, {"--embedded-workers", "1", "--worker-device", "cpu", "--worker-arg=--threads",
                    "--worker-arg=1"});
  const std::string name = c.Create(SmallDemoSpec(41));
  Job mid = WaitForJob(*c.stub, name, [](const Job& j) { return j.stage() >= Job::CALIBRATE || Terminal(j); });
  ASSERT_EQ(mid.state(), Job::RUNNING) << c.Logs();
  EXPECT_EQ(mid.worker(), "embedded-0");
  // The supervisor logs each child's pid; kill -9 the worker, the supervisor starts it again.
  const std::string log = ReadFile(c.root + "/server.log");
  const std::string marker = "started worker embedded-0 (pid ";
  const size_t at = log.rfind(marker);
  ASSERT_NE(at, std::string::npos) << log;
  const pid_t pid = std::stoi(log.substr(at + marker.size()));
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  Job end = WaitForJob(*c.stub, name, Terminal);
  EXPECT_EQ(end.state(), Job::SUCCEEDED) << end.error().message() << c.Logs();
  EXPECT_EQ(end.attempt(), 2);
  const std::string log_after = ReadFile(c.root + "/server.log");
  EXPECT_NE(log_after.rfind(marker), at) << "the worker was restarted";
  // SIGTERM stops flashmorphd and its worker cleanly.
  c.server->process().Signal(SIGTERM);
  EXPECT_EQ(c.server->process().Wait(std::chrono::seconds(30)), 0);
}

}  // namespace
}  // namespace fm::testing
