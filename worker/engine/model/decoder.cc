#include "worker/engine/model/decoder.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "kernels/fused_ops.h"
#include "kernels/rms_norm.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/model/multi_linear.h"

namespace fm {
namespace {

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

// Boolean mask [Tq, Tk] (true = attend) for queries at positions offset..offset+Tq-1 over keys 0..Tk-1.
at::Tensor CausalMask(int64_t tq, int64_t tk, int64_t offset, int64_t window, const at::Device& device) {
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor qpos = at::arange(offset, offset + tq, opts).unsqueeze(1);
  at::Tensor kpos = at::arange(0, tk, opts).unsqueeze(0);
  at::Tensor mask = kpos <= qpos;
  if (window > 0) mask = at::logical_and(mask, kpos > qpos - window);
  return mask;
}

// Appends `fresh` ([B, Hkv, T, hd]) to a layer's cached `view` (positions [0, offset)), in place in `buffer` when
// it has (or, with capacity >= offset + T, can be given) room; otherwise by concatenation.
void AppendToCache(const at::Tensor& fresh, int64_t offset, int64_t capacity, at::Tensor& view, at::Tensor& buffer) {
  const int64_t T = fresh.size(2), need = offset + T;
  const bool buffer_fits = buffer.defined() && buffer.size(2) >= need && buffer.size(0) == fresh.size(0);
  if (!buffer_fits && capacity >= need) {
    std::vector<int64_t> sizes = fresh.sizes().vec();
    sizes[2] = capacity;
    buffer = at::empty(sizes, fresh.options());
    if (view.defined() && offset > 0) buffer.narrow(2, 0, offset).copy_(view);
  } else if (!buffer_fits) {
    buffer = at::Tensor();
    view = view.defined() ? at::cat({view, fresh}, 2) : fresh;
    return;
  }
  buffer.narrow(2, offset, T).copy_(fresh);
  view = buffer.narrow(2, 0, need);
}

}  // namespace

Decoder::Decoder(ModelConfig config, DecoderWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  rope_ = ComputeRopeFrequencies(config_, weights_.embed_tokens.device());
}

at::ScalarType Decoder::dtype() const { return weights_.embed_tokens.scalar_type(); }
at::Device Decoder::device() const { return weights_.embed_tokens.device(); }
at::Device Decoder::LayerDevice(int64_t layer) const { return weights_.layers[layer].input_norm.device(); }

at::Tensor Decoder::Embed(const at::Tensor& input_ids) const { return at::embedding(weights_.embed_tokens, input_ids); }

RopeTables Decoder::Rope(int64_t start, int64_t length) const { return MakeRopeTables(rope_, start, length, dtype()); }

at::Tensor Decoder::InputNorm(int64_t layer, const at::Tensor& x) const {
  return kernels::RmsNorm(x, weights_.layers[layer].input_norm, config_.rms_norm_eps);
}

at::Tensor Decoder::PostAttentionNorm(int64_t layer, const at::Tensor& h) const {
  return kernels::RmsNorm(h, weights_.layers[layer].post_attention_norm, config_.rms_norm_eps);
}

std::pair<at::Tensor, at::Tensor> Decoder::ResidualPostAttentionNorm(int64_t layer, const at::Tensor& x,
                                                                     const at::Tensor& attention_output) const {
  return kernels::AddRmsNorm(x, attention_output, weights_.layers[layer].post_attention_norm, config_.rms_norm_eps);
}

at::Tensor Decoder::Attention(int64_t layer, const at::Tensor& x, const RopeTables& rope, KvCache* cache,
                              AttentionRecord* record) const {
  return AttentionOutProj(layer, AttentionHeads(layer, x, rope, cache, -1, record));
}

at::Tensor Decoder::AttentionOutProj(int64_t layer, const at::Tensor& heads) const {
  const DecoderLayerWeights& w = weights_.layers[layer];
  return Linear(heads, w.o_proj, w.o_bias);
}

std::vector<at::Tensor> Decoder::AttentionProjections(int64_t layer) const {
  const DecoderLayerWeights& w = weights_.layers[layer];
  return {w.q_proj, w.k_proj, w.v_proj};
}

std::vector<at::Tensor> Decoder::AttentionProjectionBiases(int64_t layer) const {
  const DecoderLayerWeights& w = weights_.layers[layer];
  return {w.q_bias, w.k_bias, w.v_bias};
}

at::Tensor Decoder::AttentionHeads(int64_t layer, const at::Tensor& x, const RopeTables& rope, KvCache* cache,
                                   int64_t window_override, AttentionRecord* record) const {
  const DecoderLayerWeights& w = weights_.layers[layer];
  return AttentionHeadsFrom(layer, Linear(x, w.q_proj, w.q_bias), Linear(x, w.k_proj, w.k_bias),
                            Linear(x, w.v_proj, w.v_bias), rope, cache, window_override, record);
}

at::Tensor Decoder::AttentionHeadsFrom(int64_t layer, const at::Tensor& q_proj, const at::Tensor& k_proj,
                                       const at::Tensor& v_proj, const RopeTables& rope, KvCache* cache,
                                       int64_t window_override, AttentionRecord* record) const {
  const DecoderLayerWeights& w = weights_.layers[layer];
  const int64_t B = q_proj.size(0), T = q_proj.size(1), H = config_.num_heads, Hkv = config_.num_kv_heads,
                hd = config_.head_dim;
  at::Tensor q = q_proj.view({B, T, H, hd});
  at::Tensor k = k_proj.view({B, T, Hkv, hd});
  at::Tensor v = v_proj.view({B, T, Hkv, hd});
  // q/k norm (Qwen3) and the rotary embedding in one pass per tensor; [B, T, h, hd] -> [B, h, T, hd] views.
  kernels::HeadTransformSpec spec;
  spec.eps = config_.rms_norm_eps;
  spec.cos = rope.cos;
  spec.sin = rope.sin;
  if (config_.qk_norm) spec.norm_weight = w.q_norm;
  q = kernels::HeadTransform(q, spec).transpose(1, 2);
  if (config_.qk_norm) spec.norm_weight = w.k_norm;
  k = kernels::HeadTransform(k, spec).transpose(1, 2);
  v = v.transpose(1, 2);
  int64_t offset = 0;
  if (cache) {
    offset = cache->length;
    for (auto* list : {&cache->k, &cache->v, &cache->k_buffer, &cache->v_buffer})
      if (static_cast<int64_t>(list->size()) < config_.num_layers) list->resize(config_.num_layers);
    AppendToCache(k, offset, cache->capacity, cache->k[layer], cache->k_buffer[layer]);
    AppendToCache(v, offset, cache->capacity, cache->v[layer], cache->v_buffer[layer]);
    k = cache->k[layer];
    v = cache->v[layer];
  }
  const int64_t window = window_override >= 0 ? window_override : config_.sliding_window[layer];
  const int64_t Tk = k.size(2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  at::Tensor out;
  if (offset == 0 && (window == 0 || Tk <= window)) {
    if (record != nullptr && record->recorded() && at::GradMode::is_enabled()) {
      out = ReplayAttention(q, k, v, scale, *record);
    } else if (record != nullptr && !at::GradMode::is_enabled() && CanRecordAttention(q, k, v, scale)) {
      out = RecordAttention(q, k, v, scale, record);
    } else {
      out = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale, /*enable_gqa=*/Hkv != H);
    }
  } else if (T == 1 && (window == 0 || Tk <= window)) {
    // One new token sees every cached key: no mask (a mask rules out the fused GQA kernels on CUDA).
    out = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/false, scale, Hkv != H);
  } else {
    at::Tensor mask = CausalMask(T, Tk, offset, window, q_proj.device());
    out = at::scaled_dot_product_attention(q, k, v, mask, 0.0, /*is_causal=*/false, scale, Hkv != H);
  }
  return out.transpose(1, 2).reshape({B, T, H * hd});
}

