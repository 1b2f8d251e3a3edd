// Engine throughput (issue 5 item 3): times the engine's own stage steps — GateOptimizationStep (stage 2: teacher
// forward without grad + checkpointed morphable forward/backward to the gates + AdamW step + clamp) and
// CalibrationStep (stage 1: one teacher forward feeding every layer's branch, MSE backward, per-layer AdamW) — on a
// decoder of Qwen3-1.7B's shape (or the reference's "small" shape) with random weights. It is the engine side of
// the plain-PyTorch anchor gateopt_reference.py (eager and torch.compile): same shapes, B = 1, the last 640 tokens
// as answer positions, the same FLOP formula and the same 790 TFLOP/s bf16 peak for MFU. See bench/README.md.
//
//   fm_gateopt_bench [--device cpu|cuda] [--dtype bf16|f32] [--shape qwen3-1.7b|small] [--seq 8192,16384]
//                    [--branch lightning,gdn] [--stage gates|calibration|both] [--steps 5] [--warmup 2] [--json PATH]
//                    [--devices 1,2] [--samples 2] [--pipeline-steps 8] [--shard-layers]
//
// Several devices (issue 5 item 4): with --devices 1,2 every configuration runs on 1 and on 2 devices (cuda:0..n-1;
// on the CPU, n threads sharing it), the same job each time: a gate step over --samples samples (data parallel:
// ParallelGateOptimizationStep over Replicas), and --pipeline-steps calibration steps (layer parallel:
// RunCalibrationPipeline over contiguous layer shards; one device runs the plain CalibrationStep loop). The
// speed-up column compares each row with the same configuration on one device. --shard-layers adds "gates-shard"
// rows: the gate step on a model whose layers are split over the n devices (PlaceDecoder; for models that do not fit
// one device), whose peak column is the largest device's.
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
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#ifdef FLASHMORPH_CUDA
#include "kernels/fused_ops_cuda.h"
#include "kernels/linear_attention_cuda.h"
#endif

#include "bench/bench_model.h"
#include "bench/step_profile.h"
#include "worker/engine/model/attention_record.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/model/decoder_placement.h"
#include "worker/engine/model/decoder_weights.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/morph/calibration.h"
#include "worker/engine/morph/calibration_pipeline.h"
#include "worker/engine/morph/conversion_options.h"
#include "worker/engine/morph/gate_optimization.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/replicas.h"

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
  int64_t devices = 1, tokens_per_step = 0;  // tokens of one timed unit (gate step over the samples, or K steps)
  std::optional<double> speedup;             // tokens/s over the same configuration's on one device
  std::vector<double> replica_s;             // data-parallel gate step: each replica's share of the last step
  std::vector<double> step_s;                // timed steps
  double median_s = 0, mean_s = 0, tokens_per_s = 0, flops_per_token = 0, loss = 0;
  std::optional<double> mfu;       // against the H200's bf16 peak: CUDA only
  std::optional<double> peak_gib;  // CUDA only
  std::string error;               // non-empty: the configuration failed
};

// Runs `step` warmup + steps times, each between synchronisations of every device; `step` returns the step's loss
// or an error. Peak memory: the largest of the devices'.
template <typename Step>
void TimeSteps(const std::vector<at::Device>& devices, int warmup, int steps, Row& row, Step&& step) {
  const at::Device& device = devices.front();
  for (const at::Device& d : devices) ResetPeak(d);
  auto sync_all = [&] {
    for (const at::Device& d : devices) Sync(d);
  };
  for (int i = 0; i < warmup + steps; ++i) {
    sync_all();
    const auto t0 = Clock::now();
    absl::StatusOr<double> loss = step();
    sync_all();
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
  for (const at::Device& d : devices)
    if (std::optional<double> p = PeakGiB(d)) row.peak_gib = std::max(row.peak_gib.value_or(0.0), *p);
  row.median_s = Median(row.step_s);
  row.mean_s = bench::Mean(row.step_s);
  row.tokens_per_s = static_cast<double>(row.tokens_per_step > 0 ? row.tokens_per_step : row.T) / row.median_s;
  // Per device: MFU of the whole set against n times one card's peak.
  if (device.is_cuda())
    row.mfu = row.tokens_per_s * row.flops_per_token / (kPeakFlops * static_cast<double>(devices.size()));
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
    std::printf("%-12s %-10s %6ld %4ld  FAILED: %s\n", r.stage.c_str(), r.branch.c_str(), static_cast<long>(r.T),
                static_cast<long>(r.devices), r.error.c_str());
  } else {
    char peak[32] = "-", mfu[32] = "-", speedup[32] = "-";
    if (r.peak_gib) std::snprintf(peak, sizeof(peak), "%.1f", *r.peak_gib);
    if (r.mfu) std::snprintf(mfu, sizeof(mfu), "%.1f%%", *r.mfu * 100);
    if (r.speedup) std::snprintf(speedup, sizeof(speedup), "%.2fx", *r.speedup);
    std::printf("%-12s %-10s %6ld %4ld %10.1f %11.0f %8s %8.3g %7s %9s %12.4g\n", r.stage.c_str(), r.branch.c_str(),
                static_cast<long>(r.T), static_cast<long>(r.devices), r.median_s * 1e3, r.tokens_per_s, speedup,
                r.tokens_per_s * r.flops_per_token / 1e12, mfu, peak, r.loss);
    if (!r.replica_s.empty()) {
      std::printf("    replica shares of the last step (ms):");
      for (double v : r.replica_s) std::printf(" %.1f", v * 1e3);
      std::printf("\n");
    }
  }
  std::fflush(stdout);
}

