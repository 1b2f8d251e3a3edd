// spec_options (worker/agent): every ConversionSpec field the engine consumes lands in fm::ConversionOptions with
// the API's defaults; malformed or unsupported specs are user errors naming the field; engine layouts, evaluation and
// stage timings map back to the API's ConversionResult. Expected values come from the engine's own torch-free
// functions (SelectTopK, UniformLayout, StageName, kNearTieThreshold) or from the inputs, never typed in twice.
#include <set>
#include <string>
#include <vector>

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include "worker/agent/spec_options.h"
#include "worker/engine/morph/layout.h"

namespace fm::worker {
namespace {

namespace pb = ::flashmorph::v1;

pb::ConversionSpec MinimalSpec() {
  pb::ConversionSpec s;
  s.mutable_model()->set_uri("/models/demo");
  s.add_budgets()->set_full_attention_ratio(0.25);
  return s;
}

absl::StatusOr<fm::ConversionOptions> Map(const pb::ConversionSpec& s) {
  return OptionsFromSpec(s, "/out/output", "/out/work", DeviceChoice{"cpu", 0});
}

TEST(OptionsFromSpec, EveryFieldLands) {
  pb::ConversionSpec s;
  s.mutable_model()->set_uri("file:///models/my%20model");
  s.add_budgets()->set_full_attention_heads(12);
  s.add_budgets()->set_full_attention_heads(24);
  s.set_selection_method(pb::ConversionSpec::HEAD);
  s.set_branch_kind(pb::ConversionSpec::GLA);
  s.mutable_calibration()->set_train_tokens(123456);
  s.mutable_calibration()->set_learning_rate(0.004);
  s.mutable_calibration()->set_sequence_length_tokens(333);
  s.mutable_calibration()->set_batch_sequences(7);
  s.mutable_gates()->set_train_tokens(999999);
  s.mutable_gates()->set_learning_rate_start(0.03);
  s.mutable_gates()->set_learning_rate_end(0.001);
  s.mutable_gates()->set_sparsity_lambda(0.0);  // optional: 0 is a real value
  s.mutable_gates()->set_min_context_tokens(128);
  s.mutable_gates()->set_max_context_tokens(4096);
  s.mutable_gates()->set_passkeys_per_sample(5);
  s.mutable_gates()->set_activation_checkpointing(false);
  s.mutable_gates()->set_samples_per_step(4);
  s.mutable_post_training()->set_distill_tokens(0);  // optional: 0 = skip
  s.mutable_post_training()->set_long_context_tokens(777);
  s.mutable_post_training()->set_long_context_sequence_tokens(2048);
  s.mutable_post_training()->set_learning_rate(0.0002);
  s.mutable_post_training()->set_trainable(pb::PostTrainingSettings::ALL);
  s.mutable_evaluation()->add_needle_context_tokens(256);
  s.mutable_evaluation()->add_needle_context_tokens(1024);
  s.mutable_evaluation()->set_needle_samples_per_length(9);
  s.mutable_evaluation()->set_held_out_tokens(4096);
  s.set_seed(424242);
  s.mutable_data()->mutable_token_file()->set_path("/data/tokens.u32");
  s.mutable_data()->mutable_token_file()->set_dtype(pb::DataSource::TokenFile::UINT32);
  s.mutable_output()->set_dtype(pb::OutputOptions::FLOAT16);
  s.mutable_output()->set_max_shard_bytes(int64_t{3} << 30);
  s.set_priority(50);                   // the scheduler's
  (*s.mutable_labels())["team"] = "a";  // the scheduler's
  s.mutable_resources()->set_gpus(1);   // the scheduler's

  absl::StatusOr<fm::ConversionOptions> o = OptionsFromSpec(s, "/a/output", "/a/work", DeviceChoice{"cuda:1", 6});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_path, "/models/my model");
  EXPECT_EQ(o->output_dir, "/a/output");
  EXPECT_EQ(o->work_dir, "/a/work");
  EXPECT_EQ(o->method, fm::SelectionMethod::kHead);
  EXPECT_EQ(o->branch, fm::BranchKind::kGla);
  ASSERT_EQ(o->budgets.size(), 2u);
  EXPECT_EQ(o->budgets[0].unit, fm::Budget::Unit::kHeads);
  EXPECT_EQ(o->budgets[0].value, s.budgets(0).full_attention_heads());
  EXPECT_EQ(o->budgets[1].value, s.budgets(1).full_attention_heads());
  EXPECT_EQ(o->seed, s.seed());
  EXPECT_EQ(o->calibration.train_tokens, s.calibration().train_tokens());
  EXPECT_EQ(o->calibration.learning_rate, s.calibration().learning_rate());
  EXPECT_EQ(o->calibration.sequence_length, s.calibration().sequence_length_tokens());
  EXPECT_EQ(o->calibration.batch_sequences, s.calibration().batch_sequences());
  EXPECT_EQ(o->gates.train_tokens, s.gates().train_tokens());
  EXPECT_EQ(o->gates.learning_rate_start, s.gates().learning_rate_start());
  EXPECT_EQ(o->gates.learning_rate_end, s.gates().learning_rate_end());
  EXPECT_EQ(o->gates.sparsity_lambda, 0.0);
  EXPECT_EQ(o->gates.min_context, s.gates().min_context_tokens());
  EXPECT_EQ(o->gates.max_context, s.gates().max_context_tokens());
  EXPECT_EQ(o->gates.passkeys_per_sample, s.gates().passkeys_per_sample());
  EXPECT_EQ(o->gates.batch_sequences, s.gates().samples_per_step());
  ASSERT_TRUE(o->gates.activation_checkpointing.has_value());
  EXPECT_FALSE(*o->gates.activation_checkpointing);
  EXPECT_EQ(o->post_training.distill_tokens, 0);
  EXPECT_EQ(o->post_training.long_context_tokens, s.post_training().long_context_tokens());
  EXPECT_EQ(o->post_training.long_context_length, s.post_training().long_context_sequence_tokens());
  EXPECT_EQ(o->post_training.learning_rate, s.post_training().learning_rate());
  EXPECT_TRUE(o->post_training.train_all);
  EXPECT_EQ(o->evaluation.needle_lengths, (std::vector<int64_t>{256, 1024}));
  EXPECT_EQ(o->evaluation.needle_samples, s.evaluation().needle_samples_per_length());
  EXPECT_EQ(o->evaluation.held_out_tokens, s.evaluation().held_out_tokens());
  EXPECT_TRUE(o->evaluation.enabled);
  EXPECT_EQ(o->data.kind, fm::TextSourceKind::kTokensU32);
  EXPECT_EQ(o->data.path, "/data/tokens.u32");
  EXPECT_EQ(o->export_dtype, "float16");
  EXPECT_EQ(o->max_shard_bytes, s.output().max_shard_bytes());
  EXPECT_EQ(o->device, "cuda:1");
  EXPECT_EQ(o->threads, 6);
}

TEST(OptionsFromSpec, SeveralGpusBecomeADeviceList) {
  pb::ConversionSpec s = MinimalSpec();
  s.mutable_resources()->set_gpus(3);
  s.mutable_resources()->set_shard_layers(true);
  absl::StatusOr<fm::ConversionOptions> o = OptionsFromSpec(s, "/o", "/w", DeviceChoice{"cuda", 0});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->device, "cuda:0,cuda:1,cuda:2");
  EXPECT_TRUE(o->shard_layers);
  s.mutable_resources()->set_gpus(1);  // one GPU: nothing to shard over
  o = OptionsFromSpec(s, "/o", "/w", DeviceChoice{"cuda", 0});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->device, "cuda");
  EXPECT_FALSE(o->shard_layers);
  s.mutable_resources()->set_gpus(2);  // a worker pinned to one GPU (or the CPU) cannot run it
  for (const char* pinned : {"cuda:1", "cpu"}) {
    o = OptionsFromSpec(s, "/o", "/w", DeviceChoice{pinned, 0});
    EXPECT_EQ(o.status().code(), absl::StatusCode::kFailedPrecondition) << pinned;
    EXPECT_NE(o.status().message().find("spec.resources.gpus"), std::string::npos) << o.status();
  }
}

