// Autograd functions over the row kernels (kernels/cuda/row_ops.cu). See kernels/fused_ops_cuda.h.
#include "kernels/fused_ops_cuda.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <cstdlib>

#include "kernels/cuda/row_ops_launch.h"
#include "kernels/cuda_glue.h"

namespace fm::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace kc = fm::kernels::cuda;
using glue::Bf;
using glue::CBf;
using glue::Check;
using glue::Stream;

bool Aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }
bool Bf16Cuda(const at::Tensor& t) { return t.defined() && t.is_cuda() && t.scalar_type() == at::kBFloat16; }
bool SameDevice(const at::Tensor& a, const at::Tensor& b) { return !b.defined() || a.device() == b.device(); }
// autograd::Function::apply takes defined tensors: "none" travels as an empty one.
at::Tensor Arg(const at::Tensor& t, const at::Tensor& like) { return t.defined() ? t : at::empty({0}, like.options()); }
at::Tensor Opt(const at::Tensor& t) { return t.numel() == 0 ? at::Tensor() : t; }

class RmsNormRowsFunction : public torch::autograd::Function<RmsNormRowsFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& weight, double eps) {
    const c10::cuda::CUDAGuard guard(x_in.device());
    at::Tensor x = x_in.contiguous(), w = weight.contiguous();
    at::Tensor y = at::empty_like(x);
    const int64_t D = x.size(-1), rows = x.numel() / D;
    Check(kc::LaunchRmsNormRows(rows, static_cast<int>(D), CBf(x), CBf(w), static_cast<float>(eps), Bf(y), Stream()),
          "RmsNormRows");
    ctx->save_for_backward({x, w});
    ctx->saved_data["eps"] = eps;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1];
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor dy = grads[0].to(at::kBFloat16).contiguous();
    if (!Aligned16(dy)) dy = dy.clone();
    at::Tensor dx = at::empty_like(x);
    const int64_t D = x.size(-1), rows = x.numel() / D;
    Check(kc::LaunchRmsNormRowsBackward(rows, static_cast<int>(D), CBf(x), CBf(w), CBf(dy),
                                        static_cast<float>(ctx->saved_data["eps"].toDouble()), Bf(dx), Stream()),
          "RmsNormRowsBackward");
    return {dx, at::Tensor(), at::Tensor()};
  }
};

// Outputs (y, n); the backward gets (dy, dn) and returns dx for both x and r.
class AddRmsNormRowsFunction : public torch::autograd::Function<AddRmsNormRowsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& r_in,
                               const at::Tensor& weight, double eps) {
    const c10::cuda::CUDAGuard guard(x_in.device());
    ctx->set_materialize_grads(false);
    at::Tensor x = x_in.contiguous(), r = r_in.contiguous(), w = weight.contiguous();
    if (!Aligned16(r)) r = r.clone();
    at::Tensor y = at::empty_like(x), n = at::empty_like(x);
    const int64_t D = x.size(-1), rows = x.numel() / D;
    Check(kc::LaunchAddRmsNormRows(rows, static_cast<int>(D), CBf(x), CBf(r), CBf(w), static_cast<float>(eps), Bf(y),
                                   Bf(n), Stream()),
          "AddRmsNormRows");
    ctx->save_for_backward({y, w});
    ctx->saved_data["eps"] = eps;
    return {y, n};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &w = saved[1];
    const c10::cuda::CUDAGuard guard(y.device());
    auto prepare = [](const at::Tensor& g) {
      at::Tensor t = g.to(at::kBFloat16).contiguous();
      return Aligned16(t) ? t : t.clone();
    };
    at::Tensor dx;
    if (!grads[1].defined()) {
      dx = grads[0].defined() ? grads[0] : at::zeros_like(y);
    } else {
      at::Tensor dn = prepare(grads[1]), dy = grads[0].defined() ? prepare(grads[0]) : at::Tensor();
      dx = at::empty_like(y);
      const int64_t D = y.size(-1), rows = y.numel() / D;
      Check(kc::LaunchAddRmsNormRowsBackward(rows, static_cast<int>(D), CBf(y), CBf(w), CBf(dn), CBf(dy),
                                             static_cast<float>(ctx->saved_data["eps"].toDouble()), Bf(dx), Stream()),
            "AddRmsNormRowsBackward");
    }
    return {dx, dx, at::Tensor(), at::Tensor()};
  }
};

kc::HeadRows Rows(const at::Tensor& t) {  // t: [B, T, H, D] view
  kc::HeadRows r;
  r.B = static_cast<int>(t.size(0)), r.T = static_cast<int>(t.size(1)), r.H = static_cast<int>(t.size(2));
  r.D = static_cast<int>(t.size(3));
  r.stride_b = t.stride(0), r.stride_t = t.stride(1), r.stride_h = t.stride(2);
  return r;
}

// The non-tensor part of a HeadTransformSpec, as the autograd function carries it.
struct HeadFlags {
  bool unit_norm = false, silu = false, l2 = false, heads_first = false, vectorized = false;
  double eps = 1e-6, scale = 1.0;
};

