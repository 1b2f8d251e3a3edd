// The morphable model of docs/ENGINE.md §2: the teacher decoder whose every layer can mix its softmax attention
// with its linear-attention branch, per layer or per head, with gate values in [0,1] (stage 2), or run a fixed
// hybrid layout (stages 3-4, evaluation), also incrementally with KV caches and recurrent states (ForwardCached:
// prefill, then decoding). ForwardBackward() implements activation checkpointing by hand: the forward pass
// keeps only each layer's input, and the backward pass recomputes one layer at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/morph/linear_branch.h"

namespace fm {

// What layer l computes.
struct LayerMix {
  enum class Mode { kFull, kLinear, kSlidingWindow, kGated };
  Mode mode = Mode::kFull;
  at::Tensor gates;    // kGated: [H] values in [0,1] (may require grad)
  int64_t window = 0;  // kSlidingWindow: softmax attention over the last `window` tokens
};

// Decoding caches of a hybrid (MorphableModel::ForwardCached): the softmax heads' keys/values (kFull,
// kSlidingWindow and kGated layers; kv.length counts the cached positions, kv.capacity pre-allocates) and the
// branches' recurrent states (kLinear and kGated layers; [B, H, D, D] float32, undefined until the layer first runs).
// Sliding-window layers keep every position too (no eviction).
struct HybridCache {
  KvCache kv;
  std::vector<at::Tensor> states;  // per layer
  int64_t length() const { return kv.length; }
  // Bytes held for the cached positions: keys/values (filled part only) and states.
  int64_t Bytes() const;
};

// Per-layer mixes from a [L, H] (or [L, 1], broadcast over heads) gate tensor.
std::vector<LayerMix> GatedMixes(const at::Tensor& gates);
// Per-layer mixes of a discrete layout: per layer the 0/1 head mask (all ones -> kFull, all zeros -> kLinear).
std::vector<LayerMix> LayoutMixes(const std::vector<std::vector<int64_t>>& full_heads, int64_t num_heads);

class MorphableModel {
 public:
  // `decoder` is the student's body (the teacher itself, or a copy whose weights train); not owned.
  MorphableModel(const Decoder* decoder, std::vector<LinearBranch>* branches);

  const Decoder& decoder() const { return *decoder_; }

  // Attention block of layer l on the input-normed x, mixed as `mix` says. With a cache, x continues the cached
  // positions (rope must start at cache->length()): softmax heads read and extend cache->kv, the branch continues
  // from cache->states[l] and replaces it.
  // A `record` keeps (no-grad pass) or replays (recomputation) the layer's softmax attention (attention_record.h).
  // With `rows` (int64 positions along T), attention runs over every position and only these rows come out.
  at::Tensor MixedAttention(int64_t l, const at::Tensor& x_normed, const RopeTables& rope, const LayerMix& mix,
                            HybridCache* cache = nullptr, AttentionRecord* record = nullptr,
                            const at::Tensor& rows = {}) const;
  // One decoder layer (residual stream in -> out; with `rows`, only those rows of the output).
  at::Tensor Layer(int64_t l, const at::Tensor& x, const RopeTables& rope, const LayerMix& mix,
                   HybridCache* cache = nullptr, AttentionRecord* record = nullptr, const at::Tensor& rows = {}) const;

  // Residual stream after the last layer (before the final norm), without building an autograd graph when
  // `inputs` is given (the checkpointed forward: each layer's input is stored there; layer l's softmax attention
  // is recorded into (*records)[l] where that vector has an entry, see ForwardBackward). With `last_rows` (int64
  // positions along T), the last layer forms only those rows past its attention and the result is [B, R, d].
  at::Tensor Forward(const at::Tensor& ids, const std::vector<LayerMix>& mixes,
                     std::vector<at::Tensor>* inputs = nullptr, const std::vector<AttentionRecord*>* records = nullptr,
                     const at::Tensor& last_rows = {}) const;

  // Inference with caches (no autograd graph): ids [B, T] (any device) continue the `cache->length()` cached
  // positions — a prefill on an empty cache, then one call per decoded token (or chunk) — and the cache is extended by
  // T. Returns the residual stream after the last layer for the new positions, [B, T, d] (decoder().Head() gives
  // logits). The result equals Forward() over all positions at once. INVALID_ARGUMENT for ids that are not int64
  // [B, T > 0] within the vocabulary, a batch size other than the cache's, or mixes.size() != num_layers;
  // INTERNAL when a tensor op fails (e.g. out of memory; the cache is then partly extended: discard it).
  absl::StatusOr<at::Tensor> ForwardCached(const at::Tensor& ids, const std::vector<LayerMix>& mixes,
                                           HybridCache* cache) const;

  // Forward + backward: loss = loss_fn(x_L), gradients accumulate into every leaf that requires grad (gates,
  // branch parameters, decoder weights). With `checkpointing`, layers are recomputed one at a time; the last layers'
  // softmax attention is kept from the forward for their recomputation as far as AttentionRecordBudget() allows.
  // With `last_rows`, loss_fn receives only those rows of x_L ([B, R, d]; see Forward).
  // Returns the loss (detached).
  at::Tensor ForwardBackward(const at::Tensor& ids, const std::vector<LayerMix>& mixes,
                             const std::function<at::Tensor(const at::Tensor& x_last)>& loss_fn, bool checkpointing,
                             const at::Tensor& last_rows = {}) const;

 private:
  // The layers whose softmax attention the checkpointed forward keeps within AttentionRecordBudget(): the last ones
  // with full causal softmax attention (kFull or kGated, no sliding window).
  std::vector<bool> RecordedLayers(const at::Tensor& ids, const std::vector<LayerMix>& mixes) const;

  const Decoder* decoder_;
  std::vector<LinearBranch>* branches_;
};

}  // namespace fm
