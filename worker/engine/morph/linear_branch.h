// A linear-attention branch for one decoder layer (docs/ENGINE.md §1): Lightning, GLA or Gated DeltaNet, with its
// parameters initialised from the teacher layer's own attention weights. Forward() runs the chunked form (training,
// prefill); passing a state runs/continues the recurrence, so prefill followed by one-token steps equals one pass.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "worker/engine/model/decoder_weights.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/morph/conversion_options.h"

namespace fm {

struct BranchSettings {
  BranchKind kind = BranchKind::kGatedDeltaNet;
  int64_t chunk_size = 64;
  int64_t gla_low_rank_dim = 16;
  double gla_gate_normalizer = 16.0;
};

class LinearBranch {
 public:
  // Copies W_q/W_o (and biases, q/k norms) and repeats W_k/W_v over the GQA groups of `layer`'s teacher weights;
  // new parameters (GLA/GDN) are drawn from `seed`. Tensors get `teacher`'s dtype and device.
  static LinearBranch FromTeacher(const ModelConfig& config, const DecoderLayerWeights& teacher, int64_t layer,
                                  const BranchSettings& settings, uint64_t seed);

  // x: input-normed hidden states [B, T, d]. Returns per-head outputs after the output norm and gate, flattened
  // to [B, T, H*D] (before o_proj). `state` (optional, [B, H, D, D] float32) is read as the initial state and
  // replaced by the final one.
  at::Tensor HeadOutputs(const at::Tensor& x, at::Tensor* state = nullptr) const;
  // HeadOutputs from the branch's q, k, v projections of x ([B, T, H*D] each; e.g. from MultiLinear over
  // Projections()); x itself feeds the kinds' other maps (decays, output gate).
  at::Tensor HeadOutputsFrom(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             at::Tensor* state = nullptr) const;
  std::vector<at::Tensor> Projections() const { return {q_proj_, k_proj_, v_proj_}; }
  std::vector<at::Tensor> ProjectionBiases() const { return {q_bias_, k_bias_, v_bias_}; }
  at::Tensor OutProj(const at::Tensor& heads) const;  // o_proj (+ bias)
  at::Tensor Forward(const at::Tensor& x, at::Tensor* state = nullptr) const { return OutProj(HeadOutputs(x, state)); }

  // Every tensor under its exported name (docs/ENGINE.md §1, relative to `linear_attn.`), parameters first.
  std::vector<std::pair<std::string, at::Tensor*>> NamedTensors();
  std::vector<at::Tensor> Parameters();
  void SetRequiresGrad(bool on);
  void To(at::ScalarType dtype, at::Device device);

  const BranchSettings& settings() const { return settings_; }
  int64_t num_heads() const { return num_heads_; }
  int64_t head_dim() const { return head_dim_; }
  const at::Tensor& o_proj() const { return o_proj_; }
  const at::Tensor& o_bias() const { return o_bias_; }

 private:
  BranchSettings settings_;
  int64_t layer_ = 0, num_layers_ = 0, num_heads_ = 0, head_dim_ = 0;
  double eps_ = 1e-6;
  at::Tensor q_proj_, k_proj_, v_proj_, o_proj_;
  at::Tensor q_bias_, k_bias_, v_bias_, o_bias_;
  at::Tensor q_norm_, k_norm_;
  at::Tensor gk_proj0_, gk_proj1_, gk_bias_;      // GLA
  at::Tensor a_proj_, b_proj_, a_log_, dt_bias_;  // GDN
  at::Tensor g_proj_, g_bias_, o_norm_;           // GLA, GDN
  at::Tensor lightning_decay_;                    // [H], Lightning's fixed log decays (not a parameter)
};

}  // namespace fm
