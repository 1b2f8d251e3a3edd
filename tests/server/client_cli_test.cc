// The `flashmorph` service commands against an in-process fake ConversionService over loopback gRPC: spec files
// (YAML, JSON, malformed), submit flags -> request fields and UNAVAILABLE retries with one request_id, watch
// resumption without lost or repeated events, resumable sha256-checked downloads, layout printing, list paging.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <regex>
#include <sstream>

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "client/cli/cli_app.h"
#include "client/cli/commands.h"
#include "client/cli/spec_file.h"
#include "flashmorph/v1/conversion_service.grpc.pb.h"
#include "google/longrunning/operations.pb.h"
#include "worker/engine/formats/sha256.h"

namespace fm::client {
namespace {

namespace fs = std::filesystem;
namespace v1 = flashmorph::v1;

// --- helpers -----------------------------------------------------------------------------------------------------

fs::path MakeTempDir() {
  std::string tmpl = (fs::path(testing::TempDir()) / "client_cli_XXXXXX").string();
  const char* dir = mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr);
  return fs::path(tmpl);
}

void WriteFile(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out << bytes;
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The last line of `text` (without its newline).
std::string LastLine(const std::string& text) {
  std::string t = text;
  if (!t.empty() && t.back() == '\n') t.pop_back();
  const size_t nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

v1::ConversionSpec SpecFromJson(const std::string& json) {
  v1::ConversionSpec spec;
  const auto st = google::protobuf::util::JsonStringToMessage(json, &spec);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return spec;
}

// --- the fake server ---------------------------------------------------------------------------------------------

class FakeService final : public v1::ConversionService::Service {
 public:
  std::mutex mu;
  // CreateConversionJob: the requests received; the first `create_unavailable` calls answer UNAVAILABLE.
  std::vector<v1::CreateConversionJobRequest> creates;
  int create_unavailable = 0;
  // GetConversionJob / CancelConversionJob.
  v1::ConversionJob job;
  // WatchConversionJob: the job's log; each call sends the events after after_sequence, the i-th call at most
  // watch_limits[i] of them and then ends with UNAVAILABLE (no entry: all, then OK).
  std::vector<v1::JobEvent> events;
  std::vector<int> watch_limits;
  std::vector<int64_t> watch_after;
  // ListConversionJobs: `list_jobs` served `list_page` per page; tokens are the next index.
  std::vector<v1::ConversionJob> list_jobs;
  size_t list_page = 2;
  std::vector<std::string> list_tokens;
  // Artifacts: path -> bytes, served in chunks of `chunk` bytes; the i-th ReadArtifact call sends at most
  // read_limits[i] chunks and then ends with UNAVAILABLE.
  std::map<std::string, std::string> files;
  std::map<std::string, std::string> sha_override;  // manifest sha256 per path
  std::vector<std::string> extra_manifest_paths;    // listed with no data
  size_t chunk = 64;
  std::vector<int> read_limits;
  std::vector<std::pair<std::string, int64_t>> reads;
  std::vector<std::string> authorization;

  grpc::Status CreateConversionJob(grpc::ServerContext* ctx, const v1::CreateConversionJobRequest* req,
                                   google::longrunning::Operation* op) override {
    std::lock_guard<std::mutex> l(mu);
    Remember(ctx);
    creates.push_back(*req);
    if (static_cast<int>(creates.size()) <= create_unavailable) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "try again");
    }
    op->set_name("operations/abc123");
    v1::ConversionMetadata meta;
    meta.set_job("jobs/abc123");
    meta.set_state(v1::ConversionJob::PENDING);
    op->mutable_metadata()->PackFrom(meta);
    return grpc::Status::OK;
  }

  grpc::Status GetConversionJob(grpc::ServerContext* ctx, const v1::GetConversionJobRequest* req,
                                v1::ConversionJob* out) override {
    std::lock_guard<std::mutex> l(mu);
    Remember(ctx);
    if (req->name() != job.name()) return grpc::Status(grpc::StatusCode::NOT_FOUND, req->name() + " not found");
    *out = job;
    return grpc::Status::OK;
  }

  grpc::Status CancelConversionJob(grpc::ServerContext*, const v1::CancelConversionJobRequest* req,
                                   v1::ConversionJob* out) override {
    std::lock_guard<std::mutex> l(mu);
    if (req->name() != job.name()) return grpc::Status(grpc::StatusCode::NOT_FOUND, req->name() + " not found");
    job.set_state(v1::ConversionJob::CANCELLING);
    *out = job;
    return grpc::Status::OK;
  }

  grpc::Status ListConversionJobs(grpc::ServerContext*, const v1::ListConversionJobsRequest* req,
                                  v1::ListConversionJobsResponse* out) override {
    std::lock_guard<std::mutex> l(mu);
    list_tokens.push_back(req->page_token());
    const size_t start = req->page_token().empty() ? 0 : std::stoul(req->page_token());
    for (size_t i = start; i < std::min(list_jobs.size(), start + list_page); ++i) *out->add_jobs() = list_jobs[i];
    if (start + list_page < list_jobs.size()) out->set_next_page_token(std::to_string(start + list_page));
    return grpc::Status::OK;
  }

  grpc::Status WatchConversionJob(grpc::ServerContext*, const v1::WatchConversionJobRequest* req,
                                  grpc::ServerWriter<v1::JobEvent>* writer) override {
    std::vector<v1::JobEvent> send;
    int limit = -1;
    {
      std::lock_guard<std::mutex> l(mu);
      if (req->name() != job.name()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such job");
      const size_t call = watch_after.size();
      watch_after.push_back(req->after_sequence());
      if (call < watch_limits.size()) limit = watch_limits[call];
      for (const auto& e : events) {
        if (e.sequence() > req->after_sequence()) send.push_back(e);
      }
    }
    int sent = 0;
    for (const auto& e : send) {
      if (limit >= 0 && sent == limit) break;
      writer->Write(e);
      ++sent;
    }
    if (limit >= 0) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server restarting");
    return grpc::Status::OK;
  }

  grpc::Status GetArtifactManifest(grpc::ServerContext*, const v1::GetArtifactManifestRequest* req,
                                   v1::ArtifactManifest* out) override {
    std::lock_guard<std::mutex> l(mu);
    out->set_job(req->job());
    std::vector<std::string> paths;
    for (const auto& [p, _] : files) paths.push_back(p);
    for (const auto& p : extra_manifest_paths) paths.push_back(p);
    std::sort(paths.begin(), paths.end());
    std::string text;
    for (const auto& p : paths) {
      auto* f = out->add_files();
      f->set_path(p);
      const std::string& data = files[p];
      f->set_size_bytes(static_cast<int64_t>(data.size()));
      f->set_sha256(sha_override.count(p) ? sha_override[p] : Sha256Hex(data.data(), data.size()));
      out->set_total_size_bytes(out->total_size_bytes() + f->size_bytes());
      text += f->sha256() + "  " + p + "\n";
    }
    out->set_manifest_sha256(Sha256Hex(text.data(), text.size()));
    return grpc::Status::OK;
  }

  grpc::Status ReadArtifact(grpc::ServerContext*, const v1::ReadArtifactRequest* req,
                            grpc::ServerWriter<v1::ReadArtifactResponse>* writer) override {
    std::string data;
    int limit = -1;
    {
      std::lock_guard<std::mutex> l(mu);
      const size_t call = reads.size();
      reads.emplace_back(req->path(), req->read_offset());
      if (call < read_limits.size()) limit = read_limits[call];
      auto it = files.find(req->path());
      if (it == files.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such file");
      data = it->second;
    }
    if (req->read_offset() > static_cast<int64_t>(data.size())) {
      return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "past the end");
    }
    int sent = 0;
    for (size_t off = static_cast<size_t>(req->read_offset()); off < data.size(); off += chunk) {
      if (limit >= 0 && sent == limit) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset");
      v1::ReadArtifactResponse r;
      r.set_offset(static_cast<int64_t>(off));
      r.set_data(data.substr(off, chunk));
      writer->Write(r);
      ++sent;
    }
    return grpc::Status::OK;
  }

 private:
  void Remember(grpc::ServerContext* ctx) {
    auto it = ctx->client_metadata().find("authorization");
    authorization.push_back(it == ctx->client_metadata().end() ? ""
                                                               : std::string(it->second.data(), it->second.size()));
  }
};

class ClientCliTest : public testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    address_ = "127.0.0.1:" + std::to_string(port);
    dir_ = MakeTempDir();
    service_.job.set_name("jobs/abc123");
  }
  void TearDown() override {
    server_->Shutdown();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Runs `flashmorph <args> --server <fake>` in-process; fills out_ and err_.
  int Cli(std::vector<std::string> args) {
    args.push_back("--server");
    args.push_back(address_);
    out_.str("");
    err_.str("");
    RetryPolicy retry;
    retry.max_attempts = 4;
    retry.max_stream_attempts = 6;
    retry.initial_backoff = std::chrono::milliseconds(1);
    retry.max_backoff = std::chrono::milliseconds(4);
    return RunCli(args, CliIo{out_, err_, false}, retry);
  }

  FakeService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  fs::path dir_;
  std::ostringstream out_, err_;
};

// --- spec files --------------------------------------------------------------------------------------------------

// The same spec as YAML and as proto3 JSON; the JSON parsed by protobuf itself is the reference.
constexpr char kSpecJson[] = R"({
  "model": {"uri": "/models/smollm2", "sourceSha256": "ab12"},
  "budgets": [{"fullAttentionLayers": 4}, {"fullAttentionRatio": 0.25}],
  "selectionMethod": "NLL",
  "branchKind": "GLA",
  "seed": "18446744073709551615",
  "gates": {"sparsityLambda": 0, "trainTokens": "200000", "activationCheckpointing": true},
  "postTraining": {"distillTokens": "0", "trainable": "ALL"},
  "evaluation": {"needleContextTokens": [1024, 4096]},
  "data": {"jsonl": {"path": "/data/text.jsonl"}},
  "labels": {"team": "nlp", "ticket": "007"},
  "deadline": "2030-01-02T03:04:05Z",
  "priority": -3
})";

