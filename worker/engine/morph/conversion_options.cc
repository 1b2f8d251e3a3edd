#include "worker/engine/morph/conversion_options.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "worker/engine/common/absl_compat.h"
#include "worker/engine/common/str_cat.h"

namespace fm {

std::string_view BranchKindName(BranchKind k) {
  switch (k) {
    case BranchKind::kLightning: return "lightning";
    case BranchKind::kGla: return "gla";
    case BranchKind::kGatedDeltaNet: return "gated_deltanet";
  }
  return "?";
}

absl::StatusOr<BranchKind> ParseBranchKind(std::string_view name) {
  std::string n = absl::AsciiStrToLower(Sv(name));
  if (n == "lightning") return BranchKind::kLightning;
  if (n == "gla") return BranchKind::kGla;
  if (n == "gated_deltanet" || n == "gdn" || n == "gated-deltanet") return BranchKind::kGatedDeltaNet;
  return absl::InvalidArgumentError(StrCat("unknown branch kind '", name, "' (lightning, gla, gated_deltanet)"));
}

std::string_view SelectionMethodName(SelectionMethod m) {
  switch (m) {
    case SelectionMethod::kFlashMorph: return "flashmorph";
    case SelectionMethod::kUniform: return "uniform";
    case SelectionMethod::kNll: return "nll";
    case SelectionMethod::kHead: return "head";
  }
  return "?";
}

absl::StatusOr<SelectionMethod> ParseSelectionMethod(std::string_view name) {
  std::string n = absl::AsciiStrToLower(Sv(name));
  if (n == "flashmorph") return SelectionMethod::kFlashMorph;
  if (n == "uniform") return SelectionMethod::kUniform;
  if (n == "nll") return SelectionMethod::kNll;
  if (n == "head") return SelectionMethod::kHead;
  return absl::InvalidArgumentError(StrCat("unknown selection method '", name, "' (flashmorph, uniform, nll, head)"));
}

std::string Budget::ToString() const {
  switch (unit) {
    case Unit::kLayers: return StrCat(static_cast<int64_t>(value), " layers");
    case Unit::kHeads: return StrCat(static_cast<int64_t>(value), " heads");
    case Unit::kRatio: return StrCat("ratio ", value);
  }
  return "?";
}

absl::StatusOr<Budget> ParseBudget(std::string_view text) {
  std::string t(absl::StripAsciiWhitespace(Sv(text)));
  auto bad = [&] {
    return absl::InvalidArgumentError(
        StrCat("bad budget '", text, "': use a layer count (4), a ratio (0.25 or 25%) or heads (32h)"));
  };
  if (t.empty()) return bad();
  Budget b;
  if (t.back() == 'h' || t.back() == 'H') {
    int64_t n;
    if (!absl::SimpleAtoi(Sv(t.substr(0, t.size() - 1)), &n) || n < 1) return bad();
    b.unit = Budget::Unit::kHeads;
    b.value = static_cast<double>(n);
    return b;
  }
  if (t.back() == '%') {
    double p;
    if (!absl::SimpleAtod(Sv(t.substr(0, t.size() - 1)), &p) || !(p > 0 && p <= 100)) return bad();
    b.unit = Budget::Unit::kRatio;
    b.value = p / 100.0;
    return b;
  }
  int64_t n;
  if (absl::SimpleAtoi(Sv(t), &n)) {
    if (n < 1) return bad();
    b.unit = Budget::Unit::kLayers;
    b.value = static_cast<double>(n);
    return b;
  }
  double r;
  if (!absl::SimpleAtod(Sv(t), &r) || !(r > 0 && r <= 1)) return bad();
  b.unit = Budget::Unit::kRatio;
  b.value = r;
  return b;
}

void ScaleToModel(const ModelShape& shape, bool on_gpu, ConversionOptions& o) {
  const int64_t max_pos = shape.max_position_embeddings > 0 ? shape.max_position_embeddings : 4096;
  auto cap = [&](int64_t t) { return std::min(t, max_pos); };
  // Calibration.
  CalibrationSettings& c = o.calibration;
  if (c.sequence_length == 0) c.sequence_length = cap(on_gpu ? 2048 : 256);
  if (c.batch_sequences == 0) c.batch_sequences = on_gpu ? 8 : 4;
  if (c.train_tokens == 0) c.train_tokens = (on_gpu ? 400 : 80) * c.batch_sequences * c.sequence_length;
  if (c.learning_rate == 0) c.learning_rate = on_gpu ? 1e-3 : 3e-3;
  // Gates.
  GateSettings& g = o.gates;
  if (g.max_context == 0) g.max_context = cap(on_gpu ? 16384 : 512);
  if (g.min_context == 0) g.min_context = std::min(g.max_context, on_gpu ? int64_t{1024} : int64_t{256});
  if (g.passkeys_per_sample == 0) g.passkeys_per_sample = on_gpu ? 10 : 3;
  if (g.words_per_passkey == 0) g.words_per_passkey = on_gpu ? 32 : 8;
  if (!g.activation_checkpointing) g.activation_checkpointing = on_gpu || g.max_context > 2048;
  if (g.train_tokens == 0) g.train_tokens = on_gpu ? 20'000'000 : 120 * (g.min_context + g.max_context) / 2;
  // The paper's schedule spends ~20M tokens; a CPU budget of ~50K tokens needs larger steps to move the gates.
  const bool short_budget = g.train_tokens < 2'000'000;
  if (g.learning_rate_start == 0) g.learning_rate_start = short_budget ? 5e-2 : 2e-2;
  if (g.learning_rate_end == 0) g.learning_rate_end = short_budget ? 5e-3 : 2e-3;
  // NLL selection.
  if (o.nll.samples == 0) o.nll.samples = on_gpu ? 64 : 8;
  // Post-training.
  PostTrainingSettings& p = o.post_training;
  if (p.sequence_length == 0) p.sequence_length = cap(on_gpu ? 4096 : 256);
  if (p.long_context_length == 0) p.long_context_length = g.max_context;
  if (p.distill_tokens < 0) p.distill_tokens = on_gpu ? 50'000'000 : 40 * 2 * p.sequence_length;
  if (p.long_context_tokens < 0) p.long_context_tokens = on_gpu ? 10'000'000 : 10 * p.long_context_length;
  // Evaluation.
  EvaluationSettings& e = o.evaluation;
  if (e.needle_lengths.empty()) {
    if (on_gpu) {
      for (int64_t t : {1024, 4096, 16384}) e.needle_lengths.push_back(cap(t));
    } else {
      e.needle_lengths = {g.min_context, g.max_context};
    }
    std::sort(e.needle_lengths.begin(), e.needle_lengths.end());
    e.needle_lengths.erase(std::unique(e.needle_lengths.begin(), e.needle_lengths.end()), e.needle_lengths.end());
  }
  if (e.needle_samples == 0) e.needle_samples = on_gpu ? 32 : 8;
  if (e.held_out_tokens == 0) e.held_out_tokens = on_gpu ? 262144 : 8192;
  if (o.work_dir.empty() && !o.output_dir.empty()) o.work_dir = o.output_dir + ".work";
  if (o.dtype.empty()) o.dtype = on_gpu ? "bfloat16" : "float32";
}

absl::Status ValidateConversionOptions(const ConversionOptions& o, const ModelShape& shape) {
  auto bad = [](std::string_view field, std::string_view why) {
    return absl::InvalidArgumentError(StrCat("conversion option ", field, ": ", why));
  };
  if (o.model_path.empty()) return bad("model", "is required");
  if (o.output_dir.empty()) return bad("output", "is required");
  if (o.budgets.empty()) return bad("budget", "at least one budget is required");
  const int64_t total_heads = shape.num_layers * shape.num_heads;
  for (const Budget& b : o.budgets) {
    const bool head_unit = b.unit == Budget::Unit::kHeads;
    if (head_unit != (o.method == SelectionMethod::kHead))
      return bad("budget", o.method == SelectionMethod::kHead
                               ? StrCat(b.ToString(), ": the head method takes its budget in heads (e.g. 8h)")
                               : StrCat(b.ToString(), ": a budget in heads needs --method head"));
    if (b.unit == Budget::Unit::kLayers && (b.value < 1 || b.value > shape.num_layers))
      return bad("budget", StrCat(b.ToString(), " is outside 1..", shape.num_layers));
    if (b.unit == Budget::Unit::kHeads && (b.value < 1 || b.value > total_heads))
      return bad("budget", StrCat(b.ToString(), " is outside 1..", total_heads));
    if (b.unit == Budget::Unit::kRatio && !(b.value > 0 && b.value <= 1))
      return bad("budget", StrCat(b.ToString(), " is outside (0, 1]"));
  }
  if (o.dtype != "float32" && o.dtype != "bfloat16" && o.dtype != "float16" && o.dtype != "float64")
    return bad("dtype", StrCat("'", o.dtype, "' (float32, bfloat16, float16, float64)"));
  if (o.export_dtype != "float32" && o.export_dtype != "bfloat16" && o.export_dtype != "float16")
    return bad("export dtype", StrCat("'", o.export_dtype, "' (float32, bfloat16, float16)"));
  const CalibrationSettings& c = o.calibration;
  if (c.sequence_length < 2 || c.batch_sequences < 1 || c.train_tokens < 0 || !(c.learning_rate > 0))
    return bad("calibration", "sequence length ≥ 2, batch ≥ 1, tokens ≥ 0 and a positive learning rate required");
  const GateSettings& g = o.gates;
  if (g.min_context < 16 || g.max_context < g.min_context)
    return bad("gates.context", StrCat("need 16 ≤ min (", g.min_context, ") ≤ max (", g.max_context, ")"));
  if (g.passkeys_per_sample < 1 || g.words_per_passkey < 1)
    return bad("gates.passkeys", "at least one passkey of at least one word");
  if (!(g.learning_rate_start > 0) || !(g.learning_rate_end > 0) || g.sparsity_lambda < 0 || g.batch_sequences < 1)
    return bad("gates", "positive learning rates, λ ≥ 0, batch ≥ 1 required");
  if (o.post_training.distill_tokens < 0 || o.post_training.long_context_tokens < 0 ||
      !(o.post_training.learning_rate > 0))
    return bad("post_training", "token counts ≥ 0 and a positive learning rate required");
  for (int64_t t : o.evaluation.needle_lengths)
    if (t < 16) return bad("evaluation.needle_lengths", StrCat(t, " is shorter than 16 tokens"));
  if (o.max_shard_bytes < (1 << 20)) return bad("max_shard_bytes", "at least 1 MiB");
  return absl::OkStatus();
}

}  // namespace fm
