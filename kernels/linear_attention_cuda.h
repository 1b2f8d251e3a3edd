// The CUDA path of the linear-attention ops (kernels/cuda/*.cu, sm_90) as differentiable ATen functions. Same
// contract as the references in kernels/linear_attention.h (layout, math, dtypes of the results), computed with
// bf16 tensor-core products, fp32 states and fp32 log-space decays. The public ops in linear_attention.h pick these
// automatically for supported CUDA inputs; tests and benchmarks call them directly.
//
// Supported (LinearAttentionCudaSupports): CUDA tensors, q/k/v bf16, Dk and Dv <= 128 (padded inside to 64 or 128),
// any T >= 1 (padded to whole chunks). The chunk size is the kernels' own (64 steps; 32 with a per-channel decay).
// Gradients flow to q, k, v, g, beta and initial_state. GLA's backward runs CUDA kernels; the gated delta rule's
// runs the explicit chunked backward of kernels/gdn_backward.h (batched ATen products; its two passes over the
// chunks are not yet kernels).
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/linear_attention.h"

namespace fm::kernels {

bool LinearAttentionCudaSupports(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// The GLA/Lightning state passes run in two phases by default (every chunk's contribution at once, then an
// elementwise recurrence; docs/KERNELS.md); on (or environment FLASHMORPH_SEQUENTIAL_SCAN=1) selects the older
// sequential scan kernel, for comparison. Returns the previous value. Process-wide.
bool SetSequentialStateScan(bool on);
bool SequentialStateScan();

// With a scalar decay (Lightning) the forward and both state passes run over segments of chunks by default, the
// state of each segment's walk in registers (kernels/cuda/gla_segment.cu); off (or FLASHMORPH_GLA_SEGMENTS=0)
// selects the two-phase pass and the separate output kernel. SetGlaSegmentChunks sets the chunks per segment
// (FLASHMORPH_GLA_SEGMENT_CHUNKS; 0 = chosen from the problem's size). Each returns the previous value;
// process-wide. SequentialStateScan() takes precedence over both.
bool SetSegmentedGla(bool on);
bool SegmentedGla();
int SetGlaSegmentChunks(int chunks);
int GlaSegmentChunks();

LinearAttentionResult GatedLinearAttentionCuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& g, const at::Tensor& initial_state);
LinearAttentionResult GatedDeltaRuleCuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& g, const at::Tensor& beta, const at::Tensor& initial_state);

// Token-by-token recurrence on the GPU for decoding (no autograd): q, k, v bf16 or f32 on CUDA, Dk, Dv <= 256.
bool RecurrentCudaSupports(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
LinearAttentionResult GatedLinearAttentionRecurrentCuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                        const at::Tensor& g, const at::Tensor& initial_state);
LinearAttentionResult GatedDeltaRuleRecurrentCuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& g, const at::Tensor& beta,
                                                  const at::Tensor& initial_state);

// Fused gate mix (autograd): [.., H * D] full and linear head outputs (bf16, CUDA) and per-head weights a [H]
// (float) -> [.., 2 * H * D] = [a * full, (1 - a) * linear] per head, the input of one concatenated output
// projection.
at::Tensor GateMixCuda(const at::Tensor& full, const at::Tensor& linear, const at::Tensor& a, int64_t heads);

}  // namespace fm::kernels