constexpr char kSpecYaml[] = R"(# a spec
model:
  uri: /models/smollm2
  sourceSha256: ab12
budgets:
  - fullAttentionLayers: 4
  - {fullAttentionRatio: 0.25}
selectionMethod: NLL
branchKind: GLA
seed: 18446744073709551615
gates:
  sparsityLambda: 0
  trainTokens: 200000
  activationCheckpointing: true
postTraining: {distillTokens: 0, trainable: ALL}
evaluation:
  needleContextTokens: [1024, 4096]
data:
  jsonl: {path: /data/text.jsonl}
labels:
  team: nlp
  ticket: "007"
deadline: 2030-01-02T03:04:05Z
priority: -3
)";

TEST_F(ClientCliTest, SpecFromYamlEqualsSpecFromJson) {
  WriteFile(dir_ / "spec.yaml", kSpecYaml);
  WriteFile(dir_ / "spec.json", kSpecJson);
  const v1::ConversionSpec ref = SpecFromJson(kSpecJson);
  auto yaml = LoadSpecFile((dir_ / "spec.yaml").string());
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  auto json = LoadSpecFile((dir_ / "spec.json").string());
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*yaml, ref)) << yaml->DebugString();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*json, ref)) << json->DebugString();
  // Presence survives: sparsity_lambda 0 is set, seed is the full uint64, the quoted "007" stays a string.
  EXPECT_TRUE(yaml->gates().has_sparsity_lambda());
  EXPECT_EQ(yaml->seed(), UINT64_MAX);
  EXPECT_EQ(yaml->labels().at("ticket"), "007");
}

