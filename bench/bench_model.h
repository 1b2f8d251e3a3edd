// Shared by the engine benchmarks (gateopt_bench, hybrid_bench): the benchmark shapes (Qwen3-1.7B's decoder body
// and a small one), a Qwen3 config and random weights of a shape drawn on the target device, device synchronisation
// and the CUDA caching allocator's peak (no-ops / absent without a CUDA build), and small parsing and statistics
// helpers. Bench code only: no argument here comes from untrusted input beyond the command line.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder_weights.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/morph/conversion_options.h"

namespace fm::bench {

struct Shape {
  std::string name;
  int64_t d, L, H, Hkv, hd, ff;
};

// "qwen3-1.7b" (d 2048, 28 layers, 16/8 heads of 128, ff 6144) and "small" (d 512, 4 layers, 4/2 heads, ff 1536).
const std::vector<Shape>& Shapes();
const Shape* FindShape(std::string_view name);  // nullptr for an unknown name

// Qwen3 (q/k norms, tied embeddings, rope theta 1e6, no sliding window) of shape `s`; max_position_embeddings
// covers `max_t`.
ModelConfig MakeConfig(const Shape& s, int64_t vocab, int64_t max_t);

// Matrices N(0, 0.02), norms 1, embeddings N(0, 1) (tied LM head), drawn on `device` from the global generator.
DecoderWeights RandomWeights(const ModelConfig& c, at::ScalarType dtype, at::Device device);

bool CudaAvailable();                                     // a CUDA build with a visible GPU
int64_t CudaDeviceCount();                                // visible GPUs (0 without CUDA)
void Sync(const at::Device& device);                      // waits for the device's queued work (CUDA); no-op on the CPU
void ResetPeak(const at::Device& device);                 // resets the caching allocator's peak (CUDA)
std::optional<double> PeakGiB(const at::Device& device);  // allocated-bytes peak since ResetPeak (CUDA only)

double Median(std::vector<double> v);  // v non-empty
double Mean(const std::vector<double>& v);

std::vector<std::string> SplitList(const std::string& s);  // "a,b,,c" -> {a, b, c}
// Comma-separated integers, each in [lo, hi]; INVALID_ARGUMENT naming the bad entry (or an empty list).
absl::StatusOr<std::vector<int64_t>> ParseIntList(const std::string& s, int64_t lo, int64_t hi);
// "lightning", "gla", or "gdn" (also the engine's own "gated_deltanet").
absl::StatusOr<BranchKind> ParseBranch(const std::string& name);

}  // namespace fm::bench