TEST(OptionsFromSpec, UnsetMeansTheEnginesScaledDefaults) {
  const fm::ConversionOptions engine_defaults;
  absl::StatusOr<fm::ConversionOptions> o = Map(MinimalSpec());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_path, "/models/demo");
  EXPECT_EQ(o->method, fm::SelectionMethod::kFlashMorph);
  EXPECT_EQ(o->branch, fm::BranchKind::kGatedDeltaNet);
  ASSERT_EQ(o->budgets.size(), 1u);
  EXPECT_EQ(o->budgets[0].unit, fm::Budget::Unit::kRatio);
  EXPECT_EQ(o->budgets[0].value, 0.25);
  EXPECT_EQ(o->seed, 0u);
  EXPECT_EQ(o->calibration.train_tokens, engine_defaults.calibration.train_tokens);
  EXPECT_EQ(o->calibration.learning_rate, engine_defaults.calibration.learning_rate);
  EXPECT_EQ(o->calibration.sequence_length, engine_defaults.calibration.sequence_length);
  EXPECT_EQ(o->calibration.batch_sequences, engine_defaults.calibration.batch_sequences);
  EXPECT_EQ(o->gates.train_tokens, engine_defaults.gates.train_tokens);
  EXPECT_EQ(o->gates.batch_sequences, engine_defaults.gates.batch_sequences);
  EXPECT_EQ(o->gates.learning_rate_start, engine_defaults.gates.learning_rate_start);
  EXPECT_EQ(o->gates.learning_rate_end, engine_defaults.gates.learning_rate_end);
  EXPECT_EQ(o->gates.sparsity_lambda, 0.1);  // the API's documented default
  EXPECT_EQ(o->gates.min_context, engine_defaults.gates.min_context);
  EXPECT_EQ(o->gates.max_context, engine_defaults.gates.max_context);
  EXPECT_EQ(o->gates.passkeys_per_sample, engine_defaults.gates.passkeys_per_sample);
  EXPECT_FALSE(o->gates.activation_checkpointing.has_value());
  EXPECT_EQ(o->nll.samples, engine_defaults.nll.samples);
  EXPECT_EQ(o->post_training.distill_tokens, -1);
  EXPECT_EQ(o->post_training.long_context_tokens, -1);
  EXPECT_EQ(o->post_training.long_context_length, engine_defaults.post_training.long_context_length);
  EXPECT_EQ(o->post_training.learning_rate, engine_defaults.post_training.learning_rate);
  EXPECT_FALSE(o->post_training.train_all);
  EXPECT_TRUE(o->evaluation.needle_lengths.empty());
  EXPECT_EQ(o->evaluation.needle_samples, engine_defaults.evaluation.needle_samples);
  EXPECT_EQ(o->evaluation.held_out_tokens, engine_defaults.evaluation.held_out_tokens);
  EXPECT_EQ(o->data.kind, fm::TextSourceKind::kBundled);
  EXPECT_EQ(o->export_dtype, engine_defaults.export_dtype);
  EXPECT_EQ(o->max_shard_bytes, engine_defaults.max_shard_bytes);
  EXPECT_EQ(o->device, "cpu");
}

