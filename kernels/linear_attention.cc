// ATen compositions of the linear-attention recurrences (docs/ENGINE.md §1). Notation inside a chunk of C steps:
// G_i = g_1 + ... + g_i (cumulative log decay, <= 0 and non-increasing). Only differences that are <= 0 are ever
// exponentiated (exp(G_i), exp(G_i - G_j) for j <= i, exp(G_last - G_j)), so no factor exceeds 1 and nothing
// overflows however strong the decay; pairwise differences with j > i are set to -inf before exp.
#include "kernels/linear_attention.h"
#include "kernels/chunk_layout.h"

#include <algorithm>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#ifdef FLASHMORPH_CUDA
#include "kernels/linear_attention_cuda.h"
#endif

namespace fm::kernels {
namespace {

using chunking::FromChunks;
using chunking::PairwiseDecay;
using chunking::ToChunks;

// Per-key-channel decay: the pairwise factors exp(G_i - G_j) are [s, s, Dk] tensors inside sub-chunks of s <= 4 steps
// and factor through sub-chunk ends across them; the state is handed over every <= 16 steps. Elementwise passes over
// these tensors dominate the CPU time (measured, B=4 H=4 T=1024 D=48: 3x faster than 64-step chunks with 16-step
// sub-chunks); the result does not depend on the split beyond rounding.
constexpr int64_t kPerChannelChunk = 16;
constexpr int64_t kSubChunk = 4;

// The inputs of one call, validated and converted to the compute dtype.
struct Inputs {
  at::Tensor q, k, v, g, beta, state;
  int64_t B = 0, H = 0, T = 0, Dk = 0, Dv = 0;
  bool per_channel = false;  // g is [B, H, T, Dk]
  at::ScalarType out_dtype = at::kFloat;
};

void CheckFloating(const char* op, const char* name, const at::Tensor& t, const at::Tensor& q) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ", t.scalar_type());
  TORCH_CHECK(t.device() == q.device(), op, ": ", name, " is on ", t.device(), " but q is on ", q.device());
}

// Checks ranks, sizes, devices and dtypes; fills the sizes of `in`.
void Validate(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
              const at::Tensor* beta, const at::Tensor& initial_state, Inputs& in) {
  TORCH_CHECK(q.defined(), op, ": q is undefined");
  CheckFloating(op, "q", q, q);
  CheckFloating(op, "k", k, q);
  CheckFloating(op, "v", v, q);
  CheckFloating(op, "g", g, q);
  TORCH_CHECK(q.dim() == 4, op, ": q must be [B, H, T, Dk], got ", q.sizes());
  in.B = q.size(0), in.H = q.size(1), in.T = q.size(2), in.Dk = q.size(3);
  TORCH_CHECK(k.dim() == 4 && k.sizes() == q.sizes(), op, ": k must be [B, H, T, Dk] = ", q.sizes(), " like q, got ",
              k.sizes());
  TORCH_CHECK(v.dim() == 4 && v.size(0) == in.B && v.size(1) == in.H && v.size(2) == in.T, op,
              ": v must be [B, H, T, Dv] with [B, H, T] = [", in.B, ", ", in.H, ", ", in.T, "], got ", v.sizes());
  in.Dv = v.size(3);
  const bool scalar_g = g.dim() == 3 && g.size(0) == in.B && g.size(1) == in.H && g.size(2) == in.T;
  in.per_channel = g.dim() == 4 && g.sizes() == q.sizes();
  if (beta != nullptr) {
    TORCH_CHECK(scalar_g, op, ": g must be [B, H, T] = [", in.B, ", ", in.H, ", ", in.T, "], got ", g.sizes());
    CheckFloating(op, "beta", *beta, q);
    TORCH_CHECK(beta->dim() == 3 && beta->size(0) == in.B && beta->size(1) == in.H && beta->size(2) == in.T, op,
                ": beta must be [B, H, T] = [", in.B, ", ", in.H, ", ", in.T, "], got ", beta->sizes());
  } else {
    TORCH_CHECK(scalar_g || in.per_channel, op,
                ": g must be [B, H, T] or [B, H, T, Dk] with [B, H, T, Dk] = ", q.sizes(), ", got ", g.sizes());
  }
  if (initial_state.defined()) {
    CheckFloating(op, "initial_state", initial_state, q);
    TORCH_CHECK(initial_state.dim() == 4 && initial_state.size(0) == in.B && initial_state.size(1) == in.H &&
                    initial_state.size(2) == in.Dk && initial_state.size(3) == in.Dv,
                op, ": initial_state must be [B, H, Dk, Dv] = [", in.B, ", ", in.H, ", ", in.Dk, ", ", in.Dv, "], got ",
                initial_state.sizes());
  }
}

Inputs Prepare(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
               const at::Tensor* beta, const at::Tensor& initial_state) {
  Inputs in;
  Validate(op, q, k, v, g, beta, initial_state, in);
  const at::ScalarType compute = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::TensorOptions options = q.options().dtype(compute);
  if (initial_state.defined()) {
    in.state = initial_state.to(compute);
  } else {
    in.state = at::zeros({in.B, in.H, in.Dk, in.Dv}, options);
  }
  in.q = q.to(compute);
  in.k = k.to(compute);
  in.v = v.to(compute);
  in.g = g.to(compute);
  if (beta != nullptr) in.beta = beta->to(compute);
  in.out_dtype = q.scalar_type();
  return in;
}

LinearAttentionResult EmptyResult(const Inputs& in) {
  return {at::empty({in.B, in.H, 0, in.Dv}, in.q.options().dtype(in.out_dtype)), in.state};
}

// Largest divisor of c that is at most kSubChunk.
int64_t SubChunkSize(int64_t c) {
  for (int64_t s = std::min(c, kSubChunk); s > 1; --s) {
    if (c % s == 0) return s;
  }
  return 1;
}

// Intra-chunk scores with a per-key-channel decay: A_ij = sum_d q_id k_jd exp(G_id - G_jd) for j <= i, else 0.
// q, k, G: [B, H, N, C, Dk] -> [B, H, N, C, C]. Inside a sub-chunk of s steps the factors are formed pairwise
// ([s, s, Dk]); across sub-chunks a > b they factor through e = the last step of sub-chunk b:
// exp(G_i - G_j) = exp(G_i - G_e) * exp(G_e - G_j), both <= 1.
at::Tensor PerChannelScores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& G) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), C = q.size(3), Dk = q.size(4);
  const int64_t s = SubChunkSize(C);
  const int64_t ns = C / s;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const at::TensorOptions bool_options = q.options().dtype(at::kBool);
  at::Tensor qs = q.reshape({B, H, N, ns, s, Dk});
  at::Tensor ks = k.reshape({B, H, N, ns, s, Dk});
  at::Tensor Gs = G.reshape({B, H, N, ns, s, Dk});

  // Diagonal blocks: [B, H, N, ns, s(i), s(j), Dk] pairwise factors.
  at::Tensor above = at::ones({s, s}, bool_options).triu(1).unsqueeze(-1);  // j > i
  at::Tensor pair = (Gs.unsqueeze(-2) - Gs.unsqueeze(-3)).masked_fill(above, neg_inf).exp();
  at::Tensor diag = (qs.unsqueeze(-2) * pair * ks.unsqueeze(-3)).sum(-1);  // [B, H, N, ns, s, s]
  if (ns == 1) return diag.reshape({B, H, N, C, C});

  // Off-diagonal blocks (a > b): [B, H, N, ns(a), ns(b), s, s].
  at::Tensor Ge = Gs.select(-2, s - 1);                                                     // [B, H, N, ns(b), Dk]
  at::Tensor not_below = at::ones({ns, ns}, bool_options).triu(0).reshape({ns, ns, 1, 1});  // a <= b
  at::Tensor q_factor =
      (Gs.unsqueeze(4) - Ge.unsqueeze(3).unsqueeze(5)).masked_fill(not_below, neg_inf).exp();  // [.., a, b, s, Dk]
  at::Tensor k_dec = ks * (Ge.unsqueeze(-2) - Gs).exp();                                       // [.., b, s, Dk]
  at::Tensor off = at::matmul(qs.unsqueeze(4) * q_factor, k_dec.unsqueeze(3).transpose(-1, -2));
  at::Tensor eye = at::eye(ns, q.options()).reshape({ns, ns, 1, 1});
  at::Tensor blocks = off + eye * diag.unsqueeze(4);  // diag[a] at (a, a); off is 0 there
  return blocks.permute({0, 1, 2, 3, 5, 4, 6}).reshape({B, H, N, C, C});
}

}  // namespace