std::pair<at::Tensor, at::Tensor> Decoder::MlpGateUp(int64_t layer, const at::Tensor& h) const {
  const DecoderLayerWeights& w = weights_.layers[layer];
  std::vector<at::Tensor> y = MultiLinear(h, {w.gate_proj, w.up_proj}, {w.gate_bias, w.up_bias});
  return {y[0], y[1]};
}

at::Tensor Decoder::MlpActivation(int64_t layer, const at::Tensor& h) const {
  auto [gate, up] = MlpGateUp(layer, h);
  return kernels::SwiGlu(gate, up);
}

at::Tensor Decoder::MlpDown(int64_t layer, const at::Tensor& activation) const {
  const DecoderLayerWeights& w = weights_.layers[layer];
  return Linear(activation, w.down_proj, w.down_bias);
}

at::Tensor Decoder::Mlp(int64_t layer, const at::Tensor& h) const { return MlpDown(layer, MlpActivation(layer, h)); }

at::Tensor SelectRows(const at::Tensor& t, const at::Tensor& rows) {
  return rows.defined() ? t.index_select(1, rows.to(t.device())) : t;
}

at::Tensor Decoder::Block(int64_t layer, const at::Tensor& x, const RopeTables& rope, KvCache* cache,
                          at::Tensor* attention_output, at::Tensor* normed_input, const at::Tensor& rows) const {
  at::Tensor xn = InputNorm(layer, x);
  at::Tensor attn = AttentionOutProj(layer, SelectRows(AttentionHeads(layer, xn, rope, cache), rows));
  auto [h, hn] = ResidualPostAttentionNorm(layer, SelectRows(x, rows), attn);
  if (attention_output) *attention_output = attn;
  if (normed_input) *normed_input = xn;
  return h + Mlp(layer, hn);
}