std::atomic<bool>& VectorizedHeadTransformSetting() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("FLASHMORPH_VECTOR_HEADS");
    return env == nullptr || env[0] != '0';
  }()};
  return on;
}

// Every [D] row starts on a 16-byte boundary (the vectorized kernels' 8-element loads).
bool RowsAligned(const at::Tensor& t) {
  return Aligned16(t) && t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0;
}

kc::HeadTransformArgs Args(const at::Tensor& weight, const at::Tensor& cos, const at::Tensor& sin, const HeadFlags& f) {
  kc::HeadTransformArgs a;
  a.weight = CBf(weight);
  a.unit_norm = f.unit_norm;
  a.eps = static_cast<float>(f.eps);
  a.cos = CBf(cos);
  a.sin = CBf(sin);
  a.silu = f.silu;
  a.l2 = f.l2;
  a.scale = static_cast<float>(f.scale);
  a.vectorized = f.vectorized;
  return a;
}

class HeadTransformFunction : public torch::autograd::Function<HeadTransformFunction> {
 public:
  // x [B, T, H, D]; weight [D] or empty; cos/sin [T, D] or empty. Returns [B, T, H, D] or (heads_first) the
  // [B, T, H, D] view of a contiguous [B, H, T, D] tensor.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cos,
                            const at::Tensor& sin, HeadFlags flags) {
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
    const bool heads_first = flags.heads_first;
    at::Tensor y =
        heads_first ? at::empty({B, H, T, D}, x.options()).transpose(1, 2) : at::empty({B, T, H, D}, x.options());
    at::Tensor w = Opt(weight), c = Opt(cos), s = Opt(sin);
    flags.vectorized = flags.vectorized && B * T * H < (1LL << 31) && RowsAligned(x) &&
                       (!w.defined() || Aligned16(w)) && (!c.defined() || (Aligned16(c) && Aligned16(s)));
    Check(kc::LaunchHeadTransform(Rows(x), Rows(y), Args(w, c, s, flags), CBf(x), Bf(y), Stream()), "HeadTransform");
    ctx->save_for_backward({x, weight, cos, sin});
    ctx->saved_data["unit_norm"] = flags.unit_norm;
    ctx->saved_data["silu"] = flags.silu;
    ctx->saved_data["l2"] = flags.l2;
    ctx->saved_data["eps"] = flags.eps;
    ctx->saved_data["scale"] = flags.scale;
    ctx->saved_data["vectorized"] = flags.vectorized;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor w = Opt(saved[1]), c = Opt(saved[2]), s = Opt(saved[3]);
    const c10::cuda::CUDAGuard guard(x.device());
    HeadFlags flags;
    flags.unit_norm = ctx->saved_data["unit_norm"].toBool();
    flags.silu = ctx->saved_data["silu"].toBool();
    flags.l2 = ctx->saved_data["l2"].toBool();
    flags.eps = ctx->saved_data["eps"].toDouble();
    flags.scale = ctx->saved_data["scale"].toDouble();
    flags.vectorized = ctx->saved_data["vectorized"].toBool();
    at::Tensor dy = grads[0].to(at::kBFloat16);
    if (dy.stride(3) != 1 || (flags.vectorized && !RowsAligned(dy))) dy = dy.clone(at::MemoryFormat::Contiguous);
    // Same layout as x (e.g. a branch output read in the kernels' [B, H, T, D] order gets its gradient in that order).
    at::Tensor dx = at::empty_like(x);
    at::Tensor dw;
    if (w.defined() && w.requires_grad()) dw = at::zeros({w.size(0)}, w.options().dtype(at::kFloat));
    Check(kc::LaunchHeadTransformBackward(Rows(x), Rows(dy), Rows(dx), Args(w, c, s, flags), CBf(x), CBf(dy), Bf(dx),
                                          dw.defined() ? dw.data_ptr<float>() : nullptr, Stream()),
          "HeadTransformBackward");
    return {dx, dw.defined() ? dw.to(w.scalar_type()) : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// dg, du of silu(gate) * up for the output gradient dy (any dtype and layout).
std::pair<at::Tensor, at::Tensor> SwiGluGrads(const at::Tensor& gate, const at::Tensor& up, const at::Tensor& dy_in) {
  at::Tensor dy = dy_in.to(at::kBFloat16).contiguous();
  if (!Aligned16(dy)) dy = dy.clone();
  at::Tensor dg = at::empty_like(gate), du = at::empty_like(up);
  Check(kc::LaunchSwiGluBackward(gate.numel(), CBf(gate), CBf(up), CBf(dy), Bf(dg), Bf(du), Stream()),
        "SwiGluBackward");
  return {dg, du};
}

class SwiGluFunction : public torch::autograd::Function<SwiGluFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    const c10::cuda::CUDAGuard guard(gate.device());
    at::Tensor y = at::empty_like(gate);
    Check(kc::LaunchSwiGlu(gate.numel(), CBf(gate), CBf(up), Bf(y), Stream()), "SwiGlu");
    ctx->save_for_backward({gate, up});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &gate = saved[0], &up = saved[1];
    const c10::cuda::CUDAGuard guard(gate.device());
    auto [dg, du] = SwiGluGrads(gate, up, grads[0]);
    return {dg, du};
  }
};

}  // namespace

