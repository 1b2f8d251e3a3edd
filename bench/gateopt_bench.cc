// Engine throughput (issue 5 item 3): times the engine's own stage steps — GateOptimizationStep (stage 2: teacher
// forward without grad + checkpointed morphable forward/backward to the gates + AdamW step + clamp) and
// CalibrationStep (stage 1: one teacher forward feeding every layer's branch, MSE backward, per-layer AdamW) — on a
// decoder of Qwen3-1.7B's shape (or the reference's "small" shape) with random weights. It is the engine side of
// the plain-PyTorch anchor gateopt_reference.py (eager and torch.compile): same shapes, B = 1, the last 640 tokens
// as answer positions, the same FLOP formula and the same 790 TFLOP/s bf16 peak for MFU. See bench/README.md.
//
//   fm_gateopt_bench [--device cpu|cuda] [--dtype bf16|f32] [--shape qwen3-1.7b|small] [--seq 8192,16384]
//                    [--branch lightning,gdn] [--stage gates|calibration|both] [--steps 5] [--warmup 2] [--json PATH]
//
// Each timed step is bracketed by device synchronisations; the table shows the median step, the model FLOP rate it
// implies and, on CUDA, MFU against 790 TFLOP/s and the allocator's peak memory. Exit status 1 when a
// configuration fails (error, out of memory) or a loss is not finite; 2 for bad arguments.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench/bench_model.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/model/decoder_weights.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/morph/calibration.h"
#include "worker/engine/morph/conversion_options.h"
#include "worker/engine/morph/gate_optimization.h"
#include "worker/engine/morph/linear_branch.h"

