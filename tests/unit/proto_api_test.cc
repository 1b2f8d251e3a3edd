// Tests of the v1 API contract (fm_proto): message round trips, the operation envelope, service descriptors and
// annotations, generated gRPC stubs over a loopback port, and wire compatibility with the generated Python modules
// (tests/parity/check_proto_python.py, which builds the same messages independently and talks to the C++ server).
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include "flashmorph/v1/conversion_service.grpc.pb.h"
#include "flashmorph/v1/worker_service.grpc.pb.h"
#include "google/api/field_behavior.pb.h"
#include "google/api/resource.pb.h"
#include "google/longrunning/operations.grpc.pb.h"
#include "google/rpc/code.pb.h"
#include "google/rpc/error_details.pb.h"

namespace fm {
namespace {

namespace v1 = ::flashmorph::v1;
namespace pb = ::google::protobuf;

// ---- The canonical messages. check_proto_python.py builds the same values; keep the two in step. ----------------

constexpr char kJobName[] = "jobs/0f3a9c";
constexpr int kNumLayers = 28;
constexpr int64_t kCreateSeconds = 1'800'000'000;

pb::Timestamp At(int64_t seconds, int32_t nanos = 0) {
  pb::Timestamp t;
  t.set_seconds(seconds);
  t.set_nanos(nanos);
  return t;
}

pb::Duration Seconds(int64_t seconds) {
  pb::Duration d;
  d.set_seconds(seconds);
  return d;
}

// Distinct per-layer scores in [0, 1): (l * 7919 mod 101) / 100.
std::vector<double> Scores() {
  std::vector<double> scores(kNumLayers);
  for (int l = 0; l < kNumLayers; ++l) scores[l] = static_cast<double>((l * 7919) % 101) / 100.0;
  return scores;
}

// The layout that keeps the k best-scored layers, with its margin and near ties (tolerance 0.05 around the lowest
// kept score).
v1::Layout MakeLayout(const v1::AttentionBudget& budget, int k) {
  const std::vector<double> scores = Scores();
  std::vector<int> order(kNumLayers);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return scores[a] > scores[b]; });
  std::vector<int> kept(order.begin(), order.begin() + k);
  std::sort(kept.begin(), kept.end());

  v1::Layout layout;
  *layout.mutable_budget() = budget;
  layout.set_method(v1::ConversionSpec::FLASHMORPH);
  for (int l = 0; l < kNumLayers; ++l) {
    const bool full = std::binary_search(kept.begin(), kept.end(), l);
    layout.add_layer_types(full ? v1::Layout::FULL_ATTENTION : v1::Layout::LINEAR_ATTENTION);
    layout.add_scores(scores[l]);
  }
  for (int l : kept) layout.add_full_attention_layer_indices(l);
  const double threshold = scores[order[k - 1]];
  layout.set_cut_margin(threshold - scores[order[k]]);
  layout.set_near_tie_tolerance(0.05);
  for (int l = 0; l < kNumLayers; ++l) {
    if (std::abs(scores[l] - threshold) <= 0.05) layout.add_near_tie_indices(l);
  }
  return layout;
}

