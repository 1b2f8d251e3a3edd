// Rotary position embeddings computed as transformers does: inverse frequencies in fp32 for the config's rope type
// (default, linear, llama3, yarn), cos/sin of position × frequency in fp32 (scaled by yarn's attention factor), then
// cast to the activation dtype; rotate-half convention.
#pragma once

#include <ATen/core/Tensor.h>

#include <deque>
#include <utility>

#include "worker/engine/model/model_config.h"

namespace fm {

struct RopeFrequencies {
  at::Tensor inv_freq;  // [head_dim / 2] float32, on the model's device
  double attention_scaling = 1.0;
};

struct RopeTables {
  at::Tensor cos, sin;  // [T, head_dim] in the activation dtype
};

// One set of tables and its copies on other devices, made on first use: for models whose layers live on several
// devices (layer sharding), where each layer reads the tables on its own device.
class RopeOnDevices {
 public:
  explicit RopeOnDevices(RopeTables tables);
  const RopeTables& On(const at::Device& device);

 private:
  std::deque<std::pair<at::Device, RopeTables>> copies_;  // a deque: references stay valid
};

RopeFrequencies ComputeRopeFrequencies(const ModelConfig& config, const at::Device& device);
RopeTables MakeRopeTables(const RopeFrequencies& f, int64_t start, int64_t length, at::ScalarType dtype);
// The rotation itself is applied by kernels::HeadTransform (kernels/fused_ops.h) with these tables.

}  // namespace fm
