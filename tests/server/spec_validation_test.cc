// fm_server_spec: ValidateAndResolveSpec against the demo model (defaults, canonical paths, every bad field named
// in its INVALID_ARGUMENT), budgets against the layer/head count read from config.json or GGUF metadata, broken
// checkpoints, data sources through the model roots, and RequestFingerprint.
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "server/auth/model_roots.h"
#include "server/spec/request_fingerprint.h"
#include "server/spec/spec_validation.h"
#include "worker/engine/formats/sha256.h"
#include "worker/engine/model/model_config.h"

namespace fm::server {
namespace {

namespace fs = std::filesystem;
using flashmorph::v1::ConversionSpec;
using flashmorph::v1::DataSource;
using flashmorph::v1::OutputOptions;
using flashmorph::v1::PostTrainingSettings;
using ::testing::HasSubstr;

const std::string kDemoDir = std::string(FM_SOURCE_DIR) + "/models/demo";
const std::string kDemoModel = kDemoDir + "/qwen3-demo";

std::string Canonical(const std::string& path) {
  char buf[PATH_MAX];
  EXPECT_NE(::realpath(path.c_str(), buf), nullptr) << path;
  return buf;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

class SpecValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (fs::path(testing::TempDir()) / "fm_spec_XXXXXX").string();
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    tmp_ = Canonical(templ);
    fs::create_directories(tmp_ + "/root");
    fs::create_directories(tmp_ + "/outside");
    WriteFile(tmp_ + "/root/data.jsonl", "{\"text\": \"hello\"}\n");
    WriteFile(tmp_ + "/root/tokens.u16", std::string(64, '\0'));
    WriteFile(tmp_ + "/outside/data.jsonl", "{\"text\": \"secret\"}\n");
    auto roots = ModelRoots::Create({kDemoDir, tmp_ + "/root"});
    ASSERT_TRUE(roots.ok()) << roots.status();
    roots_ = *roots;
    auto config = LoadModelConfig(kDemoModel);
    ASSERT_TRUE(config.ok()) << config.status();
    layers_ = config->num_layers;
    heads_ = config->num_layers * config->num_heads;
    ASSERT_GE(layers_, 3);
  }
  void TearDown() override { fs::remove_all(tmp_); }

  SpecContext Ctx(int max_priority = 100) {
    SpecContext ctx;
    ctx.roots = &roots_;
    ctx.max_priority = max_priority;
    ctx.now = absl::FromUnixSeconds(1'800'000'000);
    ctx.draw_seed = [this] {
      ++draws_;
      return uint64_t{0xfeedbeef12345678};
    };
    return ctx;
  }

  static ConversionSpec ValidSpec() {
    ConversionSpec spec;
    spec.mutable_model()->set_uri(kDemoModel);
    spec.add_budgets()->set_full_attention_layers(2);
    spec.add_budgets()->set_full_attention_ratio(0.5);
    return spec;
  }

  std::string tmp_;
  ModelRoots roots_;
  int64_t layers_ = 0, heads_ = 0;
  int draws_ = 0;
};

TEST_F(SpecValidationTest, ValidSpecResolvesDefaultsAndCanonicalPath) {
  ConversionSpec spec = ValidSpec();
  spec.mutable_model()->set_uri("file://" + kDemoDir + "/./qwen3-demo/");
  auto out = ValidateAndResolveSpec(spec, Ctx());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->model().uri(), Canonical(kDemoModel));
  EXPECT_EQ(out->selection_method(), ConversionSpec::FLASHMORPH);
  EXPECT_EQ(out->branch_kind(), ConversionSpec::GATED_DELTANET);
  EXPECT_EQ(out->post_training().trainable(), PostTrainingSettings::BRANCHES_ONLY);
  EXPECT_TRUE(out->data().has_bundled());
  ASSERT_TRUE(out->has_seed());
  EXPECT_EQ(out->seed(), uint64_t{0xfeedbeef12345678});
  EXPECT_EQ(draws_, 1);
  EXPECT_EQ(out->output().dtype(), OutputOptions::DTYPE_UNSPECIFIED);  // the source dtype
  EXPECT_FALSE(out->gates().has_sparsity_lambda());
  ASSERT_EQ(out->budgets_size(), 2);
  EXPECT_EQ(out->budgets(0).full_attention_layers(), 2);

