#include "worker/engine/morph/morphable_model.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>

#include <optional>

#include "kernels/fused_ops.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/model/multi_linear.h"

#ifdef FLASHMORPH_CUDA
#include "kernels/linear_attention_cuda.h"
#endif

namespace fm {

std::vector<LayerMix> GatedMixes(const at::Tensor& gates) {
  std::vector<LayerMix> mixes(gates.size(0));
  for (int64_t l = 0; l < gates.size(0); ++l) {
    mixes[l].mode = LayerMix::Mode::kGated;
    mixes[l].gates = gates[l];
  }
  return mixes;
}

std::vector<LayerMix> LayoutMixes(const std::vector<std::vector<int64_t>>& full_heads, int64_t num_heads) {
  std::vector<LayerMix> mixes(full_heads.size());
  for (size_t l = 0; l < full_heads.size(); ++l) {
    const int64_t n = static_cast<int64_t>(full_heads[l].size());
    if (n == num_heads) {
      mixes[l].mode = LayerMix::Mode::kFull;
    } else if (n == 0) {
      mixes[l].mode = LayerMix::Mode::kLinear;
    } else {
      std::vector<float> m(num_heads, 0.f);
      for (int64_t h : full_heads[l]) m[h] = 1.f;
      mixes[l].mode = LayerMix::Mode::kGated;
      mixes[l].gates = at::tensor(m);
    }
  }
  return mixes;
}

MorphableModel::MorphableModel(const Decoder* decoder, std::vector<LinearBranch>* branches)
    : decoder_(decoder), branches_(branches) {}

std::vector<bool> MorphableModel::RecordedLayers(const at::Tensor& ids, const std::vector<LayerMix>& mixes) const {
  std::vector<bool> keep(mixes.size(), false);
  const int64_t budget = AttentionRecordBudget();
  if (budget <= 0) return keep;
  const ModelConfig& c = decoder_->config();
  // One record: the [B, T, H, D] output in the model's dtype and a [B, H, T] fp32 log-sum-exp.
  const int64_t per_layer = ids.size(0) * ids.size(1) * c.num_heads *
                            (c.head_dim * static_cast<int64_t>(at::elementSize(decoder_->dtype())) + 4);
  int64_t fit = budget / per_layer;
  // The last layers with softmax attention: the backward consumes (and frees) their records first.
  for (int64_t l = static_cast<int64_t>(mixes.size()) - 1; l >= 0 && fit > 0; --l) {
    const LayerMix::Mode m = mixes[l].mode;
    if ((m == LayerMix::Mode::kFull || m == LayerMix::Mode::kGated) && c.sliding_window[l] == 0) {
      keep[l] = true;
      --fit;
    }
  }
  return keep;
}

at::Tensor MorphableModel::MixedAttention(int64_t l, const at::Tensor& x, const RopeTables& rope, const LayerMix& mix,
                                          HybridCache* cache, AttentionRecord* record, const at::Tensor& rows) const {
  KvCache* kv = nullptr;
  at::Tensor* state = nullptr;
  if (cache) {
    kv = &cache->kv;
    if (static_cast<int64_t>(cache->states.size()) <= l) cache->states.resize(decoder_->config().num_layers);
    state = &cache->states[l];
  }
  switch (mix.mode) {
    case LayerMix::Mode::kFull:
      return decoder_->AttentionOutProj(l, SelectRows(decoder_->AttentionHeads(l, x, rope, kv, -1, record), rows));
    case LayerMix::Mode::kLinear:
      return (*branches_)[l].OutProj(SelectRows((*branches_)[l].HeadOutputs(x, state), rows));
    case LayerMix::Mode::kSlidingWindow:
      return decoder_->AttentionOutProj(l, SelectRows(decoder_->AttentionHeads(l, x, rope, kv, mix.window), rows));
    case LayerMix::Mode::kGated:
      break;
  }
  const LinearBranch& branch = (*branches_)[l];
  const DecoderLayerWeights& w = decoder_->weights().layers[l];
  const int64_t H = decoder_->config().num_heads, D = decoder_->config().head_dim;
  at::Tensor a = mix.gates.to(x.device(), at::kFloat).reshape({-1});
  if (a.size(0) == 1) a = a.expand({H});
  // Both branches' q, k, v projections of the same input as one node: the backward accumulates the input's
  // gradient inside the six products (multi_linear.h).
  std::vector<at::Tensor> weights = decoder_->AttentionProjections(l), biases = decoder_->AttentionProjectionBiases(l);
  for (const at::Tensor& w : branch.Projections()) weights.push_back(w);
  for (const at::Tensor& b : branch.ProjectionBiases()) biases.push_back(b);
  const std::vector<at::Tensor> p = MultiLinear(x, weights, biases);
  at::Tensor fa = SelectRows(decoder_->AttentionHeadsFrom(l, p[0], p[1], p[2], rope, kv, -1, record), rows);
  at::Tensor la = SelectRows(branch.HeadOutputsFrom(x, p[3], p[4], p[5], state), rows);
  at::Tensor out;
#ifdef FLASHMORPH_CUDA
  // bf16 on the GPU: one fused kernel scales both sides per head into [a * fa, (1 - a) * la] and a single GEMM
  // applies the concatenated output projections (same sum, one launch instead of four).
  if (fa.is_cuda() && fa.scalar_type() == at::kBFloat16 && la.scalar_type() == at::kBFloat16 &&
      fa.sizes() == la.sizes() && D % 2 == 0) {
    out = at::linear(kernels::GateMixCuda(fa, la, a, H), at::cat({w.o_proj, branch.o_proj()}, 1));
  }
#endif
  if (!out.defined()) {
    at::Tensor a_cols = a.repeat_interleave(D).to(x.scalar_type());  // [H*D]
    out = at::linear(fa * a_cols, w.o_proj) + at::linear(la * (1 - a_cols), branch.o_proj());
  }
  if (w.o_bias.defined()) {
    at::Tensor mean = a.mean().to(x.scalar_type());
    out = out + mean * w.o_bias + (1 - mean) * branch.o_bias();
  }
  return out;
}

at::Tensor MorphableModel::Layer(int64_t l, const at::Tensor& x, const RopeTables& rope, const LayerMix& mix,
                                 HybridCache* cache, AttentionRecord* record, const at::Tensor& rows) const {
  auto [h, hn] = decoder_->ResidualPostAttentionNorm(
      l, SelectRows(x, rows), MixedAttention(l, decoder_->InputNorm(l, x), rope, mix, cache, record, rows));
  return h + decoder_->Mlp(l, hn);
}

absl::StatusOr<at::Tensor> MorphableModel::ForwardCached(const at::Tensor& ids, const std::vector<LayerMix>& mixes,
                                                         HybridCache* cache) const {
  const ModelConfig& c = decoder_->config();
  if (cache == nullptr) return absl::InvalidArgumentError("ForwardCached: no cache given");
  if (!ids.defined() || ids.dim() != 2 || ids.scalar_type() != at::kLong || ids.numel() == 0)
    return absl::InvalidArgumentError("ForwardCached: ids must be a non-empty int64 tensor of shape [batch, tokens]");
  if (static_cast<int64_t>(mixes.size()) != c.num_layers)
    return absl::InvalidArgumentError(
        StrCat("ForwardCached: ", mixes.size(), " layer mixes for a model of ", c.num_layers, " layers"));
  try {
    at::NoGradGuard no_grad;
    const at::Tensor dev_ids = ids.to(decoder_->device());
    const int64_t lo = dev_ids.min().item<int64_t>(), hi = dev_ids.max().item<int64_t>();
    if (lo < 0 || hi >= c.vocab_size)
      return absl::InvalidArgumentError(
          StrCat("ForwardCached: token id ", lo < 0 ? lo : hi, " is outside the vocabulary [0, ", c.vocab_size, ")"));
    for (const std::vector<at::Tensor>* list : {&cache->kv.k, &cache->states})
      for (const at::Tensor& t : *list)
        if (t.defined() && t.size(0) != ids.size(0))
          return absl::InvalidArgumentError(
              StrCat("ForwardCached: batch size ", ids.size(0), " differs from the cache's (", t.size(0), ")"));
    const int64_t T = ids.size(1);
    RopeOnDevices rope(decoder_->Rope(cache->length(), T));
    at::Tensor x = decoder_->Embed(dev_ids);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const at::Device dev = decoder_->LayerDevice(l);
      x = Layer(l, x.to(dev), rope.On(dev), mixes[l], cache);
    }
    cache->kv.length += T;
    return x;
  } catch (const c10::Error& e) {
    return absl::InternalError(StrCat("ForwardCached failed: ", e.what_without_backtrace()));
  }
}

