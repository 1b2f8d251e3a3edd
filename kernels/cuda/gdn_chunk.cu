// Chunked gated delta rule on sm_90 (math: docs/ENGINE.md §1; reference: GatedDeltaRuleChunkedReference in
// kernels/linear_attention.cc). Chunks of 64 steps with a scalar log decay per step.
//   GdnPrepare    parallel over (chunk, batch*head): T = (I + L)^-1 with L_ij = beta_i exp(G_i - G_j) k_i.k_j (j < i),
//                 inverted blockwise in fp32 (16x16 diagonal blocks by forward substitution, then the blocks below
//                 the diagonal level by level); W = T diag(beta exp(G)) K, U = T diag(beta) V.
//   GdnStateScan  sequential over chunks, parallel over (batch*head, 16-column slices of the state): the corrected
//                 values u = U - W S, then S <- exp(G_last) S + (k exp(G_last - G))^T u.
// The output is the scalar-decay GLA output kernel with v replaced by the corrected values.
#include "kernels/cuda/linear_attention_launch.h"
#include "kernels/cuda/smem.cuh"
#include "kernels/cuda/tiles.cuh"
#include "kernels/cuda/wmma_gemm.cuh"

namespace fm::kernels::cuda {
namespace {

constexpr int C = kChunkScalarDecay;
constexpr int kBlk = 16;  // block size of the triangular inversion
constexpr int kSlice = 16;

template <int DK, int DV>
struct PrepLayout {
  static constexpr int LDK = DK + kPadBf16, LDV = DV + kPadBf16, LDA = C + kPadF32, LDAB = C + kPadBf16;
  static constexpr int LDW = (DK > DV ? DK : DV) + kPadF32;
  static size_t Bytes() {
    SmemSize s;
    s.Take<bf16>(C * LDK);
    s.Take<bf16>(C * LDV);
    s.Take<float>(C);
    s.Take<float>(C);
    s.Take<float>(C * LDA);  // L
    s.Take<float>(C * LDA);  // X = (I + L)^-1
    s.Take<float>(3 * kBlk * kBlk);
    s.Take<bf16>(C * LDAB);
    s.Take<float>(C * LDW);
    return s.used;
  }
};

template <int DK, int DV>
__global__ void __launch_bounds__(256)
    GdnPrepareKernel(const bf16* __restrict__ k, const bf16* __restrict__ v, const float* __restrict__ g,
                     const float* __restrict__ beta, bf16* __restrict__ w, bf16* __restrict__ u, int T) {
  using Lt = PrepLayout<DK, DV>;
  SmemCarver sc{DynamicSmem()};
  bf16* K = sc.Take<bf16>(C * Lt::LDK);
  bf16* V = sc.Take<bf16>(C * Lt::LDV);
  float* G = sc.Take<float>(C);
  float* B = sc.Take<float>(C);
  float* L = sc.Take<float>(C * Lt::LDA);
  float* X = sc.Take<float>(C * Lt::LDA);
  float* Y = sc.Take<float>(3 * kBlk * kBlk);
  bf16* Xb = sc.Take<bf16>(C * Lt::LDAB);
  float* O = sc.Take<float>(C * Lt::LDW);

  const int n = blockIdx.x, bh = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(bh) * T + static_cast<int64_t>(n) * C;
  AsyncCopyRows(K, Lt::LDK, k + row0 * DK, DK, C, DK);
  AsyncCopyRows(V, Lt::LDV, v + row0 * DV, DV, C, DV);
  AsyncCopyRowsF32(G, C, g + row0, C, 1, C);
  AsyncCopyRowsF32(B, C, beta + row0, C, 1, C);
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncthreads();
  ChunkCumsumScalar<C>(G);
  BlockGemm<false, true>(K, Lt::LDK, K, Lt::LDK, L, Lt::LDA, C, C, DK, false);
  __syncthreads();
  for (int e = threadIdx.x; e < C * C; e += blockDim.x) {
    const int i = e / C, j = e % C;
    L[i * Lt::LDA + j] = j < i ? B[i] * __expf(G[i] - G[j]) * L[i * Lt::LDA + j] : 0.f;
    X[i * Lt::LDA + j] = 0.f;
  }
  __syncthreads();
  // Diagonal blocks: one thread per (block, column), forward substitution down the column.
  if (threadIdx.x < C) {
    const int b0 = (threadIdx.x / kBlk) * kBlk, c = b0 + threadIdx.x % kBlk;
    X[c * Lt::LDA + c] = 1.f;
    for (int r = c + 1; r < b0 + kBlk; ++r) {
      float s = 0.f;
      for (int m = c; m < r; ++m) s -= L[r * Lt::LDA + m] * X[m * Lt::LDA + c];
      X[r * Lt::LDA + c] = s;
    }
  }
  __syncthreads();
  // Below the diagonal, level by level: X_ij = -X_ii * sum_{m=j}^{i-1} L_im X_mj.
  constexpr int nb = C / kBlk;
  for (int s = 1; s < nb; ++s) {
    const int blocks = nb - s;
    for (int e = threadIdx.x; e < blocks * kBlk * kBlk; e += blockDim.x) {
      const int bj = e / (kBlk * kBlk), r = (e / kBlk) % kBlk, c = e % kBlk, bi = bj + s;
      float acc = 0.f;
      for (int m = bj * kBlk; m < bi * kBlk; ++m) {
        acc += L[(bi * kBlk + r) * Lt::LDA + m] * X[m * Lt::LDA + bj * kBlk + c];
      }
      Y[e] = acc;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < blocks * kBlk * kBlk; e += blockDim.x) {
      const int bj = e / (kBlk * kBlk), r = (e / kBlk) % kBlk, c = e % kBlk, bi = bj + s;
      float acc = 0.f;
      for (int m = 0; m < kBlk; ++m) {
        acc += X[(bi * kBlk + r) * Lt::LDA + bi * kBlk + m] * Y[bj * kBlk * kBlk + m * kBlk + c];
      }
      X[(bi * kBlk + r) * Lt::LDA + bj * kBlk + c] = -acc;
    }
    __syncthreads();
  }
  for (int e = threadIdx.x; e < C * C; e += blockDim.x) {
    const int i = e / C, j = e % C;
    Xb[i * Lt::LDAB + j] = ToBf(X[i * Lt::LDA + j]);
  }
  for (int e = threadIdx.x; e < C * DK; e += blockDim.x) {
    const int i = e / DK, d = e % DK;
    K[i * Lt::LDK + d] = ToBf(ToF(K[i * Lt::LDK + d]) * B[i] * __expf(G[i]));
  }
  for (int e = threadIdx.x; e < C * DV; e += blockDim.x) {
    const int i = e / DV, d = e % DV;
    V[i * Lt::LDV + d] = ToBf(ToF(V[i * Lt::LDV + d]) * B[i]);
  }
  __syncthreads();
  BlockGemm<false, false>(Xb, Lt::LDAB, K, Lt::LDK, O, Lt::LDW, C, DK, C, false);
  __syncthreads();
  StoreRowsBf16(w + row0 * DK, DK, O, Lt::LDW, C, DK);
  __syncthreads();
  BlockGemm<false, false>(Xb, Lt::LDAB, V, Lt::LDV, O, Lt::LDW, C, DV, C, false);
  __syncthreads();
  StoreRowsBf16(u + row0 * DV, DV, O, Lt::LDW, C, DV);
}

template <int DK>
struct GdnScanLayout {
  static constexpr int LDK = DK + kPadBf16, LDB = kSlice + kPadBf16, LDS = kSlice + kPadF32;
  static size_t Bytes() {
    SmemSize s;
    for (int b = 0; b < 2; ++b) {
      s.Take<bf16>(C * LDK);  // k
      s.Take<bf16>(C * LDK);  // w
      s.Take<bf16>(C * LDB);  // u slice
      s.Take<float>(C);       // g
    }
    s.Take<bf16>(DK * LDB);   // S in bf16
    s.Take<float>(C * LDS);   // W S
    s.Take<bf16>(C * LDB);    // corrected slice
    s.Take<bf16>(C * LDK);    // k exp(G_last - G)
    s.Take<float>(DK * LDS);  // S
    return s.used;
  }
};

template <int DK>
__global__ void __launch_bounds__(128)
    GdnStateScanKernel(const bf16* __restrict__ k, const bf16* __restrict__ w, const bf16* __restrict__ u,
                       const float* __restrict__ g, const float* __restrict__ s_in, bf16* __restrict__ states,
                       bf16* __restrict__ corrected, float* __restrict__ s_out, int T, int DV) {
  using Lt = GdnScanLayout<DK>;
  SmemCarver sc{DynamicSmem()};
  bf16 *Kr[2], *Wr[2], *Ur[2];
  float* Gr[2];
  for (int b = 0; b < 2; ++b) {
    Kr[b] = sc.Take<bf16>(C * Lt::LDK);
    Wr[b] = sc.Take<bf16>(C * Lt::LDK);
    Ur[b] = sc.Take<bf16>(C * Lt::LDB);
    Gr[b] = sc.Take<float>(C);
  }
  bf16* Sb = sc.Take<bf16>(DK * Lt::LDB);
  float* WS = sc.Take<float>(C * Lt::LDS);
  bf16* ub = sc.Take<bf16>(C * Lt::LDB);
  bf16* Kt = sc.Take<bf16>(C * Lt::LDK);
  float* S = sc.Take<float>(DK * Lt::LDS);

  const int bh = blockIdx.y, v0 = blockIdx.x * kSlice, N = T / C;
  const int64_t base = static_cast<int64_t>(bh) * T;
  for (int e = threadIdx.x; e < DK * kSlice; e += blockDim.x) {
    const int d = e / kSlice, j = e % kSlice;
    S[d * Lt::LDS + j] = s_in ? s_in[(static_cast<int64_t>(bh) * DK + d) * DV + v0 + j] : 0.f;
  }
  auto issue = [&](int n, int buf) {
    const int64_t t0 = base + static_cast<int64_t>(n) * C;
    AsyncCopyRows((buf ? Kr[1] : Kr[0]), Lt::LDK, k + t0 * DK, DK, C, DK);
    AsyncCopyRows((buf ? Wr[1] : Wr[0]), Lt::LDK, w + t0 * DK, DK, C, DK);
    AsyncCopyRows((buf ? Ur[1] : Ur[0]), Lt::LDB, u + t0 * DV + v0, DV, C, kSlice);
    AsyncCopyRowsF32((buf ? Gr[1] : Gr[0]), C, g + t0, C, 1, C);
  };
  issue(0, 0);
  __pipeline_commit();
  for (int n = 0; n < N; ++n) {
    const int buf = n & 1;
    if (n + 1 < N) issue(n + 1, buf ^ 1);
    __pipeline_commit();
    __pipeline_wait_prior(1);
    __syncthreads();
    bf16* out = states + ((static_cast<int64_t>(bh) * N + n) * DK) * DV + v0;
    for (int e = threadIdx.x; e < DK * kSlice; e += blockDim.x) {
      const int d = e / kSlice, j = e % kSlice;
      const bf16 s = ToBf(S[d * Lt::LDS + j]);
      out[static_cast<int64_t>(d) * DV + j] = s;
      Sb[d * Lt::LDB + j] = s;
    }
    // Constant indices only (buf ? x[1] : x[0]): a dynamically indexed pointer array would live in local memory.
    float* G = buf ? Gr[1] : Gr[0];
    ChunkCumsumScalar<C>(G);
    __syncthreads();
    BlockGemm<false, false>((buf ? Wr[1] : Wr[0]), Lt::LDK, Sb, Lt::LDB, WS, Lt::LDS, C, kSlice, DK, false);
    const float gl = G[C - 1];
    const bf16* Kc = buf ? Kr[1] : Kr[0];
    for (int e = threadIdx.x; e < C * DK; e += blockDim.x) {
      const int i = e / DK, d = e % DK;
      Kt[i * Lt::LDK + d] = ToBf(ToF(Kc[i * Lt::LDK + d]) * __expf(gl - G[i]));
    }
    __syncthreads();
    bf16* corr = corrected + (base + static_cast<int64_t>(n) * C) * DV + v0;
    for (int e = threadIdx.x; e < C * kSlice; e += blockDim.x) {
      const int i = e / kSlice, j = e % kSlice;
      const bf16 val = ToBf(ToF((buf ? Ur[1] : Ur[0])[i * Lt::LDB + j]) - WS[i * Lt::LDS + j]);
      ub[i * Lt::LDB + j] = val;
      corr[static_cast<int64_t>(i) * DV + j] = val;
    }
    const float decay = __expf(gl);
    for (int e = threadIdx.x; e < DK * kSlice; e += blockDim.x) S[(e / kSlice) * Lt::LDS + e % kSlice] *= decay;
    __syncthreads();
    BlockGemm<true, false>(Kt, Lt::LDK, ub, Lt::LDB, S, Lt::LDS, DK, kSlice, C, true);
    __syncthreads();
  }
  if (s_out) {
    for (int e = threadIdx.x; e < DK * kSlice; e += blockDim.x) {
      const int d = e / kSlice, j = e % kSlice;
      s_out[(static_cast<int64_t>(bh) * DK + d) * DV + v0 + j] = S[d * Lt::LDS + j];
    }
  }
}

bool Valid(const ChunkProblem& p) {
  return !p.per_channel && (p.DK == 64 || p.DK == 128) && (p.DV == 64 || p.DV == 128) && p.T % C == 0;
}

}  // namespace

cudaError_t LaunchGdnPrepare(const ChunkProblem& p, const bf16* k, const bf16* v, const float* g, const float* beta,
                             bf16* w, bf16* u, cudaStream_t stream) {
  if (!Valid(p)) return cudaErrorInvalidValue;
  const dim3 grid(p.T / C, p.BH);
#define FM_PREP(DK, DV) \
  Launch(GdnPrepareKernel<DK, DV>, grid, 256, PrepLayout<DK, DV>::Bytes(), stream, k, v, g, beta, w, u, p.T)
  if (p.DK == 64) return p.DV == 64 ? FM_PREP(64, 64) : FM_PREP(64, 128);
  return p.DV == 64 ? FM_PREP(128, 64) : FM_PREP(128, 128);
#undef FM_PREP
}

cudaError_t LaunchGdnStateScan(const ChunkProblem& p, const bf16* k, const bf16* w, const bf16* u, const float* g,
                               const float* initial_state, bf16* chunk_states, bf16* corrected, float* final_state,
                               cudaStream_t stream) {
  if (!Valid(p)) return cudaErrorInvalidValue;
  const dim3 grid(p.DV / kSlice, p.BH);
  if (p.DK == 64) {
    return Launch(GdnStateScanKernel<64>, grid, 128, GdnScanLayout<64>::Bytes(), stream, k, w, u, g, initial_state,
                  chunk_states, corrected, final_state, p.T, p.DV);
  }
  return Launch(GdnStateScanKernel<128>, grid, 128, GdnScanLayout<128>::Bytes(), stream, k, w, u, g, initial_state,
                chunk_states, corrected, final_state, p.T, p.DV);
}

}  // namespace fm::kernels::cuda