TEST(OptionsFromSpec, BudgetsMethodsBranchesAndData) {
  pb::ConversionSpec s = MinimalSpec();
  s.clear_budgets();
  s.add_budgets()->set_full_attention_layers(4);
  s.add_budgets()->set_full_attention_ratio(0.5);
  s.set_selection_method(pb::ConversionSpec::UNIFORM);
  s.set_branch_kind(pb::ConversionSpec::LIGHTNING);
  s.mutable_data()->mutable_jsonl()->set_path("/data/text.jsonl");
  absl::StatusOr<fm::ConversionOptions> o = Map(s);
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_EQ(o->budgets.size(), 2u);
  EXPECT_EQ(o->budgets[0].unit, fm::Budget::Unit::kLayers);
  EXPECT_EQ(o->budgets[0].value, 4);
  EXPECT_EQ(o->budgets[1].unit, fm::Budget::Unit::kRatio);
  EXPECT_EQ(o->budgets[1].value, 0.5);
  EXPECT_EQ(o->method, fm::SelectionMethod::kUniform);
  EXPECT_EQ(o->branch, fm::BranchKind::kLightning);
  EXPECT_EQ(o->data.kind, fm::TextSourceKind::kJsonl);
  EXPECT_EQ(o->data.path, "/data/text.jsonl");
  EXPECT_EQ(o->data.text_field, "text");

  s.mutable_data()->mutable_jsonl()->set_text_field("body");
  s.set_selection_method(pb::ConversionSpec::NLL);
  s.set_branch_kind(pb::ConversionSpec::GATED_DELTANET);
  o = Map(s);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->data.text_field, "body");
  EXPECT_EQ(o->method, fm::SelectionMethod::kNll);
  EXPECT_EQ(o->branch, fm::BranchKind::kGatedDeltaNet);

  s.mutable_data()->mutable_token_file()->set_path("/data/t.u16");
  s.mutable_data()->mutable_token_file()->set_dtype(pb::DataSource::TokenFile::UINT16);
  o = Map(s);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->data.kind, fm::TextSourceKind::kTokensU16);
  EXPECT_EQ(o->data.path, "/data/t.u16");

  s.mutable_data()->mutable_bundled();
  s.set_selection_method(pb::ConversionSpec::FLASHMORPH);
  o = Map(s);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->data.kind, fm::TextSourceKind::kBundled);
  EXPECT_EQ(o->method, fm::SelectionMethod::kFlashMorph);

  for (auto [dtype, name] :
       std::vector<std::pair<pb::OutputOptions::Dtype, std::string>>{{pb::OutputOptions::BFLOAT16, "bfloat16"},
                                                                     {pb::OutputOptions::FLOAT16, "float16"},
                                                                     {pb::OutputOptions::FLOAT32, "float32"}}) {
    s.mutable_output()->set_dtype(dtype);
    o = Map(s);
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_EQ(o->export_dtype, name);
  }
}