LinearAttentionResult GatedLinearAttentionChunkedReference(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& g,
                                                           const at::Tensor& initial_state, int64_t chunk_size) {
  constexpr const char* kOp = "GatedLinearAttentionChunked";
  TORCH_CHECK(chunk_size >= 1, kOp, ": chunk_size must be >= 1, got ", chunk_size);
  const Inputs in = Prepare(kOp, q, k, v, g, nullptr, initial_state);
  if (in.T == 0) return EmptyResult(in);
  const int64_t C = std::min(in.per_channel ? std::min(chunk_size, kPerChannelChunk) : chunk_size, in.T);
  at::Tensor qc = ToChunks(in.q, C), kc = ToChunks(in.k, C), vc = ToChunks(in.v, C);
  at::Tensor G = ToChunks(in.g, C).cumsum(3);  // [B, H, N, C] or [B, H, N, C, Dk]
  at::Tensor G_last = G.select(3, C - 1);      // [B, H, N] or [B, H, N, Dk]
  at::Tensor scores, q_dec, k_dec, state_decay;
  if (in.per_channel) {
    scores = PerChannelScores(qc, kc, G);
    q_dec = qc * G.exp();
    k_dec = kc * (G_last.unsqueeze(3) - G).exp();
    state_decay = G_last.exp().unsqueeze(-1);  // [B, H, N, Dk, 1]
  } else {
    scores = at::matmul(qc, kc.transpose(-1, -2)) * PairwiseDecay(G);
    q_dec = qc * G.exp().unsqueeze(-1);
    k_dec = kc * (G_last.unsqueeze(-1) - G).exp().unsqueeze(-1);
    state_decay = G_last.exp().unsqueeze(-1).unsqueeze(-1);  // [B, H, N, 1, 1]
  }
  // Hand-over: S_n = exp(G_last) S_{n-1} + sum_j (k_j exp(G_last - G_j))^T v_j.
  at::Tensor updates = at::matmul(k_dec.transpose(-1, -2), vc);  // [B, H, N, Dk, Dv]
  // unbind (not select) per chunk: its backward stacks once instead of materialising a full-size gradient per chunk.
  const std::vector<at::Tensor> decays = state_decay.unbind(2), update_list = updates.unbind(2);
  std::vector<at::Tensor> before;  // the state entering each chunk
  before.reserve(decays.size());
  at::Tensor S = in.state;
  for (size_t n = 0; n < decays.size(); ++n) {
    before.push_back(S);
    S = decays[n] * S + update_list[n];
  }
  at::Tensor out = at::matmul(scores, vc) + at::matmul(q_dec, at::stack(before, 2));
  return {FromChunks(out, in.T).to(in.out_dtype), S};
}

