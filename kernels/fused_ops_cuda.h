// The CUDA path of kernels/fused_ops.h and of RMSNorm (kernels/rms_norm.h) as autograd functions over the kernels
// of kernels/cuda/row_ops.cu. The public ops pick these for supported inputs (the *Supports predicates); tests call
// them directly.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/fused_ops.h"

namespace fm::kernels {

// bf16 CUDA x and weight (contiguous rows, width a multiple of 8); differentiable in x. A weight that requires
// gradients is not supported here (the reference handles it).
bool RmsNormRowsCudaSupports(const at::Tensor& x, const at::Tensor& weight);
at::Tensor RmsNormRowsCuda(const at::Tensor& x, const at::Tensor& weight, double eps);

// kernels::AddRmsNorm on the fused kernels: x and r of one shape, both as RmsNormRowsCudaSupports wants x;
// differentiable in x and r (a weight that requires gradients goes to the reference).
bool AddRmsNormCudaSupports(const at::Tensor& x, const at::Tensor& r, const at::Tensor& weight);
std::pair<at::Tensor, at::Tensor> AddRmsNormCuda(const at::Tensor& x, const at::Tensor& r, const at::Tensor& weight,
                                                 double eps);

// HeadTransform's vectorized kernels (8 elements per lane, 16-byte loads) for inputs whose rows are 16-byte aligned;
// the others keep one warp per row. On by default (FLASHMORPH_VECTOR_HEADS=0 sets the start value off); checked
// against float64 in CPU CI on the emulated GPU (FusedOpsEmulated) and on the GPU (FusedOpsCuda), not yet timed
// there (docs/KERNELS.md). Returns the previous value.
bool SetVectorizedHeadTransform(bool on);
bool VectorizedHeadTransform();

// bf16 CUDA [B, T, H, D] x with D in {64, 128, 256} and a unit last stride; bf16 weight and [T, D] tables on the
// same device. Differentiable in x and in a weight that requires gradients.
bool HeadTransformCudaSupports(const at::Tensor& x, const HeadTransformSpec& spec);
at::Tensor HeadTransformCuda(const at::Tensor& x, const HeadTransformSpec& spec);

// bf16 CUDA gate and up of one shape, contiguous, numel a multiple of 8.
bool SwiGluCudaSupports(const at::Tensor& gate, const at::Tensor& up);
at::Tensor SwiGluCuda(const at::Tensor& gate, const at::Tensor& up);
// Its backward alone (kernels::SwiGluBackward): dy of gate's shape and device, any dtype and strides.
std::pair<at::Tensor, at::Tensor> SwiGluBackwardCuda(const at::Tensor& gate, const at::Tensor& up,
                                                     const at::Tensor& dy);

}  // namespace fm::kernels