v1::ConversionJob MakeJob() {
  v1::ConversionJob job;
  job.set_name(kJobName);
  job.set_tenant("team-a");

  v1::ConversionSpec* spec = job.mutable_spec();
  spec->mutable_model()->set_uri("file:///models/qwen3-1.7b");
  spec->mutable_model()->set_revision("main");
  spec->mutable_model()->set_source_sha256(std::string(64, 'a'));
  spec->add_budgets()->set_full_attention_layers(7);
  spec->add_budgets()->set_full_attention_ratio(0.125);
  spec->set_selection_method(v1::ConversionSpec::FLASHMORPH);
  spec->set_branch_kind(v1::ConversionSpec::GATED_DELTANET);
  v1::CalibrationSettings* calibration = spec->mutable_calibration();
  calibration->set_train_tokens(5'000'000);
  calibration->set_learning_rate(1e-3);
  calibration->set_sequence_length_tokens(2048);
  calibration->set_batch_sequences(8);
  v1::GateSettings* gates = spec->mutable_gates();
  gates->set_train_tokens(20'000'000);
  gates->set_learning_rate_start(2e-2);
  gates->set_learning_rate_end(2e-3);
  gates->set_sparsity_lambda(0.0);  // explicitly zero: presence must survive the wire
  gates->set_min_context_tokens(1024);
  gates->set_max_context_tokens(16384);
  gates->set_passkeys_per_sample(10);
  gates->set_activation_checkpointing(false);
  v1::PostTrainingSettings* post = spec->mutable_post_training();
  post->set_distill_tokens(0);  // explicitly skipped
  post->set_long_context_tokens(100'000'000);
  post->set_long_context_sequence_tokens(32768);
  post->set_learning_rate(1e-5);
  post->set_trainable(v1::PostTrainingSettings::ALL);
  v1::EvaluationSettings* evaluation = spec->mutable_evaluation();
  for (int length : {1024, 4096, 16384}) evaluation->add_needle_context_tokens(length);
  evaluation->set_needle_samples_per_length(20);
  evaluation->set_held_out_tokens(1'000'000);
  spec->set_seed(18'446'744'073'709'551'557ULL);  // above INT64_MAX: unsigned on both sides
  spec->mutable_data()->mutable_token_file()->set_path("/data/tokens.u32");
  spec->mutable_data()->mutable_token_file()->set_dtype(v1::DataSource::TokenFile::UINT32);
  spec->mutable_output()->set_dtype(v1::OutputOptions::BFLOAT16);
  spec->mutable_output()->set_max_shard_bytes(5'000'000'000);
  spec->set_priority(-5);
  (*spec->mutable_labels())["team"] = "research";
  (*spec->mutable_labels())["model"] = "qwen3";
  *spec->mutable_deadline() = At(kCreateSeconds + 86'400, 5);

  job.set_state(v1::ConversionJob::SUCCEEDED);
  job.set_stage(v1::ConversionJob::EXPORT);
  v1::Progress* progress = job.mutable_progress();
  progress->set_step(1000);
  progress->set_total_steps(1000);
  progress->set_processed_tokens(20'000'000);
  progress->set_loss(0.25);
  (*progress->mutable_loss_terms())["hidden_mse"] = 0.2;
  (*progress->mutable_loss_terms())["gate_sparsity"] = 0.05;
  progress->set_tokens_per_second(22800.5);
  *progress->mutable_estimated_remaining() = Seconds(0);
  job.set_attempt(2);
  job.set_worker("gpu-node-3");
  *job.mutable_create_time() = At(kCreateSeconds);
  *job.mutable_start_time() = At(kCreateSeconds + 60);
  *job.mutable_end_time() = At(kCreateSeconds + 7200);
  *job.mutable_update_time() = At(kCreateSeconds + 7200);
  job.set_request_id("9b2d6c1e-5a4f-4e8b-9d0c-1f2e3a4b5c6d");

  v1::ConversionResult* result = job.mutable_result();
  *result->add_layouts() = MakeLayout(spec->budgets(0), 7);
  *result->add_layouts() = MakeLayout(spec->budgets(1), 4);
  v1::EvaluationReport* report = result->mutable_evaluation();
  const struct {
    int length;
    double teacher, hybrid;
  } needles[] = {{1024, 1.0, 0.95}, {4096, 1.0, 0.9}, {16384, 0.95, 0.8}};
  for (const auto& n : needles) {
    v1::EvaluationReport::NeedleRecall* recall = report->add_needle_recall();
    recall->set_context_tokens(n.length);
    recall->set_samples(20);
    recall->set_teacher_recall(n.teacher);
    recall->set_hybrid_recall(n.hybrid);
  }
  report->set_held_out_tokens(1'000'000);
  report->set_teacher_perplexity(8.5);
  report->set_hybrid_perplexity(9.125);
  report->set_kl_divergence(0.042);
  for (int stage = v1::ConversionJob::LOAD; stage <= v1::ConversionJob::EXPORT; ++stage) {
    v1::StageTiming* timing = result->add_stage_timings();
    timing->set_stage(static_cast<v1::ConversionJob::Stage>(stage));
    *timing->mutable_wall_time() = Seconds(10 * stage);
    timing->set_processed_tokens(1000 * stage);
    timing->set_attempt(stage <= v1::ConversionJob::GATES ? 1 : 2);
  }
  result->set_artifact_uri("file:///var/lib/flashmorph/artifacts/jobs/0f3a9c");
  result->set_artifact_manifest_sha256(std::string(64, 'b'));
  result->set_artifact_size_bytes(3'400'000'000);
  result->set_source_sha256(std::string(64, 'a'));
  result->set_seed(spec->seed());
  result->set_engine_version("0.1.0");
  return job;
}

v1::ConversionMetadata MakeMetadata() {
  const v1::ConversionJob job = MakeJob();
  v1::ConversionMetadata metadata;
  metadata.set_job(job.name());
  metadata.set_state(job.state());
  metadata.set_stage(job.stage());
  *metadata.mutable_progress() = job.progress();
  metadata.mutable_gates()->set_step(1000);
  for (double score : Scores()) metadata.mutable_gates()->add_layer_gates(score);
  metadata.set_worker(job.worker());
  metadata.set_attempt(job.attempt());
  *metadata.mutable_create_time() = job.create_time();
  *metadata.mutable_update_time() = job.update_time();
  return metadata;
}

// The operation of a finished job: metadata and response packed in Any.
google::longrunning::Operation MakeOperation() {
  google::longrunning::Operation operation;
  operation.set_name("operations/0f3a9c");
  operation.mutable_metadata()->PackFrom(MakeMetadata());
  operation.set_done(true);
  operation.mutable_response()->PackFrom(MakeJob());
  return operation;
}

// The operation of a job whose spec was rejected, with a google.rpc.BadRequest detail.
google::longrunning::Operation MakeFailedOperation() {
  google::longrunning::Operation operation;
  operation.set_name("operations/0f3a9d");
  operation.set_done(true);
  google::rpc::Status* error = operation.mutable_error();
  error->set_code(google::rpc::INVALID_ARGUMENT);
  error->set_message("spec.budgets[0]: 40 full-attention layers but the model has 28");
  google::rpc::BadRequest bad_request;
  google::rpc::BadRequest::FieldViolation* violation = bad_request.add_field_violations();
  violation->set_field("spec.budgets[0].full_attention_layers");
  violation->set_description("must be in [1, 27]");
  error->add_details()->PackFrom(bad_request);
  return operation;
}

// The event log the test server streams: sequences skip numbers, as after thinning.
std::vector<v1::JobEvent> MakeEvents() {
  std::vector<v1::JobEvent> events;
  auto add = [&](int64_t sequence, int32_t attempt) -> v1::JobEvent& {
    v1::JobEvent& event = events.emplace_back();
    event.set_job(kJobName);
    event.set_sequence(sequence);
    *event.mutable_time() = At(kCreateSeconds + sequence);
    event.set_attempt(attempt);
    return event;
  };
  add(1, 0).mutable_state_change()->set_current(v1::ConversionJob::PENDING);
  v1::StateChange* running = add(2, 1).mutable_state_change();
  running->set_previous(v1::ConversionJob::PENDING);
  running->set_current(v1::ConversionJob::RUNNING);
  add(4, 1).mutable_stage_change()->set_current(v1::ConversionJob::LOAD);
  v1::GateVector* gates = add(7, 1).mutable_gates();
  gates->set_step(10);
  for (double g : {1.0, 0.5, 0.25}) gates->add_layer_gates(g);
  *add(9, 1).mutable_result() = MakeJob().result();
  return events;
}

std::string Diff(const pb::Message& expected, const pb::Message& actual) {
  pb::util::MessageDifferencer differencer;
  std::string report;
  differencer.ReportDifferencesToString(&report);
  return differencer.Compare(expected, actual) ? "" : report;
}

template <typename M>
M RoundTrip(const M& message) {
  std::string bytes;
  EXPECT_TRUE(message.SerializeToString(&bytes));
  M parsed;
  EXPECT_TRUE(parsed.ParseFromString(bytes));
  return parsed;
}

// ---- Messages ------------------------------------------------------------------------------------------------------

TEST(ProtoApiTest, JobRoundTripsThroughTheWire) {
  const v1::ConversionJob job = MakeJob();
  const v1::ConversionJob parsed = RoundTrip(job);
  EXPECT_EQ(Diff(job, parsed), "");
  // proto3 `optional` keeps explicit zeros distinct from unset.
  EXPECT_TRUE(parsed.spec().gates().has_sparsity_lambda());
  EXPECT_EQ(parsed.spec().gates().sparsity_lambda(), 0.0);
  EXPECT_TRUE(parsed.spec().post_training().has_distill_tokens());
  EXPECT_FALSE(v1::GateSettings().has_sparsity_lambda());
  EXPECT_EQ(parsed.spec().budgets(1).budget_case(), v1::AttentionBudget::kFullAttentionRatio);
  EXPECT_EQ(parsed.spec().data().source_case(), v1::DataSource::kTokenFile);
  EXPECT_EQ(parsed.spec().seed(), 18'446'744'073'709'551'557ULL);
  ASSERT_EQ(parsed.result().layouts_size(), 2);
  EXPECT_EQ(parsed.result().layouts(0).full_attention_layer_indices_size(), 7);
  EXPECT_EQ(parsed.result().layouts(0).layer_types_size(), kNumLayers);
  EXPECT_GT(parsed.result().layouts(0).cut_margin(), 0.0);
}

TEST(ProtoApiTest, OperationCarriesMetadataAndResponseInAny) {
  const google::longrunning::Operation parsed = RoundTrip(MakeOperation());
  EXPECT_EQ(parsed.metadata().type_url(), "type.googleapis.com/flashmorph.v1.ConversionMetadata");
  EXPECT_EQ(parsed.response().type_url(), "type.googleapis.com/flashmorph.v1.ConversionJob");
  EXPECT_EQ(parsed.result_case(), google::longrunning::Operation::kResponse);
  v1::ConversionMetadata metadata;
  ASSERT_TRUE(parsed.metadata().UnpackTo(&metadata));
  EXPECT_EQ(Diff(MakeMetadata(), metadata), "");
  v1::ConversionJob job;
  EXPECT_FALSE(parsed.response().UnpackTo(&metadata));  // wrong type is refused
  ASSERT_TRUE(parsed.response().UnpackTo(&job));
  EXPECT_EQ(Diff(MakeJob(), job), "");

  const google::longrunning::Operation failed = RoundTrip(MakeFailedOperation());
  EXPECT_EQ(failed.result_case(), google::longrunning::Operation::kError);
  EXPECT_EQ(failed.error().code(), google::rpc::INVALID_ARGUMENT);
  google::rpc::BadRequest bad_request;
  ASSERT_EQ(failed.error().details_size(), 1);
  ASSERT_TRUE(failed.error().details(0).UnpackTo(&bad_request));
  EXPECT_EQ(bad_request.field_violations(0).field(), "spec.budgets[0].full_attention_layers");
}

// ---- Descriptors and annotations -----------------------------------------------------------------------------------

struct MethodShape {
  std::string name, input, output;
  bool client_streaming, server_streaming;
};

void ExpectService(const std::string& service_name, const std::vector<MethodShape>& expected) {
  const pb::ServiceDescriptor* service = pb::DescriptorPool::generated_pool()->FindServiceByName(service_name);
  ASSERT_NE(service, nullptr) << service_name;
  EXPECT_EQ(service->method_count(), static_cast<int>(expected.size())) << service_name;
  for (const MethodShape& shape : expected) {
    const pb::MethodDescriptor* method = service->FindMethodByName(shape.name);
    ASSERT_NE(method, nullptr) << service_name << "." << shape.name;
    EXPECT_EQ(method->input_type()->full_name(), shape.input) << shape.name;
    EXPECT_EQ(method->output_type()->full_name(), shape.output) << shape.name;
    EXPECT_EQ(method->client_streaming(), shape.client_streaming) << shape.name;
    EXPECT_EQ(method->server_streaming(), shape.server_streaming) << shape.name;
  }
}

TEST(ProtoApiTest, ConversionServiceHasEveryMethodWithItsStreamingShape) {
  const std::string p = "flashmorph.v1.";
  ExpectService(p + "ConversionService",
                {{"CreateConversionJob", p + "CreateConversionJobRequest", "google.longrunning.Operation", false,
                  false},
                 {"GetConversionJob", p + "GetConversionJobRequest", p + "ConversionJob", false, false},
                 {"ListConversionJobs", p + "ListConversionJobsRequest", p + "ListConversionJobsResponse", false,
                  false},
                 {"CancelConversionJob", p + "CancelConversionJobRequest", p + "ConversionJob", false, false},
                 {"WatchConversionJob", p + "WatchConversionJobRequest", p + "JobEvent", false, true},
                 {"ReadArtifact", p + "ReadArtifactRequest", p + "ReadArtifactResponse", false, true},
                 {"GetArtifactManifest", p + "GetArtifactManifestRequest", p + "ArtifactManifest", false, false}});

  // The create call names its operation's response and metadata types, and both exist.
  const pb::MethodDescriptor* create =
      pb::DescriptorPool::generated_pool()->FindMethodByName(p + "ConversionService.CreateConversionJob");
  ASSERT_NE(create, nullptr);
  ASSERT_TRUE(create->options().HasExtension(google::longrunning::operation_info));
  const google::longrunning::OperationInfo& info = create->options().GetExtension(google::longrunning::operation_info);
  EXPECT_EQ(info.response_type(), p + "ConversionJob");
  EXPECT_EQ(info.metadata_type(), p + "ConversionMetadata");
  EXPECT_NE(pb::DescriptorPool::generated_pool()->FindMessageTypeByName(info.response_type()), nullptr);
  EXPECT_NE(pb::DescriptorPool::generated_pool()->FindMessageTypeByName(info.metadata_type()), nullptr);
}

TEST(ProtoApiTest, WorkerServiceHasEveryMethodWithItsStreamingShape) {
  const std::string p = "flashmorph.v1.";
  ExpectService(p + "WorkerService",
                {{"RegisterWorker", p + "RegisterWorkerRequest", p + "RegisterWorkerResponse", false, false},
                 {"LeaseJob", p + "LeaseJobRequest", p + "LeaseJobResponse", false, false},
                 {"Heartbeat", p + "HeartbeatRequest", p + "HeartbeatResponse", false, false},
                 {"CompleteJob", p + "CompleteJobRequest", p + "CompleteJobResponse", false, false},
                 {"UploadArtifact", p + "UploadArtifactRequest", p + "UploadArtifactResponse", true, false}});
}

TEST(ProtoApiTest, OperationsServiceAndItsStubAreGenerated) {
  const std::string g = "google.longrunning.";
  ExpectService(g + "Operations",
                {{"ListOperations", g + "ListOperationsRequest", g + "ListOperationsResponse", false, false},
                 {"GetOperation", g + "GetOperationRequest", g + "Operation", false, false},
                 {"DeleteOperation", g + "DeleteOperationRequest", "google.protobuf.Empty", false, false},
                 {"CancelOperation", g + "CancelOperationRequest", "google.protobuf.Empty", false, false},
                 {"WaitOperation", g + "WaitOperationRequest", g + "Operation", false, false}});
  // The C++ service base class and stub exist (the server implements Operations).
  static_assert(std::is_base_of_v<grpc::Service, google::longrunning::Operations::Service>);
  using google::longrunning::Operations;
  static_assert(std::is_base_of_v<Operations::StubInterface, Operations::Stub>);
}

// SelectionMethod -> SELECTION_METHOD.
std::string UpperSnake(const std::string& camel) {
  std::string out;
  for (size_t i = 0; i < camel.size(); ++i) {
    if (i > 0 && std::isupper(static_cast<unsigned char>(camel[i]))) out += '_';
    out += static_cast<char>(std::toupper(static_cast<unsigned char>(camel[i])));
  }
  return out;
}

std::vector<const pb::FileDescriptor*> OurFiles() {
  std::vector<const pb::FileDescriptor*> files;
  for (const char* name : {"artifact", "conversion_job", "conversion_service", "conversion_spec", "job_event",
                           "layout", "worker_service"}) {
    const pb::FileDescriptor* file =
        pb::DescriptorPool::generated_pool()->FindFileByName(std::string("flashmorph/v1/") + name + ".proto");
    EXPECT_NE(file, nullptr) << name;
    if (file != nullptr) files.push_back(file);
  }
  return files;
}

TEST(ProtoApiTest, EveryEnumStartsWithItsUnspecifiedZero) {
  std::vector<const pb::EnumDescriptor*> enums;
  std::function<void(const pb::Descriptor*)> visit = [&](const pb::Descriptor* message) {
    for (int i = 0; i < message->enum_type_count(); ++i) enums.push_back(message->enum_type(i));
    for (int i = 0; i < message->nested_type_count(); ++i) visit(message->nested_type(i));
  };
  for (const pb::FileDescriptor* file : OurFiles()) {
    EXPECT_EQ(file->package(), "flashmorph.v1") << file->name();
    for (int i = 0; i < file->enum_type_count(); ++i) enums.push_back(file->enum_type(i));
    for (int i = 0; i < file->message_type_count(); ++i) visit(file->message_type(i));
  }
  std::set<std::string> names;
  for (const pb::EnumDescriptor* e : enums) names.insert(e->full_name());
  for (const char* name : {"ConversionSpec.SelectionMethod", "ConversionSpec.BranchKind",
                           "PostTrainingSettings.TrainableParams", "DataSource.TokenFile.TokenDtype",
                           "OutputOptions.Dtype", "Layout.LayerType", "ConversionJob.State", "ConversionJob.Stage",
                           "LogLine.Severity"}) {
    EXPECT_EQ(names.count(std::string("flashmorph.v1.") + name), 1u) << name;
  }
  for (const pb::EnumDescriptor* e : enums) {
    ASSERT_GT(e->value_count(), 1) << e->full_name();
    EXPECT_EQ(e->value(0)->number(), 0) << e->full_name();
    EXPECT_EQ(e->value(0)->name(), UpperSnake(e->name()) + "_UNSPECIFIED") << e->full_name();
    for (int i = 1; i < e->value_count(); ++i) EXPECT_GT(e->value(i)->number(), 0) << e->value(i)->full_name();
  }
}

std::set<int> Behaviors(const std::string& message, const std::string& field) {
  const pb::Descriptor* d = pb::DescriptorPool::generated_pool()->FindMessageTypeByName("flashmorph.v1." + message);
  EXPECT_NE(d, nullptr) << message;
  if (d == nullptr) return {};
  const pb::FieldDescriptor* f = d->FindFieldByName(field);
  EXPECT_NE(f, nullptr) << message << "." << field;
  if (f == nullptr) return {};
  std::set<int> out;
  const pb::FieldOptions& options = f->options();
  for (int i = 0; i < options.ExtensionSize(google::api::field_behavior); ++i) {
    out.insert(options.GetExtension(google::api::field_behavior, i));
  }
  return out;
}

TEST(ProtoApiTest, ResourceAndFieldBehaviorAnnotations) {
  const pb::MessageOptions& job_options = v1::ConversionJob::descriptor()->options();
  ASSERT_TRUE(job_options.HasExtension(google::api::resource));
  const google::api::ResourceDescriptor& resource = job_options.GetExtension(google::api::resource);
  EXPECT_EQ(resource.type(), "flashmorph/ConversionJob");
  ASSERT_EQ(resource.pattern_size(), 1);
  EXPECT_EQ(resource.pattern(0), "jobs/{job}");

  EXPECT_EQ(Behaviors("ConversionJob", "name"), std::set<int>{google::api::IDENTIFIER});
  for (const char* field : {"tenant", "state", "stage", "attempt", "error", "result", "create_time"}) {
    EXPECT_EQ(Behaviors("ConversionJob", field), std::set<int>{google::api::OUTPUT_ONLY}) << field;
  }
  EXPECT_EQ(Behaviors("CreateConversionJobRequest", "spec"), std::set<int>{google::api::REQUIRED});
  EXPECT_EQ(Behaviors("ConversionSpec", "model"), std::set<int>{google::api::REQUIRED});
  EXPECT_EQ(Behaviors("HeartbeatRequest", "lease_id"), std::set<int>{google::api::REQUIRED});
  EXPECT_EQ(Behaviors("CompleteJobRequest", "lease_id"), std::set<int>{google::api::REQUIRED});
}

// Worker writes all carry a lease id.
TEST(ProtoApiTest, EveryWorkerWriteCarriesALeaseId) {
  for (const char* request : {"HeartbeatRequest", "CompleteJobRequest", "UploadArtifactRequest"}) {
    const pb::Descriptor* d = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(
        std::string("flashmorph.v1.") + request);
    ASSERT_NE(d, nullptr) << request;
    const pb::FieldDescriptor* lease = d->FindFieldByName("lease_id");
    ASSERT_NE(lease, nullptr) << request;
    EXPECT_EQ(lease->type(), pb::FieldDescriptor::TYPE_STRING) << request;
  }
}

// ---- Generated stubs over a loopback port --------------------------------------------------------------------------

// Serves GetConversionJob (unary) and WatchConversionJob (server streaming) from the canonical messages.
class TestConversionService final : public v1::ConversionService::Service {
 public:
  grpc::Status GetConversionJob(grpc::ServerContext*, const v1::GetConversionJobRequest* request,
                                v1::ConversionJob* response) override {
    if (request->name() != kJobName) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no job " + request->name());
    *response = MakeJob();
    return grpc::Status::OK;
  }

  grpc::Status WatchConversionJob(grpc::ServerContext*, const v1::WatchConversionJobRequest* request,
                                  grpc::ServerWriter<v1::JobEvent>* writer) override {
    if (request->name() != kJobName) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no job " + request->name());
    if (request->after_sequence() < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "after_sequence must be >= 0");
    }
    for (const v1::JobEvent& event : MakeEvents()) {
      if (event.sequence() > request->after_sequence() && !writer->Write(event)) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      }
    }
    return grpc::Status::OK;
  }
};

class ProtoLoopbackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
    stub_ = v1::ConversionService::NewStub(
        grpc::CreateCustomChannel(Target(), grpc::InsecureChannelCredentials(), args));
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  std::string Target() const { return "127.0.0.1:" + std::to_string(port_); }

  TestConversionService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::ConversionService::Stub> stub_;
};

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return context;
}