  // Given values are kept; a given seed (even 0) is not redrawn.
  spec.set_seed(0);
  spec.set_selection_method(ConversionSpec::UNIFORM);
  spec.set_branch_kind(ConversionSpec::GLA);
  spec.mutable_post_training()->set_trainable(PostTrainingSettings::ALL);
  auto out2 = ValidateAndResolveSpec(spec, Ctx());
  ASSERT_TRUE(out2.ok()) << out2.status();
  EXPECT_EQ(out2->seed(), 0u);
  EXPECT_EQ(draws_, 1);
  EXPECT_EQ(out2->selection_method(), ConversionSpec::UNIFORM);
  EXPECT_EQ(out2->branch_kind(), ConversionSpec::GLA);
  EXPECT_EQ(out2->post_training().trainable(), PostTrainingSettings::ALL);
}

TEST_F(SpecValidationTest, FullyPopulatedValidSpec) {
  ConversionSpec spec = ValidSpec();
  spec.mutable_model()->set_source_sha256(std::string(64, 'a'));
  spec.mutable_calibration()->set_train_tokens(1000);
  spec.mutable_calibration()->set_learning_rate(1e-3);
  spec.mutable_gates()->set_sparsity_lambda(0);
  spec.mutable_gates()->set_min_context_tokens(128);
  spec.mutable_gates()->set_max_context_tokens(128);
  spec.mutable_post_training()->set_distill_tokens(0);
  spec.mutable_evaluation()->add_needle_context_tokens(64);
  spec.mutable_evaluation()->add_needle_context_tokens(128);
  spec.mutable_evaluation()->set_held_out_tokens(0);
  spec.mutable_output()->set_max_shard_bytes(1 << 20);
  spec.mutable_output()->set_dtype(OutputOptions::FLOAT32);
  spec.set_priority(50);
  (*spec.mutable_labels())["team_x-1"] = std::string(63, 'v');
  spec.mutable_deadline()->set_seconds(1'800'000'001);
  spec.mutable_resources()->set_gpus(64);
  spec.mutable_data()->mutable_jsonl()->set_path("file://" + tmp_ + "/root/./data.jsonl");
  auto out = ValidateAndResolveSpec(spec, Ctx(50));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->data().jsonl().path(), tmp_ + "/root/data.jsonl");
  EXPECT_EQ(out->data().jsonl().text_field(), "text");
  EXPECT_TRUE(out->gates().has_sparsity_lambda());

  spec.mutable_data()->mutable_token_file()->set_path(tmp_ + "/root/tokens.u16");
  spec.mutable_data()->mutable_token_file()->set_dtype(DataSource::TokenFile::UINT16);
  auto out2 = ValidateAndResolveSpec(spec, Ctx(50));
  ASSERT_TRUE(out2.ok()) << out2.status();
  EXPECT_EQ(out2->data().token_file().path(), tmp_ + "/root/tokens.u16");
}

struct BadCase {
  std::string name;
  std::function<void(ConversionSpec&)> mutate;
  std::string field;  // the message must start with it
};

TEST_F(SpecValidationTest, EachBadFieldIsInvalidArgumentNamingIt) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<BadCase> cases = {
      {"no model", [](auto& s) { s.mutable_model()->clear_uri(); }, "spec.model.uri"},
      {"scheme", [](auto& s) { s.mutable_model()->set_uri("hf://Qwen/Qwen3-8B"); }, "spec.model.uri"},
      {"relative", [](auto& s) { s.mutable_model()->set_uri("models/demo/qwen3-demo"); }, "spec.model.uri"},
      {"sha short", [](auto& s) { s.mutable_model()->set_source_sha256("abc"); }, "spec.model.source_sha256"},
      {"sha upper", [](auto& s) { s.mutable_model()->set_source_sha256(std::string(64, 'A')); },
       "spec.model.source_sha256"},
      {"no budgets", [](auto& s) { s.clear_budgets(); }, "spec.budgets"},
      {"17 budgets",
       [](auto& s) {
         while (s.budgets_size() < 17) s.add_budgets()->set_full_attention_layers(1);
       },
       "spec.budgets"},
      {"unset budget", [](auto& s) { s.add_budgets(); }, "spec.budgets[2]"},
      {"zero layers", [](auto& s) { s.mutable_budgets(0)->set_full_attention_layers(0); },
       "spec.budgets[0].full_attention_layers"},
      {"negative layers", [](auto& s) { s.mutable_budgets(0)->set_full_attention_layers(-1); },
       "spec.budgets[0].full_attention_layers"},
      {"ratio 1.5", [](auto& s) { s.mutable_budgets(1)->set_full_attention_ratio(1.5); },
       "spec.budgets[1].full_attention_ratio: must be in (0, 1), got 1.5"},
      {"ratio 0", [](auto& s) { s.mutable_budgets(1)->set_full_attention_ratio(0); },
       "spec.budgets[1].full_attention_ratio"},
      {"ratio 1", [](auto& s) { s.mutable_budgets(1)->set_full_attention_ratio(1); },
       "spec.budgets[1].full_attention_ratio"},
      {"ratio nan", [nan](auto& s) { s.mutable_budgets(1)->set_full_attention_ratio(nan); },
       "spec.budgets[1].full_attention_ratio"},
      {"ratio -inf", [inf](auto& s) { s.mutable_budgets(1)->set_full_attention_ratio(-inf); },
       "spec.budgets[1].full_attention_ratio"},
      {"heads with layer method", [](auto& s) { s.mutable_budgets(0)->set_full_attention_heads(4); },
       "spec.budgets[0].full_attention_heads"},
      {"layers with HEAD", [](auto& s) { s.set_selection_method(ConversionSpec::HEAD); },
       "spec.budgets[0].full_attention_layers"},
      {"zero heads",
       [](auto& s) {
         s.set_selection_method(ConversionSpec::HEAD);
         s.mutable_budgets(0)->set_full_attention_heads(0);
       },
       "spec.budgets[0].full_attention_heads"},
      {"method 99", [](auto& s) { s.set_selection_method(static_cast<ConversionSpec::SelectionMethod>(99)); },
       "spec.selection_method"},
      {"branch 99", [](auto& s) { s.set_branch_kind(static_cast<ConversionSpec::BranchKind>(99)); },
       "spec.branch_kind"},
      {"trainable 99",
       [](auto& s) {
         s.mutable_post_training()->set_trainable(static_cast<PostTrainingSettings::TrainableParams>(99));
       },
       "spec.post_training.trainable"},
      {"dtype 99", [](auto& s) { s.mutable_output()->set_dtype(static_cast<OutputOptions::Dtype>(99)); },
       "spec.output.dtype"},
      {"calib tokens", [](auto& s) { s.mutable_calibration()->set_train_tokens(-1); }, "spec.calibration.train_tokens"},
      {"calib lr", [](auto& s) { s.mutable_calibration()->set_learning_rate(-1e-3); },
       "spec.calibration.learning_rate"},
      {"calib lr nan", [nan](auto& s) { s.mutable_calibration()->set_learning_rate(nan); },
       "spec.calibration.learning_rate"},
      {"calib seq", [](auto& s) { s.mutable_calibration()->set_sequence_length_tokens(-1); },
       "spec.calibration.sequence_length_tokens"},
      {"calib batch", [](auto& s) { s.mutable_calibration()->set_batch_sequences(-2); },
       "spec.calibration.batch_sequences"},
      {"gate tokens", [](auto& s) { s.mutable_gates()->set_train_tokens(-1); }, "spec.gates.train_tokens"},
      {"gate lr start inf", [inf](auto& s) { s.mutable_gates()->set_learning_rate_start(inf); },
       "spec.gates.learning_rate_start"},
      {"gate lr end", [](auto& s) { s.mutable_gates()->set_learning_rate_end(-0.1); }, "spec.gates.learning_rate_end"},
      {"lambda negative", [](auto& s) { s.mutable_gates()->set_sparsity_lambda(-0.1); }, "spec.gates.sparsity_lambda"},
      {"lambda nan", [nan](auto& s) { s.mutable_gates()->set_sparsity_lambda(nan); }, "spec.gates.sparsity_lambda"},
      {"min context", [](auto& s) { s.mutable_gates()->set_min_context_tokens(-1); }, "spec.gates.min_context_tokens"},
      {"max context", [](auto& s) { s.mutable_gates()->set_max_context_tokens(-1); }, "spec.gates.max_context_tokens"},
      {"min above max",
       [](auto& s) {
         s.mutable_gates()->set_min_context_tokens(2048);
         s.mutable_gates()->set_max_context_tokens(1024);
       },
       "spec.gates.min_context_tokens"},
      {"passkeys", [](auto& s) { s.mutable_gates()->set_passkeys_per_sample(-1); }, "spec.gates.passkeys_per_sample"},
      {"gate samples", [](auto& s) { s.mutable_gates()->set_samples_per_step(-2); }, "spec.gates.samples_per_step"},
      {"gate samples too many", [](auto& s) { s.mutable_gates()->set_samples_per_step(5000); },
       "spec.gates.samples_per_step"},
      {"distill", [](auto& s) { s.mutable_post_training()->set_distill_tokens(-1); },
       "spec.post_training.distill_tokens"},
      {"long ctx tokens", [](auto& s) { s.mutable_post_training()->set_long_context_tokens(-5); },
       "spec.post_training.long_context_tokens"},
      {"long ctx seq", [](auto& s) { s.mutable_post_training()->set_long_context_sequence_tokens(-1); },
       "spec.post_training.long_context_sequence_tokens"},
      {"post lr", [inf](auto& s) { s.mutable_post_training()->set_learning_rate(inf); },
       "spec.post_training.learning_rate"},
      {"needle zero", [](auto& s) { s.mutable_evaluation()->add_needle_context_tokens(0); },
       "spec.evaluation.needle_context_tokens[0]"},
      {"needle descending",
       [](auto& s) {
         s.mutable_evaluation()->add_needle_context_tokens(512);
         s.mutable_evaluation()->add_needle_context_tokens(256);
       },
       "spec.evaluation.needle_context_tokens[1]"},
      {"needle repeated",
       [](auto& s) {
         s.mutable_evaluation()->add_needle_context_tokens(256);
         s.mutable_evaluation()->add_needle_context_tokens(256);
       },
       "spec.evaluation.needle_context_tokens[1]"},
      {"17 needles",
       [](auto& s) {
         for (int i = 1; i <= 17; ++i) s.mutable_evaluation()->add_needle_context_tokens(64 * i);
       },
       "spec.evaluation.needle_context_tokens"},
      {"needle samples", [](auto& s) { s.mutable_evaluation()->set_needle_samples_per_length(-1); },
       "spec.evaluation.needle_samples_per_length"},
      {"held out", [](auto& s) { s.mutable_evaluation()->set_held_out_tokens(-1); }, "spec.evaluation.held_out_tokens"},
      {"priority 101", [](auto& s) { s.set_priority(101); }, "spec.priority"},
      {"priority -101", [](auto& s) { s.set_priority(-101); }, "spec.priority"},
      {"label key upper", [](auto& s) { (*s.mutable_labels())["Team"] = "x"; }, "spec.labels['Team']"},
      {"label key digit", [](auto& s) { (*s.mutable_labels())["1team"] = "x"; }, "spec.labels['1team']"},
      {"label key empty", [](auto& s) { (*s.mutable_labels())[""] = "x"; }, "spec.labels['']"},
      {"label key dot", [](auto& s) { (*s.mutable_labels())["a.b"] = "x"; }, "spec.labels['a.b']"},
      {"label key 64", [](auto& s) { (*s.mutable_labels())[std::string(64, 'k')] = "x"; }, "spec.labels['kkk"},
      {"label value 64", [](auto& s) { (*s.mutable_labels())["k"] = std::string(64, 'v'); }, "spec.labels['k']"},
      {"65 labels",
       [](auto& s) {
         for (int i = 0; i < 65; ++i) (*s.mutable_labels())["k" + std::to_string(i)] = "v";
       },
       "spec.labels"},
      {"deadline past", [](auto& s) { s.mutable_deadline()->set_seconds(1'799'999'999); }, "spec.deadline"},
      {"deadline now", [](auto& s) { s.mutable_deadline()->set_seconds(1'800'000'000); }, "spec.deadline"},
      {"deadline nanos",
       [](auto& s) {
         s.mutable_deadline()->set_seconds(1'900'000'000);
         s.mutable_deadline()->set_nanos(-1);
       },
       "spec.deadline"},
      {"deadline year 10000", [](auto& s) { s.mutable_deadline()->set_seconds(253402300800); }, "spec.deadline"},
      {"jsonl no path", [](auto& s) { s.mutable_data()->mutable_jsonl(); }, "spec.data.jsonl.path"},
      {"jsonl relative", [](auto& s) { s.mutable_data()->mutable_jsonl()->set_path("data.jsonl"); },
       "spec.data.jsonl.path"},
      {"jsonl field",
       [this](auto& s) {
         s.mutable_data()->mutable_jsonl()->set_path(tmp_ + "/root/data.jsonl");
         s.mutable_data()->mutable_jsonl()->set_text_field("content");
       },
       "spec.data.jsonl.text_field: only the 'text' field is supported"},
      {"jsonl is a dir", [this](auto& s) { s.mutable_data()->mutable_jsonl()->set_path(tmp_ + "/root"); },
       "spec.data.jsonl.path"},
      {"token dtype unset",
       [this](auto& s) { s.mutable_data()->mutable_token_file()->set_path(tmp_ + "/root/tokens.u16"); },
       "spec.data.token_file.dtype"},
      {"token dtype 99",
       [this](auto& s) {
         s.mutable_data()->mutable_token_file()->set_path(tmp_ + "/root/tokens.u16");
         s.mutable_data()->mutable_token_file()->set_dtype(static_cast<DataSource::TokenFile::TokenDtype>(99));
       },
       "spec.data.token_file.dtype"},
      {"token no path",
       [](auto& s) { s.mutable_data()->mutable_token_file()->set_dtype(DataSource::TokenFile::UINT32); },
       "spec.data.token_file.path"},
      {"shard negative", [](auto& s) { s.mutable_output()->set_max_shard_bytes(-1); }, "spec.output.max_shard_bytes"},
      {"shard tiny", [](auto& s) { s.mutable_output()->set_max_shard_bytes((1 << 20) - 1); },
       "spec.output.max_shard_bytes"},
      {"gpus -1", [](auto& s) { s.mutable_resources()->set_gpus(-1); }, "spec.resources.gpus"},
      {"gpus 65", [](auto& s) { s.mutable_resources()->set_gpus(65); }, "spec.resources.gpus"},
      {"gpu memory", [](auto& s) { s.mutable_resources()->set_min_gpu_memory_bytes(-1); },
       "spec.resources.min_gpu_memory_bytes"},
      {"host memory", [](auto& s) { s.mutable_resources()->set_min_host_memory_bytes(-1); },
       "spec.resources.min_host_memory_bytes"},
      {"model is a plain file", [](auto& s) { s.mutable_model()->set_uri(kDemoModel + "/tokenizer.json"); },
       "spec.model.uri"},
  };
  for (const BadCase& c : cases) {
    ConversionSpec spec = ValidSpec();
    c.mutate(spec);
    auto out = ValidateAndResolveSpec(spec, Ctx());
    ASSERT_FALSE(out.ok()) << c.name;
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << out.status();
    EXPECT_TRUE(std::string(out.status().message()).starts_with(c.field)) << c.name << ": " << out.status();
  }
  EXPECT_EQ(draws_, 0);  // no seed is drawn for a rejected spec
}

TEST_F(SpecValidationTest, PriorityAboveTenantCap) {
  ConversionSpec spec = ValidSpec();
  spec.set_priority(60);
  auto out = ValidateAndResolveSpec(spec, Ctx(50));
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("spec.priority"));
  spec.set_priority(50);
  EXPECT_TRUE(ValidateAndResolveSpec(spec, Ctx(50)).ok());
  spec.set_priority(-100);
  EXPECT_TRUE(ValidateAndResolveSpec(spec, Ctx(-50)).ok());
}

TEST_F(SpecValidationTest, PathsGoThroughModelRoots) {
  ConversionSpec spec = ValidSpec();
  spec.mutable_model()->set_uri(kDemoDir + "/missing-model");
  EXPECT_EQ(ValidateAndResolveSpec(spec, Ctx()).status().code(), absl::StatusCode::kNotFound);
  spec.mutable_model()->set_uri(kDemoDir + "/../../../etc");
  EXPECT_EQ(ValidateAndResolveSpec(spec, Ctx()).status().code(), absl::StatusCode::kPermissionDenied);
  spec.mutable_model()->set_uri(tmp_ + "/outside");
  EXPECT_EQ(ValidateAndResolveSpec(spec, Ctx()).status().code(), absl::StatusCode::kPermissionDenied);

  SpecContext no_roots = Ctx();
  no_roots.roots = nullptr;
  spec.mutable_model()->set_uri(kDemoModel);
  auto denied = ValidateAndResolveSpec(spec, no_roots);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(denied.status().message()), HasSubstr("--model-root"));

  spec = ValidSpec();
  spec.mutable_data()->mutable_jsonl()->set_path(tmp_ + "/outside/data.jsonl");
  auto data_denied = ValidateAndResolveSpec(spec, Ctx());
  EXPECT_EQ(data_denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(data_denied.status().message()), HasSubstr("spec.data.jsonl.path"));
  fs::create_symlink(tmp_ + "/outside/data.jsonl", tmp_ + "/root/escape.jsonl");
  spec.mutable_data()->mutable_jsonl()->set_path(tmp_ + "/root/escape.jsonl");
  EXPECT_EQ(ValidateAndResolveSpec(spec, Ctx()).status().code(), absl::StatusCode::kPermissionDenied);
  spec.mutable_data()->mutable_jsonl()->set_path(tmp_ + "/root/missing.jsonl");
  EXPECT_EQ(ValidateAndResolveSpec(spec, Ctx()).status().code(), absl::StatusCode::kNotFound);
  spec.mutable_data()->mutable_token_file()->set_path(tmp_ + "/root/missing.u32");
  spec.mutable_data()->mutable_token_file()->set_dtype(DataSource::TokenFile::UINT32);
  auto token_missing = ValidateAndResolveSpec(spec, Ctx());
  EXPECT_EQ(token_missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(token_missing.status().message()), HasSubstr("spec.data.token_file.path"));
}

TEST_F(SpecValidationTest, LayerBudgetsAgainstTheModel) {
  auto check = [&](auto set, ConversionSpec::SelectionMethod method) {
    ConversionSpec spec = ValidSpec();
    spec.set_selection_method(method);
    spec.clear_budgets();
    spec.add_budgets()->set_full_attention_ratio(0.25);
    set(*spec.add_budgets());
    return ValidateAndResolveSpec(spec, Ctx()).status();
  };
  using B = flashmorph::v1::AttentionBudget;
  const auto M = ConversionSpec::FLASHMORPH;
  EXPECT_TRUE(check([&](B& b) { b.set_full_attention_layers(layers_ - 1); }, M).ok());
  for (int64_t k : {layers_, layers_ + 1, int64_t{1000000}}) {
    absl::Status s = check([&](B& b) { b.set_full_attention_layers(static_cast<int32_t>(k)); }, M);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << k;
    EXPECT_THAT(std::string(s.message()), HasSubstr("spec.budgets[1].full_attention_layers")) << k;
  }
  // Ratios: the count round(ratio * L) (at least 1) must stay below L.
  const double L = static_cast<double>(layers_);
  EXPECT_TRUE(check([&](B& b) { b.set_full_attention_ratio((L - 1) / L); }, M).ok());
  EXPECT_TRUE(check([&](B& b) { b.set_full_attention_ratio(1e-9); }, M).ok());  // rounds to 0, counts as 1
  absl::Status rounds_to_all = check([&](B& b) { b.set_full_attention_ratio((L - 0.4) / L); }, M);
  EXPECT_EQ(rounds_to_all.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(rounds_to_all.message()), HasSubstr("spec.budgets[1].full_attention_ratio"));
  // UNIFORM and NLL count layers the same way.
  EXPECT_EQ(check([&](B& b) { b.set_full_attention_layers(layers_); }, ConversionSpec::UNIFORM).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(check([&](B& b) { b.set_full_attention_layers(layers_); }, ConversionSpec::NLL).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SpecValidationTest, HeadBudgetsAgainstTheModel) {
  auto check = [&](auto set) {
    ConversionSpec spec = ValidSpec();
    spec.set_selection_method(ConversionSpec::HEAD);
    spec.clear_budgets();
    set(*spec.add_budgets());
    return ValidateAndResolveSpec(spec, Ctx()).status();
  };
  using B = flashmorph::v1::AttentionBudget;
  EXPECT_TRUE(check([&](B& b) { b.set_full_attention_heads(static_cast<int32_t>(heads_ - 1)); }).ok());
  // More heads than layers is fine for HEAD (the budget counts heads).
  EXPECT_TRUE(check([&](B& b) { b.set_full_attention_heads(static_cast<int32_t>(layers_ + 1)); }).ok());
  absl::Status all = check([&](B& b) { b.set_full_attention_heads(static_cast<int32_t>(heads_)); });
  EXPECT_EQ(all.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(all.message()), HasSubstr("spec.budgets[0].full_attention_heads"));
  const double H = static_cast<double>(heads_);
  EXPECT_TRUE(check([&](B& b) { b.set_full_attention_ratio((H - 1) / H); }).ok());
  EXPECT_EQ(check([&](B& b) { b.set_full_attention_ratio((H - 0.4) / H); }).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SpecValidationTest, CheckpointDirectoryProblems) {
  ConversionSpec spec = ValidSpec();
  // A directory without config.json: NOT_FOUND naming it.
  fs::create_directories(tmp_ + "/root/empty-model");
  spec.mutable_model()->set_uri(tmp_ + "/root/empty-model");
  auto missing = ValidateAndResolveSpec(spec, Ctx());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(tmp_ + "/root/empty-model/config.json"));

  // A config.json that does not parse: INVALID_ARGUMENT naming the file.
  fs::create_directories(tmp_ + "/root/broken");
  WriteFile(tmp_ + "/root/broken/config.json", "{\"num_hidden_layers\": 8,");
  spec.mutable_model()->set_uri(tmp_ + "/root/broken");
  auto broken = ValidateAndResolveSpec(spec, Ctx());
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(broken.status().message()), HasSubstr("spec.model.uri"));
  EXPECT_THAT(std::string(broken.status().message()), HasSubstr(tmp_ + "/root/broken/config.json"));

  // Valid JSON, inconsistent model: still the config's error, naming the file.
  WriteFile(tmp_ + "/root/broken/config.json", R"({"model_type": "qwen3", "num_hidden_layers": 8})");
  auto inconsistent = ValidateAndResolveSpec(spec, Ctx());
  EXPECT_EQ(inconsistent.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(inconsistent.status().message()), HasSubstr("config.json"));

  // A copy of the demo config: the checkpoint's weights are the worker's business, the shape is enough here.
  fs::create_directories(tmp_ + "/root/copy");
  fs::copy_file(kDemoModel + "/config.json", tmp_ + "/root/copy/config.json");
  spec.mutable_model()->set_uri(tmp_ + "/root/copy");
  EXPECT_TRUE(ValidateAndResolveSpec(spec, Ctx()).ok());

  // config.json symlinked out of the roots: refused.
  fs::create_directories(tmp_ + "/root/linked");
  fs::copy_file(kDemoModel + "/config.json", tmp_ + "/outside/config.json");
  fs::create_symlink(tmp_ + "/outside/config.json", tmp_ + "/root/linked/config.json");
  spec.mutable_model()->set_uri(tmp_ + "/root/linked");
  EXPECT_EQ(ValidateAndResolveSpec(spec, Ctx()).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(SpecValidationTest, GgufModelBudgetFromMetadata) {
  // A GGUF file with llama metadata (6 blocks, 4 heads) and a token embedding, written by gguf-py.
  const std::string script = tmp_ + "/make.py", gguf = tmp_ + "/root/model.gguf";
  WriteFile(script, R"(import sys, numpy as np, gguf
w = gguf.GGUFWriter(sys.argv[1], "llama")
w.add_block_count(6); w.add_embedding_length(64); w.add_feed_forward_length(128)
w.add_head_count(4); w.add_head_count_kv(2); w.add_layer_norm_rms_eps(1e-5); w.add_context_length(256)
w.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
)");
  ASSERT_EQ(std::system((std::string(FM_PYTHON) + " " + script + " " + gguf).c_str()), 0);
  ConversionSpec spec = ValidSpec();
  spec.mutable_model()->set_uri("file://" + gguf);
  spec.clear_budgets();
  spec.add_budgets()->set_full_attention_layers(5);
  auto ok = ValidateAndResolveSpec(spec, Ctx());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->model().uri(), gguf);
  spec.mutable_budgets(0)->set_full_attention_layers(6);
  EXPECT_EQ(ValidateAndResolveSpec(spec, Ctx()).status().code(), absl::StatusCode::kInvalidArgument);
  spec.set_selection_method(ConversionSpec::HEAD);
  spec.mutable_budgets(0)->set_full_attention_heads(23);
  EXPECT_TRUE(ValidateAndResolveSpec(spec, Ctx()).ok());
  spec.mutable_budgets(0)->set_full_attention_heads(24);
  EXPECT_EQ(ValidateAndResolveSpec(spec, Ctx()).status().code(), absl::StatusCode::kInvalidArgument);

  // Garbage with a .gguf name: the GGUF reader's error, naming the file.
  WriteFile(tmp_ + "/root/bad.gguf", "not a gguf file at all");
  spec.mutable_model()->set_uri(tmp_ + "/root/bad.gguf");
  auto bad = ValidateAndResolveSpec(spec, Ctx());
  EXPECT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("bad.gguf"));
}

TEST(RequestFingerprintTest, StableAndSensitive) {
  ConversionSpec a;
  a.mutable_model()->set_uri("/models/m");
  a.add_budgets()->set_full_attention_layers(2);
  (*a.mutable_labels())["x"] = "1";
  (*a.mutable_labels())["y"] = "2";
  ConversionSpec b;  // the same content, built in another order
  (*b.mutable_labels())["y"] = "2";
  (*b.mutable_labels())["x"] = "1";
  b.add_budgets()->set_full_attention_layers(2);
  b.mutable_model()->set_uri("/models/m");

  const std::string fa = RequestFingerprint("team-a", a);
  EXPECT_EQ(fa.size(), 64u);
  EXPECT_EQ(fa, RequestFingerprint("team-a", a));
  EXPECT_EQ(fa, RequestFingerprint("team-a", b));
  EXPECT_NE(fa, RequestFingerprint("team-b", a));
  EXPECT_NE(fa, RequestFingerprint("", a));
  b.set_priority(1);
  EXPECT_NE(fa, RequestFingerprint("team-a", b));
  b.set_priority(0);
  EXPECT_EQ(fa, RequestFingerprint("team-a", b));
  b.set_seed(0);  // presence of an optional field counts
  EXPECT_NE(fa, RequestFingerprint("team-a", b));
  ConversionSpec c = a;
  c.mutable_budgets(0)->set_full_attention_ratio(0.5);
  EXPECT_NE(fa, RequestFingerprint("team-a", c));
  c = a;
  (*c.mutable_labels())["x"] = "3";
  EXPECT_NE(fa, RequestFingerprint("team-a", c));
  // The tenant is length-prefixed: moving bytes between tenant and spec cannot collide.
  EXPECT_NE(RequestFingerprint("ab", ConversionSpec()), RequestFingerprint("a", ConversionSpec()));

  // The documented formula: SHA-256 of the tenant's 8-byte little-endian length, the tenant, the spec's bytes.
  std::string deterministic;
  {
    google::protobuf::io::StringOutputStream raw(&deterministic);
    google::protobuf::io::CodedOutputStream out(&raw);
    out.SetSerializationDeterministic(true);
    a.SerializeToCodedStream(&out);
  }
  std::string input = std::string("\x06\0\0\0\0\0\0\0", 8) + "team-a" + deterministic;
  EXPECT_EQ(fa, Sha256Hex(input.data(), input.size()));
}

}  // namespace
}  // namespace fm::server
