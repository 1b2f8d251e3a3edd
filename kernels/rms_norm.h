// RMSNorm as Hugging Face computes it: y = w * (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x.dtype), over the last dim.
// On CUDA tensors (when built with FLASHMORPH_CUDA) fused kernels run: for bf16 rows a differentiable one
// (kernels/fused_ops_cuda.h; gradient to x, so a weight that trains takes the reference), for f32/f16 a forward-only
// one when autograd needs no gradient; elsewhere the ATen reference below.
#pragma once

#include <ATen/core/Tensor.h>

namespace fm::kernels {

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);
// The plain ATen composition, always available; the CUDA kernels are tested against it.
at::Tensor RmsNormReference(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace fm::kernels
