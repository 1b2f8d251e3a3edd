// Fused, differentiable row-wise ops around the decoder's and the linear branches' matrix products: the per-head
// transforms (q/k RMSNorm + rotary embedding for attention; norm + feature map + scale for the linear branches;
// the branches' output norm, with a change of layout in the same pass) and SwiGLU. On CUDA bf16 inputs they run the
// kernels of kernels/cuda/row_ops.cu (fp32 arithmetic, the ATen composition's bf16 roundings between stages, one
// read and one write per tensor, backward by recomputation from the input); elsewhere (CPU, other dtypes, other head
// sizes) the ATen compositions `*Reference`, which are what the CPU tests check against Hugging Face. Gradients
// flow to the inputs and to an RMSNorm weight that requires them.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace fm::kernels {

// What HeadTransform applies to every [D] row of a [B, T, H, D] tensor, in this order.
struct HeadTransformSpec {
  at::Tensor norm_weight;  // RMSNorm with this [D] weight (w * (x * rstd).to(dtype)); undefined: no norm,
  bool unit_norm = false;  //   unless unit_norm: x * rstd without a weight, rounded once
  double eps = 1e-6;
  at::Tensor cos, sin;       // [T, D] rotary tables: x * cos + rotate_half(x) * sin; undefined: none
  bool silu = false;         // x * sigmoid(x)
  bool l2 = false;           // x * rsqrt(sum(x^2) + 1e-6)
  double scale = 1.0;        // times scale (skipped when 1)
  bool heads_first = false;  // return [B, H, T, D] (contiguous on the fused path) instead of [B, T, H, D]
};

// x: [B, T, H, D] (any strides; the fused path wants the last one 1). Returns the same dtype.
at::Tensor HeadTransform(const at::Tensor& x, const HeadTransformSpec& spec);
at::Tensor HeadTransformReference(const at::Tensor& x, const HeadTransformSpec& spec);

// The residual add before a decoder norm, fused with it: {y, n} = {x + r, RMSNorm(x + r; weight)} (Hugging Face's
// roundings, as kernels::RmsNorm). Differentiable in x and r (and in the weight on the reference path).
std::pair<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& x, const at::Tensor& r, const at::Tensor& weight,
                                             double eps);
std::pair<at::Tensor, at::Tensor> AddRmsNormReference(const at::Tensor& x, const at::Tensor& r,
                                                      const at::Tensor& weight, double eps);

// silu(gate) * up, elementwise (the MLP's SwiGLU; the gated branches' output gate).
at::Tensor SwiGlu(const at::Tensor& gate, const at::Tensor& up);
at::Tensor SwiGluReference(const at::Tensor& gate, const at::Tensor& up);
// The gradients (d_gate, d_up) of silu(gate) * up for an output gradient dy, without forming the product (no
// autograd graph): d_up = dy * silu(gate), d_gate = dy * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate))).
std::pair<at::Tensor, at::Tensor> SwiGluBackward(const at::Tensor& gate, const at::Tensor& up, const at::Tensor& dy);
std::pair<at::Tensor, at::Tensor> SwiGluBackwardReference(const at::Tensor& gate, const at::Tensor& up,
                                                          const at::Tensor& dy);

// x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]); cos/sin broadcast to x.
at::Tensor RotaryReference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace fm::kernels