TEST_F(ProtoLoopbackTest, UnaryCallReturnsTheJobOrNotFound) {
  v1::GetConversionJobRequest request;
  request.set_name(kJobName);
  v1::ConversionJob job;
  grpc::Status status = stub_->GetConversionJob(Context().get(), request, &job);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Diff(MakeJob(), job), "");

  request.set_name("jobs/missing");
  status = stub_->GetConversionJob(Context().get(), request, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(status.error_message(), "no job jobs/missing");

  // A method the test server does not implement answers UNIMPLEMENTED.
  v1::ListConversionJobsResponse list;
  status = stub_->ListConversionJobs(Context().get(), v1::ListConversionJobsRequest(), &list);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(ProtoLoopbackTest, WatchStreamResumesAfterASequence) {
  v1::WatchConversionJobRequest request;
  request.set_name(kJobName);
  request.set_after_sequence(2);
  auto context = Context();
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader = stub_->WatchConversionJob(context.get(), request);
  std::vector<v1::JobEvent> received;
  for (v1::JobEvent event; reader->Read(&event);) received.push_back(event);
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();

  std::vector<v1::JobEvent> expected;
  for (const v1::JobEvent& event : MakeEvents()) {
    if (event.sequence() > 2) expected.push_back(event);
  }
  ASSERT_EQ(received.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(Diff(expected[i], received[i]), "") << i;
  EXPECT_EQ(received.back().event_case(), v1::JobEvent::kResult);
}

// ---- Wire compatibility with the generated Python modules ----------------------------------------------------------

void WriteFile(const std::filesystem::path& path, const pb::Message& message) {
  std::ofstream out(path, std::ios::binary);
  ASSERT_TRUE(message.SerializeToOstream(&out)) << path;
}

template <typename M>
M ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  M message;
  EXPECT_TRUE(in.good()) << path;
  EXPECT_TRUE(message.ParseFromIstream(&in)) << path;
  return message;
}

// Every file the two services depend on, dependencies first.
pb::FileDescriptorSet ApiDescriptorSet() {
  pb::FileDescriptorSet set;
  std::set<std::string> seen;
  std::function<void(const pb::FileDescriptor*)> add = [&](const pb::FileDescriptor* file) {
    if (file == nullptr) {
      ADD_FAILURE() << "a descriptor file is missing from the generated pool";
      return;
    }
    if (!seen.insert(file->name()).second) return;
    for (int i = 0; i < file->dependency_count(); ++i) add(file->dependency(i));
    file->CopyTo(set.add_file());
  };
  add(v1::CreateConversionJobRequest::descriptor()->file());  // conversion_service.proto
  add(v1::HeartbeatRequest::descriptor()->file());  // worker_service.proto
  add(google::longrunning::Operation::descriptor()->file());
  add(google::rpc::BadRequest::descriptor()->file());
  add(google::rpc::Code_descriptor()->file());
  return set;
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

TEST_F(ProtoLoopbackTest, PythonModulesAgreeOnTheWire) {
#ifndef FM_PROTO_PYTHON_DIR
  GTEST_SKIP() << "the Python API modules were not generated (FLASHMORPH_PYTHON lacks grpc_tools)";
#else
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / ("proto_api_test_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  WriteFile(dir / "job.bin", MakeJob());
  WriteFile(dir / "operation.bin", MakeOperation());
  WriteFile(dir / "failed_operation.bin", MakeFailedOperation());
  WriteFile(dir / "descriptors.bin", ApiDescriptorSet());

  const std::string command = Quote(FM_PYTHON) + " -B " + Quote(FM_SOURCE_DIR "/tests/parity/check_proto_python.py") +
                              " " + Quote(FM_PROTO_PYTHON_DIR) + " " + Quote(dir.string()) + " --target " + Target();
  const int rc = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(rc)) << command;
  ASSERT_EQ(WEXITSTATUS(rc), 0) << command;

  // The messages Python built on its own parse in C++ to the same values.
  EXPECT_EQ(Diff(MakeJob(), ReadFile<v1::ConversionJob>(dir / "job_py.bin")), "");
  EXPECT_EQ(Diff(MakeOperation(), ReadFile<google::longrunning::Operation>(dir / "operation_py.bin")), "");
  EXPECT_EQ(Diff(MakeFailedOperation(), ReadFile<google::longrunning::Operation>(dir / "failed_operation_py.bin")),
            "");
  std::filesystem::remove_all(dir);
#endif
}

}  // namespace
}  // namespace fm