TEST_F(ClientCliTest, MalformedSpecFilesNameTheFile) {
  struct Case {
    const char* name;
    const char* text;
    const char* expect;  // part of the message
  };
  const Case cases[] = {
      {"bad_syntax.yaml", "model: {uri: /m\nbudgets: [", "line"},
      {"unknown_field.yaml", "model: {uri: /m}\nbudgetz: []\n", "budgetz"},
      {"wrong_type.yaml", "model: {uri: /m}\nbudgets: [{fullAttentionLayers: many}]\n", "not a ConversionSpec"},
      {"bad_enum.yaml", "model: {uri: /m}\nselectionMethod: BEST\n", "not a ConversionSpec"},
      {"empty.yaml", "# nothing\n", "empty spec"},
      {"list.yaml", "- 1\n- 2\n", "mapping"},
      {"bad.json", "{\"model\": {\"uri\": \"/m\"},}", "not valid JSON"},
      {"unknown.json", "{\"model\": {\"uri\": \"/m\", \"url\": \"x\"}}", "url"},
  };
  for (const Case& c : cases) {
    const fs::path p = dir_ / c.name;
    WriteFile(p, c.text);
    auto spec = LoadSpecFile(p.string());
    ASSERT_FALSE(spec.ok()) << c.name;
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    const std::string msg(spec.status().message());
    EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.name << ": " << msg;
  }
  auto missing = LoadSpecFile((dir_ / "missing.yaml").string());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);

  // Through the CLI: exit 2, "error: INVALID_ARGUMENT: <file>: ...", nothing sent.
  EXPECT_EQ(Cli({"submit", "--spec", (dir_ / "unknown_field.yaml").string()}), kExitError);
  EXPECT_EQ(err_.str().rfind("error: INVALID_ARGUMENT: " + (dir_ / "unknown_field.yaml").string(), 0), 0u)
      << err_.str();
  EXPECT_TRUE(service_.creates.empty());
}

// --- submit ------------------------------------------------------------------------------------------------------