int64_t HybridCache::Bytes() const {
  int64_t bytes = 0;
  for (const std::vector<at::Tensor>* list : {&kv.k, &kv.v, &states})
    for (const at::Tensor& t : *list)
      if (t.defined()) bytes += static_cast<int64_t>(t.nbytes());
  return bytes;
}

at::Tensor MorphableModel::Forward(const at::Tensor& ids, const std::vector<LayerMix>& mixes,
                                   std::vector<at::Tensor>* inputs, const std::vector<AttentionRecord*>* records,
                                   const at::Tensor& last_rows) const {
  std::optional<at::NoGradGuard> no_grad;
  if (inputs) no_grad.emplace();
  RopeOnDevices rope(decoder_->Rope(0, ids.size(1)));
  at::Tensor x = decoder_->Embed(ids.to(decoder_->device()));
  for (int64_t l = 0; l < static_cast<int64_t>(mixes.size()); ++l) {
    const at::Device dev = decoder_->LayerDevice(l);
    x = x.to(dev);  // layer sharding: the residual stream follows the layers (differentiable)
    if (inputs) inputs->push_back(x);
    AttentionRecord* record = records && l < static_cast<int64_t>(records->size()) ? (*records)[l] : nullptr;
    const bool last = l + 1 == static_cast<int64_t>(mixes.size());
    x = Layer(l, x, rope.On(dev), mixes[l], nullptr, record, last ? last_rows : at::Tensor());
  }
  return x;
}

