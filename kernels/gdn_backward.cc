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

#ifdef FLASHMORPH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/linear_attention_launch.h"
#endif

namespace fm::kernels {

using chunking::FromChunks;
using chunking::PairwiseDecay;
using chunking::ToChunks;

namespace {

// The two sequential passes as CUDA kernels (kernels/cuda/gdn_recurrence.cu) for fp32 CUDA operands; false (and
// nothing computed) elsewhere, so the caller runs its ATen loops.
bool ChunkRecurrencesOnGpu(const at::Tensor& W, const at::Tensor& Kt, const at::Tensor& U, const at::Tensor& AtdO,
                           const at::Tensor& Qt, const at::Tensor& dout, const at::Tensor& gam, const at::Tensor& S0,
                           at::Tensor& dS, at::Tensor& Sn, at::Tensor& u, at::Tensor& dSp, at::Tensor& du) {
#ifdef FLASHMORPH_CUDA
  if (!W.is_cuda() || W.scalar_type() != at::kFloat) return false;
  const int64_t B = W.size(0), H = W.size(1), N = W.size(2), C = W.size(3), Dk = W.size(4), Dv = U.size(4);
  if (!cuda::GdnChunkRecurrenceSupported(static_cast<int>(C), static_cast<int>(Dk))) return false;
  // One block per (batch*head, 16 value columns), one resident per SM: past two waves of blocks the batched ATen
  // matmuls per chunk are faster (H200, 2026-11-28: B=1 H=16 T=32K 104 -> 46 ms fwd+bwd with the kernels, but
  // B=8 T=4K 29 -> 41 ms; docs/PERFORMANCE.md).
  const int64_t blocks = B * H * ((Dv + 15) / 16);
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, W.device().index()) != cudaSuccess) return false;
  if (blocks > 2 * static_cast<int64_t>(sms)) return false;
  const c10::cuda::CUDAGuard guard(W.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  auto c = [](const at::Tensor& t) { return t.contiguous(); };
  const at::Tensor w = c(W), kt = c(Kt), uu = c(U), atdo = c(AtdO), qt = c(Qt), dO = c(dout), g = c(gam), s0 = c(S0),
                   ds_final = c(dS);
  Sn = at::empty({B, H, N, Dk, Dv}, w.options());
  u = at::empty({B, H, N, C, Dv}, w.options());
  dSp = at::empty_like(Sn);
  du = at::empty_like(u);
  at::Tensor s_last = at::empty({B, H, Dk, Dv}, w.options()), ds_first = at::empty_like(s_last);
  const int BH = static_cast<int>(B * H);
  cudaError_t err = cuda::LaunchGdnChunkRecurrence(
      BH, static_cast<int>(N), static_cast<int>(C), static_cast<int>(Dk), static_cast<int>(Dv), /*reverse=*/false,
      w.data_ptr<float>(), kt.data_ptr<float>(), uu.data_ptr<float>(), nullptr, nullptr, g.data_ptr<float>(),
      s0.data_ptr<float>(), Sn.data_ptr<float>(), u.data_ptr<float>(), s_last.data_ptr<float>(), stream);
  TORCH_CHECK(err == cudaSuccess, "gated delta rule backward, forward pass: ", cudaGetErrorString(err));
  err = cuda::LaunchGdnChunkRecurrence(BH, static_cast<int>(N), static_cast<int>(C), static_cast<int>(Dk),
                                       static_cast<int>(Dv), /*reverse=*/true, kt.data_ptr<float>(),
                                       w.data_ptr<float>(), atdo.data_ptr<float>(), qt.data_ptr<float>(),
                                       dO.data_ptr<float>(), g.data_ptr<float>(), ds_final.data_ptr<float>(),
                                       dSp.data_ptr<float>(), du.data_ptr<float>(), ds_first.data_ptr<float>(), stream);
  TORCH_CHECK(err == cudaSuccess, "gated delta rule backward, reverse pass: ", cudaGetErrorString(err));
  dS = ds_first;
  return true;
#else
  (void)W, (void)Kt, (void)U, (void)AtdO, (void)Qt, (void)dout, (void)gam, (void)S0, (void)dS, (void)Sn, (void)u,
      (void)dSp, (void)du;
  return false;
#endif
}

}  // namespace

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

  at::Tensor AtdO = at::matmul(A.transpose(-1, -2), dout);
  at::Tensor S0 = initial_state.defined() ? initial_state.to(dt) : at::zeros({B, H, Dk, Dv}, opt);
  at::Tensor dS = grad_final_state.defined() ? grad_final_state.to(dt) : at::zeros({B, H, Dk, Dv}, opt);
  at::Tensor Sn, u, dSp, du;  // [B, H, N, Dk, Dv], [B, H, N, C, Dv], [B, H, N, Dk, Dv], [B, H, N, C, Dv]
  if (!ChunkRecurrencesOnGpu(W, Kt, U, AtdO, Qt, dout, gam, S0, dS, Sn, u, dSp, du)) {
    // Forward states and corrected values.
    std::vector<at::Tensor> S_list, u_list;
    at::Tensor S = S0;
    for (int64_t n = 0; n < N; ++n) {
      S_list.push_back(S);
      at::Tensor un = U.select(2, n) - at::matmul(W.select(2, n), S);
      u_list.push_back(un);
      S = gam.select(2, n).unsqueeze(-1).unsqueeze(-1).exp() * S + at::matmul(Kt.select(2, n).transpose(-1, -2), un);
    }
    Sn = at::stack(S_list, 2), u = at::stack(u_list, 2);
    // Reverse scan of the state gradients.
    std::vector<at::Tensor> dSp_list(N), du_list(N);
    for (int64_t n = N - 1; n >= 0; --n) {
      dSp_list[n] = dS;
      at::Tensor dun = AtdO.select(2, n) + at::matmul(Kt.select(2, n), dS);
      du_list[n] = dun;
      dS = gam.select(2, n).unsqueeze(-1).unsqueeze(-1).exp() * dS +
           at::matmul(Qt.select(2, n).transpose(-1, -2), dout.select(2, n)) -
           at::matmul(W.select(2, n).transpose(-1, -2), dun);
    }
    dSp = at::stack(dSp_list, 2), du = at::stack(du_list, 2);
  }

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