TEST(OptionsFromSpec, GateEndRateDefaultsToATenthOfTheStart) {
  pb::ConversionSpec s = MinimalSpec();
  s.mutable_gates()->set_learning_rate_start(0.04);
  absl::StatusOr<fm::ConversionOptions> o = Map(s);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_DOUBLE_EQ(o->gates.learning_rate_end, s.gates().learning_rate_start() / 10);
}

TEST(OptionsFromSpec, NllTrainTokensBoundTheScoredSamples) {
  pb::ConversionSpec s = MinimalSpec();
  s.set_selection_method(pb::ConversionSpec::NLL);
  s.mutable_gates()->set_train_tokens(10000);
  // Without a context length the sample count stays the engine's.
  absl::StatusOr<fm::ConversionOptions> o = Map(s);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->nll.samples, fm::ConversionOptions().nll.samples);
  s.mutable_gates()->set_min_context_tokens(200);
  s.mutable_gates()->set_max_context_tokens(600);
  o = Map(s);
  ASSERT_TRUE(o.ok()) << o.status();
  const int64_t mean = (s.gates().min_context_tokens() + s.gates().max_context_tokens()) / 2;
  EXPECT_EQ(o->nll.samples, s.gates().train_tokens() / mean);
  EXPECT_LE(o->nll.samples * mean, s.gates().train_tokens());
}

void ExpectError(const pb::ConversionSpec& s, absl::StatusCode code, const std::string& field) {
  absl::StatusOr<fm::ConversionOptions> o = Map(s);
  ASSERT_FALSE(o.ok()) << field;
  EXPECT_EQ(o.status().code(), code) << o.status();
  EXPECT_NE(o.status().message().find(field), std::string::npos) << o.status();
}

