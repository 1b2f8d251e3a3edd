#include "kernels/rms_norm.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#ifdef FLASHMORPH_CUDA
#include "kernels/fused_ops_cuda.h"
#include "kernels/rms_norm_cuda.h"
#endif

namespace fm::kernels {

at::Tensor RmsNormReference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
#ifdef FLASHMORPH_CUDA
  // bf16 rows: the differentiable row kernel. Other dtypes: the fused forward-only kernel when no gradient is needed.
  if (RmsNormRowsCudaSupports(x, weight)) return RmsNormRowsCuda(x, weight, eps);
  const bool needs_grad = at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad());
  if (!needs_grad && x.is_cuda() && RmsNormCudaSupports(x, weight)) return RmsNormCuda(x, weight, eps);
#endif
  return RmsNormReference(x, weight, eps);
}

}  // namespace fm::kernels