struct RunInfo {
  std::string device, dtype;
  Shape shape;
  int64_t vocab = 0, answers = 0;
  int warmup = 0, steps = 0;
};

// The process-wide engine settings that change which kernels run (each has an environment variable).
nlohmann::json EngineSettings() {
  nlohmann::json s = {{"attention_record_mib", AttentionRecordBudget() >> 20}};
#ifdef FLASHMORPH_CUDA
  s["gla_segments"] = kernels::SegmentedGla();
  s["gla_segment_chunks"] = kernels::GlaSegmentChunks();  // 0: chosen from the problem's size
  s["vectorized_head_transform"] = kernels::VectorizedHeadTransform();
  s["sequential_state_scan"] = kernels::SequentialStateScan();
#endif
  return s;
}

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
  j["settings"] = EngineSettings();
  j["peak_flops"] = kPeakFlops;
  j["results"] = nlohmann::json::array();
  for (const Row& r : rows) {
    nlohmann::json e = {{"stage", r.stage}, {"branch", r.branch}, {"T", r.T}, {"devices", r.devices}};
    if (r.speedup) e["speedup_vs_one_device"] = *r.speedup;
    if (r.tokens_per_step > 0) e["tokens_per_step"] = r.tokens_per_step;
    if (!r.replica_s.empty()) e["replica_share_s"] = r.replica_s;
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
  int64_t answers = 640, vocab = 1024, samples = 1, pipeline_steps = 8;
  std::string devices_list = "1";
  bool shard_layers = false, profile = false;
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
  app.add_option("--devices", devices_list, "comma-separated device counts for each configuration (cuda:0..n-1)");
  app.add_option("--samples", samples, "samples per gate step (dealt to the devices)")->check(CLI::PositiveNumber);
  app.add_option("--pipeline-steps", pipeline_steps, "calibration steps per timed unit when --devices has n > 1")
      ->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "write the results here");
  app.add_flag("--shard-layers", shard_layers, "also time the gate step on a layer-sharded model (n > 1)");
  app.add_flag("--profile", profile, "after timing, profile one more one-device step (CUDA: top kernels, GPU busy)");
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
  absl::StatusOr<std::vector<int64_t>> device_counts = bench::ParseIntList(devices_list, 1, 64);
  if (!device_counts.ok()) {
    std::fprintf(stderr, "error: --devices: %s\n", std::string(device_counts.status().message()).c_str());
    return 2;
  }
  const int64_t max_devices = *std::max_element(device_counts->begin(), device_counts->end());
  if (device.is_cuda() && max_devices > bench::CudaDeviceCount()) {
    std::fprintf(stderr, "error: --devices %ld, but %ld GPU(s) are visible\n", static_cast<long>(max_devices),
                 static_cast<long>(bench::CudaDeviceCount()));
    return 2;
  }
  auto device_set = [&](int64_t n) {
    std::vector<at::Device> set;
    for (int64_t i = 0; i < n; ++i)
      set.push_back(device.is_cuda() ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(i)) : device);
    return set;
  };
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
  std::printf("# settings: %s\n", EngineSettings().dump().c_str());
  std::printf("%-12s %-10s %6s %4s %10s %11s %8s %8s %7s %9s %12s\n", "stage", "branch", "T", "dev", "step ms",
              "tokens/s", "speed-up", "TFLOP/s", "MFU", "peak GiB", "loss");

  const RunInfo info{device_name, dtype_name, shape, vocab, answers, warmup, steps};
  std::vector<Row> rows;
  std::vector<std::string> profiles;  // --profile: one table per one-device gate configuration
  bool json_ok = true;
  auto record = [&](Row row) {
    for (const Row& r : rows)
      if (row.devices > 1 && r.devices == 1 && r.stage == (row.stage == "gates-shard" ? "gates" : row.stage) &&
          r.branch == row.branch && r.T == row.T && r.error.empty() && row.error.empty())
        row.speedup = row.tokens_per_s / r.tokens_per_s;
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
    // A gate row of the table: one step over `samples` samples of T tokens.
    auto gate_row = [&](const char* stage_name, int64_t n, int64_t T, int64_t a) {
      Row row;
      row.stage = stage_name, row.branch = branch_name, row.T = T, row.answers = a, row.devices = n;
      row.tokens_per_step = T * samples;
      row.flops_per_token = GateFlopsPerToken(shape, T);
      return row;
    };
    for (int64_t T : seqs) {
      const int64_t a = std::min<int64_t>(answers, T - 1);
      for (int64_t n : *device_counts) {
        if (!run_gates) break;
        const std::vector<at::Device> set = device_set(n);
        Row row = gate_row("gates", n, T, a);
        try {
          for (auto& b : branches) b.SetRequiresGrad(false);  // as OptimizeGates does
          GatePlan plan;  // the stage's defaults: λ = 0.1, layer-level gates, activation checkpointing
          GateState state(teacher, plan.head_level);
          std::vector<MaskedSample> batch;
          for (int64_t i = 0; i < samples; ++i) batch.push_back(RandomSample(T, a, vocab));
          std::unique_ptr<Replicas> replicas;
          if (n > 1) {
            absl::StatusOr<std::unique_ptr<Replicas>> r = Replicas::Create(teacher, branches, set);
            if (!r.ok()) throw std::runtime_error(std::string(r.status().message()));
            replicas = *std::move(r);
          }
          TimeSteps(set, warmup, steps, row, [&]() -> absl::StatusOr<double> {
            absl::StatusOr<GateStepResult> r =
                replicas ? ParallelGateOptimizationStep(*replicas, plan, batch, plan.lr_start, state)
                         : GateOptimizationStep(teacher, branches, plan, batch, plan.lr_start, state);
            if (!r.ok()) return r.status();
            row.replica_s = r->replica_seconds;
            return r->distance + r->penalty;
          });
          if (profile && n == 1 && row.error.empty())
            profiles.push_back("gates " + branch_name + " T=" + std::to_string(T) + ": " +
                               bench::ProfileStep(device, [&] {
                                 (void)GateOptimizationStep(teacher, branches, plan, batch, plan.lr_start, state);
                               }));
        } catch (const std::exception& e) {
          row.error = std::string(e.what()).substr(0, 300);
        }
        record(std::move(row));
      }
      for (int64_t n : *device_counts) {
        if (!run_gates || !shard_layers || n < 2) continue;
        const std::vector<at::Device> set = device_set(n);
        Row row = gate_row("gates-shard", n, T, a);
        try {
          absl::StatusOr<std::vector<int64_t>> part_of = BalancedLayerSplit(config.num_layers, n);
          if (!part_of.ok()) throw std::runtime_error(std::string(part_of.status().message()));
          std::vector<at::Device> layer_devices;
          for (int64_t p : *part_of) layer_devices.push_back(set[p]);
          absl::StatusOr<std::unique_ptr<Decoder>> sharded = PlaceDecoder(teacher, layer_devices);
          if (!sharded.ok()) throw std::runtime_error(std::string(sharded.status().message()));
          std::vector<LinearBranch> placed = branches;
          for (int64_t l = 0; l < config.num_layers; ++l) placed[l].To(dtype, layer_devices[l]);
          GatePlan plan;
          GateState state(**sharded, plan.head_level);
          std::vector<MaskedSample> batch;
          for (int64_t i = 0; i < samples; ++i) batch.push_back(RandomSample(T, a, vocab));
          TimeSteps(set, warmup, steps, row, [&]() -> absl::StatusOr<double> {
            absl::StatusOr<GateStepResult> r =
                GateOptimizationStep(**sharded, placed, plan, batch, plan.lr_start, state);
            if (!r.ok()) return r.status();
            return r->distance + r->penalty;
          });
        } catch (const std::exception& e) {
          row.error = std::string(e.what()).substr(0, 300);
        }
        record(std::move(row));
      }
      for (int64_t n : *device_counts) {
        if (!run_calibration) break;
        const std::vector<at::Device> set = device_set(n);
        Row row;
        row.stage = "calibration", row.branch = branch_name, row.T = T, row.devices = n;
        const bool multi = max_devices > 1;  // then every row times pipeline_steps steps (the same job)
        row.tokens_per_step = T * (multi ? pipeline_steps : 1);
        row.flops_per_token = CalibrationFlopsPerToken(shape, T);
        try {
          std::vector<std::unique_ptr<Decoder>> copies;  // teachers on cuda:1.. (shard s uses device s)
          std::vector<const Decoder*> teachers = {&teacher};
          for (int64_t i = 1; i < n; ++i) {
            absl::StatusOr<std::unique_ptr<Decoder>> c = ReplicateDecoder(teacher, set[i]);
            if (!c.ok()) throw std::runtime_error(std::string(c.status().message()));
            teachers.push_back(c->get());
            copies.push_back(*std::move(c));
          }
          absl::StatusOr<CalibrationShards> shards = MakeCalibrationShards(teachers);
          if (!shards.ok()) throw std::runtime_error(std::string(shards.status().message()));
          for (int64_t l = 0; l < config.num_layers; ++l) branches[l].To(dtype, shards->device(shards->ShardOf(l)));
          std::vector<std::unique_ptr<AdamW>> opts = CalibrationOptimizers(branches, all_layers);
          const at::Tensor ids = at::randint(0, vocab, {1, T}, at::TensorOptions().dtype(at::kLong));
          const double lr = CalibrationPlan{}.learning_rate;
          TimeSteps(set, warmup, steps, row, [&]() -> absl::StatusOr<double> {
            double mean = 0;
            auto add = [&](const std::vector<double>& losses) {
              mean = 0;
              for (double v : losses) mean += v / static_cast<double>(losses.size());
            };
            if (n == 1) {
              for (int64_t k = 0; k < (multi ? pipeline_steps : 1); ++k) {
                absl::StatusOr<std::vector<double>> losses =
                    CalibrationStep(teacher, branches, all_layers, opts, ids, lr);
                if (!losses.ok()) return losses.status();
                add(*losses);
              }
              return mean;
            }
            CalibrationPipelineSteps run;
            run.first = 0;
            run.end = pipeline_steps;
            run.batch = [&](int64_t) -> absl::StatusOr<at::Tensor> { return ids; };
            run.lr = [&](int64_t) { return lr; };
            run.on_step = [&](int64_t, const std::vector<double>& losses) {
              add(losses);
              return true;
            };
            absl::StatusOr<int64_t> done = RunCalibrationPipeline(*shards, branches, all_layers, opts, run);
            if (!done.ok()) return done.status();
            return mean;
          });
          if (profile && n == 1 && row.error.empty())
            profiles.push_back("calibration " + branch_name + " T=" + std::to_string(T) + ": " +
                               bench::ProfileStep(device, [&] {
                                 (void)CalibrationStep(teacher, branches, all_layers, opts, ids, lr);
                               }));
          for (int64_t l = 0; l < config.num_layers; ++l) branches[l].To(dtype, device);
        } catch (const std::exception& e) {
          row.error = std::string(e.what()).substr(0, 300);
        }
        for (auto& b : branches) b.SetRequiresGrad(false);  // as CalibrateBranches leaves them
        record(std::move(row));
      }
    }
  }

  for (const std::string& p : profiles) std::printf("%s", p.c_str());
  bool failed = false;
  for (const Row& r : rows) {
    failed = failed || !r.error.empty();
    if (r.stage == "gates" && r.error.empty())
      std::printf(
          "  => %.0fM-token gate selection at T=%ld with %s on %ld device(s): %.2f h wall, %.2f %s-hours "
          "(paper: 2.1 GPU-hours)\n",
          kSelectionTokens / 1e6, static_cast<long>(r.T), r.branch.c_str(), static_cast<long>(r.devices),
          kSelectionTokens / r.tokens_per_s / 3600,
          kSelectionTokens / r.tokens_per_s / 3600 * static_cast<double>(r.devices), device.is_cuda() ? "GPU" : "CPU");
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