TEST(OptionsFromSpec, MalformedSpecsAreUserErrorsNamingTheField) {
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  pb::ConversionSpec s = MinimalSpec();
  s.mutable_model()->clear_uri();
  ExpectError(s, kInvalid, "spec.model.uri");
  for (const char* uri :
       {"models/relative", "hf://org/model", "s3://bucket/x", "file://otherhost/m", "file:///a%zz", "file:///a%2"}) {
    s = MinimalSpec();
    s.mutable_model()->set_uri(uri);
    ExpectError(s, kInvalid, "spec.model.uri");
  }
  s = MinimalSpec();
  s.mutable_model()->set_revision("main");
  ExpectError(s, absl::StatusCode::kUnimplemented, "spec.model.revision");
  s = MinimalSpec();
  s.clear_budgets();
  ExpectError(s, kInvalid, "spec.budgets");
  s = MinimalSpec();
  s.add_budgets();
  ExpectError(s, kInvalid, "spec.budgets[1]");
  for (double r : {0.0, 1.0, -0.5, 1.5}) {
    s = MinimalSpec();
    s.mutable_budgets(0)->set_full_attention_ratio(r);
    ExpectError(s, kInvalid, "spec.budgets[0].full_attention_ratio");
  }
  s = MinimalSpec();
  s.mutable_budgets(0)->set_full_attention_layers(0);
  ExpectError(s, kInvalid, "spec.budgets[0]");
  s = MinimalSpec();
  s.mutable_data()->mutable_token_file()->set_path("/t.bin");
  ExpectError(s, kInvalid, "spec.data.token_file.dtype");
  s = MinimalSpec();
  s.mutable_data()->mutable_jsonl()->set_path("rel.jsonl");
  ExpectError(s, kInvalid, "spec.data.jsonl.path");
  s = MinimalSpec();
  s.mutable_calibration()->set_train_tokens(-1);
  ExpectError(s, kInvalid, "spec.calibration.train_tokens");
  s = MinimalSpec();
  s.mutable_gates()->set_sparsity_lambda(-0.1);
  ExpectError(s, kInvalid, "spec.gates.sparsity_lambda");
  s = MinimalSpec();
  s.mutable_post_training()->set_distill_tokens(-1);  // -1 would silently mean "scaled" in the engine
  ExpectError(s, kInvalid, "spec.post_training.distill_tokens");
  s = MinimalSpec();
  s.mutable_evaluation()->add_needle_context_tokens(1024);
  s.mutable_evaluation()->add_needle_context_tokens(512);
  ExpectError(s, kInvalid, "spec.evaluation.needle_context_tokens");
  s = MinimalSpec();
  s.mutable_evaluation()->set_held_out_tokens(0);
  ExpectError(s, absl::StatusCode::kUnimplemented, "spec.evaluation.held_out_tokens");
  s = MinimalSpec();
  s.set_selection_method(static_cast<pb::ConversionSpec::SelectionMethod>(99));
  ExpectError(s, kInvalid, "spec.selection_method");
  s = MinimalSpec();
  s.set_branch_kind(static_cast<pb::ConversionSpec::BranchKind>(99));
  ExpectError(s, kInvalid, "spec.branch_kind");
}

TEST(OptionsFromSpec, ExportDtypeForSource) {
  for (const char* d : {"bfloat16", "float16", "float32"}) EXPECT_EQ(ExportDtypeForSource(d), d);
  for (const char* d : {"", "float64", "int8", "auto"}) EXPECT_EQ(ExportDtypeForSource(d), "");
}

TEST(Stages, EveryEngineStageMapsInOrder) {
  const std::vector<fm::Stage> stages = {fm::Stage::kLoad,           fm::Stage::kCalibration,  fm::Stage::kSelection,
                                         fm::Stage::kDiscretization, fm::Stage::kPostTraining, fm::Stage::kEvaluation,
                                         fm::Stage::kExport};
  const std::vector<pb::ConversionJob::Stage> expected = {pb::ConversionJob::LOAD,       pb::ConversionJob::CALIBRATE,
                                                          pb::ConversionJob::GATES,      pb::ConversionJob::DISCRETIZE,
                                                          pb::ConversionJob::POST_TRAIN, pb::ConversionJob::EVALUATE,
                                                          pb::ConversionJob::EXPORT};
  for (size_t i = 0; i < stages.size(); ++i) {
    EXPECT_EQ(StageToProto(stages[i]), expected[i]);
    EXPECT_EQ(StageNameToProto(fm::StageName(stages[i])), expected[i]);
  }
  EXPECT_EQ(StageNameToProto("nonsense"), pb::ConversionJob::STAGE_UNSPECIFIED);
}

