#include "bench/bench_model.h"

#include <ATen/ATen.h>

#ifdef FLASHMORPH_CUDA
#include <ATen/Context.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <algorithm>
#include <cstdlib>

#include "worker/engine/common/str_cat.h"

namespace fm::bench {

const std::vector<Shape>& Shapes() {
  static const std::vector<Shape> shapes = {{"qwen3-1.7b", 2048, 28, 16, 8, 128, 6144},
                                            {"small", 512, 4, 4, 2, 128, 1536}};
  return shapes;
}

const Shape* FindShape(std::string_view name) {
  for (const Shape& s : Shapes())
    if (s.name == name) return &s;
  return nullptr;
}

ModelConfig MakeConfig(const Shape& s, int64_t vocab, int64_t max_t) {
  ModelConfig c;
  c.arch = Architecture::kQwen3;
  c.vocab_size = vocab;
  c.hidden_size = s.d;
  c.intermediate_size = s.ff;
  c.num_layers = s.L;
  c.num_heads = s.H;
  c.num_kv_heads = s.Hkv;
  c.head_dim = s.hd;
  c.max_position_embeddings = std::max<int64_t>(max_t, 40960);
  c.rms_norm_eps = 1e-6;
  c.rope.theta = 1e6;
  c.tie_word_embeddings = true;
  c.qk_norm = true;
  c.sliding_window.assign(s.L, 0);
  c.torch_dtype = "bfloat16";
  return c;
}

DecoderWeights RandomWeights(const ModelConfig& c, at::ScalarType dtype, at::Device device) {
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  auto normal = [&](std::vector<int64_t> shape, double std) { return at::empty(shape, opts).normal_(0.0, std); };
  auto ones = [&](int64_t n) { return at::ones({n}, opts); };
  DecoderWeights w;
  w.embed_tokens = normal({c.vocab_size, c.hidden_size}, 1.0);
  w.lm_head = w.embed_tokens;
  w.final_norm = ones(c.hidden_size);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    DecoderLayerWeights lw;
    lw.input_norm = ones(c.hidden_size);
    lw.post_attention_norm = ones(c.hidden_size);
    lw.q_proj = normal({c.q_dim(), c.hidden_size}, 0.02);
    lw.k_proj = normal({c.kv_dim(), c.hidden_size}, 0.02);
    lw.v_proj = normal({c.kv_dim(), c.hidden_size}, 0.02);
    lw.o_proj = normal({c.hidden_size, c.q_dim()}, 0.02);
    lw.q_norm = ones(c.head_dim);
    lw.k_norm = ones(c.head_dim);
    lw.gate_proj = normal({c.intermediate_size, c.hidden_size}, 0.02);
    lw.up_proj = normal({c.intermediate_size, c.hidden_size}, 0.02);
    lw.down_proj = normal({c.hidden_size, c.intermediate_size}, 0.02);
    w.layers.push_back(std::move(lw));
  }
  return w;
}

bool CudaAvailable() {
#ifdef FLASHMORPH_CUDA
  return at::hasCUDA();
#else
  return false;
#endif
}

void Sync(const at::Device& device) {
#ifdef FLASHMORPH_CUDA
  if (device.is_cuda()) {
    const c10::DeviceGuard guard(device);  // device_synchronize() waits for the current device only
    c10::cuda::device_synchronize();
  }
#endif
}

int64_t CudaDeviceCount() {
#ifdef FLASHMORPH_CUDA
  return at::hasCUDA() ? static_cast<int64_t>(c10::cuda::device_count()) : 0;
#else
  return 0;
#endif
}

void ResetPeak(const at::Device& device) {
#ifdef FLASHMORPH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
}

std::optional<double> PeakGiB(const at::Device& device) {
#ifdef FLASHMORPH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    return static_cast<double>(stats.allocated_bytes[aggregate].peak) / (1024.0 * 1024.0 * 1024.0);
  }
#endif
  return std::nullopt;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double Mean(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return v.empty() ? 0.0 : sum / static_cast<double>(v.size());
}

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    if (comma == std::string::npos) comma = s.size();
    if (comma > start) out.push_back(s.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> ParseIntList(const std::string& s, int64_t lo, int64_t hi) {
  std::vector<int64_t> out;
  for (const std::string& t : SplitList(s)) {
    char* end = nullptr;
    const long long v = std::strtoll(t.c_str(), &end, 10);
    if (end == t.c_str() || *end != '\0' || v < lo || v > hi)
      return absl::InvalidArgumentError(StrCat("'", t, "' is not an integer in [", lo, ", ", hi, "]"));
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(StrCat("'", s, "' lists no value"));
  return out;
}

absl::StatusOr<BranchKind> ParseBranch(const std::string& name) {
  if (name == "gdn") return BranchKind::kGatedDeltaNet;
  absl::StatusOr<BranchKind> k = ParseBranchKind(name);
  if (!k.ok()) return absl::InvalidArgumentError(StrCat("'", name, "' is not lightning, gla or gdn"));
  return k;
}

}  // namespace fm::bench
