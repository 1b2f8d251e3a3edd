#include "client/cli/convert_command.h"

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>

#include "client/cli/terminal_progress.h"
#include "worker/engine/pipeline/conversion.h"

namespace fm {
namespace {

struct ConvertArgs {
  ConversionOptions options;
  std::vector<std::string> fa_layers, fa_ratio, fa_heads;
  std::string method = "flashmorph", branch = "gated_deltanet", data;
  std::string data_format = "auto";
  int64_t calib_tokens = 0, gate_tokens = 0, distill_tokens = -1, long_tokens = -1;
  int64_t min_context = 0, max_context = 0, passkeys = 0, words = 0, gate_batch = 0;
  double lambda = 0.1;
  bool train_all = false, no_eval = false, quiet = false, json = false;
  std::string nll_ablation = "branch";
};

void PrintLayouts(const ConversionResult& r, std::FILE* out) {
  for (const Layout& l : r.layouts) {
    std::fprintf(out, "\nLayout %s — %s\n", l.budget.ToString().c_str(), l.Summary().c_str());
    std::fprintf(out, "  layer  type              %s\n", l.scores.empty() ? "" : (l.head_level ? "gates per head" : "score"));
    const auto types = l.LayerTypes();
    for (int64_t i = 0; i < l.num_layers; ++i) {
      std::fprintf(out, "  %5lld  %-16s  ", static_cast<long long>(i), std::string(LayerTypeName(types[i])).c_str());
      if (!l.scores.empty()) {
        if (l.head_level) {
          for (int64_t h = 0; h < l.num_heads; ++h) std::fprintf(out, "%.3f ", l.scores[i * l.num_heads + h]);
        } else {
          std::fprintf(out, "%.4f", l.scores[i]);
        }
      }
      std::fprintf(out, "\n");
    }
    if (l.margin) std::fprintf(out, "  margin at the cut: %.4f", *l.margin);
    if (!l.near_ties.empty()) std::fprintf(out, "; %zu near-tie(s) across the cut", l.near_ties.size());
    if (l.margin) std::fprintf(out, "\n");
  }
  if (!r.calibration_error_after.empty()) {
    std::fprintf(out, "\nBranch alignment error (relative MSE) before -> after calibration:\n ");
    for (size_t l = 0; l < r.calibration_error_after.size(); ++l)
      std::fprintf(out, " L%zu %.3f->%.3f", l, r.calibration_error_before[l], r.calibration_error_after[l]);
    std::fprintf(out, "\n");
  }
  if (r.evaluation) {
    std::fprintf(out, "\nEvaluation            teacher   hybrid\n");
    for (const NeedleResult& n : r.evaluation->needles)
      std::fprintf(out, "  passkey recall @%-5lld %6.3f   %6.3f   (token acc. %.3f / %.3f)\n",
                   static_cast<long long>(n.length), n.teacher_recall, n.hybrid_recall, n.teacher_token_accuracy,
                   n.hybrid_token_accuracy);
    std::fprintf(out, "  perplexity            %6.3f   %6.3f   KL %.4f nats/token\n", r.evaluation->teacher_ppl,
                 r.evaluation->hybrid_ppl, r.evaluation->kl);
  }
  std::fprintf(out, "\nStage times:");
  for (const StageTiming& t : r.timings) std::fprintf(out, " %s %.1fs", t.stage.c_str(), t.seconds);
  std::fprintf(out, "\nWrote %s\n", r.output_dir.c_str());
}

int RunConvert(ConvertArgs& a) {
  ConversionOptions& o = a.options;
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "flashmorph convert: %s\n", std::string(s.message()).c_str());
    return 2;
  };
  auto method = ParseSelectionMethod(a.method);
  if (!method.ok()) return fail(method.status());
  o.method = *method;
  auto branch = ParseBranchKind(a.branch);
  if (!branch.ok()) return fail(branch.status());
  o.branch = *branch;
  o.budgets.clear();
  for (const auto& v : a.fa_layers) {
    auto b = ParseBudget(v);
    if (!b.ok() || b->unit != Budget::Unit::kLayers)
      return fail(absl::InvalidArgumentError("--fa-layers takes a layer count, e.g. 4"));
    o.budgets.push_back(*b);
  }
  for (const auto& v : a.fa_ratio) {
    auto b = ParseBudget(v);
    if (!b.ok() || b->unit != Budget::Unit::kRatio)
      return fail(absl::InvalidArgumentError("--fa-ratio takes a ratio, e.g. 0.25 or 25%"));
    o.budgets.push_back(*b);
  }
  for (const auto& v : a.fa_heads) {
    auto b = ParseBudget(v + "h");
    if (!b.ok()) return fail(b.status());
    o.budgets.push_back(*b);
  }
  if (o.budgets.empty()) o.budgets.push_back(Budget{});
  if (!a.data.empty()) {
    o.data.path = a.data;
    std::string fmt = a.data_format;
    if (fmt == "auto") {
      const auto ends = [&](const char* s) {
        const std::string suf(s);
        return a.data.size() >= suf.size() && a.data.compare(a.data.size() - suf.size(), suf.size(), suf) == 0;
      };
      fmt = ends(".jsonl") || ends(".json") ? "jsonl" : ends(".u16") ? "u16" : ends(".u32") ? "u32" : "";
      if (fmt.empty()) return fail(absl::InvalidArgumentError("--data: say --data-format jsonl|u16|u32"));
    }
    o.data.kind = fmt == "jsonl" ? TextSourceKind::kJsonl : fmt == "u16" ? TextSourceKind::kTokensU16
                                                                         : TextSourceKind::kTokensU32;
  }
  o.calibration.train_tokens = a.calib_tokens;
  o.gates.train_tokens = a.gate_tokens;
  o.gates.min_context = a.min_context;
  o.gates.max_context = a.max_context;
  o.gates.passkeys_per_sample = a.passkeys;
  if (a.gate_batch > 0) o.gates.batch_sequences = a.gate_batch;
  o.gates.words_per_passkey = a.words;
  o.gates.sparsity_lambda = a.lambda;
  o.post_training.distill_tokens = a.distill_tokens;
  o.post_training.long_context_tokens = a.long_tokens;
  o.post_training.train_all = a.train_all;
  o.evaluation.enabled = !a.no_eval;
  o.nll.ablation = a.nll_ablation == "window" ? NllSettings::Ablation::kSlidingWindow : NllSettings::Ablation::kBranch;