TEST(LayoutToProto, LayerLevel) {
  const std::vector<double> scores = {0.9, 0.1, 0.5, 0.49, 0.2};
  absl::StatusOr<fm::Layout> l =
      fm::SelectTopK(scores, fm::Budget{fm::Budget::Unit::kLayers, 2}, 5, 4, false, "flashmorph");
  ASSERT_TRUE(l.ok()) << l.status();
  ASSERT_FALSE(l->near_ties.empty());  // 0.5 vs 0.49 is a near tie
  pb::AttentionBudget requested;
  requested.set_full_attention_layers(2);
  const pb::Layout p = LayoutToProto(*l, &requested);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(p.budget(), requested));
  EXPECT_EQ(p.method(), pb::ConversionSpec::FLASHMORPH);
  const std::vector<fm::LayerType> types = l->LayerTypes();
  ASSERT_EQ(p.layer_types_size(), static_cast<int>(types.size()));
  std::vector<int32_t> full;
  for (size_t i = 0; i < types.size(); ++i) {
    EXPECT_EQ(p.layer_types(i),
              types[i] == fm::LayerType::kFullAttention ? pb::Layout::FULL_ATTENTION : pb::Layout::LINEAR_ATTENTION);
    if (types[i] == fm::LayerType::kFullAttention) full.push_back(static_cast<int32_t>(i));
  }
  EXPECT_EQ(std::vector<int32_t>(p.full_attention_layer_indices().begin(), p.full_attention_layer_indices().end()),
            full);
  EXPECT_EQ(std::vector<int64_t>(full.begin(), full.end()), l->kept);
  EXPECT_EQ(std::vector<double>(p.scores().begin(), p.scores().end()), scores);
  EXPECT_EQ(p.cut_margin(), *l->margin);
  std::set<int32_t> ties;
  for (const fm::NearTie& t : l->near_ties) {
    ties.insert(static_cast<int32_t>(t.kept));
    ties.insert(static_cast<int32_t>(t.dropped));
  }
  EXPECT_EQ(std::set<int32_t>(p.near_tie_indices().begin(), p.near_tie_indices().end()), ties);
  EXPECT_TRUE(std::is_sorted(p.near_tie_indices().begin(), p.near_tie_indices().end()));
  EXPECT_EQ(p.near_tie_tolerance(), fm::kNearTieThreshold);
  EXPECT_FALSE(p.has_head_layout());

  // Without a requested budget, the layout's own.
  const pb::Layout derived = LayoutToProto(*l, nullptr);
  EXPECT_EQ(derived.budget().full_attention_layers(), 2);
}

