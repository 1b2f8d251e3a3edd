// Hybrid speed (issue 5 item 5): prefill and decoding of a decoder of Qwen3-1.7B's shape (or the "small" one) with
// random weights, as the original all-softmax-attention model and as a hybrid that keeps a fraction of its layers
// softmax attention (spread evenly: the engine's UniformLayout) and runs linear-attention branches in the others.
// Both run the engine's inference paths: the original Decoder::Forward with its KV cache, the hybrid
// MorphableModel::ForwardCached with KV caches for the softmax layers and recurrent states for the branches (on CUDA
// bf16 the branches use the chunked kernels for prefill and the recurrent kernel for decoding; softmax attention is
// at::scaled_dot_product_attention). The paper's anchor: 2.24x prefill speed-up at 128K tokens.
//
//   fm_hybrid_bench [--device cpu|cuda] [--dtype bf16|f32] [--shape qwen3-1.7b|small] [--seq 32768,131072]
//                   [--decode-steps 64] [--fa-ratio 0.25] [--branch lightning|gla|gdn] [--reps 2] [--warmup 1]
//                   [--json PATH]
//
// Per T (B = 1): `warmup` untimed + `reps` timed prefills of T tokens on fresh caches (the KV cache pre-allocated for
// T + decode steps), each between device synchronisations (median reported), the last position's logits computed
// (vocabulary 1024: the LM head is negligible); then `decode-steps` greedy steps of one token each on the last
// prefill's caches, each timed (median ms/token). Cache = bytes of the keys/values of the T prefilled positions
// plus the branches' states; peak = the CUDA caching allocator's peak during the prefills (weights included).
// Exit status 1 when a configuration fails (error, out of memory) or logits are not finite; 2 for bad arguments.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench/bench_model.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/morph/layout.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/morphable_model.h"

namespace fm {
namespace {

constexpr double kPaperPrefillSpeedup128k = 2.24;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

using Clock = std::chrono::steady_clock;

struct Row {
  std::string model;  // "original" or "hybrid"
  int64_t T = 0;
  std::vector<double> prefill_s, decode_s;
  double prefill_median_s = 0, decode_median_s = 0, decode_mean_s = 0;
  std::optional<double> prefill_speedup, decode_speedup;  // hybrid rows: original / hybrid
  int64_t cache_bytes = 0;
  std::optional<double> peak_gib;  // CUDA only
  std::string error;               // non-empty: the configuration failed
};

// One model's inference entry: runs ids on `cache`, returns the logits of the last position [B, 1, V] (float32).
using Step = std::function<absl::StatusOr<at::Tensor>(const at::Tensor& ids, HybridCache& cache)>;

absl::Status CheckFinite(const at::Tensor& logits, const char* what) {
  if (!at::isfinite(logits).all().item<bool>())
    return absl::InternalError(std::string(what) + " logits are not finite");
  return absl::OkStatus();
}

// Prefills and decodes as the header says; fills the row's timings, cache size and peak.
absl::Status Measure(const at::Device& device, const Step& step, int64_t T, int64_t vocab, int warmup, int reps,
                     int64_t decode_steps, Row& row) {
  const at::Tensor ids = at::randint(0, vocab, {1, T}, at::TensorOptions().dtype(at::kLong)).to(device);
  std::optional<HybridCache> cache;
  at::Tensor logits;
  bench::ResetPeak(device);
  for (int i = 0; i < warmup + reps; ++i) {
    cache.emplace();  // destroys the previous run's caches first: they never coexist
    cache->kv.capacity = T + decode_steps;
    bench::Sync(device);
    const auto t0 = Clock::now();
    absl::StatusOr<at::Tensor> r = step(ids, *cache);
    bench::Sync(device);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!r.ok()) return r.status();
    if (i >= warmup) row.prefill_s.push_back(s);
    logits = *r;
  }
  FM_RETURN_IF_ERROR(CheckFinite(logits, "prefill"));
  row.peak_gib = bench::PeakGiB(device);
  row.cache_bytes = cache->Bytes();
  row.prefill_median_s = bench::Median(row.prefill_s);
  for (int64_t i = 0; i < decode_steps; ++i) {
    const at::Tensor next = logits.argmax(-1);  // [1, 1], stays on the device
    bench::Sync(device);
    const auto t0 = Clock::now();
    absl::StatusOr<at::Tensor> r = step(next, *cache);
    bench::Sync(device);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!r.ok()) return r.status();
    row.decode_s.push_back(s);
    logits = *r;
  }
  if (decode_steps > 0) {
    FM_RETURN_IF_ERROR(CheckFinite(logits, "decoding"));
    row.decode_median_s = bench::Median(row.decode_s);
    row.decode_mean_s = bench::Mean(row.decode_s);
  }
  return absl::OkStatus();
}

