// Chunked gated-delta-rule backward. Per chunk (C steps, entering state S, G = in-chunk cumulative log decay,
// γ = G_last, M_ij = exp(G_i − G_j) for j <= i):
//   L = diag(β) (K Kᵀ ⊙ M_strict), T = (I + L)⁻¹, B_k = diag(β e^G) K, B_v = diag(β) V, W = T B_k, U = T B_v,
//   u = U − W S,  O = diag(e^G) Q S + (Q Kᵀ ⊙ M) u,  S⁺ = e^γ S + (diag(e^{γ−G}) K)ᵀ u.
// Reverse scan over chunks (dS⁺ = gradient of the state leaving the chunk):
//   du = (Q Kᵀ ⊙ M)ᵀ dO + diag(e^{γ−G}) K dS⁺,  dS = e^γ dS⁺ + (diag(e^G) Q)ᵀ dO − Wᵀ du.
// Then every chunk in parallel: dW = −du Sᵀ, dU = du, dB = Tᵀ dW / Tᵀ dU, dT = dW B_kᵀ + dU B_vᵀ,
// dL = −Tᵀ dT Tᵀ (strictly lower), and the chain through L, B_k, B_v, M and the decays. G depends only on its own
// chunk's g (the states carry the rest), so dg is the in-chunk reverse cumulative sum of dG.
#include "kernels/gdn_backward.h"

#include <algorithm>
#include <vector>

#include <ATen/ATen.h>

#include "kernels/chunk_layout.h"

namespace fm::kernels {

using chunking::FromChunks;
using chunking::PairwiseDecay;
using chunking::ToChunks;

GatedDeltaRuleGrads GatedDeltaRuleChunkedBackward(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& v_in, const at::Tensor& g_in,
                                                  const at::Tensor& beta_in, const at::Tensor& initial_state,
                                                  const at::Tensor& grad_output, const at::Tensor& grad_final_state,
                                                  int64_t chunk_size) {
  TORCH_CHECK(chunk_size >= 1, "GatedDeltaRuleChunkedBackward: chunk_size must be >= 1");
  const at::ScalarType dt = q_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), Dk = q_in.size(3), Dv = v_in.size(3);
  const at::TensorOptions opt = q_in.options().dtype(dt);
  if (T == 0) {
    return {at::zeros_like(q_in, opt),
            at::zeros_like(k_in, opt),
            at::zeros_like(v_in, opt),
            at::zeros_like(g_in, opt),
            at::zeros_like(beta_in, opt),
            grad_final_state.defined() ? grad_final_state.to(dt) : at::zeros({B, H, Dk, Dv}, opt)};
  }
  const int64_t C = std::min(chunk_size, T);

  at::Tensor q = ToChunks(q_in.to(dt), C), k = ToChunks(k_in.to(dt), C), v = ToChunks(v_in.to(dt), C);
  at::Tensor beta = ToChunks(beta_in.to(dt), C);  // [B, H, N, C]
  at::Tensor G = ToChunks(g_in.to(dt), C).cumsum(3);
  at::Tensor gam = G.select(3, C - 1);  // [B, H, N]
  const int64_t N = q.size(2);
  at::Tensor dout = grad_output.defined() ? ToChunks(grad_output.to(dt), C) : at::zeros({B, H, N, C, Dv}, opt);

  at::Tensor M = PairwiseDecay(G);                                      // [B, H, N, C, C], j <= i
  at::Tensor strict = at::ones({C, C}, opt.dtype(at::kBool)).tril(-1);  // j < i
  at::Tensor Ms = M * strict;                                           // j < i
  at::Tensor eG = G.exp(), eKt = (gam.unsqueeze(-1) - G).exp();         // [B, H, N, C]
  at::Tensor KK = at::matmul(k, k.transpose(-1, -2));
  at::Tensor L = beta.unsqueeze(-1) * KK * Ms;
  at::Tensor eye = at::eye(C, opt);
  at::Tensor Tinv = at::linalg_solve_triangular(eye + L, eye.expand_as(L), /*upper=*/false, /*left=*/true,
                                                /*unitriangular=*/true);
  at::Tensor Bk = k * (beta * eG).unsqueeze(-1), Bv = v * beta.unsqueeze(-1);
  at::Tensor W = at::matmul(Tinv, Bk), U = at::matmul(Tinv, Bv);
  at::Tensor Kt = k * eKt.unsqueeze(-1), Qt = q * eG.unsqueeze(-1);
  at::Tensor QK = at::matmul(q, k.transpose(-1, -2));
  at::Tensor A = QK * M;