TEST(LayoutToProto, HeadLevel) {
  const int64_t L = 3, H = 4;
  std::vector<double> scores;
  for (int64_t u = 0; u < L * H; ++u) scores.push_back(static_cast<double>((u * 7) % 11) / 11.0);
  absl::StatusOr<fm::Layout> l = fm::SelectTopK(scores, fm::Budget{fm::Budget::Unit::kHeads, 5}, L, H, true, "head");
  ASSERT_TRUE(l.ok()) << l.status();
  const pb::Layout p = LayoutToProto(*l, nullptr);
  EXPECT_EQ(p.budget().full_attention_heads(), 5);
  EXPECT_EQ(p.method(), pb::ConversionSpec::HEAD);
  EXPECT_EQ(p.scores_size(), 0);  // HEAD: the gates are in head_layout
  ASSERT_TRUE(p.has_head_layout());
  const pb::HeadLayout& hl = p.head_layout();
  EXPECT_EQ(hl.heads_per_layer(), H);
  EXPECT_EQ(hl.full_attention_heads(), l->kept_units);
  const auto heads = l->FullAttentionHeads();
  const auto types = l->LayerTypes();
  ASSERT_EQ(hl.layers_size(), L);
  for (int64_t i = 0; i < L; ++i) {
    EXPECT_EQ(std::vector<int64_t>(hl.layers(i).full_attention_head_indices().begin(),
                                   hl.layers(i).full_attention_head_indices().end()),
              heads[i]);
    EXPECT_EQ(std::vector<double>(hl.layers(i).head_gates().begin(), hl.layers(i).head_gates().end()),
              std::vector<double>(scores.begin() + i * H, scores.begin() + (i + 1) * H));
    const pb::Layout::LayerType want = types[i] == fm::LayerType::kFullAttention     ? pb::Layout::FULL_ATTENTION
                                       : types[i] == fm::LayerType::kLinearAttention ? pb::Layout::LINEAR_ATTENTION
                                                                                     : pb::Layout::MIXED;
    EXPECT_EQ(p.layer_types(i), want);
  }
  EXPECT_EQ(p.cut_margin(), *l->margin);
}

TEST(LayoutToProto, UniformAndMalformedLayouts) {
  absl::StatusOr<fm::Layout> u = fm::UniformLayout(fm::Budget{fm::Budget::Unit::kRatio, 0.5}, 8, 4);
  ASSERT_TRUE(u.ok()) << u.status();
  const pb::Layout p = LayoutToProto(*u, nullptr);
  EXPECT_EQ(p.method(), pb::ConversionSpec::UNIFORM);
  EXPECT_EQ(p.scores_size(), 0);
  EXPECT_EQ(p.cut_margin(), 0);
  EXPECT_EQ(p.near_tie_tolerance(), 0);
  EXPECT_EQ(std::vector<int64_t>(p.full_attention_layer_indices().begin(), p.full_attention_layer_indices().end()),
            u->kept);
  EXPECT_EQ(p.budget().full_attention_ratio(), 0.5);

  fm::Layout bad;  // out-of-range units and a head-level layout without heads: dropped, no crash
  bad.num_layers = 2;
  bad.kept = {-1, 0, 7};
  bad.method = "nonsense";
  const pb::Layout q = LayoutToProto(bad, nullptr);
  EXPECT_EQ(q.layer_types_size(), 2);
  EXPECT_EQ(q.full_attention_layer_indices_size(), 1);
  EXPECT_EQ(q.method(), pb::ConversionSpec::SELECTION_METHOD_UNSPECIFIED);
  bad.head_level = true;
  bad.num_heads = 0;
  EXPECT_EQ(LayoutToProto(bad, nullptr).full_attention_layer_indices_size(), 0);
}

TEST(GateVectorToProto, LayerAndHeadGates) {
  const std::vector<double> g = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6};
  pb::GateVector v = GateVectorToProto(7, g, 0);
  EXPECT_EQ(v.step(), 7);
  EXPECT_EQ(std::vector<double>(v.layer_gates().begin(), v.layer_gates().end()), g);
  EXPECT_EQ(v.head_gates_size(), 0);
  v = GateVectorToProto(8, g, 3);
  EXPECT_EQ(v.heads_per_layer(), 3);
  EXPECT_EQ(std::vector<double>(v.head_gates().begin(), v.head_gates().end()), g);
  EXPECT_EQ(v.layer_gates_size(), 0);
}

