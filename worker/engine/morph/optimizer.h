// AdamW over a list of leaf tensors (llm.c style: the update written out, moments in float32), and the learning-rate
// schedules the stages use. The optimiser state can be saved and restored exactly, so a resumed stage continues
// bit for bit where it stopped.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace fm {

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  double grad_clip = 1.0;  // global L2 norm; <= 0 disables
};

class AdamW {
 public:
  AdamW(std::vector<at::Tensor> params, AdamWSettings settings);
  // One update with learning rate `lr` from the accumulated .grad()s, then zeroes them. Returns the gradient norm
  // before clipping.
  double Step(double lr);
  void ZeroGrad();
  int64_t steps() const { return step_; }
  // Moments and step count, named "m.<i>", "v.<i>", "step" (for stage checkpoints).
  std::vector<std::pair<std::string, at::Tensor>> State() const;
  void LoadState(const std::vector<std::pair<std::string, at::Tensor>>& state);

 private:
  std::vector<at::Tensor> params_, m_, v_;
  AdamWSettings settings_;
  int64_t step_ = 0;
};

// Cosine decay from `peak` to `floor` over `total` steps after a linear warm-up of `warmup` steps.
double CosineLr(int64_t step, int64_t total, double peak, double floor, int64_t warmup);

}  // namespace fm