at::Tensor Decoder::FinalNorm(const at::Tensor& x) const {
  return kernels::RmsNorm(x.to(weights_.final_norm.device()), weights_.final_norm, config_.rms_norm_eps);
}

at::Tensor Decoder::Logits(const at::Tensor& x_normed) const {
  return at::linear(x_normed.to(weights_.lm_head.device()), weights_.lm_head).to(at::kFloat);
}

at::Tensor Decoder::Head(const at::Tensor& x) const { return Logits(FinalNorm(x)); }

absl::StatusOr<ForwardResult> Decoder::Forward(const at::Tensor& input_ids, const ForwardOptions& opt) const {
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.scalar_type() != at::kLong)
    return absl::InvalidArgumentError("Forward: input_ids must be an int64 tensor of shape [batch, tokens]");
  if (input_ids.numel() == 0) return absl::InvalidArgumentError("Forward: input_ids is empty");
  try {
    at::Tensor ids = input_ids.to(device());
    int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size)
      return absl::InvalidArgumentError(
          StrCat("Forward: token id ", lo < 0 ? lo : hi, " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    if (opt.cache && opt.cache->length > 0 && !opt.cache->k.empty() && opt.cache->k[0].defined() &&
        opt.cache->k[0].size(0) != ids.size(0))
      return absl::InvalidArgumentError("Forward: batch size differs from the KV cache's");

    const int64_t T = ids.size(1);
    const int64_t start = opt.cache ? opt.cache->length : 0;
    ForwardResult r;
    RopeOnDevices rope(Rope(start, T));
    at::Tensor x = Embed(ids);
    if (opt.return_hidden_states) r.hidden_states.push_back(x);
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const at::Device dev = LayerDevice(l);
      x = x.to(dev);
      at::Tensor attn;
      const bool last_layer = l + 1 == config_.num_layers;
      x = Block(l, x, rope.On(dev), opt.cache, &attn, nullptr, last_layer ? opt.final_rows : at::Tensor());
      if (opt.return_attention_outputs) r.attention_outputs.push_back(attn);
      if (opt.return_hidden_states) r.hidden_states.push_back(x);
    }
    if (opt.cache) opt.cache->length += T;
    at::Tensor last = opt.logits_last_only ? x.narrow(1, x.size(1) - 1, 1) : x;
    r.final_hidden = FinalNorm(last);
    if (opt.return_logits) r.logits = Logits(r.final_hidden);
    return r;
  } catch (const c10::Error& e) {
    return absl::InternalError(StrCat("Forward failed: ", e.what_without_backtrace()));
  }
}

}  // namespace fm
