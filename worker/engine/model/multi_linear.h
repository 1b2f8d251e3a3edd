// Several linear maps of one input as one autograd node: y_i = x W_i^T (+ b_i). Its backward sums the input's
// gradient inside the matrix products (dx = dy_0 W_0, then dx += dy_i W_i with the product accumulating into dx)
// instead of forming each dy_i W_i and adding them afterwards, which saves one full pass over dx per extra map
// (the q, k, v projections of both attention branches share their input; so do an MLP's gate and up). Gradients
// also flow to weights and biases that require them.
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

namespace fm {

// x: [..., in]; weights[i]: [out_i, in]; biases empty or one per weight (entries may be undefined). Returns the
// [..., out_i] outputs.
std::vector<at::Tensor> MultiLinear(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                                    const std::vector<at::Tensor>& biases = {});

}  // namespace fm
