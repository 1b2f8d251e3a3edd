#include "worker/agent/spec_options.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <nlohmann/json.hpp>

#include "worker/agent/file_uri.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::worker {
namespace {

namespace pb = ::flashmorph::v1;

absl::Status NotNegative(double value, std::string_view field) {
  if (value < 0 || std::isnan(value))
    return absl::InvalidArgumentError(StrCat("spec.", field, ": ", value, " is negative"));
  return absl::OkStatus();
}

absl::StatusOr<fm::SelectionMethod> MapMethod(pb::ConversionSpec::SelectionMethod m) {
  switch (m) {
    case pb::ConversionSpec::SELECTION_METHOD_UNSPECIFIED:
    case pb::ConversionSpec::FLASHMORPH:
      return fm::SelectionMethod::kFlashMorph;
    case pb::ConversionSpec::UNIFORM:
      return fm::SelectionMethod::kUniform;
    case pb::ConversionSpec::NLL:
      return fm::SelectionMethod::kNll;
    case pb::ConversionSpec::HEAD:
      return fm::SelectionMethod::kHead;
    default:
      break;
  }
  return absl::InvalidArgumentError(StrCat("spec.selection_method: unknown value ", static_cast<int>(m)));
}

absl::StatusOr<fm::BranchKind> MapBranch(pb::ConversionSpec::BranchKind b) {
  switch (b) {
    case pb::ConversionSpec::BRANCH_KIND_UNSPECIFIED:
    case pb::ConversionSpec::GATED_DELTANET:
      return fm::BranchKind::kGatedDeltaNet;
    case pb::ConversionSpec::LIGHTNING:
      return fm::BranchKind::kLightning;
    case pb::ConversionSpec::GLA:
      return fm::BranchKind::kGla;
    default:
      break;
  }
  return absl::InvalidArgumentError(StrCat("spec.branch_kind: unknown value ", static_cast<int>(b)));
}

absl::StatusOr<fm::Budget> MapBudget(const pb::AttentionBudget& b, int index) {
  const std::string field = StrCat("spec.budgets[", index, "]");
  fm::Budget out;
  switch (b.budget_case()) {
    case pb::AttentionBudget::kFullAttentionLayers:
      out.unit = fm::Budget::Unit::kLayers;
      out.value = b.full_attention_layers();
      break;
    case pb::AttentionBudget::kFullAttentionRatio:
      out.unit = fm::Budget::Unit::kRatio;
      out.value = b.full_attention_ratio();
      if (!(out.value > 0 && out.value < 1))
        return absl::InvalidArgumentError(StrCat(field, ".full_attention_ratio: ", out.value, " is outside (0, 1)"));
      return out;
    case pb::AttentionBudget::kFullAttentionHeads:
      out.unit = fm::Budget::Unit::kHeads;
      out.value = b.full_attention_heads();
      break;
    case pb::AttentionBudget::BUDGET_NOT_SET:
      return absl::InvalidArgumentError(StrCat(field, ": no budget is set"));
  }
  if (out.value < 1) return absl::InvalidArgumentError(StrCat(field, ": ", out.ToString(), " is below 1"));
  return out;
}

absl::Status MapData(const pb::DataSource& d, fm::DataSettings& out) {
  switch (d.source_case()) {
    case pb::DataSource::SOURCE_NOT_SET:
    case pb::DataSource::kBundled:
      out.kind = fm::TextSourceKind::kBundled;
      out.path.clear();
      return absl::OkStatus();
    case pb::DataSource::kJsonl: {
      out.kind = fm::TextSourceKind::kJsonl;
      FM_ASSIGN_OR_RETURN(out.path, PathFromUri(d.jsonl().path(), "spec.data.jsonl.path"));
      out.text_field = d.jsonl().text_field().empty() ? "text" : d.jsonl().text_field();
      return absl::OkStatus();
    }
    case pb::DataSource::kTokenFile: {
      FM_ASSIGN_OR_RETURN(out.path, PathFromUri(d.token_file().path(), "spec.data.token_file.path"));
      switch (d.token_file().dtype()) {
        case pb::DataSource::TokenFile::UINT16:
          out.kind = fm::TextSourceKind::kTokensU16;
          break;
        case pb::DataSource::TokenFile::UINT32:
          out.kind = fm::TextSourceKind::kTokensU32;
          break;
        default:
          return absl::InvalidArgumentError("spec.data.token_file.dtype: must be UINT16 or UINT32");
      }
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError("spec.data: unknown source");
}

absl::Status MapOutput(const pb::OutputOptions& out, fm::ConversionOptions& o) {
  switch (out.dtype()) {
    case pb::OutputOptions::DTYPE_UNSPECIFIED:
      break;  // the engine's default; see ExportDtypeForSource
    case pb::OutputOptions::BFLOAT16:
      o.export_dtype = "bfloat16";
      break;
    case pb::OutputOptions::FLOAT16:
      o.export_dtype = "float16";
      break;
    case pb::OutputOptions::FLOAT32:
      o.export_dtype = "float32";
      break;
    default:
      return absl::InvalidArgumentError(StrCat("spec.output.dtype: unknown value ", static_cast<int>(out.dtype())));
  }
  FM_RETURN_IF_ERROR(NotNegative(static_cast<double>(out.max_shard_bytes()), "output.max_shard_bytes"));
  if (out.max_shard_bytes() > 0) o.max_shard_bytes = out.max_shard_bytes();
  return absl::OkStatus();
}

pb::ConversionSpec::SelectionMethod MethodToProto(std::string_view name) {
  absl::StatusOr<fm::SelectionMethod> m = fm::ParseSelectionMethod(name);
  if (!m.ok()) return pb::ConversionSpec::SELECTION_METHOD_UNSPECIFIED;
  switch (*m) {
    case fm::SelectionMethod::kFlashMorph:
      return pb::ConversionSpec::FLASHMORPH;
    case fm::SelectionMethod::kUniform:
      return pb::ConversionSpec::UNIFORM;
    case fm::SelectionMethod::kNll:
      return pb::ConversionSpec::NLL;
    case fm::SelectionMethod::kHead:
      return pb::ConversionSpec::HEAD;
  }
  return pb::ConversionSpec::SELECTION_METHOD_UNSPECIFIED;
}

void SetDuration(double seconds, google::protobuf::Duration* d) {
  if (!(seconds > 0) || !std::isfinite(seconds)) {
    d->Clear();
    return;
  }
  const double whole = std::floor(seconds);
  d->set_seconds(static_cast<int64_t>(whole));
  d->set_nanos(static_cast<int32_t>(std::min(999'999'999.0, std::round((seconds - whole) * 1e9))));
}

}  // namespace

absl::StatusOr<fm::ConversionOptions> OptionsFromSpec(const pb::ConversionSpec& spec, const std::string& output_dir,
                                                      const std::string& work_dir, const DeviceChoice& device) {
  fm::ConversionOptions o;
  // Model.
  if (spec.model().uri().empty()) return absl::InvalidArgumentError("spec.model.uri: is required");
  FM_ASSIGN_OR_RETURN(o.model_path, PathFromUri(spec.model().uri(), "spec.model.uri"));
  if (!spec.model().revision().empty())
    return absl::UnimplementedError(StrCat("spec.model.revision '", spec.model().revision(),
                                           "': checkpoints on the workers' filesystem have no revisions"));
  if (output_dir.empty()) return absl::InvalidArgumentError("output directory: is required");
  o.output_dir = output_dir;
  o.work_dir = work_dir;

  // Method, branch, budgets, seed.
  FM_ASSIGN_OR_RETURN(o.method, MapMethod(spec.selection_method()));
  FM_ASSIGN_OR_RETURN(o.branch, MapBranch(spec.branch_kind()));
  if (spec.budgets().empty()) return absl::InvalidArgumentError("spec.budgets: at least one budget is required");
  o.budgets.clear();
  for (int i = 0; i < spec.budgets_size(); ++i) {
    FM_ASSIGN_OR_RETURN(fm::Budget b, MapBudget(spec.budgets(i), i));
    o.budgets.push_back(b);
  }
  o.seed = spec.has_seed() ? spec.seed() : 0;

  // Stage CALIBRATE.
  const pb::CalibrationSettings& cal = spec.calibration();
  FM_RETURN_IF_ERROR(NotNegative(static_cast<double>(cal.train_tokens()), "calibration.train_tokens"));
  FM_RETURN_IF_ERROR(NotNegative(cal.learning_rate(), "calibration.learning_rate"));
  FM_RETURN_IF_ERROR(NotNegative(cal.sequence_length_tokens(), "calibration.sequence_length_tokens"));
  FM_RETURN_IF_ERROR(NotNegative(cal.batch_sequences(), "calibration.batch_sequences"));
  o.calibration.train_tokens = cal.train_tokens();
  o.calibration.learning_rate = cal.learning_rate();
  o.calibration.sequence_length = cal.sequence_length_tokens();
  o.calibration.batch_sequences = cal.batch_sequences();

  // Stage GATES.
  const pb::GateSettings& g = spec.gates();
  FM_RETURN_IF_ERROR(NotNegative(static_cast<double>(g.train_tokens()), "gates.train_tokens"));
  FM_RETURN_IF_ERROR(NotNegative(g.learning_rate_start(), "gates.learning_rate_start"));
  FM_RETURN_IF_ERROR(NotNegative(g.learning_rate_end(), "gates.learning_rate_end"));
  FM_RETURN_IF_ERROR(NotNegative(g.sparsity_lambda(), "gates.sparsity_lambda"));
  FM_RETURN_IF_ERROR(NotNegative(g.min_context_tokens(), "gates.min_context_tokens"));
  FM_RETURN_IF_ERROR(NotNegative(g.max_context_tokens(), "gates.max_context_tokens"));
  FM_RETURN_IF_ERROR(NotNegative(g.passkeys_per_sample(), "gates.passkeys_per_sample"));
  FM_RETURN_IF_ERROR(NotNegative(g.samples_per_step(), "gates.samples_per_step"));
  o.gates.train_tokens = g.train_tokens();
  o.gates.learning_rate_start = g.learning_rate_start();
  // The API's default end rate is start / 10 (the engine's own default pairs a scaled start with a scaled end).
  o.gates.learning_rate_end = g.learning_rate_end() > 0 ? g.learning_rate_end() : g.learning_rate_start() / 10.0;
  o.gates.sparsity_lambda = g.has_sparsity_lambda() ? g.sparsity_lambda() : 0.1;
  o.gates.min_context = g.min_context_tokens();
  o.gates.max_context = g.max_context_tokens();
  o.gates.passkeys_per_sample = g.passkeys_per_sample();
  if (g.samples_per_step() > 0) o.gates.batch_sequences = g.samples_per_step();
  if (g.has_activation_checkpointing()) o.gates.activation_checkpointing = g.activation_checkpointing();
  if (o.method == fm::SelectionMethod::kNll && g.train_tokens() > 0 && g.max_context_tokens() > 0) {
    const int64_t mean_length = g.min_context_tokens() > 0
                                    ? (int64_t{g.min_context_tokens()} + g.max_context_tokens()) / 2
                                    : int64_t{g.max_context_tokens()};
    o.nll.samples = std::max<int64_t>(1, g.train_tokens() / std::max<int64_t>(1, mean_length));
  }

  // Stage POST_TRAIN.
  const pb::PostTrainingSettings& p = spec.post_training();
  FM_RETURN_IF_ERROR(NotNegative(static_cast<double>(p.distill_tokens()), "post_training.distill_tokens"));
  FM_RETURN_IF_ERROR(NotNegative(static_cast<double>(p.long_context_tokens()), "post_training.long_context_tokens"));
  FM_RETURN_IF_ERROR(NotNegative(p.long_context_sequence_tokens(), "post_training.long_context_sequence_tokens"));
  FM_RETURN_IF_ERROR(NotNegative(p.learning_rate(), "post_training.learning_rate"));
  o.post_training.distill_tokens = p.has_distill_tokens() ? p.distill_tokens() : -1;
  o.post_training.long_context_tokens = p.has_long_context_tokens() ? p.long_context_tokens() : -1;
  o.post_training.long_context_length = p.long_context_sequence_tokens();
  if (p.learning_rate() > 0) o.post_training.learning_rate = p.learning_rate();
  switch (p.trainable()) {
    case pb::PostTrainingSettings::TRAINABLE_PARAMS_UNSPECIFIED:
    case pb::PostTrainingSettings::BRANCHES_ONLY:
      o.post_training.train_all = false;
      break;
    case pb::PostTrainingSettings::ALL:
      o.post_training.train_all = true;
      break;
    default:
      return absl::InvalidArgumentError(
          StrCat("spec.post_training.trainable: unknown value ", static_cast<int>(p.trainable())));
  }

  // Stage EVALUATE.
  const pb::EvaluationSettings& e = spec.evaluation();
  for (int i = 0; i < e.needle_context_tokens_size(); ++i) {
    const int32_t t = e.needle_context_tokens(i);
    if (t <= 0)
      return absl::InvalidArgumentError(
          StrCat("spec.evaluation.needle_context_tokens[", i, "]: ", t, " is not positive"));
    if (i > 0 && t <= e.needle_context_tokens(i - 1))
      return absl::InvalidArgumentError("spec.evaluation.needle_context_tokens: must be ascending");
    o.evaluation.needle_lengths.push_back(t);
  }
  FM_RETURN_IF_ERROR(NotNegative(e.needle_samples_per_length(), "evaluation.needle_samples_per_length"));
  FM_RETURN_IF_ERROR(NotNegative(static_cast<double>(e.held_out_tokens()), "evaluation.held_out_tokens"));
  o.evaluation.needle_samples = e.needle_samples_per_length();
  if (e.has_held_out_tokens()) {
    if (e.held_out_tokens() == 0)
      return absl::UnimplementedError(
          "spec.evaluation.held_out_tokens: 0 (skip the KL/perplexity measurement) is not supported by this engine; "
          "leave it unset or give a token count");
    o.evaluation.held_out_tokens = e.held_out_tokens();
  }

  // Data and output.
  FM_RETURN_IF_ERROR(MapData(spec.data(), o.data));
  FM_RETURN_IF_ERROR(MapOutput(spec.output(), o));

  // Device.
  o.device = device.device.empty() ? "cpu" : device.device;
  o.threads = device.threads;
  const int32_t gpus = spec.resources().gpus();
  if (gpus > 1) {
    // The scheduler leased this job to a worker with at least `gpus` GPUs; the job takes the first `gpus` of them.
    if (o.device != "cuda")
      return absl::FailedPreconditionError(StrCat("spec.resources.gpus: ", gpus,
                                                  " GPUs need a worker started with --device cuda or auto (this one "
                                                  "runs on ",
                                                  o.device, ")"));
    std::string list;
    for (int32_t i = 0; i < gpus; ++i) list += StrCat(i ? "," : "", "cuda:", i);
    o.device = list;
  }
  o.shard_layers = spec.resources().shard_layers() && gpus > 1;
  return o;
}

std::string ExportDtypeForSource(std::string_view torch_dtype) {
  if (torch_dtype == "bfloat16" || torch_dtype == "float16" || torch_dtype == "float32")
    return std::string(torch_dtype);
  return "";
}

pb::ConversionJob::Stage StageToProto(fm::Stage stage) {
  switch (stage) {
    case fm::Stage::kLoad:
      return pb::ConversionJob::LOAD;
    case fm::Stage::kCalibration:
      return pb::ConversionJob::CALIBRATE;
    case fm::Stage::kSelection:
      return pb::ConversionJob::GATES;
    case fm::Stage::kDiscretization:
      return pb::ConversionJob::DISCRETIZE;
    case fm::Stage::kPostTraining:
      return pb::ConversionJob::POST_TRAIN;
    case fm::Stage::kEvaluation:
      return pb::ConversionJob::EVALUATE;
    case fm::Stage::kExport:
      return pb::ConversionJob::EXPORT;
  }
  return pb::ConversionJob::STAGE_UNSPECIFIED;
}

pb::ConversionJob::Stage StageNameToProto(std::string_view name) {
  for (fm::Stage s : {fm::Stage::kLoad, fm::Stage::kCalibration, fm::Stage::kSelection, fm::Stage::kDiscretization,
                      fm::Stage::kPostTraining, fm::Stage::kEvaluation, fm::Stage::kExport}) {
    if (fm::StageName(s) == name) return StageToProto(s);
  }
  return pb::ConversionJob::STAGE_UNSPECIFIED;
}

pb::AttentionBudget BudgetToProto(const fm::Budget& budget) {
  pb::AttentionBudget b;
  switch (budget.unit) {
    case fm::Budget::Unit::kLayers:
      b.set_full_attention_layers(static_cast<int32_t>(budget.value));
      break;
    case fm::Budget::Unit::kRatio:
      b.set_full_attention_ratio(budget.value);
      break;
    case fm::Budget::Unit::kHeads:
      b.set_full_attention_heads(static_cast<int32_t>(budget.value));
      break;
  }
  return b;
}

pb::Layout LayoutToProto(const fm::Layout& layout, const pb::AttentionBudget* requested) {
  pb::Layout out;
  *out.mutable_budget() = requested ? *requested : BudgetToProto(layout.budget);
  out.set_method(MethodToProto(layout.method));
  const int64_t L = std::max<int64_t>(0, layout.num_layers);
  const int64_t H = layout.head_level ? std::max<int64_t>(0, layout.num_heads) : 1;
  // Kept heads per layer, bounds-checked (a malformed layout drops out-of-range units instead of crashing).
  std::vector<std::vector<int32_t>> kept_heads(L);
  for (int64_t u : layout.kept) {
    if (u < 0 || H == 0 || u >= L * H) continue;
    kept_heads[u / H].push_back(static_cast<int32_t>(u % H));
  }
  for (int64_t l = 0; l < L; ++l) {
    const auto n = static_cast<int64_t>(kept_heads[l].size());
    const pb::Layout::LayerType type = n == 0   ? pb::Layout::LINEAR_ATTENTION
                                       : n == H ? pb::Layout::FULL_ATTENTION
                                                : pb::Layout::MIXED;
    out.add_layer_types(type);
    if (type == pb::Layout::FULL_ATTENTION) out.add_full_attention_layer_indices(static_cast<int32_t>(l));
  }
  if (!layout.head_level) {
    for (double s : layout.scores) out.add_scores(s);
  }
  out.set_cut_margin(layout.margin.value_or(0.0));
  std::set<int64_t> ties;
  for (const fm::NearTie& t : layout.near_ties) {
    ties.insert(t.kept);
    ties.insert(t.dropped);
  }
  for (int64_t u : ties) out.add_near_tie_indices(static_cast<int32_t>(u));
  if (!layout.scores.empty()) out.set_near_tie_tolerance(fm::kNearTieThreshold);
  if (layout.head_level) {
    pb::HeadLayout* hl = out.mutable_head_layout();
    hl->set_heads_per_layer(static_cast<int32_t>(H));
    hl->set_full_attention_heads(static_cast<int32_t>(layout.kept_units));
    const bool have_gates = static_cast<int64_t>(layout.scores.size()) == L * H;
    for (int64_t l = 0; l < L; ++l) {
      pb::HeadLayout::LayerHeads* lh = hl->add_layers();
      std::sort(kept_heads[l].begin(), kept_heads[l].end());
      for (int32_t h : kept_heads[l]) lh->add_full_attention_head_indices(h);
      if (have_gates)
        for (int64_t h = 0; h < H; ++h) lh->add_head_gates(layout.scores[l * H + h]);
    }
  }
  return out;
}

pb::GateVector GateVectorToProto(int64_t step, const std::vector<double>& gates, int64_t heads_per_layer) {
  pb::GateVector v;
  v.set_step(step);
  if (heads_per_layer > 0) {
    v.set_heads_per_layer(static_cast<int32_t>(heads_per_layer));
    for (double g : gates) v.add_head_gates(g);
  } else {
    for (double g : gates) v.add_layer_gates(g);
  }
  return v;
}

pb::ConversionResult ResultToProto(const fm::ConversionResult& result, const pb::ConversionSpec& spec,
                                   const ResultContext& ctx) {
  pb::ConversionResult out;
  for (size_t i = 0; i < result.layouts.size(); ++i) {
    const pb::AttentionBudget* requested =
        static_cast<int>(i) < spec.budgets_size() ? &spec.budgets(static_cast<int>(i)) : nullptr;
    *out.add_layouts() = LayoutToProto(result.layouts[i], requested);
  }
  if (result.evaluation) {
    pb::EvaluationReport* e = out.mutable_evaluation();
    for (const fm::NeedleResult& n : result.evaluation->needles) {
      pb::EvaluationReport::NeedleRecall* r = e->add_needle_recall();
      r->set_context_tokens(static_cast<int32_t>(n.length));
      r->set_samples(static_cast<int32_t>(ctx.needle_samples));
      r->set_teacher_recall(n.teacher_recall);
      r->set_hybrid_recall(n.hybrid_recall);
    }
    e->set_held_out_tokens(result.evaluation->text_tokens);
    e->set_teacher_perplexity(result.evaluation->teacher_ppl);
    e->set_hybrid_perplexity(result.evaluation->hybrid_ppl);
    e->set_kl_divergence(result.evaluation->kl);
  }
  for (const fm::StageTiming& t : result.timings) {
    pb::StageTiming* st = out.add_stage_timings();
    st->set_stage(StageNameToProto(t.stage));
    SetDuration(t.seconds, st->mutable_wall_time());
    st->set_processed_tokens(t.tokens);
    st->set_attempt(ctx.attempt);
  }
  out.set_seed(spec.has_seed() ? spec.seed() : 0);
  // conversion_layout.json: {"engine": ..., "source": {"sha256": ...}, "seed": ...}.
  const nlohmann::json report = nlohmann::json::parse(result.report_json, nullptr, /*allow_exceptions=*/false);
  if (report.is_object()) {
    if (auto it = report.find("engine"); it != report.end() && it->is_string())
      out.set_engine_version(it->get<std::string>());
    if (auto it = report.find("seed"); it != report.end() && it->is_number_unsigned())
      out.set_seed(it->get<uint64_t>());
    if (auto src = report.find("source"); src != report.end() && src->is_object()) {
      if (auto it = src->find("sha256"); it != src->end() && it->is_string())
        out.set_source_sha256(it->get<std::string>());
    }
  }
  return out;
}

}  // namespace fm::worker
