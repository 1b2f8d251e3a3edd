// Softmax attention kept from a no-grad forward pass for the recomputation of a checkpointed backward
// (MorphableModel::ForwardBackward; docs/ENGINE.md §4, "Gates"): where cuDNN's fused causal attention runs,
// RecordAttention computes it and keeps its output and log-sum-exp; ReplayAttention then returns that output under
// autograd without running attention again, and its backward runs cuDNN's attention backward on it. The replayed inputs
// must equal the recorded ones (the recomputation forms them with the same ops). Memory: one [B, T, H, D] output
// and one [B, H, T] fp32 log-sum-exp per recorded layer, within a budget (SetAttentionRecordBudget).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace fm {

struct AttentionRecord {
  at::Tensor out, logsumexp, cum_seq_q, cum_seq_k, philox_seed, philox_offset;
  int64_t max_q = 0, max_k = 0;
  bool recorded() const { return out.defined(); }
};

// Bytes of records a checkpointed forward may keep (process-wide; environment FLASHMORPH_ATTENTION_RECORD_MB sets
// the start value in MiB; 0, the default, records nothing). Returns the previous value.
int64_t SetAttentionRecordBudget(int64_t bytes);
int64_t AttentionRecordBudget();
// Bytes one record of causal attention over q [B, H, T, D] holds.
int64_t AttentionRecordBytes(const at::Tensor& q);

// Whether causal attention over these inputs (q [B, H, T, D], k/v [B, Hkv, T, D]) can be recorded and replayed:
// the dispatcher picks cuDNN for them, and a one-time check per process on a small problem of the same dtype and
// device found the replayed output and gradients equal to the plain op's (if it does not, or throws, never).
bool CanRecordAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale);
// Causal attention as at::scaled_dot_product_attention(q, k, v, is_causal, scale, enable_gqa = Hkv != H), kept in
// `record` (no autograd graph; call under NoGradGuard).
at::Tensor RecordAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                           AttentionRecord* record);
// The recorded output, differentiable in q, k, v (cuDNN's backward).
at::Tensor ReplayAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                           const AttentionRecord& record);

}  // namespace fm