at::Tensor MorphableModel::ForwardBackward(const at::Tensor& ids, const std::vector<LayerMix>& mixes,
                                           const std::function<at::Tensor(const at::Tensor&)>& loss_fn,
                                           bool checkpointing, const at::Tensor& last_rows) const {
  at::AutoGradMode grad_on(true);
  if (!checkpointing) {
    at::Tensor loss = loss_fn(Forward(ids, mixes, nullptr, nullptr, last_rows));
    loss.backward();
    return loss.detach();
  }
  std::vector<at::Tensor> inputs;
  const std::vector<bool> recorded = RecordedLayers(ids, mixes);
  std::vector<AttentionRecord> store(mixes.size());
  std::vector<AttentionRecord*> records(mixes.size(), nullptr);
  for (size_t l = 0; l < mixes.size(); ++l)
    if (recorded[l]) records[l] = &store[l];
  at::Tensor last = Forward(ids, mixes, &inputs, &records, last_rows).detach().requires_grad_(true);
  at::Tensor loss = loss_fn(last);
  loss.backward();
  at::Tensor grad = last.grad();
  RopeOnDevices rope(decoder_->Rope(0, ids.size(1)));
  const bool embed_trains = decoder_->weights().embed_tokens.requires_grad();
  for (int64_t l = static_cast<int64_t>(mixes.size()) - 1; l >= 0; --l) {
    const bool need_input_grad = l > 0 || embed_trains;
    const at::Tensor rows = l + 1 == static_cast<int64_t>(mixes.size()) ? last_rows : at::Tensor();
    at::Tensor x = inputs[l].detach().requires_grad_(need_input_grad);
    const DecoderLayerWeights& w = decoder_->weights().layers[l];
    if (w.down_proj.requires_grad() || (w.down_bias.defined() && w.down_bias.requires_grad())) {
      at::Tensor y = Layer(l, x, rope.On(x.device()), mixes[l], nullptr, records[l], rows);
      if (!y.requires_grad()) break;  // nothing below this layer trains
      y.backward(grad.to(y.device()));
    } else {
      // The layer's output y = h + down(silu(gate) * up) is not needed, only its gradient: with the down
      // projection frozen, dL/dh = grad and dL/da = grad W_down, so the recomputation stops at the gate and up
      // projections and the activation's backward runs directly on them (its forward is never formed).
      auto [h, hn] = decoder_->ResidualPostAttentionNorm(
          l, SelectRows(x, rows),
          MixedAttention(l, decoder_->InputNorm(l, x), rope.On(x.device()), mixes[l], nullptr, records[l], rows));
      auto [gate, up] = decoder_->MlpGateUp(l, hn);
      if (!h.requires_grad()) break;  // nothing below this layer trains
      const at::Tensor g = grad.to(h.device());
      auto [d_gate, d_up] = kernels::SwiGluBackward(gate.detach(), up.detach(), at::matmul(g, w.down_proj));
      torch::autograd::backward({h, gate, up}, {g, d_gate, d_up});
    }
    if (need_input_grad) grad = x.grad();
    inputs[l] = at::Tensor();
    store[l] = AttentionRecord();
  }
  if (embed_trains) decoder_->Embed(ids.to(decoder_->device())).backward(grad.to(decoder_->device()));
  return loss.detach();
}

}  // namespace fm