bool SetVectorizedHeadTransform(bool on) { return VectorizedHeadTransformSetting().exchange(on); }
bool VectorizedHeadTransform() { return VectorizedHeadTransformSetting().load(); }

bool RmsNormRowsCudaSupports(const at::Tensor& x, const at::Tensor& weight) {
  if (!Bf16Cuda(x) || !Bf16Cuda(weight) || !SameDevice(x, weight) || weight.dim() != 1 || x.dim() < 1 ||
      x.size(-1) != weight.size(0) || x.numel() == 0 || !kc::RmsNormRowsSupported(x.size(-1)))
    return false;
  if (at::GradMode::is_enabled() && weight.requires_grad()) return false;
  // Rows are read as 16-byte vectors: a contiguous x (or one that will be made contiguous) must start aligned.
  return !x.is_contiguous() || Aligned16(x);
}

at::Tensor RmsNormRowsCuda(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(RmsNormRowsCudaSupports(x, weight), "RmsNormRowsCuda: unsupported inputs");
  at::Tensor w = weight;
  if (!Aligned16(w)) w = w.clone();
  return RmsNormRowsFunction::apply(x, w, eps);
}

bool AddRmsNormCudaSupports(const at::Tensor& x, const at::Tensor& r, const at::Tensor& weight) {
  return RmsNormRowsCudaSupports(x, weight) && Bf16Cuda(r) && r.sizes() == x.sizes() && r.device() == x.device() &&
         (!r.is_contiguous() || Aligned16(r));
}

std::pair<at::Tensor, at::Tensor> AddRmsNormCuda(const at::Tensor& x, const at::Tensor& r, const at::Tensor& weight,
                                                 double eps) {
  TORCH_CHECK(AddRmsNormCudaSupports(x, r, weight), "AddRmsNormCuda: unsupported inputs");
  at::Tensor w = weight;
  if (!Aligned16(w)) w = w.clone();
  variable_list out = AddRmsNormRowsFunction::apply(x, r, w, eps);
  return {out[0], out[1]};
}

bool HeadTransformCudaSupports(const at::Tensor& x, const HeadTransformSpec& spec) {
  if (!Bf16Cuda(x) || x.dim() != 4 || x.stride(3) != 1 || !kc::HeadTransformSupported(static_cast<int>(x.size(3))))
    return false;
  if (x.size(0) * x.size(1) > (1LL << 31) || x.size(1) > (1LL << 30)) return false;
  const at::Tensor& w = spec.norm_weight;
  if (w.defined() &&
      (!Bf16Cuda(w) || !SameDevice(x, w) || w.dim() != 1 || w.size(0) != x.size(3) || !w.is_contiguous()))
    return false;
  if (spec.cos.defined() != spec.sin.defined()) return false;
  for (const at::Tensor* t : {&spec.cos, &spec.sin})
    if (t->defined() && (!Bf16Cuda(*t) || !SameDevice(x, *t) || t->numel() != x.size(1) * x.size(3) ||
                         !t->is_contiguous() || t->requires_grad()))
      return false;
  return true;
}

at::Tensor HeadTransformCuda(const at::Tensor& x, const HeadTransformSpec& spec) {
  TORCH_CHECK(HeadTransformCudaSupports(x, spec), "HeadTransformCuda: unsupported inputs");
  HeadFlags flags;
  flags.unit_norm = !spec.norm_weight.defined() && spec.unit_norm;
  flags.eps = spec.eps;
  flags.silu = spec.silu;
  flags.l2 = spec.l2;
  flags.scale = spec.scale;
  flags.heads_first = spec.heads_first;
  flags.vectorized = VectorizedHeadTransform();
  at::Tensor y = HeadTransformFunction::apply(x, Arg(spec.norm_weight, x), Arg(spec.cos, x), Arg(spec.sin, x), flags);
  return spec.heads_first ? y.transpose(1, 2) : y;
}

bool SwiGluCudaSupports(const at::Tensor& gate, const at::Tensor& up) {
  return Bf16Cuda(gate) && Bf16Cuda(up) && gate.device() == up.device() && gate.sizes() == up.sizes() &&
         gate.is_contiguous() && up.is_contiguous() && gate.numel() % 8 == 0 && gate.numel() > 0 && Aligned16(gate) &&
         Aligned16(up);
}

at::Tensor SwiGluCuda(const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK(SwiGluCudaSupports(gate, up), "SwiGluCuda: unsupported inputs");
  return SwiGluFunction::apply(gate, up);
}

std::pair<at::Tensor, at::Tensor> SwiGluBackwardCuda(const at::Tensor& gate, const at::Tensor& up,
                                                     const at::Tensor& dy) {
  TORCH_CHECK(SwiGluCudaSupports(gate, up) && dy.sizes() == gate.sizes() && dy.device() == gate.device(),
              "SwiGluBackwardCuda: unsupported inputs");
  const c10::cuda::CUDAGuard guard(gate.device());
  return SwiGluGrads(gate, up, dy);
}

}  // namespace fm::kernels