TEST_F(ClientCliTest, SubmitFlagsOverrideTheSpecFile) {
  WriteFile(dir_ / "spec.yaml", kSpecYaml);
  ASSERT_EQ(Cli({"submit",
                 "--spec",
                 (dir_ / "spec.yaml").string(),
                 "--model",
                 "/models/other",
                 "--fa-ratio",
                 "50%",
                 "--fa-layers",
                 "2",
                 "--fa-ratio",
                 "0.125",
                 "--method",
                 "uniform",
                 "--branch",
                 "gated-deltanet",
                 "--seed",
                 "7",
                 "--priority",
                 "5",
                 "--label",
                 "team=cv",
                 "--label",
                 "run=a=b",
                 "--tenant",
                 "t1",
                 "--request-id",
                 "req-1",
                 "--gpus",
                 "2",
                 "--shard-layers",
                 "--gate-batch",
                 "4",
                 "--lambda",
                 "0.3",
                 "--gate-tokens",
                 "1000",
                 "--distill-tokens",
                 "50",
                 "--train-all",
                 "--data",
                 "/data/tokens.u16",
                 "--export-dtype",
                 "bfloat16",
                 "--deadline",
                 "2031-05-06T07:08:09Z",
                 "--token",
                 "s3cret"}),
            kExitOk)
      << err_.str();
  EXPECT_EQ(out_.str(), "jobs/abc123\n");
  ASSERT_EQ(service_.creates.size(), 1u);
  const v1::CreateConversionJobRequest& r = service_.creates[0];
  EXPECT_EQ(service_.authorization[0], "Bearer s3cret");
  EXPECT_EQ(r.tenant(), "t1");
  EXPECT_EQ(r.request_id(), "req-1");
  const v1::ConversionSpec& s = r.spec();
  // Expected: the file's spec with exactly the flags' fields replaced.
  v1::ConversionSpec want = SpecFromJson(kSpecJson);
  want.mutable_model()->set_uri("/models/other");
  want.clear_budgets();
  want.add_budgets()->set_full_attention_ratio(0.5);  // command-line order
  want.add_budgets()->set_full_attention_layers(2);
  want.add_budgets()->set_full_attention_ratio(0.125);
  want.set_selection_method(v1::ConversionSpec::UNIFORM);
  want.set_branch_kind(v1::ConversionSpec::GATED_DELTANET);
  want.set_seed(7);
  want.set_priority(5);
  (*want.mutable_labels())["team"] = "cv";
  (*want.mutable_labels())["run"] = "a=b";
  want.mutable_resources()->set_gpus(2);
  want.mutable_resources()->set_shard_layers(true);
  want.mutable_gates()->set_samples_per_step(4);
  want.mutable_gates()->set_sparsity_lambda(0.3);
  want.mutable_gates()->set_train_tokens(1000);
  want.mutable_post_training()->set_distill_tokens(50);
  want.mutable_post_training()->set_trainable(v1::PostTrainingSettings::ALL);
  want.mutable_data()->mutable_token_file()->set_path("/data/tokens.u16");
  want.mutable_data()->mutable_token_file()->set_dtype(v1::DataSource::TokenFile::UINT16);
  want.mutable_output()->set_dtype(v1::OutputOptions::BFLOAT16);
  ASSERT_TRUE(google::protobuf::util::TimeUtil::FromString("2031-05-06T07:08:09Z", want.mutable_deadline()));
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(s, want)) << "got:\n"
                                                                           << s.DebugString() << "want:\n"
                                                                           << want.DebugString();
}

TEST_F(ClientCliTest, SubmitRetriesUnavailableWithOneFreshRequestId) {
  service_.create_unavailable = 2;
  ASSERT_EQ(Cli({"submit", "--model", "/m", "--fa-layers", "3", "--json"}), kExitOk) << err_.str();
  ASSERT_EQ(service_.creates.size(), 3u);
  const std::string id = service_.creates[0].request_id();
  EXPECT_TRUE(std::regex_match(id, std::regex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")))
      << id;
  for (const auto& c : service_.creates) {
    EXPECT_EQ(c.request_id(), id);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(c, service_.creates[0]));
  }
  // --json prints the Operation.
  google::longrunning::Operation op;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out_.str(), &op).ok()) << out_.str();
  EXPECT_EQ(op.name(), "operations/abc123");
  // A second invocation draws a new id.
  ASSERT_EQ(Cli({"submit", "--model", "/m", "--fa-layers", "3"}), kExitOk);
  EXPECT_NE(service_.creates.back().request_id(), id);
}

TEST_F(ClientCliTest, SubmitUsageErrors) {
  EXPECT_EQ(Cli({"submit", "--fa-layers", "3"}), kExitError);  // no model
  EXPECT_NE(err_.str().find("no model"), std::string::npos) << err_.str();
  EXPECT_EQ(Cli({"submit", "--model", "/m"}), kExitError);  // no budget
  EXPECT_NE(err_.str().find("no budget"), std::string::npos) << err_.str();
  EXPECT_EQ(Cli({"submit", "--model", "/m", "--fa-ratio", "1.5"}), kExitError);
  EXPECT_NE(err_.str().find("--fa-ratio 1.5"), std::string::npos) << err_.str();
  EXPECT_EQ(Cli({"submit", "--model", "/m", "--fa-layers", "2", "--method", "best"}), kExitError);
  EXPECT_EQ(Cli({"submit", "--model", "/m", "--fa-layers", "2", "--label", "novalue"}), kExitError);
  EXPECT_EQ(Cli({"submit", "--model", "/m", "--fa-layers", "2", "--deadline", "soon"}), kExitError);
  EXPECT_EQ(Cli({"submit", "--model", "/m", "--fa-layers", "x"}), kExitError);
  EXPECT_EQ(Cli({"frobnicate"}), kExitError);
  EXPECT_TRUE(service_.creates.empty());
  EXPECT_EQ(Cli({"--help"}), kExitOk);
  EXPECT_NE(out_.str().find("Exit codes"), std::string::npos);
}