void PrintRow(const Row& r) {
  if (!r.error.empty()) {
    std::printf("%-9s %7ld  FAILED: %s\n", r.model.c_str(), static_cast<long>(r.T), r.error.c_str());
  } else {
    char prefill_x[16] = "-", decode_x[16] = "-", decode_ms[16] = "-", peak[16] = "-";
    if (r.prefill_speedup) std::snprintf(prefill_x, sizeof(prefill_x), "%.2fx", *r.prefill_speedup);
    if (r.decode_speedup) std::snprintf(decode_x, sizeof(decode_x), "%.2fx", *r.decode_speedup);
    if (!r.decode_s.empty()) std::snprintf(decode_ms, sizeof(decode_ms), "%.3f", r.decode_median_s * 1e3);
    if (r.peak_gib) std::snprintf(peak, sizeof(peak), "%.1f", *r.peak_gib);
    std::printf("%-9s %7ld %10.3f %13.0f %8s %10s %8s %10.4f %9s\n", r.model.c_str(), static_cast<long>(r.T),
                r.prefill_median_s, static_cast<double>(r.T) / r.prefill_median_s, prefill_x, decode_ms, decode_x,
                static_cast<double>(r.cache_bytes) / kGiB, peak);
  }
  std::fflush(stdout);
}

struct RunInfo {
  std::string device, dtype, branch;
  bench::Shape shape;
  int64_t vocab = 0, decode_steps = 0;
  double fa_ratio = 0;
  std::vector<int64_t> fa_layers;
  int warmup = 0, reps = 0;
};

// Rewritten after every configuration, so a run stopped by a time limit leaves what it finished.
bool WriteJson(const std::string& path, const RunInfo& info, const std::vector<Row>& rows) {
  const bench::Shape& s = info.shape;
  nlohmann::json j;
  j["bench"] = "fm_hybrid_bench";
  j["device"] = info.device;
  j["dtype"] = info.dtype;
  j["shape"] = {{"name", s.name}, {"d", s.d},   {"L", s.L},   {"H", s.H},
                {"Hkv", s.Hkv},   {"hd", s.hd}, {"ff", s.ff}, {"vocab", info.vocab}};
  j["branch"] = info.branch;
  j["fa_ratio"] = info.fa_ratio;
  j["fa_layers"] = info.fa_layers;
  j["decode_steps"] = info.decode_steps;
  j["warmup"] = info.warmup;
  j["reps"] = info.reps;
  j["threads"] = at::get_num_threads();
  j["paper_prefill_speedup_128k"] = kPaperPrefillSpeedup128k;
  j["results"] = nlohmann::json::array();
  auto opt = [](const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
  for (const Row& r : rows) {
    nlohmann::json e = {{"model", r.model}, {"T", r.T}};
    if (!r.error.empty()) {
      e["error"] = r.error;
    } else {
      e["prefill_s"] = r.prefill_median_s;
      e["prefill_s_all"] = r.prefill_s;
      e["prefill_tokens_per_s"] = static_cast<double>(r.T) / r.prefill_median_s;
      e["prefill_speedup"] = opt(r.prefill_speedup);
      e["decode_ms"] = r.decode_s.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.decode_median_s * 1e3);
      e["decode_ms_mean"] = r.decode_s.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.decode_mean_s * 1e3);
      e["decode_s_all"] = r.decode_s;
      e["decode_speedup"] = opt(r.decode_speedup);
      e["cache_bytes"] = r.cache_bytes;
      e["cache_gib"] = static_cast<double>(r.cache_bytes) / kGiB;
      e["peak_gib"] = opt(r.peak_gib);
    }
    j["results"].push_back(e);
  }
  std::ofstream out(path);
  out << j.dump(1) << "\n";
  return static_cast<bool>(out);
}

