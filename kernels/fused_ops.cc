#include "kernels/fused_ops.h"

#include <ATen/ATen.h>

#include "kernels/rms_norm.h"

#ifdef FLASHMORPH_CUDA
#include "kernels/fused_ops_cuda.h"
#endif

namespace fm::kernels {

at::Tensor RotaryReference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

at::Tensor HeadTransformReference(const at::Tensor& x, const HeadTransformSpec& spec) {
  at::Tensor y = x;
  if (spec.norm_weight.defined()) {
    y = RmsNorm(y, spec.norm_weight, spec.eps);
  } else if (spec.unit_norm) {
    at::Tensor f = y.to(at::kFloat);
    y = (f * at::rsqrt(f.pow(2).mean(-1, /*keepdim=*/true) + spec.eps)).to(x.scalar_type());
  }
  if (spec.cos.defined()) {
    const int64_t T = y.size(1), D = y.size(3);
    y = RotaryReference(y, spec.cos.view({T, 1, D}), spec.sin.view({T, 1, D}));
  }
  if (spec.silu) y = at::silu(y);
  if (spec.l2) {
    at::Tensor f = y.to(at::kFloat);
    y = (f * at::rsqrt((f * f).sum(-1, /*keepdim=*/true) + 1e-6)).to(y.scalar_type());
  }
  if (spec.scale != 1.0) y = y * spec.scale;
  return spec.heads_first ? y.transpose(1, 2) : y;
}

at::Tensor HeadTransform(const at::Tensor& x, const HeadTransformSpec& spec) {
#ifdef FLASHMORPH_CUDA
  if (HeadTransformCudaSupports(x, spec)) return HeadTransformCuda(x, spec);
#endif
  return HeadTransformReference(x, spec);
}

std::pair<at::Tensor, at::Tensor> AddRmsNormReference(const at::Tensor& x, const at::Tensor& r,
                                                      const at::Tensor& weight, double eps) {
  at::Tensor y = x + r;
  return {y, RmsNorm(y, weight, eps)};
}

std::pair<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& x, const at::Tensor& r, const at::Tensor& weight,
                                             double eps) {
#ifdef FLASHMORPH_CUDA
  if (AddRmsNormCudaSupports(x, r, weight)) return AddRmsNormCuda(x, r, weight, eps);
#endif
  return AddRmsNormReference(x, r, weight, eps);
}

at::Tensor SwiGluReference(const at::Tensor& gate, const at::Tensor& up) { return at::silu(gate) * up; }

at::Tensor SwiGlu(const at::Tensor& gate, const at::Tensor& up) {
#ifdef FLASHMORPH_CUDA
  if (SwiGluCudaSupports(gate, up)) return SwiGluCuda(gate, up);
#endif
  return SwiGluReference(gate, up);
}

std::pair<at::Tensor, at::Tensor> SwiGluBackwardReference(const at::Tensor& gate, const at::Tensor& up,
                                                          const at::Tensor& dy) {
  const at::ScalarType compute = gate.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor g = gate.to(compute), u = up.to(compute), d = dy.to(compute);
  at::Tensor s = at::sigmoid(g);
  at::Tensor d_up = d * (g * s);
  at::Tensor d_gate = d * u * s * (1 + g * (1 - s));
  return {d_gate.to(gate.scalar_type()), d_up.to(up.scalar_type())};
}

std::pair<at::Tensor, at::Tensor> SwiGluBackward(const at::Tensor& gate, const at::Tensor& up, const at::Tensor& dy) {
#ifdef FLASHMORPH_CUDA
  if (SwiGluCudaSupports(gate, up) && dy.sizes() == gate.sizes()) return SwiGluBackwardCuda(gate, up, dy);
#endif
  return SwiGluBackwardReference(gate, up, dy);
}

}  // namespace fm::kernels
