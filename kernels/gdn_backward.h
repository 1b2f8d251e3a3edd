// Explicit backward of the chunked gated delta rule (docs/KERNELS.md "GDN backward"): the gradients of
// GatedDeltaRuleChunked's output and final state with respect to q, k, v, g, beta and the initial state, computed
// chunk by chunk with batched ATen products and two sequential passes over the chunks (the forward states and the
// reverse scan of the state gradients), instead of differentiating through the forward's autograd graph. Any device;
// math in float32 (float64 for float64 q). Same layouts and contracts as kernels/linear_attention.h.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace fm::kernels {

struct GatedDeltaRuleGrads {
  at::Tensor dq, dk, dv, dg, dbeta;  // like q, k, v, g, beta (compute dtype)
  at::Tensor dinitial_state;         // [B, H, Dk, Dv]
};

// grad_output [B, H, T, Dv] and grad_final_state [B, H, Dk, Dv] may be undefined (= zeros); initial_state too.
GatedDeltaRuleGrads GatedDeltaRuleChunkedBackward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& g, const at::Tensor& beta,
                                                  const at::Tensor& initial_state, const at::Tensor& grad_output,
                                                  const at::Tensor& grad_final_state, int64_t chunk_size = 64);

}  // namespace fm::kernels