  // Forward states and corrected values.
  std::vector<at::Tensor> S_list, u_list;
  at::Tensor S = initial_state.defined() ? initial_state.to(dt) : at::zeros({B, H, Dk, Dv}, opt);
  for (int64_t n = 0; n < N; ++n) {
    S_list.push_back(S);
    at::Tensor u = U.select(2, n) - at::matmul(W.select(2, n), S);
    u_list.push_back(u);
    S = gam.select(2, n).unsqueeze(-1).unsqueeze(-1).exp() * S + at::matmul(Kt.select(2, n).transpose(-1, -2), u);
  }
  at::Tensor Sn = at::stack(S_list, 2), u = at::stack(u_list, 2);  // [B, H, N, Dk, Dv], [B, H, N, C, Dv]

  // Reverse scan of the state gradients.
  at::Tensor AtdO = at::matmul(A.transpose(-1, -2), dout);
  std::vector<at::Tensor> dSp_list(N), du_list(N);
  at::Tensor dS = grad_final_state.defined() ? grad_final_state.to(dt) : at::zeros({B, H, Dk, Dv}, opt);
  for (int64_t n = N - 1; n >= 0; --n) {
    dSp_list[n] = dS;
    at::Tensor du = AtdO.select(2, n) + at::matmul(Kt.select(2, n), dS);
    du_list[n] = du;
    dS = gam.select(2, n).unsqueeze(-1).unsqueeze(-1).exp() * dS +
         at::matmul(Qt.select(2, n).transpose(-1, -2), dout.select(2, n)) -
         at::matmul(W.select(2, n).transpose(-1, -2), du);
  }
  at::Tensor dSp = at::stack(dSp_list, 2), du = at::stack(du_list, 2);

  // Per chunk, in parallel.
  at::Tensor dOSt = at::matmul(dout, Sn.transpose(-1, -2));   // [.., C, Dk]
  at::Tensor dP = at::matmul(dout, u.transpose(-1, -2)) * M;  // gradient of (q_i . k_j), j <= i
  at::Tensor dKt = at::matmul(u, dSp.transpose(-1, -2));      // gradient of k exp(γ − G)
  at::Tensor dW = -at::matmul(du, Sn.transpose(-1, -2));
  at::Tensor TinvT = Tinv.transpose(-1, -2);
  at::Tensor dBk = at::matmul(TinvT, dW), dBv = at::matmul(TinvT, du);
  at::Tensor dTm = at::matmul(dW, Bk.transpose(-1, -2)) + at::matmul(du, Bv.transpose(-1, -2));
  at::Tensor dL = -at::matmul(at::matmul(TinvT, dTm), TinvT) * strict;
  at::Tensor dKK = beta.unsqueeze(-1) * dL * Ms;

  at::Tensor dq = eG.unsqueeze(-1) * dOSt + at::matmul(dP, k);
  at::Tensor dk = at::matmul(dP.transpose(-1, -2), q) + eKt.unsqueeze(-1) * dKt +
                  at::matmul(dKK + dKK.transpose(-1, -2), k) + (beta * eG).unsqueeze(-1) * dBk;
  at::Tensor dv = beta.unsqueeze(-1) * dBv;
  at::Tensor dbeta = (dL * KK * Ms).sum(-1) + eG * (k * dBk).sum(-1) + (v * dBv).sum(-1);

  at::Tensor dAA = dP * QK, dLL = dL * L;
  at::Tensor dG = (Qt * dOSt).sum(-1) + dAA.sum(-1) - dAA.sum(-2) - (Kt * dKt).sum(-1) + dLL.sum(-1) - dLL.sum(-2) +
                  (Bk * dBk).sum(-1);
  at::Tensor dgam = (Kt * dKt).sum({-2, -1}) + gam.exp() * (Sn * dSp).sum({-2, -1});  // [B, H, N]
  dG.select(3, C - 1).add_(dgam);
  at::Tensor dg = dG.flip(3).cumsum(3).flip(3);  // in-chunk reverse cumulative sum

  GatedDeltaRuleGrads r;
  r.dq = FromChunks(dq, T);
  r.dk = FromChunks(dk, T);
  r.dv = FromChunks(dv, T);
  r.dg = FromChunks(dg.unsqueeze(-1), T).squeeze(-1);
  r.dbeta = FromChunks(dbeta.unsqueeze(-1), T).squeeze(-1);
  r.dinitial_state = dS;
  return r;
}

}  // namespace fm::kernels