TEST(ResultToProto, LayoutsEvaluationTimingsAndReport) {
  pb::ConversionSpec spec = MinimalSpec();
  spec.clear_budgets();
  spec.add_budgets()->set_full_attention_ratio(0.5);
  spec.add_budgets()->set_full_attention_layers(1);
  spec.set_seed(17);
  const std::vector<double> gates = {0.3, 0.8, 0.1, 0.6};
  fm::ConversionResult r;
  for (const fm::Budget& b : {fm::Budget{fm::Budget::Unit::kRatio, 0.5}, fm::Budget{fm::Budget::Unit::kLayers, 1}}) {
    absl::StatusOr<fm::Layout> l = fm::SelectTopK(gates, b, 4, 2, false, "flashmorph");
    ASSERT_TRUE(l.ok());
    r.layouts.push_back(*l);
  }
  r.evaluation = fm::EvaluationResult{};
  r.evaluation->needles = {{512, 0.75, 0.5, 0.9, 0.8}, {1024, 0.5, 0.25, 0.7, 0.6}};
  r.evaluation->teacher_ppl = 12.5;
  r.evaluation->hybrid_ppl = 14.25;
  r.evaluation->kl = 0.125;
  r.evaluation->text_tokens = 8192;
  for (fm::Stage s : {fm::Stage::kLoad, fm::Stage::kCalibration, fm::Stage::kSelection, fm::Stage::kPostTraining,
                      fm::Stage::kEvaluation, fm::Stage::kExport})
    r.timings.push_back({std::string(fm::StageName(s)), 1.5 + static_cast<double>(s), 1000 * static_cast<int64_t>(s)});
  r.report_json = R"({"engine": "flashmorph-engine 9.9", "source": {"sha256": "abc123"}, "seed": 99})";

  const pb::ConversionResult p = ResultToProto(r, spec, {3, 16});
  ASSERT_EQ(p.layouts_size(), 2);
  for (int i = 0; i < 2; ++i)
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(p.layouts(i),
                                                                   LayoutToProto(r.layouts[i], &spec.budgets(i))));
  EXPECT_EQ(p.layouts(0).budget().full_attention_ratio(), 0.5);
  ASSERT_TRUE(p.has_evaluation());
  ASSERT_EQ(p.evaluation().needle_recall_size(), 2);
  for (int i = 0; i < 2; ++i) {
    const auto& n = p.evaluation().needle_recall(i);
    EXPECT_EQ(n.context_tokens(), r.evaluation->needles[i].length);
    EXPECT_EQ(n.samples(), 16);
    EXPECT_EQ(n.teacher_recall(), r.evaluation->needles[i].teacher_recall);
    EXPECT_EQ(n.hybrid_recall(), r.evaluation->needles[i].hybrid_recall);
  }
  EXPECT_EQ(p.evaluation().held_out_tokens(), r.evaluation->text_tokens);
  EXPECT_EQ(p.evaluation().teacher_perplexity(), r.evaluation->teacher_ppl);
  EXPECT_EQ(p.evaluation().hybrid_perplexity(), r.evaluation->hybrid_ppl);
  EXPECT_EQ(p.evaluation().kl_divergence(), r.evaluation->kl);
  ASSERT_EQ(p.stage_timings_size(), static_cast<int>(r.timings.size()));
  for (size_t i = 0; i < r.timings.size(); ++i) {
    const pb::StageTiming& t = p.stage_timings(static_cast<int>(i));
    EXPECT_EQ(t.stage(), StageNameToProto(r.timings[i].stage));
    EXPECT_NE(t.stage(), pb::ConversionJob::STAGE_UNSPECIFIED);
    EXPECT_DOUBLE_EQ(static_cast<double>(t.wall_time().seconds()) + t.wall_time().nanos() * 1e-9, r.timings[i].seconds);
    EXPECT_EQ(t.processed_tokens(), r.timings[i].tokens);
    EXPECT_EQ(t.attempt(), 3);
  }
  EXPECT_EQ(p.engine_version(), "flashmorph-engine 9.9");
  EXPECT_EQ(p.source_sha256(), "abc123");
  EXPECT_EQ(p.seed(), 99u);
  EXPECT_TRUE(p.artifact_uri().empty());  // the server's

  // No evaluation, a broken report: the spec's seed, nothing invented.
  r.evaluation.reset();
  r.report_json = "{not json";
  const pb::ConversionResult q = ResultToProto(r, spec, {1, 0});
  EXPECT_FALSE(q.has_evaluation());
  EXPECT_EQ(q.seed(), spec.seed());
  EXPECT_TRUE(q.engine_version().empty());
  EXPECT_TRUE(q.source_sha256().empty());
}

}  // namespace
}  // namespace fm::worker