// --- watch -------------------------------------------------------------------------------------------------------

v1::JobEvent Event(int64_t seq) {
  v1::JobEvent e;
  e.set_job("jobs/abc123");
  e.set_sequence(seq);
  e.set_attempt(1);
  return e;
}

v1::Layout TestLayout() {
  v1::Layout l;
  l.mutable_budget()->set_full_attention_layers(2);
  l.set_method(v1::ConversionSpec::FLASHMORPH);
  const double scores[] = {0.125, 0.875, 0.5, 0.9375};
  for (int i = 0; i < 4; ++i) {
    l.add_layer_types(i == 1 || i == 3 ? v1::Layout::FULL_ATTENTION : v1::Layout::LINEAR_ATTENTION);
    l.add_scores(scores[i]);
  }
  l.add_full_attention_layer_indices(1);
  l.add_full_attention_layer_indices(3);
  l.set_cut_margin(0.375);
  l.add_near_tie_indices(2);
  l.set_near_tie_tolerance(0.5);
  return l;
}

// A whole job log with gaps in the sequence numbers, ending in `final`.
std::vector<v1::JobEvent> JobLog(v1::ConversionJob::State final) {
  std::vector<v1::JobEvent> log;
  auto state = [&](int64_t seq, v1::ConversionJob::State from, v1::ConversionJob::State to) {
    v1::JobEvent e = Event(seq);
    e.mutable_state_change()->set_previous(from);
    e.mutable_state_change()->set_current(to);
    if (to == v1::ConversionJob::FAILED) {
      e.mutable_state_change()->mutable_reason()->set_code(9);
      e.mutable_state_change()->mutable_reason()->set_message("checksum mismatch");
    }
    if (to == v1::ConversionJob::CANCELLED) e.mutable_state_change()->mutable_reason()->set_code(1);
    log.push_back(e);
  };
  state(1, v1::ConversionJob::STATE_UNSPECIFIED, v1::ConversionJob::PENDING);
  state(2, v1::ConversionJob::PENDING, v1::ConversionJob::RUNNING);
  v1::JobEvent stage = Event(4);
  stage.mutable_stage_change()->set_current(v1::ConversionJob::GATES);
  log.push_back(stage);
  for (int64_t step = 1; step <= 4; ++step) {
    v1::JobEvent g = Event(4 + 2 * step);
    g.mutable_gates()->set_step(step);
    for (double v : {0.9, 0.2 * static_cast<double>(step), 0.5, 1.0}) g.mutable_gates()->add_layer_gates(v);
    log.push_back(g);
    v1::JobEvent p = Event(5 + 2 * step);
    p.mutable_progress()->set_step(step);
    p.mutable_progress()->set_total_steps(4);
    p.mutable_progress()->set_loss(0.5);
    (*p.mutable_progress()->mutable_loss_terms())["hidden_mse"] = 0.25;
    p.mutable_progress()->set_tokens_per_second(1000);
    p.mutable_progress()->mutable_estimated_remaining()->set_seconds(4 - step);
    log.push_back(p);
  }
  v1::JobEvent lay = Event(20);
  *lay.mutable_layout_selected() = TestLayout();
  log.push_back(lay);
  v1::JobEvent line = Event(21);
  line.mutable_log()->set_severity(v1::LogLine::SEVERITY_WARNING);
  line.mutable_log()->set_source("engine/gates");
  line.mutable_log()->set_message("near tie at the cut");
  log.push_back(line);
  if (final == v1::ConversionJob::SUCCEEDED) {
    v1::JobEvent r = Event(30);
    *r.mutable_result()->add_layouts() = TestLayout();
    log.push_back(r);
  }
  state(31, v1::ConversionJob::RUNNING, final);
  return log;
}

