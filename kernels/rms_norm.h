// RMSNorm as Hugging Face computes it: y = w * (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x.dtype), over the last dim.
// On CUDA tensors (when built with FLASHMORPH_CUDA) a fused kernel runs, unless autograd needs the result's
// gradient; elsewhere (and then) the ATen reference below.
#pragma once

#include <ATen/core/Tensor.h>

namespace fm::kernels {

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);
// The plain ATen composition, always available; the CUDA kernel is tested against it.
at::Tensor RmsNormReference(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace fm::kernels