int Run(int argc, char** argv) {
  CLI::App app{"fm_hybrid_bench: prefill and decoding of an original vs a hybrid random Qwen3 model"};
  std::string device_name = "cpu", dtype_name = "bf16", shape_name = "qwen3-1.7b", seq_list = "32768,131072",
              branch_name = "gdn", json_path;
  int reps = 2, warmup = 1, threads = 0;
  int64_t decode_steps = 64, vocab = 1024;
  double fa_ratio = 0.25;
  uint64_t seed = 0;
  app.add_option("--device", device_name, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", dtype_name, "weights and activations")->check(CLI::IsMember({"bf16", "f32"}));
  app.add_option("--shape", shape_name, "qwen3-1.7b (d 2048, 28 layers, 16/8 heads, ff 6144) or small")
      ->check(CLI::IsMember({"qwen3-1.7b", "small"}));
  app.add_option("--seq", seq_list, "comma-separated prompt lengths T (B = 1)");
  app.add_option("--decode-steps", decode_steps, "tokens decoded one at a time after the prefill (median reported)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--fa-ratio", fa_ratio, "fraction of layers kept softmax attention, spread evenly (0, 1]")
      ->check(CLI::Range(1e-9, 1.0));
  app.add_option("--branch", branch_name, "linear-attention branch of the other layers: lightning, gla or gdn");
  app.add_option("--reps", reps, "timed prefills per configuration (median reported)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed prefills first")->check(CLI::NonNegativeNumber);
  app.add_option("--vocab", vocab, "vocabulary of the random model (tied LM head on the last position)")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "CPU threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
  app.add_option("--seed", seed, "weights, branches and token ids");
  app.add_option("--json", json_path, "write the results here");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (device_name == "cuda" && !bench::CudaAvailable()) {
    std::fprintf(stderr,
                 "error: --device cuda, but this build has no CUDA (FLASHMORPH_CUDA off) or no GPU is visible\n");
    return 2;
  }
  absl::StatusOr<BranchKind> kind = bench::ParseBranch(branch_name);
  if (!kind.ok()) {
    std::fprintf(stderr, "error: --branch: %s\n", std::string(kind.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<std::vector<int64_t>> seqs = bench::ParseIntList(seq_list, 1, 1 << 21);
  if (!seqs.ok()) {
    std::fprintf(stderr, "error: --seq: %s\n", std::string(seqs.status().message()).c_str());
    return 2;
  }
  if (threads > 0) at::set_num_threads(threads);
  const bench::Shape shape = *bench::FindShape(shape_name);
  absl::StatusOr<Layout> layout = UniformLayout(Budget{Budget::Unit::kRatio, fa_ratio}, shape.L, shape.H);
  if (!layout.ok()) {
    std::fprintf(stderr, "error: --fa-ratio: %s\n", std::string(layout.status().message()).c_str());
    return 2;
  }
  const std::vector<LayerMix> hybrid_mixes = LayoutMixes(layout->FullAttentionHeads(), shape.H);

  const at::Device device = device_name == "cuda" ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const at::ScalarType dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;
  const int64_t max_t = *std::max_element(seqs->begin(), seqs->end()) + decode_steps;
  const ModelConfig config = bench::MakeConfig(shape, vocab, max_t);
  if (absl::Status s = ValidateModelConfig(config, "bench shape " + shape.name); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 2;
  }

  at::NoGradGuard no_grad;
  at::manual_seed(seed);
  const auto t_build = Clock::now();
  const Decoder original(config, bench::RandomWeights(config, dtype, device));
  // Branches for the linear layers only; softmax layers never touch theirs (a default-constructed, empty LinearBranch
  // keeps the indices aligned).
  BranchSettings settings;
  settings.kind = *kind;
  std::vector<LinearBranch> branches;
  for (int64_t l = 0; l < config.num_layers; ++l)
    branches.push_back(hybrid_mixes[l].mode == LayerMix::Mode::kLinear
                           ? LinearBranch::FromTeacher(config, original.weights().layers[l], l, settings, seed)
                           : LinearBranch());
  const MorphableModel hybrid(&original, &branches);
  bench::Sync(device);
  std::printf(
      "# hybrid speed: %s (d %ld, L %ld, H %ld/%ld, hd %ld, ff %ld, vocab %ld), %s, %s, B=1; hybrid: %s branches, "
      "%s; %d warm-up + %d timed prefills (median), %ld decode steps (median), CPU threads %d; model built in %.1f s\n",
      shape.name.c_str(), static_cast<long>(shape.d), static_cast<long>(shape.L), static_cast<long>(shape.H),
      static_cast<long>(shape.Hkv), static_cast<long>(shape.hd), static_cast<long>(shape.ff), static_cast<long>(vocab),
      device_name.c_str(), dtype_name.c_str(), branch_name.c_str(), layout->Summary().c_str(), warmup, reps,
      static_cast<long>(decode_steps), at::get_num_threads(),
      std::chrono::duration<double>(Clock::now() - t_build).count());
  std::printf("%-9s %7s %10s %13s %8s %10s %8s %10s %9s\n", "model", "T", "prefill s", "prefill tok/s", "speed-up",
              "decode ms", "speed-up", "cache GiB", "peak GiB");

  // The original: the teacher's own forward with its KV cache, logits of the last position.
  const Step original_step = [&](const at::Tensor& ids, HybridCache& cache) -> absl::StatusOr<at::Tensor> {
    ForwardOptions opts;
    opts.cache = &cache.kv;
    opts.logits_last_only = true;
    FM_ASSIGN_OR_RETURN(ForwardResult r, original.Forward(ids, opts));
    return r.logits;
  };
  // The hybrid: the morphable model's cached forward on the fixed layout, the same head.
  const Step hybrid_step = [&](const at::Tensor& ids, HybridCache& cache) -> absl::StatusOr<at::Tensor> {
    FM_ASSIGN_OR_RETURN(at::Tensor x, hybrid.ForwardCached(ids, hybrid_mixes, &cache));
    return original.Head(x.narrow(1, x.size(1) - 1, 1));
  };

  const RunInfo info{device_name,  dtype_name, branch_name,  shape,  vocab,
                     decode_steps, fa_ratio,   layout->kept, warmup, reps};
  std::vector<Row> rows;
  bool json_ok = true;
  for (int64_t T : *seqs) {
    std::optional<Row> base;
    for (const char* model : {"original", "hybrid"}) {
      Row row;
      row.model = model;
      row.T = T;
      try {
        const bool is_original = row.model == "original";
        absl::Status s =
            Measure(device, is_original ? original_step : hybrid_step, T, vocab, warmup, reps, decode_steps, row);
        if (!s.ok()) row.error = std::string(s.message()).substr(0, 300);
      } catch (const std::exception& e) {
        row.error = std::string(e.what()).substr(0, 300);
      }
      if (row.error.empty() && row.model == "original") base = row;
      if (row.error.empty() && row.model == "hybrid" && base) {
        row.prefill_speedup = base->prefill_median_s / row.prefill_median_s;
        if (!row.decode_s.empty()) row.decode_speedup = base->decode_median_s / row.decode_median_s;
      }
      PrintRow(row);
      rows.push_back(std::move(row));
      if (!json_path.empty()) json_ok = WriteJson(json_path, info, rows) && json_ok;
    }
  }

  bool failed = false;
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    failed = failed || !r.error.empty();
    if (!r.prefill_speedup) continue;
    const Row& o = rows[i - 1];  // the original at the same T (a speed-up is set only when it succeeded)
    char decode[16] = "-";
    if (r.decode_speedup) std::snprintf(decode, sizeof(decode), "%.2fx", *r.decode_speedup);
    std::printf(
        "  => T=%ld: hybrid prefill %.2fx faster, decoding %s, cache %.1fx smaller (paper: %.2fx prefill at "
        "128K)\n",
        static_cast<long>(r.T), *r.prefill_speedup, decode,
        static_cast<double>(o.cache_bytes) / static_cast<double>(std::max<int64_t>(r.cache_bytes, 1)),
        kPaperPrefillSpeedup128k);
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