TEST_F(ClientCliTest, WatchResumesAfterUnavailableWithoutLosingOrRepeatingEvents) {
  service_.events = JobLog(v1::ConversionJob::SUCCEEDED);
  service_.watch_limits = {3, 0, 4, 2};  // break the stream four times (once with nothing sent)
  ASSERT_EQ(Cli({"watch", "abc123", "--json"}), kExitOk) << err_.str();
  // One JSON event per line: exactly the log, in order.
  std::istringstream lines(out_.str());
  std::string line;
  std::vector<int64_t> got;
  while (std::getline(lines, line)) {
    v1::JobEvent e;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(line, &e).ok()) << line;
    got.push_back(e.sequence());
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(e, service_.events[got.size() - 1]));
  }
  ASSERT_EQ(got.size(), service_.events.size());
  // Each resumption asked for the events after the last one received.
  std::vector<int64_t> want_after = {0};
  size_t received = 0;
  for (int limit : service_.watch_limits) {
    received += static_cast<size_t>(limit);
    want_after.push_back(received == 0 ? 0 : service_.events[received - 1].sequence());
  }
  EXPECT_EQ(service_.watch_after, want_after);
}

TEST_F(ClientCliTest, WatchPrintsProgressGatesAndLayoutsAndExitsByResult) {
  service_.events = JobLog(v1::ConversionJob::SUCCEEDED);
  service_.watch_limits = {5};
  ASSERT_EQ(Cli({"watch", "jobs/abc123"}), kExitOk) << err_.str();
  const std::string out = out_.str();
  EXPECT_NE(out.find("state PENDING -> RUNNING (attempt 1)"), std::string::npos) << out;
  EXPECT_NE(out.find("stage GATES"), std::string::npos) << out;
  EXPECT_NE(out.find("GATES ["), std::string::npos) << out;  // a progress line
  EXPECT_NE(out.find("hidden_mse=0.25"), std::string::npos) << out;
  EXPECT_NE(out.find("Gates at step 4:"), std::string::npos) << out;
  EXPECT_NE(out.find("Layout 1/1: budget 2 layers"), std::string::npos) << out;
  EXPECT_NE(out.find("[engine/gates] warning: near tie at the cut"), std::string::npos) << out;
  EXPECT_NE(out.find("jobs/abc123 SUCCEEDED"), std::string::npos) << out;
  EXPECT_NE(err_.str().find("resuming after event"), std::string::npos) << err_.str();

  service_.events = JobLog(v1::ConversionJob::FAILED);
  service_.watch_limits.clear();
  service_.watch_after.clear();
  EXPECT_EQ(Cli({"watch", "abc123"}), kExitJobFailed);
  EXPECT_NE(out_.str().find("jobs/abc123 FAILED: FAILED_PRECONDITION: checksum mismatch"), std::string::npos)
      << out_.str();
  // The layouts selected before the failure are still shown.
  EXPECT_NE(out_.str().find("Layout 1/1"), std::string::npos);

  service_.events = JobLog(v1::ConversionJob::CANCELLED);
  EXPECT_EQ(Cli({"watch", "abc123", "--json"}), kExitJobCancelled);
}

TEST_F(ClientCliTest, WatchPastTheEndAsksTheJobAndRpcErrorsExit2) {
  service_.events = JobLog(v1::ConversionJob::SUCCEEDED);
  service_.job.set_state(v1::ConversionJob::SUCCEEDED);
  EXPECT_EQ(Cli({"watch", "abc123", "--after-sequence", "31"}), kExitOk) << err_.str();
  EXPECT_EQ(service_.watch_after, std::vector<int64_t>{31});
  EXPECT_EQ(Cli({"watch", "nope"}), kExitError);
  EXPECT_EQ(err_.str(), "error: NOT_FOUND: no such job\n");
  // A server that stays unavailable: give up after max_attempts.
  service_.watch_limits = std::vector<int>(100, 0);
  service_.watch_after.clear();
  EXPECT_EQ(Cli({"watch", "abc123"}), kExitError);
  EXPECT_EQ(service_.watch_after.size(), 6u);
  EXPECT_EQ(LastLine(err_.str()).rfind("error: UNAVAILABLE: gave up watching jobs/abc123", 0), 0u) << err_.str();
}

// --- download ----------------------------------------------------------------------------------------------------

