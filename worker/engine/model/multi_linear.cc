#include "worker/engine/model/multi_linear.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

namespace fm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor Rows(const at::Tensor& t) { return t.reshape({-1, t.size(-1)}); }

class MultiLinearFunction : public torch::autograd::Function<MultiLinearFunction> {
 public:
  // Inputs: x, then the weights, then the biases (one per weight; empty ones stand for none: apply() takes defined
  // tensors only).
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights,
                               at::TensorList biases) {
    ctx->set_materialize_grads(false);  // an unused output's gradient stays undefined: no product for it
    variable_list out;
    for (size_t i = 0; i < weights.size(); ++i)
      out.push_back(biases[i].numel() > 0 ? at::linear(x, weights[i], biases[i]) : at::linear(x, weights[i]));
    std::vector<at::Tensor> saved = {x};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    c10::List<bool> bias_grads;
    for (const at::Tensor& b : biases) bias_grads.push_back(b.numel() > 0 && b.requires_grad());
    ctx->saved_data["bias_grads"] = bias_grads;
    ctx->saved_data["x_grad"] = x.requires_grad();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const size_t n = saved.size() - 1;
    const c10::List<bool> bias_grads = ctx->saved_data["bias_grads"].toBoolList();
    const bool x_grad = ctx->saved_data["x_grad"].toBool();
    at::Tensor x2 = Rows(x), dx2;
    variable_list result(1 + 2 * n);
    for (size_t i = 0; i < n; ++i) {
      if (!grads[i].defined()) continue;
      const at::Tensor& w = saved[1 + i];
      at::Tensor g2 = Rows(grads[i]);
      if (x_grad) {
        if (!dx2.defined()) {
          dx2 = at::matmul(g2, w);
        } else {
          dx2.addmm_(g2, w);  // dx += dy_i W_i inside the product
        }
      }
      if (w.requires_grad()) result[1 + i] = at::matmul(g2.t(), x2);
      if (bias_grads[i]) result[1 + n + i] = g2.sum(0);
    }
    if (dx2.defined()) {
      result[0] = dx2.view(x.sizes());
    } else if (x_grad) {
      result[0] = at::zeros_like(x);
    }
    return result;
  }
};

}  // namespace

std::vector<at::Tensor> MultiLinear(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                                    const std::vector<at::Tensor>& biases) {
  TORCH_CHECK(biases.empty() || biases.size() == weights.size(), "MultiLinear: one bias per weight, or none");
  std::vector<at::Tensor> b = biases.empty() ? std::vector<at::Tensor>(weights.size()) : biases;
  const bool graph = at::GradMode::is_enabled() && (x.requires_grad() || [&] {
                       for (const at::Tensor& w : weights)
                         if (w.requires_grad()) return true;
                       for (const at::Tensor& t : b)
                         if (t.defined() && t.requires_grad()) return true;
                       return false;
                     }());
  if (!graph) {  // no gradient: plain products
    std::vector<at::Tensor> out;
    for (size_t i = 0; i < weights.size(); ++i)
      out.push_back(b[i].defined() ? at::linear(x, weights[i], b[i]) : at::linear(x, weights[i]));
    return out;
  }
  for (at::Tensor& t : b)
    if (!t.defined()) t = at::empty({0}, x.options());
  return MultiLinearFunction::apply(x, at::TensorList(weights), at::TensorList(b));
}

}  // namespace fm
