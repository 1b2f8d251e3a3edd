// Linear-attention core ops (docs/ENGINE.md §1 "Recurrence"): gated linear attention (scalar or per-key-channel
// decay) and the gated delta rule, each as a chunked form (training, prefill) and a token-by-token recurrent form
// (decoding). On supported CUDA inputs (bf16, heads <= 128; see linear_attention_cuda.h) the ops run the fused
// sm_90 kernels; elsewhere, and as `*Reference`, plain ATen compositions that run on any device, are differentiable
// through autograd and are what the kernels are tested against. The chunked and recurrent forms compute the same
// outputs and final state, so prefill (chunked) followed by decoding (recurrent) equals one pass.
//
// Layout [B, H, T, D]: q, k [B, H, T, Dk]; v [B, H, T, Dv]; q is already scaled by the caller. Log decays g <= 0.
// initial_state [B, H, Dk, Dv] (key x value; any floating dtype) or an undefined tensor (= zeros).
// Math in float32 (float64 when q is float64); inputs may be bf16/f16/f32/f64 and are converted. `output` has q's
// dtype, [B, H, T, Dv]; `final_state` is float32 (float64 for float64 q), [B, H, Dk, Dv]. Any T >= 0.
//
// Errors: these are low-level tensor ops; malformed arguments (ranks, mismatched sizes or devices, non-floating
// dtypes, chunk_size < 1) throw c10::Error (TORCH_CHECK) naming the argument. Callers validate user input first.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace fm::kernels {

struct LinearAttentionResult {
  at::Tensor output;       // [B, H, T, Dv], q's dtype
  at::Tensor final_state;  // [B, H, Dk, Dv], float32 (float64 for float64 q)
};

// Gated linear attention: S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t.
// g: [B, H, T] (one log decay per head and step) or [B, H, T, Dk] (per key channel).
// chunk_size (>= 1): steps between state hand-overs; the last chunk may be short. With a per-key-channel g the
// hand-over runs every min(chunk_size, 16) steps: the pairwise [.., Dk] decay factors make longer chunks only slower.
LinearAttentionResult GatedLinearAttentionChunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& g, const at::Tensor& initial_state,
                                                  int64_t chunk_size = 64);
LinearAttentionResult GatedLinearAttentionRecurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    const at::Tensor& g, const at::Tensor& initial_state);

// Gated delta rule: S'_t = exp(g_t) S_{t-1}, S_t = S'_t + beta_t k_t (v_t - S'_t^T k_t)^T, o_t = S_t^T q_t.
// g: [B, H, T] (one log decay per head and step); beta: [B, H, T], in (0, 1).
LinearAttentionResult GatedDeltaRuleChunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& g, const at::Tensor& beta,
                                            const at::Tensor& initial_state, int64_t chunk_size = 64);
LinearAttentionResult GatedDeltaRuleRecurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const at::Tensor& g, const at::Tensor& beta,
                                              const at::Tensor& initial_state);

// The ATen compositions behind the ops above, on any device (same contracts).
LinearAttentionResult GatedLinearAttentionChunkedReference(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& g,
                                                           const at::Tensor& initial_state, int64_t chunk_size = 64);
LinearAttentionResult GatedLinearAttentionRecurrentReference(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, const at::Tensor& g,
                                                             const at::Tensor& initial_state);
LinearAttentionResult GatedDeltaRuleChunkedReference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const at::Tensor& g, const at::Tensor& beta,
                                                     const at::Tensor& initial_state, int64_t chunk_size = 64);
LinearAttentionResult GatedDeltaRuleRecurrentReference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& g, const at::Tensor& beta,
                                                       const at::Tensor& initial_state);

}  // namespace fm::kernels