LinearAttentionResult GatedLinearAttentionRecurrentReference(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, const at::Tensor& g,
                                                             const at::Tensor& initial_state) {
  const Inputs in = Prepare("GatedLinearAttentionRecurrent", q, k, v, g, nullptr, initial_state);
  if (in.T == 0) return EmptyResult(in);
  // Decay factors for every step at once: [B, H, T, Dk, 1] or [B, H, T, 1, 1].
  at::Tensor decay = in.per_channel ? in.g.exp().unsqueeze(-1) : in.g.exp().unsqueeze(-1).unsqueeze(-1);
  const std::vector<at::Tensor> qs = in.q.unbind(2), ks = in.k.unbind(2), vs = in.v.unbind(2), decays = decay.unbind(2);
  std::vector<at::Tensor> outs;
  outs.reserve(in.T);
  at::Tensor S = in.state;
  for (int64_t t = 0; t < in.T; ++t) {
    S = decays[t] * S + ks[t].unsqueeze(-1) * vs[t].unsqueeze(-2);
    outs.push_back(at::matmul(qs[t].unsqueeze(-2), S).squeeze(-2));
  }
  return {at::stack(outs, 2).to(in.out_dtype), S};
}

LinearAttentionResult GatedDeltaRuleChunkedReference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const at::Tensor& g, const at::Tensor& beta,
                                                     const at::Tensor& initial_state, int64_t chunk_size) {
  constexpr const char* kOp = "GatedDeltaRuleChunked";
  TORCH_CHECK(chunk_size >= 1, kOp, ": chunk_size must be >= 1, got ", chunk_size);
  const Inputs in = Prepare(kOp, q, k, v, g, &beta, initial_state);
  if (in.T == 0) return EmptyResult(in);
  const int64_t C = std::min(chunk_size, in.T);
  at::Tensor qc = ToChunks(in.q, C), kc = ToChunks(in.k, C), vc = ToChunks(in.v, C);
  at::Tensor bc = ToChunks(in.beta, C);        // [B, H, N, C]
  at::Tensor G = ToChunks(in.g, C).cumsum(3);  // [B, H, N, C]
  at::Tensor G_last = G.select(3, C - 1);      // [B, H, N]
  at::Tensor decay = PairwiseDecay(G);         // [B, H, N, C, C]

  // Within a chunk entering with state S0, S_t = exp(G_t) S0 + sum_{j<=t} exp(G_t - G_j) k_j u_j^T where the
  // corrected values u_t = beta_t (v_t - exp(G_t) S0^T k_t - sum_{j<t} exp(G_t - G_j) (k_t . k_j) u_j), i.e.
  // (I + L) u = beta v - beta exp(G) K S0 with L_tj = beta_t exp(G_t - G_j) (k_t . k_j), j < t (UT transform).
  // So u = U - W S0 with U = (I + L)^-1 beta V and W = (I + L)^-1 beta exp(G) K, both independent of the state.
  at::Tensor L = (at::matmul(kc, kc.transpose(-1, -2)) * decay * bc.unsqueeze(-1)).tril(-1);
  at::Tensor rhs = at::cat({kc * (bc * G.exp()).unsqueeze(-1), vc * bc.unsqueeze(-1)}, -1);
  at::Tensor solved = at::linalg_solve_triangular(L, rhs, /*upper=*/false, /*left=*/true, /*unitriangular=*/true);
  // Chunk-major copies so the per-chunk slices in the state loop are contiguous.
  at::Tensor W = solved.narrow(-1, 0, in.Dk).permute({2, 0, 1, 3, 4}).contiguous();      // [N, B, H, C, Dk]
  at::Tensor U = solved.narrow(-1, in.Dk, in.Dv).permute({2, 0, 1, 3, 4}).contiguous();  // [N, B, H, C, Dv]
  at::Tensor k_dec_t =
      (kc * (G_last.unsqueeze(-1) - G).exp().unsqueeze(-1)).permute({2, 0, 1, 4, 3}).contiguous();  // [N, B, H, Dk, C]
  at::Tensor state_decay = G_last.exp().permute({2, 0, 1}).unsqueeze(-1).unsqueeze(-1);             // [N, B, H, 1, 1]

  const std::vector<at::Tensor> Ws = W.unbind(0), Us = U.unbind(0), ks_dec_t = k_dec_t.unbind(0),
                                decays = state_decay.unbind(0);
  std::vector<at::Tensor> before, corrected;
  before.reserve(Ws.size());
  corrected.reserve(Ws.size());
  at::Tensor S = in.state;
  for (size_t n = 0; n < Ws.size(); ++n) {
    before.push_back(S);
    at::Tensor u = Us[n] - at::matmul(Ws[n], S);
    corrected.push_back(u);
    S = decays[n] * S + at::matmul(ks_dec_t[n], u);
  }
  // o_i = exp(G_i) S0^T q_i + sum_{j<=i} exp(G_i - G_j) (q_i . k_j) u_j.
  at::Tensor scores = at::matmul(qc, kc.transpose(-1, -2)) * decay;
  at::Tensor q_dec = qc * G.exp().unsqueeze(-1);
  at::Tensor out = at::matmul(q_dec, at::stack(before, 2)) + at::matmul(scores, at::stack(corrected, 2));
  return {FromChunks(out, in.T).to(in.out_dtype), S};
}

