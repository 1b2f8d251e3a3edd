// The tensors of a Llama-family decoder, by role. Optional tensors (biases, Qwen3's q/k norms) are undefined
// at::Tensors when the architecture has none. Built by the checkpoint and GGUF loaders (weight_loader.h).
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/model_config.h"

namespace fm {

struct DecoderLayerWeights {
  at::Tensor input_norm;                // [d]
  at::Tensor q_proj, k_proj, v_proj;    // [H*hd, d], [Hkv*hd, d], [Hkv*hd, d]
  at::Tensor q_bias, k_bias, v_bias;    // optional
  at::Tensor o_proj, o_bias;            // [d, H*hd], optional [d]
  at::Tensor q_norm, k_norm;            // optional [hd] (Qwen3)
  at::Tensor post_attention_norm;       // [d]
  at::Tensor gate_proj, up_proj;        // [ff, d]
  at::Tensor down_proj;                 // [d, ff]
  at::Tensor gate_bias, up_bias, down_bias;  // optional (Llama mlp_bias)
};

struct DecoderWeights {
  at::Tensor embed_tokens;  // [V, d]
  std::vector<DecoderLayerWeights> layers;
  at::Tensor final_norm;    // [d]
  at::Tensor lm_head;       // [V, d]; the same tensor as embed_tokens when tied
};

// Every defined tensor of a layer under its Hugging Face name relative to `model.layers.{l}.`, in checkpoint order
// (input_layernorm, self_attn.*, post_attention_layernorm, mlp.*).
std::vector<std::pair<std::string, at::Tensor*>> NamedLayerTensors(DecoderLayerWeights& layer);
// Every defined tensor of the decoder under its full Hugging Face name, in checkpoint order (embeddings, layers,
// final norm, lm_head unless tied).
std::vector<std::pair<std::string, at::Tensor*>> NamedDecoderTensors(DecoderWeights& weights, bool tied);

// Fills DecoderWeights from `get(hf_name)` (Hugging Face tensor names), asking only for the tensors the config has.
using TensorGetter = std::function<absl::StatusOr<at::Tensor>(const std::string& hf_name)>;
absl::StatusOr<DecoderWeights> AssembleDecoderWeights(const ModelConfig& config, const TensorGetter& get);

}  // namespace fm