TEST_F(ClientCliTest, DownloadResumesPartFilesAndBrokenStreams) {
  const std::string weights = RandomBytes(1000, 1);
  service_.files = {{"config.json", "{\"layer_types\": []}"},
                    {"model.safetensors", weights},
                    {"tokenizer/tokenizer.json", RandomBytes(130, 2)}};
  const fs::path out = dir_ / "out";
  WriteFile(out / "model.safetensors.part", weights.substr(0, 300));
  // config.json: whole; model.safetensors: 2 chunks from 300, break, then the rest; tokenizer: whole.
  service_.read_limits = {-1, 2, -1, -1};
  ASSERT_EQ(Cli({"download", "abc123", "--out", out.string()}), kExitOk) << err_.str();
  using Read = std::pair<std::string, int64_t>;
  const int64_t chunk = static_cast<int64_t>(service_.chunk);
  EXPECT_EQ(service_.reads, (std::vector<Read>{{"config.json", 0},
                                               {"model.safetensors", 300},
                                               {"model.safetensors", 300 + 2 * chunk},
                                               {"tokenizer/tokenizer.json", 0}}));
  for (const auto& [path, bytes] : service_.files) {
    EXPECT_EQ(ReadFile(out / path), bytes) << path;
    EXPECT_FALSE(fs::exists(out / (path + ".part"))) << path;
  }
  EXPECT_NE(out_.str().find("downloaded 3 file(s)"), std::string::npos) << out_.str();
  // Again: everything is complete, nothing is read.
  service_.reads.clear();
  ASSERT_EQ(Cli({"download", "jobs/abc123", "--out", out.string()}), kExitOk) << err_.str();
  EXPECT_TRUE(service_.reads.empty());
  EXPECT_NE(out_.str().find("(3 already complete)"), std::string::npos) << out_.str();
}

TEST_F(ClientCliTest, DownloadDetectsSha256Mismatch) {
  const std::string weights = RandomBytes(500, 3);
  service_.files = {{"model.safetensors", weights}};
  const fs::path out = dir_ / "out";
  // A stale .part whose bytes differ from the file's first bytes: resuming it yields the wrong hash.
  std::string stale = weights.substr(0, 100);
  stale[10] ^= 1;
  WriteFile(out / "model.safetensors.part", stale);
  EXPECT_EQ(Cli({"download", "abc123", "--out", out.string()}), kExitError);
  EXPECT_EQ(LastLine(err_.str()).rfind("error: DATA_LOSS: model.safetensors: sha256 mismatch", 0), 0u) << err_.str();
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  EXPECT_FALSE(fs::exists(out / "model.safetensors.part"));  // removed: the next run starts over
  // ... and it does, successfully.
  ASSERT_EQ(Cli({"download", "abc123", "--out", out.string()}), kExitOk) << err_.str();
  EXPECT_EQ(ReadFile(out / "model.safetensors"), weights);

  // A manifest hash that no download can match.
  service_.sha_override["model.safetensors"] = std::string(64, '0');
  fs::remove(out / "model.safetensors");
  EXPECT_EQ(Cli({"download", "abc123", "--out", out.string()}), kExitError);
  EXPECT_NE(err_.str().find("sha256 mismatch"), std::string::npos) << err_.str();
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
}

TEST_F(ClientCliTest, DownloadRefusesUnsafeManifestPaths) {
  for (const std::string bad : {"../evil", "/etc/evil", "a/../../evil", "a//b", "./x", "x.part"}) {
    service_.files = {{"config.json", "{}"}, {bad, "evil"}};
    const fs::path out = dir_ / "out";
    EXPECT_EQ(Cli({"download", "abc123", "--out", out.string()}), kExitError) << bad;
    EXPECT_NE(err_.str().find("refused"), std::string::npos) << err_.str();
    EXPECT_TRUE(service_.reads.empty()) << bad;  // nothing is read or written
    EXPECT_FALSE(fs::exists(out / "config.json"));
    EXPECT_FALSE(fs::exists(dir_ / "evil"));
  }
  for (const std::string good : {"config.json", "a/b/c.safetensors", "..x", "x..y/z"}) {
    EXPECT_TRUE(CheckArtifactPath(good).ok()) << good;
  }
}

// --- layout / get / list / cancel --------------------------------------------------------------------------------