LinearAttentionResult GatedDeltaRuleRecurrentReference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& g, const at::Tensor& beta,
                                                       const at::Tensor& initial_state) {
  const Inputs in = Prepare("GatedDeltaRuleRecurrent", q, k, v, g, &beta, initial_state);
  if (in.T == 0) return EmptyResult(in);
  at::Tensor decay = in.g.exp().unsqueeze(-1).unsqueeze(-1);  // [B, H, T, 1, 1]
  at::Tensor b = in.beta.unsqueeze(-1).unsqueeze(-1);         // [B, H, T, 1, 1]
  const std::vector<at::Tensor> qs = in.q.unbind(2), ks = in.k.unbind(2), vs = in.v.unbind(2), decays = decay.unbind(2),
                                betas = b.unbind(2);
  std::vector<at::Tensor> outs;
  outs.reserve(in.T);
  at::Tensor S = in.state;
  for (int64_t t = 0; t < in.T; ++t) {
    at::Tensor k_row = ks[t].unsqueeze(-2);  // [B, H, 1, Dk]
    S = decays[t] * S;
    at::Tensor u = betas[t] * (vs[t].unsqueeze(-2) - at::matmul(k_row, S));  // [B, H, 1, Dv]
    S = S + k_row.transpose(-1, -2) * u;
    outs.push_back(at::matmul(qs[t].unsqueeze(-2), S).squeeze(-2));
  }
  return {at::stack(outs, 2).to(in.out_dtype), S};
}