namespace fm {
namespace {

constexpr double kPeakFlops = 790e12;      // H200 dense bf16, as in gateopt_reference.py
constexpr double kSelectionTokens = 20e6;  // the paper's gate-stage budget

using bench::CudaAvailable;
using bench::MakeConfig;
using bench::Median;
using bench::PeakGiB;
using bench::RandomWeights;
using bench::ResetPeak;
using bench::Shape;  // Qwen3-1.7B's decoder body and the reference's "small" model (bench_model.h)
using bench::Sync;

// gateopt_reference.py's flops_per_token: teacher forward + morphable forward + morphable backward (activation
// gradients only), projections and causal softmax attention; the linear-attention core and norms are not counted.
double GateFlopsPerToken(const Shape& s, int64_t T) {
  const double lin = s.L * (s.d * (s.H * s.hd) * 2.0 + s.d * (s.Hkv * s.hd) * 2.0 + 3.0 * s.d * s.ff);
  const double la = s.L * 4.0 * s.d * (s.H * s.hd);
  const double fa_attn = s.L * 2.0 * T * s.H * s.hd;
  const double teacher = 2 * lin + fa_attn;
  const double morph_fwd = 2 * (lin + la) + fa_attn;
  const double morph_bwd = 2 * (lin + la) + 2.5 * fa_attn;
  return teacher + morph_fwd + morph_bwd;
}

// The same counting for a calibration step: teacher forward + every branch's projections forward (2·la) and
// backward (weight gradients of q/k/v/o, 2·la, + o_proj's input gradient, 0.5·la; the branch input needs none).
double CalibrationFlopsPerToken(const Shape& s, int64_t T) {
  const double lin = s.L * (s.d * (s.H * s.hd) * 2.0 + s.d * (s.Hkv * s.hd) * 2.0 + 3.0 * s.d * s.ff);
  const double la = s.L * 4.0 * s.d * (s.H * s.hd);
  const double fa_attn = s.L * 2.0 * T * s.H * s.hd;
  return 2 * lin + fa_attn + 2 * la + 2.5 * la;
}

using Clock = std::chrono::steady_clock;

struct Row {
  std::string stage, branch;
  int64_t T = 0, answers = 0;
  std::vector<double> step_s;  // timed steps
  double median_s = 0, mean_s = 0, tokens_per_s = 0, flops_per_token = 0, loss = 0;
  std::optional<double> mfu;       // against the H200's bf16 peak: CUDA only
  std::optional<double> peak_gib;  // CUDA only
  std::string error;               // non-empty: the configuration failed
};

// Runs `step` warmup + steps times, each between synchronisations; `step` returns the step's loss or an error.
template <typename Step>
void TimeSteps(const at::Device& device, int warmup, int steps, Row& row, Step&& step) {
  ResetPeak(device);
  for (int i = 0; i < warmup + steps; ++i) {
    Sync(device);
    const auto t0 = Clock::now();
    absl::StatusOr<double> loss = step();
    Sync(device);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!loss.ok()) {
      row.error = std::string(loss.status().message());
      return;
    }
    if (!std::isfinite(*loss)) {
      row.error = "loss is not finite (" + std::to_string(*loss) + ")";
      return;
    }
    row.loss = *loss;
    if (i >= warmup) row.step_s.push_back(s);
  }
  row.peak_gib = PeakGiB(device);
  row.median_s = Median(row.step_s);
  row.mean_s = bench::Mean(row.step_s);
  row.tokens_per_s = static_cast<double>(row.T) / row.median_s;
  if (device.is_cuda()) row.mfu = row.tokens_per_s * row.flops_per_token / kPeakFlops;
}

// One passkey-like sample: random ids [1, T] (on the CPU, as the stage's sample generator makes them) with the last
// `answers` tokens marked, so the loss reads `answers` positions (t - 1 for each marked t) near the end.
MaskedSample RandomSample(int64_t T, int64_t answers, int64_t vocab) {
  MaskedSample s;
  s.ids = at::randint(0, vocab, {1, T}, at::TensorOptions().dtype(at::kLong));
  s.answer_mask = at::zeros({1, T}, at::TensorOptions().dtype(at::kBool));
  s.answer_mask.narrow(1, T - answers, answers).fill_(true);
  return s;
}

void PrintRow(const Row& r) {
  if (!r.error.empty()) {
    std::printf("%-12s %-10s %6ld  FAILED: %s\n", r.stage.c_str(), r.branch.c_str(), static_cast<long>(r.T),
                r.error.c_str());
  } else {
    char peak[32] = "-", mfu[32] = "-";
    if (r.peak_gib) std::snprintf(peak, sizeof(peak), "%.1f", *r.peak_gib);
    if (r.mfu) std::snprintf(mfu, sizeof(mfu), "%.1f%%", *r.mfu * 100);
    std::printf("%-12s %-10s %6ld %10.1f %11.0f %8.3g %7s %9s %12.4g\n", r.stage.c_str(), r.branch.c_str(),
                static_cast<long>(r.T), r.median_s * 1e3, r.tokens_per_s, r.tokens_per_s * r.flops_per_token / 1e12,
                mfu, peak, r.loss);
  }
  std::fflush(stdout);
}

struct RunInfo {
  std::string device, dtype;
  Shape shape;
  int64_t vocab = 0, answers = 0;
  int warmup = 0, steps = 0;
};

// Rewritten after every configuration, so a run stopped by a time limit leaves what it finished.
bool WriteJson(const std::string& path, const RunInfo& info, const std::vector<Row>& rows) {
  const Shape& s = info.shape;
  nlohmann::json j;
  j["bench"] = "fm_gateopt_bench";
  j["device"] = info.device;
  j["dtype"] = info.dtype;
  j["shape"] = {{"name", s.name}, {"d", s.d},   {"L", s.L},   {"H", s.H},
                {"Hkv", s.Hkv},   {"hd", s.hd}, {"ff", s.ff}, {"vocab", info.vocab}};
  j["answers"] = info.answers;
  j["warmup"] = info.warmup;
  j["steps"] = info.steps;
  j["threads"] = at::get_num_threads();
  j["peak_flops"] = kPeakFlops;
  j["results"] = nlohmann::json::array();
  for (const Row& r : rows) {
    nlohmann::json e = {{"stage", r.stage}, {"branch", r.branch}, {"T", r.T}};
    if (r.answers > 0) e["answers"] = r.answers;
    if (!r.error.empty()) {
      e["error"] = r.error;
    } else {
      e["step_s"] = r.median_s;
      e["step_s_mean"] = r.mean_s;
      e["step_s_all"] = r.step_s;
      e["tokens_per_s"] = r.tokens_per_s;
      e["flops_per_token"] = r.flops_per_token;
      e["tflops"] = r.tokens_per_s * r.flops_per_token / 1e12;
      e["mfu"] = r.mfu ? nlohmann::json(*r.mfu) : nlohmann::json(nullptr);
      e["peak_gib"] = r.peak_gib ? nlohmann::json(*r.peak_gib) : nlohmann::json(nullptr);
      e["loss"] = r.loss;
      if (r.stage == "gates") e["hours_20m_tokens"] = kSelectionTokens / r.tokens_per_s / 3600;
    }
    j["results"].push_back(e);
  }
  std::ofstream out(path);
  out << j.dump(1) << "\n";
  return static_cast<bool>(out);
}

int Run(int argc, char** argv) {
  CLI::App app{"fm_gateopt_bench: the engine's gate-optimisation and calibration steps on a random Qwen3 model"};
  std::string device_name = "cpu", dtype_name = "bf16", shape_name = "qwen3-1.7b", seq_list = "8192,16384",
              branch_list = "lightning,gdn", stage = "gates", json_path;
  int steps = 5, warmup = 2, threads = 0;
  int64_t answers = 640, vocab = 1024;
  uint64_t seed = 0;
  app.add_option("--device", device_name, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", dtype_name, "weights and activations")->check(CLI::IsMember({"bf16", "f32"}));
  app.add_option("--shape", shape_name, "qwen3-1.7b (d 2048, 28 layers, 16/8 heads, ff 6144) or small")
      ->check(CLI::IsMember({"qwen3-1.7b", "small"}));
  app.add_option("--seq", seq_list, "comma-separated sequence lengths (B = 1)");
  app.add_option("--branch", branch_list, "comma-separated: lightning, gla, gdn");
  app.add_option("--stage", stage, "gates, calibration or both")
      ->check(CLI::IsMember({"gates", "calibration", "both"}));
  app.add_option("--steps", steps, "timed steps per configuration (median reported)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--answers", answers, "answer positions at the end of each sample (capped at T - 1)")
      ->check(CLI::PositiveNumber);
  app.add_option("--vocab", vocab, "vocabulary of the random model (no LM head runs in either step)")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "CPU threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
  app.add_option("--seed", seed, "weights and token ids");
  app.add_option("--json", json_path, "write the results here");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (device_name == "cuda" && !CudaAvailable()) {
    std::fprintf(stderr,
                 "error: --device cuda, but this build has no CUDA (FLASHMORPH_CUDA off) or no GPU is visible\n");
    return 2;
  }
  if (threads > 0) at::set_num_threads(threads);
  const Shape shape = *bench::FindShape(shape_name);
  absl::StatusOr<std::vector<int64_t>> parsed_seqs = bench::ParseIntList(seq_list, 2, 1 << 20);
  if (!parsed_seqs.ok()) {
    std::fprintf(stderr, "error: --seq: %s\n", std::string(parsed_seqs.status().message()).c_str());
    return 2;
  }
  const std::vector<int64_t> seqs = *parsed_seqs;
  std::vector<std::pair<std::string, BranchKind>> branches_to_run;
  for (const std::string& b : bench::SplitList(branch_list)) {
    absl::StatusOr<BranchKind> k = bench::ParseBranch(b);
    if (!k.ok()) {
      std::fprintf(stderr, "error: --branch: %s\n", std::string(k.status().message()).c_str());
      return 2;
    }
    branches_to_run.emplace_back(b, *k);
  }
  if (branches_to_run.empty()) {
    std::fprintf(stderr, "error: --branch needs at least one value\n");
    return 2;
  }

  const at::Device device = device_name == "cuda" ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const at::ScalarType dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;
  const ModelConfig config = MakeConfig(shape, vocab, *std::max_element(seqs.begin(), seqs.end()));
  if (absl::Status s = ValidateModelConfig(config, "bench shape " + shape.name); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 2;
  }

  at::manual_seed(seed);
  const auto t_build = Clock::now();
  Decoder teacher(config, RandomWeights(config, dtype, device));
  Sync(device);
  std::printf(
      "# engine step bench: %s (d %ld, L %ld, H %ld/%ld, hd %ld, ff %ld, vocab %ld), %s, %s, B=1, answers %ld "
      "(at most T-1), %d warm-up + %d timed steps (median), CPU threads %d; model built in %.1f s\n",
      shape.name.c_str(), static_cast<long>(shape.d), static_cast<long>(shape.L), static_cast<long>(shape.H),
      static_cast<long>(shape.Hkv), static_cast<long>(shape.hd), static_cast<long>(shape.ff), static_cast<long>(vocab),
      device_name.c_str(), dtype_name.c_str(), static_cast<long>(answers), warmup, steps, at::get_num_threads(),
      std::chrono::duration<double>(Clock::now() - t_build).count());
  std::printf("%-12s %-10s %6s %10s %11s %8s %7s %9s %12s\n", "stage", "branch", "T", "step ms", "tokens/s", "TFLOP/s",
              "MFU", "peak GiB", "loss");

  const RunInfo info{device_name, dtype_name, shape, vocab, answers, warmup, steps};
  std::vector<Row> rows;
  bool json_ok = true;
  auto record = [&](Row row) {
    PrintRow(row);
    rows.push_back(std::move(row));
    if (!json_path.empty()) json_ok = WriteJson(json_path, info, rows) && json_ok;
  };
  const bool run_gates = stage == "gates" || stage == "both";
  const bool run_calibration = stage == "calibration" || stage == "both";
  std::vector<int64_t> all_layers;
  for (int64_t l = 0; l < config.num_layers; ++l) all_layers.push_back(l);

  for (const auto& [branch_name, kind] : branches_to_run) {
    BranchSettings settings;
    settings.kind = kind;
    std::vector<LinearBranch> branches;
    for (int64_t l = 0; l < config.num_layers; ++l)
      branches.push_back(LinearBranch::FromTeacher(config, teacher.weights().layers[l], l, settings, seed));
    for (int64_t T : seqs) {
      const int64_t a = std::min<int64_t>(answers, T - 1);
      if (run_gates) {
        Row row;
        row.stage = "gates", row.branch = branch_name, row.T = T, row.answers = a;
        row.flops_per_token = GateFlopsPerToken(shape, T);
        try {
          for (auto& b : branches) b.SetRequiresGrad(false);  // as OptimizeGates does
          GatePlan plan;  // the stage's defaults: λ = 0.1, layer-level gates, activation checkpointing
          GateState state(teacher, plan.head_level);
          const MaskedSample sample = RandomSample(T, a, vocab);
          const std::vector<MaskedSample> samples = {sample};
          TimeSteps(device, warmup, steps, row, [&]() -> absl::StatusOr<double> {
            absl::StatusOr<GateStepResult> r =
                GateOptimizationStep(teacher, branches, plan, samples, plan.lr_start, state);
            if (!r.ok()) return r.status();
            return r->distance + r->penalty;
          });
        } catch (const std::exception& e) {
          row.error = std::string(e.what()).substr(0, 300);
        }
        record(std::move(row));
      }
      if (run_calibration) {
        Row row;
        row.stage = "calibration", row.branch = branch_name, row.T = T;
        row.flops_per_token = CalibrationFlopsPerToken(shape, T);
        try {
          std::vector<std::unique_ptr<AdamW>> opts = CalibrationOptimizers(branches, all_layers);
          const at::Tensor ids = at::randint(0, vocab, {1, T}, at::TensorOptions().dtype(at::kLong));
          const double lr = CalibrationPlan{}.learning_rate;
          TimeSteps(device, warmup, steps, row, [&]() -> absl::StatusOr<double> {
            absl::StatusOr<std::vector<double>> losses = CalibrationStep(teacher, branches, all_layers, opts, ids, lr);
            if (!losses.ok()) return losses.status();
            double mean = 0;
            for (double v : *losses) mean += v / static_cast<double>(losses->size());
            return mean;
          });
        } catch (const std::exception& e) {
          row.error = std::string(e.what()).substr(0, 300);
        }
        for (auto& b : branches) b.SetRequiresGrad(false);  // as CalibrateBranches leaves them
        record(std::move(row));
      }
    }
  }

  bool failed = false;
  for (const Row& r : rows) {
    failed = failed || !r.error.empty();
    if (r.stage == "gates" && r.error.empty())
      std::printf("  => %.0fM-token gate selection at T=%ld with %s: %.2f %s-hours (paper: 2.1 GPU-hours)\n",
                  kSelectionTokens / 1e6, static_cast<long>(r.T), r.branch.c_str(),
                  kSelectionTokens / r.tokens_per_s / 3600, device.is_cuda() ? "GPU" : "CPU");
  }

  if (!json_ok) {
    std::fprintf(stderr, "error: cannot write %s\n", json_path.c_str());
    return 1;
  }
  return failed ? 1 : 0;
}

}  // namespace
}  // namespace fm

int main(int argc, char** argv) {
  try {
    return fm::Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
