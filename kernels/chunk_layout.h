// Internal helpers of the ATen linear-attention code (kernels/*.cc): the chunked layout and the pairwise decays.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/ATen.h>

namespace fm::kernels::chunking {

// [B, H, T, ...] -> [B, H, N, C, ...] with N = ceil(T / C), zero-padded at the end of T. Padded steps have k = v =
// beta = 0 and g = 0 (no decay), so they change neither the state nor the real outputs.
inline at::Tensor ToChunks(const at::Tensor& x, int64_t chunk) {
  const int64_t t = x.size(2);
  const int64_t n = (t + chunk - 1) / chunk;
  at::Tensor padded = x;
  if (n * chunk != t) {
    std::vector<int64_t> pad(2 * (x.dim() - 2), 0);  // (left, right) pairs from the last dim; dim 2 is the first
    pad.back() = n * chunk - t;
    padded = at::constant_pad_nd(x, pad, 0);
  }
  std::vector<int64_t> shape = {x.size(0), x.size(1), n, chunk};
  for (int64_t d = 3; d < x.dim(); ++d) shape.push_back(x.size(d));
  return padded.reshape(shape);
}

// [B, H, N, C, Dv] -> [B, H, T, Dv].
inline at::Tensor FromChunks(const at::Tensor& x, int64_t t) {
  return x.reshape({x.size(0), x.size(1), x.size(2) * x.size(3), x.size(4)}).narrow(2, 0, t);
}

// exp(G_i - G_j) for j <= i, 0 above the diagonal: [..., C] -> [..., C(i), C(j)].
inline at::Tensor PairwiseDecay(const at::Tensor& G) {
  const int64_t c = G.size(-1);
  at::Tensor above = at::ones({c, c}, G.options().dtype(at::kBool)).triu(1);
  at::Tensor diff = G.unsqueeze(-1) - G.unsqueeze(-2);
  return diff.masked_fill(above, -std::numeric_limits<double>::infinity()).exp();
}

}  // namespace fm::kernels::chunking