// Dispatch: the CUDA kernels for supported CUDA inputs (validated here first), the references elsewhere.
namespace {

[[maybe_unused]] bool NeedsGrad(std::initializer_list<const at::Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts) {
    if (t != nullptr && t->defined() && t->requires_grad()) return true;
  }
  return false;
}

}  // namespace

LinearAttentionResult GatedLinearAttentionChunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& g, const at::Tensor& initial_state,
                                                  int64_t chunk_size) {
#ifdef FLASHMORPH_CUDA
  Inputs in;
  Validate("GatedLinearAttentionChunked", q, k, v, g, nullptr, initial_state, in);
  TORCH_CHECK(chunk_size >= 1, "GatedLinearAttentionChunked: chunk_size must be >= 1, got ", chunk_size);
  if (LinearAttentionCudaSupports(q, k, v)) return GatedLinearAttentionCuda(q, k, v, g, initial_state);
#endif
  return GatedLinearAttentionChunkedReference(q, k, v, g, initial_state, chunk_size);
}

LinearAttentionResult GatedLinearAttentionRecurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    const at::Tensor& g, const at::Tensor& initial_state) {
#ifdef FLASHMORPH_CUDA
  Inputs in;
  Validate("GatedLinearAttentionRecurrent", q, k, v, g, nullptr, initial_state, in);
  if (in.T > 0 && RecurrentCudaSupports(q, k, v) && !NeedsGrad({&q, &k, &v, &g, &initial_state})) {
    return GatedLinearAttentionRecurrentCuda(q, k, v, g, initial_state);
  }
#endif
  return GatedLinearAttentionRecurrentReference(q, k, v, g, initial_state);
}

LinearAttentionResult GatedDeltaRuleChunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& g, const at::Tensor& beta,
                                            const at::Tensor& initial_state, int64_t chunk_size) {
#ifdef FLASHMORPH_CUDA
  Inputs in;
  Validate("GatedDeltaRuleChunked", q, k, v, g, &beta, initial_state, in);
  TORCH_CHECK(chunk_size >= 1, "GatedDeltaRuleChunked: chunk_size must be >= 1, got ", chunk_size);
  if (LinearAttentionCudaSupports(q, k, v)) return GatedDeltaRuleCuda(q, k, v, g, beta, initial_state);
#endif
  return GatedDeltaRuleChunkedReference(q, k, v, g, beta, initial_state, chunk_size);
}

LinearAttentionResult GatedDeltaRuleRecurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const at::Tensor& g, const at::Tensor& beta,
                                              const at::Tensor& initial_state) {
#ifdef FLASHMORPH_CUDA
  Inputs in;
  Validate("GatedDeltaRuleRecurrent", q, k, v, g, &beta, initial_state, in);
  if (in.T > 0 && RecurrentCudaSupports(q, k, v) && !NeedsGrad({&q, &k, &v, &g, &beta, &initial_state})) {
    return GatedDeltaRuleRecurrentCuda(q, k, v, g, beta, initial_state);
  }
#endif
  return GatedDeltaRuleRecurrentReference(q, k, v, g, beta, initial_state);
}

}  // namespace fm::kernels
