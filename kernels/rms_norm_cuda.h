// Fused CUDA RMSNorm (one block per row, fp32 accumulation) for contiguous f32/f16/bf16 rows whose weight has the
// same dtype as x. Matches RmsNormReference within rounding of the final cast.
#pragma once

#include <ATen/core/Tensor.h>

namespace fm::kernels {

bool RmsNormCudaSupports(const at::Tensor& x, const at::Tensor& weight);
at::Tensor RmsNormCuda(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace fm::kernels