TEST_F(ClientCliTest, LayoutPrintsEveryLayout) {
  service_.job.set_state(v1::ConversionJob::RUNNING);
  EXPECT_EQ(Cli({"layout", "abc123"}), kExitError);
  EXPECT_EQ(err_.str().rfind("error: FAILED_PRECONDITION: jobs/abc123 is RUNNING", 0), 0u) << err_.str();

  service_.job.set_state(v1::ConversionJob::SUCCEEDED);
  const v1::Layout layer = TestLayout();
  *service_.job.mutable_result()->add_layouts() = layer;
  v1::Layout head;
  head.mutable_budget()->set_full_attention_heads(3);
  head.set_method(v1::ConversionSpec::HEAD);
  head.add_layer_types(v1::Layout::MIXED);
  head.add_layer_types(v1::Layout::FULL_ATTENTION);
  head.add_full_attention_layer_indices(1);
  head.mutable_head_layout()->set_heads_per_layer(2);
  head.mutable_head_layout()->set_full_attention_heads(3);
  auto* l0 = head.mutable_head_layout()->add_layers();
  l0->add_full_attention_head_indices(1);
  l0->add_head_gates(0.25);
  l0->add_head_gates(0.75);
  auto* l1 = head.mutable_head_layout()->add_layers();
  l1->add_full_attention_head_indices(0);
  l1->add_full_attention_head_indices(1);
  l1->add_head_gates(0.625);
  l1->add_head_gates(1.0);
  head.set_cut_margin(0.375);
  *service_.job.mutable_result()->add_layouts() = head;

  ASSERT_EQ(Cli({"layout", "abc123"}), kExitOk) << err_.str();
  const std::string out = out_.str();
  EXPECT_NE(out.find("Layout 1/2: budget 2 layers, method FLASHMORPH (exported)"), std::string::npos) << out;
  EXPECT_NE(out.find("full-attention layers (2 of 4): 1 3"), std::string::npos) << out;
  EXPECT_NE(out.find("layer types: LFLF"), std::string::npos) << out;
  EXPECT_NE(out.find("    1  FULL     0.8750"), std::string::npos) << out;
  EXPECT_NE(out.find("    2  linear   0.5000   ~"), std::string::npos) << out;  // near tie
  EXPECT_NE(out.find("cut margin: 0.375; near ties (~, within 0.5): 2"), std::string::npos) << out;
  EXPECT_NE(out.find("Layout 2/2: budget 3 heads, method HEAD"), std::string::npos) << out;
  EXPECT_NE(out.find("layer types: MF"), std::string::npos) << out;
  EXPECT_NE(out.find("    0  mixed    1            0.250 0.750"), std::string::npos) << out;
  EXPECT_NE(out.find("    1  FULL     0,1          0.625 1.000"), std::string::npos) << out;

  ASSERT_EQ(Cli({"layout", "abc123", "--json"}), kExitOk);
  EXPECT_EQ(out_.str().front(), '[');
  EXPECT_NE(out_.str().find("\"fullAttentionLayerIndices\":[1,3]"), std::string::npos) << out_.str();
}

TEST_F(ClientCliTest, GetListCancel) {
  service_.job.set_state(v1::ConversionJob::RUNNING);
  service_.job.mutable_spec()->mutable_model()->set_uri("/models/x");
  service_.job.mutable_spec()->add_budgets()->set_full_attention_layers(4);
  service_.job.set_stage(v1::ConversionJob::GATES);
  ASSERT_EQ(Cli({"get", "abc123", "--token", "tok"}), kExitOk) << err_.str();
  EXPECT_NE(out_.str().find("state:     RUNNING"), std::string::npos) << out_.str();
  EXPECT_NE(out_.str().find("budgets:   4 layers"), std::string::npos) << out_.str();
  EXPECT_EQ(service_.authorization.back(), "Bearer tok");
  ASSERT_EQ(Cli({"get", "abc123", "--json"}), kExitOk);
  v1::ConversionJob parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out_.str(), &parsed).ok());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(parsed, service_.job));
  EXPECT_EQ(Cli({"get", "zzz"}), kExitError);
  EXPECT_EQ(err_.str(), "error: NOT_FOUND: jobs/zzz not found\n");

  for (int i = 0; i < 5; ++i) {
    v1::ConversionJob j;
    j.set_name("jobs/j" + std::to_string(i));
    j.set_state(v1::ConversionJob::PENDING);
    service_.list_jobs.push_back(j);
  }
  ASSERT_EQ(Cli({"list"}), kExitOk);
  EXPECT_NE(out_.str().find("jobs/j1"), std::string::npos);
  EXPECT_EQ(out_.str().find("jobs/j2"), std::string::npos);
  EXPECT_NE(out_.str().find("--page-token 2"), std::string::npos) << out_.str();
  service_.list_tokens.clear();
  ASSERT_EQ(Cli({"list", "--all", "--state", "pending", "--json"}), kExitOk);
  EXPECT_EQ(service_.list_tokens, (std::vector<std::string>{"", "2", "4"}));
  v1::ListConversionJobsResponse all;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out_.str(), &all).ok()) << out_.str();
  EXPECT_EQ(all.jobs_size(), 5);
  EXPECT_EQ(Cli({"list", "--state", "sleeping"}), kExitError);

  ASSERT_EQ(Cli({"cancel", "abc123"}), kExitOk);
  EXPECT_EQ(out_.str(), "jobs/abc123 CANCELLING\n");
}

TEST_F(ClientCliTest, ConnectionErrors) {
  EXPECT_EQ(Cli({"get", "abc123", "--token-file", (dir_ / "missing").string()}), kExitError);
  EXPECT_EQ(err_.str().rfind("error: NOT_FOUND: --token-file", 0), 0u) << err_.str();
  WriteFile(dir_ / "token", "  tok-from-file\n");
  service_.job.set_state(v1::ConversionJob::PENDING);
  ASSERT_EQ(Cli({"get", "abc123", "--token-file", (dir_ / "token").string()}), kExitOk) << err_.str();
  EXPECT_EQ(service_.authorization.back(), "Bearer tok-from-file");
}

}  // namespace
}  // namespace fm::client