  TerminalProgress::InstallInterruptHandler();
  TerminalProgress progress(std::cerr, isatty(STDERR_FILENO) != 0, a.quiet);
  absl::StatusOr<ConversionResult> r = RunConversion(o, &progress);
  progress.Finish();
  if (!r.ok()) {
    std::fprintf(stderr, "flashmorph convert: %s\n", r.status().ToString().c_str());
    if (absl::IsCancelled(r.status())) {
      std::fprintf(stderr, "stage checkpoints are kept; rerun the same command to resume\n");
      return 130;
    }
    return absl::IsInvalidArgument(r.status()) ? 2 : 1;
  }
  if (a.json) {
    std::fprintf(stdout, "%s\n", r->report_json.c_str());
  } else {
    PrintLayouts(*r, stdout);
  }
  return 0;
}

}  // namespace

void AddConvertCommand(CLI::App& app, std::function<int()>& run) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* c = app.add_subcommand("convert", "Convert a model into a hybrid, offline, in this process");
  ConversionOptions& o = args->options;
  c->add_option("--model", o.model_path, "Hugging Face model directory or .gguf file")->required();
  c->add_option("--out", o.output_dir, "Output directory (the exported Hugging Face model)")->required();
  c->add_option("--work-dir", o.work_dir, "Stage checkpoints (default: <out>.work); rerun to resume");
  c->add_option("--fa-layers", args->fa_layers, "Full-attention layers to keep (repeatable: one layout each)");
  c->add_option("--fa-ratio", args->fa_ratio, "Full-attention ratio, e.g. 0.25 or 25% (repeatable)");
  c->add_option("--fa-heads", args->fa_heads, "Full-attention heads to keep (--method head; repeatable)");
  c->add_option("--method", args->method, "flashmorph | uniform | nll | head")->capture_default_str();
  c->add_option("--branch", args->branch, "lightning | gla | gated_deltanet")->capture_default_str();
  c->add_option("--seed", o.seed, "Seed of every random choice")->capture_default_str();
  c->add_option("--device", o.device, "cpu | cuda | cuda:N, or several: cuda:0,cuda:1 | cuda:all")
      ->capture_default_str();
  c->add_flag("--shard-layers", o.shard_layers,
              "With several devices: split the model's layers over them (else: replicas, data parallel)");
  c->add_option("--dtype", o.dtype, "Compute dtype (default float32 on CPU, bfloat16 on CUDA)");
  c->add_option("--export-dtype", o.export_dtype, "bfloat16 | float16 | float32")->capture_default_str();
  c->add_option("--threads", o.threads, "CPU threads (0 = all)");
  c->add_option("--data", args->data, "Text for calibration/distillation: .jsonl ({\"text\": ...}) or .u16/.u32 tokens "
                                      "(default: the bundled Brown Corpus)");
  c->add_option("--data-format", args->data_format, "auto | jsonl | u16 | u32")->capture_default_str();
  c->add_option("--calibration-tokens", args->calib_tokens, "Tokens per layer for branch calibration (0 = scaled)");
  c->add_option("--gate-tokens", args->gate_tokens, "Tokens for gate optimisation (0 = scaled)");
  c->add_option("--min-context", args->min_context, "Shortest passkey sample for gates (0 = scaled)");
  c->add_option("--max-context", args->max_context, "Longest passkey sample for gates (0 = scaled)");
  c->add_option("--passkeys", args->passkeys, "Passkeys per sample (0 = scaled; paper: 10)");
  c->add_option("--gate-batch", args->gate_batch, "Gate samples per step (0 = 1; dealt to the devices when several)");
  c->add_option("--passkey-words", args->words, "Words per passkey (0 = scaled; paper: 32)");
  c->add_option("--lambda", args->lambda, "Sparsity weight λ of the gate loss")->capture_default_str();
  c->add_option("--nll-ablation", args->nll_ablation, "branch | window (sliding-window attention)")
      ->capture_default_str();
  c->add_option("--distill-tokens", args->distill_tokens, "Post-training distillation tokens (-1 = scaled, 0 = skip)");
  c->add_option("--long-context-tokens", args->long_tokens, "Long-context fine-tuning tokens (-1 = scaled, 0 = skip)");
  c->add_flag("--train-all", args->train_all, "Post-train every weight (default: the branches only)");
  c->add_flag("--no-eval", args->no_eval, "Skip the evaluation stage");
  c->add_flag("--quiet", args->quiet, "No progress output");
  c->add_flag("--json", args->json, "Print conversion_layout.json instead of the table");
  c->callback([args, &run] { run = [args] { return RunConvert(*args); }; });
}

}  // namespace fm
