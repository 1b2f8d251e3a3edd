// A LibTorch forward pass of a Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) that reproduces Hugging Face
// transformers' numerics: RMSNorm in fp32, RoPE tables in fp32 (default/linear/llama3/yarn), GQA causal attention
// (with per-layer sliding windows), SwiGLU MLP. It returns logits and, on request, every layer's residual-stream
// output and attention-block output — the quantities the conversion engine aligns branches and gates against.
// The per-layer pieces are public so the engine can run layers one by one and swap in other attention branches.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/attention_record.h"
#include "worker/engine/model/decoder_weights.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/model/rope.h"

namespace fm {

// t[:, rows] for int64 positions `rows` along dimension 1 (t itself when rows is undefined).
at::Tensor SelectRows(const at::Tensor& t, const at::Tensor& rows);

// Keys/values of earlier positions, per layer, for incremental decoding. k[l], v[l] are [B, Hkv, T, head_dim].
// By default every write concatenates (a copy of the whole cache per step); with `capacity` set, each layer's
// keys/values live in a buffer of that many positions, allocated on the layer's first write, and k[l], v[l] are
// views of its filled part, so a decoding step writes only its own positions. A write past the capacity falls back
// to concatenation.
struct KvCache {
  std::vector<at::Tensor> k, v;
  int64_t length = 0;    // positions already cached
  int64_t capacity = 0;  // > 0: positions to allocate per layer up front (e.g. prompt + new tokens)
  std::vector<at::Tensor> k_buffer, v_buffer;  // [B, Hkv, capacity, head_dim] when capacity is in use
};

struct ForwardOptions {
  bool return_hidden_states = false;      // residual stream: [0] embeddings, [l+1] output of layer l
  bool return_attention_outputs = false;  // [l] attention-block output of layer l (after o_proj, before the residual)
  bool return_logits = true;
  bool logits_last_only = false;  // logits of the last position only ([B, 1, V])
  KvCache* cache = nullptr;       // when set: positions continue from cache->length, and the cache is extended
  // When defined (int64 positions along T, on any device): the last layer forms only these rows of every batch
  // entry past its attention (output projection, residual, MLP), and final_hidden / logits are [B, R, ...] for
  // them — what a loss on those positions needs (the gate stage's answer rows). The last hidden state and attention
  // output returned are these rows too.
  at::Tensor final_rows;
};

struct ForwardResult {
  at::Tensor logits;                          // [B, T, V] (or [B, 1, V]) in float32
  at::Tensor final_hidden;                    // [B, T, d] after the final norm
  std::vector<at::Tensor> hidden_states;      // see ForwardOptions
  std::vector<at::Tensor> attention_outputs;  // see ForwardOptions
};

class Decoder {
 public:
  Decoder(ModelConfig config, DecoderWeights weights);

  const ModelConfig& config() const { return config_; }
  const DecoderWeights& weights() const { return weights_; }
  at::ScalarType dtype() const;
  at::Device device() const;  // of the embeddings: where ids go and the first layer's input starts
  // Where layer `layer`'s weights live. A decoder may be split by layers over several devices (decoder_placement.h):
  // Forward() moves the residual stream to each layer's device, FinalNorm()/Logits() move their input to theirs.
  at::Device LayerDevice(int64_t layer) const;

  // input_ids: int64 [B, T] on any device (moved to the model's). INVALID_ARGUMENT for wrong rank/dtype, empty
  // input, or ids outside [0, vocab).
  absl::StatusOr<ForwardResult> Forward(const at::Tensor& input_ids, const ForwardOptions& options = {}) const;

  // Building blocks (no argument checking; x is [B, T, d] in the model's dtype and device).
  at::Tensor Embed(const at::Tensor& input_ids) const;
  RopeTables Rope(int64_t start, int64_t length) const;  // cos/sin for positions [start, start+length)
  at::Tensor InputNorm(int64_t layer, const at::Tensor& x) const;
  // Softmax attention of layer `layer` on an already normed input; appends to `cache` when given.
  at::Tensor Attention(int64_t layer, const at::Tensor& x_normed, const RopeTables& rope, KvCache* cache,
                       AttentionRecord* record = nullptr) const;
  // The two halves of Attention: per-head outputs [B, T, H*hd] before o_proj, and o_proj (+ bias) applied to them.
  // `window_override` >= 0 replaces the layer's sliding window (0 = full causal attention). With a `record`
  // (attention_record.h), full causal attention without a cache is recorded when gradients are off and cuDNN runs
  // it, and replayed when the record holds it and gradients are on.
  at::Tensor AttentionHeads(int64_t layer, const at::Tensor& x_normed, const RopeTables& rope, KvCache* cache,
                            int64_t window_override = -1, AttentionRecord* record = nullptr) const;
  // AttentionHeads from the layer's q, k, v projections of x_normed ([B, T, H*hd], [B, T, Hkv*hd] twice; e.g. from
  // MultiLinear over AttentionProjections()).
  at::Tensor AttentionHeadsFrom(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const RopeTables& rope, KvCache* cache, int64_t window_override = -1,
                                AttentionRecord* record = nullptr) const;
  // The q, k, v projection weights and biases (biases may be undefined).
  std::vector<at::Tensor> AttentionProjections(int64_t layer) const;
  std::vector<at::Tensor> AttentionProjectionBiases(int64_t layer) const;
  at::Tensor AttentionOutProj(int64_t layer, const at::Tensor& heads) const;
  at::Tensor PostAttentionNorm(int64_t layer, const at::Tensor& h) const;
  // {h, PostAttentionNorm(h)} for h = x + attention_output, in one pass (kernels::AddRmsNorm).
  std::pair<at::Tensor, at::Tensor> ResidualPostAttentionNorm(int64_t layer, const at::Tensor& x,
                                                              const at::Tensor& attention_output) const;
  at::Tensor Mlp(int64_t layer, const at::Tensor& h_normed) const;
  // The MLP in parts: the gate and up projections, the activation silu(gate) * up (the down projection's input),
  // and the down projection.
  std::pair<at::Tensor, at::Tensor> MlpGateUp(int64_t layer, const at::Tensor& h_normed) const;
  at::Tensor MlpActivation(int64_t layer, const at::Tensor& h_normed) const;
  at::Tensor MlpDown(int64_t layer, const at::Tensor& activation) const;
  // One whole decoder layer: residual stream in -> out (x on the layer's device); the attention block's output
  // and its input-normed input go to `attention_output` and `normed_input` when given. With `rows` (int64
  // positions along T), attention runs over every position but the layer returns only these rows.
  at::Tensor Block(int64_t layer, const at::Tensor& x, const RopeTables& rope, KvCache* cache,
                   at::Tensor* attention_output = nullptr, at::Tensor* normed_input = nullptr,
                   const at::Tensor& rows = {}) const;
  at::Tensor FinalNorm(const at::Tensor& x) const;
  at::Tensor Logits(const at::Tensor& x_normed) const;  // lm_head, float32
  at::Tensor Head(const at::Tensor& x) const;           // Logits(FinalNorm(x))

 private:
  ModelConfig config_;
  DecoderWeights weights_;
  RopeFrequencies rope_;
};

}  // namespace fm
