// Chunked gated linear attention on sm_90 (math: docs/ENGINE.md §1; reference: kernels/linear_attention.cc).
// Kernels:
//   GlaChunkUpdate + StateCombine  the state pass in two phases (the default): every chunk's own contribution at once,
//                 then the elementwise recurrence over chunks; states at chunk boundaries stored in bf16. Run
//                 forwards (k, v) for states, backwards (q, do) for their gradients.
//   GlaStateScan  the same pass as one sequential kernel (kept for comparison): parallel over (batch*head, 16-column
//                 slices of the state), the fp32 state slice in shared memory, the next chunks prefetched with
//                 cp.async.
//   GlaOutput     parallel over (chunk, batch*head): intra-chunk scores + the entering state.
//   GlaGrad       parallel over (chunk, batch*head): dq, dk, dv and dgamma = q.dq - k.dk for dg.
// Inside a chunk, G is the cumulative log decay (<= 0, non-increasing). Only differences that are <= 0 are
// exponentiated. With a per-channel decay the pairwise factors exp(G_i - G_j) of the first and second 16-step
// sub-chunk factor through the last step r = 15 of the first one: exp(G_i - G_r) * exp(G_r - G_j), both <= 1;
// inside a sub-chunk they are formed exactly, pair by pair.
#include <algorithm>

#include "kernels/cuda/linear_attention_launch.h"
#include "kernels/cuda/smem.cuh"
#include "kernels/cuda/state_combine.cuh"
#include "kernels/cuda/tiles.cuh"
#include "kernels/cuda/wmma_gemm.cuh"

namespace fm::kernels::cuda {
namespace {

constexpr int kSub = 16;  // sub-chunk of the per-channel pairwise factors

// ---------------------------------------------------------------------------------------------------------------
// Decays of one chunk: async copy of its rows of g, then (after the wait) in-chunk cumulative sums in place.

template <int C, bool kPerChannel>
__device__ __forceinline__ void CopyDecays(float* G, int ldg, const float* g, int64_t row0, int dk) {
  if constexpr (kPerChannel) {
    AsyncCopyRowsF32(G, ldg, g + row0 * dk, dk, C, dk);
  } else {
    AsyncCopyRowsF32(G, C, g + row0, C, 1, C);
  }
}

template <int C, bool kPerChannel>
__device__ __forceinline__ void CumsumDecays(float* G, int ldg, int dk) {
  if constexpr (kPerChannel) {
    ChunkCumsumChannels<C>(G, ldg, dk);
  } else {
    ChunkCumsumScalar<C>(G);
  }
}

// Commits the block's pending copies, waits for all of them, then forms the cumulative decays. Ends synchronised.
template <int C, bool kPerChannel>
__device__ __forceinline__ void WaitAndCumsum(float* G, int ldg, int dk) {
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncthreads();
  CumsumDecays<C, kPerChannel>(G, ldg, dk);
  __syncthreads();
}

// ---------------------------------------------------------------------------------------------------------------
// State scan.

// Rows of the state are independent in this recurrence (row d only sees column d of the scaled keys), so a block
// owns a BK x BV tile of the state: (DK / BK) * (DV / BV) * BH blocks walk the chunks side by side. Each keeps its
// tile in shared memory (fp32) and prefetches kStages - 1 chunks ahead with cp.async.
constexpr int kScanRows = 32, kScanCols = 16, kScanStages = 4, kScanThreads = 64;

template <int C, int BK, int BV, bool kPerChannel>
struct ScanLayout {
  static constexpr int LDA = BK + kPadBf16, LDB = BV + kPadBf16, LDS = BV + kPadF32;
  static constexpr int LDG = kPerChannel ? BK + kPadF32 : C;  // scalar: one row of C decays
  static constexpr int GROWS = kPerChannel ? C : 1;
  // One pipeline stage: the chunk's rows of a, its slice of b, its decays.
  static constexpr size_t StageBytes() {
    SmemSize s;
    s.Take<bf16>(C * LDA);
    s.Take<bf16>(C * LDB);
    s.Take<float>(GROWS * LDG);
    return s.used;
  }
  static size_t Bytes() {
    SmemSize s;
    s.Take<char>(kScanStages * StageBytes());
    s.Take<bf16>(C * LDA);
    s.Take<float>(BK * LDS);
    return s.used;
  }
};

template <int C, int BK, int BV, bool kPerChannel, bool kReverse>
__global__ void __launch_bounds__(kScanThreads)
    GlaStateScanKernel(const bf16* __restrict__ rows_a, const bf16* __restrict__ rows_b, const float* __restrict__ g,
                       const float* __restrict__ s_in, bf16* __restrict__ states, float* __restrict__ s_out, int T,
                       int DK, int DV) {
  using L = ScanLayout<C, BK, BV, kPerChannel>;
  SmemCarver sc{DynamicSmem()};
  char* stages = sc.Take<char>(kScanStages * L::StageBytes());
  // Stage `buf`'s regions, computed (not indexed from an array, which would live in local memory).
  auto stage_a = [&](int buf) { return reinterpret_cast<bf16*>(stages + buf * L::StageBytes()); };
  auto stage_b = [&](int buf) {
    return reinterpret_cast<bf16*>(stages + buf * L::StageBytes() + (C * L::LDA * 2 + 127) / 128 * 128);
  };
  auto stage_g = [&](int buf) {
    return reinterpret_cast<float*>(stages + buf * L::StageBytes() + (C * L::LDA * 2 + 127) / 128 * 128 +
                                    (C * L::LDB * 2 + 127) / 128 * 128);
  };
  bf16* a_scaled = sc.Take<bf16>(C * L::LDA);
  float* S = sc.Take<float>(BK * L::LDS);

  const int bh = blockIdx.y, v0 = blockIdx.x * BV, k0 = blockIdx.z * BK, N = T / C;
  const bf16* a_base = rows_a + static_cast<int64_t>(bh) * T * DK + k0;
  const bf16* b_base = rows_b + static_cast<int64_t>(bh) * T * DV + v0;
  const float* g_base = g + static_cast<int64_t>(bh) * T * (kPerChannel ? DK : 1) + (kPerChannel ? k0 : 0);

  for (int e = threadIdx.x; e < BK * BV; e += blockDim.x) {
    const int d = e / BV, j = e % BV;
    S[d * L::LDS + j] = s_in ? s_in[(static_cast<int64_t>(bh) * DK + k0 + d) * DV + v0 + j] : 0.f;
  }
  auto issue = [&](int step) {
    const int buf = step % kScanStages;
    const int64_t t0 = static_cast<int64_t>(kReverse ? N - 1 - step : step) * C;
    AsyncCopyRows(stage_a(buf), L::LDA, a_base + t0 * DK, DK, C, BK);
    AsyncCopyRows(stage_b(buf), L::LDB, b_base + t0 * DV, DV, C, BV);
    if constexpr (kPerChannel) {
      AsyncCopyRowsF32(stage_g(buf), L::LDG, g_base + t0 * DK, DK, C, BK);  // this block's BK channels
    } else {
      CopyDecays<C, false>(stage_g(buf), C, g_base, t0, 1);
    }
  };
  for (int step = 0; step < kScanStages - 1; ++step) {
    if (step < N) issue(step);
    __pipeline_commit();
  }
  for (int step = 0; step < N; ++step) {
    const int buf = step % kScanStages, n = kReverse ? N - 1 - step : step;
    if (step + kScanStages - 1 < N) issue(step + kScanStages - 1);
    __pipeline_commit();
    __pipeline_wait_prior(kScanStages - 1);
    __syncthreads();

    bf16* out = states + ((static_cast<int64_t>(bh) * N + n) * DK + k0) * DV + v0;
    for (int e = threadIdx.x; e < BK * BV; e += blockDim.x) {
      const int d = e / BV, j = e % BV;
      out[static_cast<int64_t>(d) * DV + j] = ToBf(S[d * L::LDS + j]);
    }
    float* G = stage_g(buf);
    CumsumDecays<C, kPerChannel>(G, L::LDG, BK);
    __syncthreads();
    const bf16* a = stage_a(buf);
    for (int e = threadIdx.x; e < C * BK; e += blockDim.x) {
      const int i = e / BK, d = e % BK;
      const float gi = kPerChannel ? G[i * L::LDG + d] : G[i];
      const float gl = kPerChannel ? G[(C - 1) * L::LDG + d] : G[C - 1];
      const float f = kReverse ? __expf(gi) : __expf(gl - gi);
      a_scaled[i * L::LDA + d] = ToBf(ToF(a[i * L::LDA + d]) * f);
    }
    for (int e = threadIdx.x; e < BK * BV; e += blockDim.x) {
      const int d = e / BV, j = e % BV;
      const float gl = kPerChannel ? G[(C - 1) * L::LDG + d] : G[C - 1];
      S[d * L::LDS + j] *= __expf(gl);
    }
    __syncthreads();
    BlockGemm<true, false>(a_scaled, L::LDA, stage_b(buf), L::LDB, S, L::LDS, BK, BV, C, /*accumulate=*/true);
    __syncthreads();
  }
  if (s_out) {
    float* last = s_out + static_cast<int64_t>(bh) * DK * DV;
    for (int e = threadIdx.x; e < BK * BV; e += blockDim.x) {
      const int d = e / BV, j = e % BV;
      last[static_cast<int64_t>(k0 + d) * DV + v0 + j] = S[d * L::LDS + j];
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Two-phase state pass (the default): the sequential recurrence S <- exp(gamma_n) S + U_n is elementwise once every
// chunk's own contribution U_n = a_scaled^T b is known, so (1) GlaChunkUpdateKernel forms all U_n at once (tensor
// cores, parallel over chunks) in fp32 with each chunk's total log decay gamma_n, and (2) StateCombineKernel runs the
// recurrence with one thread per state element (coalesced, loads independent of the running state), storing the
// state before each chunk in bf16. Forward: a = k scaled by exp(G_last - G), b = v. Reverse: a = q scaled by
// exp(G), b = do, chunks last to first.

constexpr int kUpdRows = 64, kUpdThreads = 256;

template <int C, int DV, bool kPerChannel>
struct UpdateLayout {
  static constexpr int LDA = kUpdRows + kPadBf16, LDB = DV + kPadBf16, LDU = DV + kPadF32;
  static constexpr int LDG = kPerChannel ? kUpdRows + kPadF32 : C;
  static constexpr int GROWS = kPerChannel ? C : 1;
  static size_t Bytes() {
    SmemSize s;
    s.Take<bf16>(C * LDA);
    s.Take<bf16>(C * LDB);
    s.Take<float>(GROWS * LDG);
    s.Take<float>(kUpdRows * LDU);
    return s.used;
  }
};

// Grid (DK / 64, N, BH): a block forms the [64 x DV] rows k0.. of chunk n's U (and gamma).
template <int C, int DV, bool kPerChannel, bool kReverse>
__global__ void __launch_bounds__(kUpdThreads)
    GlaChunkUpdateKernel(const bf16* __restrict__ rows_a, const bf16* __restrict__ rows_b, const float* __restrict__ g,
                         float* __restrict__ updates, float* __restrict__ gamma, int T, int DK) {
  using L = UpdateLayout<C, DV, kPerChannel>;
  SmemCarver sc{DynamicSmem()};
  bf16* A = sc.Take<bf16>(C * L::LDA);
  bf16* B = sc.Take<bf16>(C * L::LDB);
  float* G = sc.Take<float>(L::GROWS * L::LDG);
  float* U = sc.Take<float>(kUpdRows * L::LDU);
  const int k0 = blockIdx.x * kUpdRows, n = blockIdx.y, bh = blockIdx.z, N = T / C;
  const int64_t t0 = static_cast<int64_t>(n) * C;
  AsyncCopyRows(A, L::LDA, rows_a + (static_cast<int64_t>(bh) * T + t0) * DK + k0, DK, C, kUpdRows);
  AsyncCopyRows(B, L::LDB, rows_b + (static_cast<int64_t>(bh) * T + t0) * DV, DV, C, DV);
  if constexpr (kPerChannel) {
    AsyncCopyRowsF32(G, L::LDG, g + (static_cast<int64_t>(bh) * T + t0) * DK + k0, DK, C, kUpdRows);
  } else {
    CopyDecays<C, false>(G, C, g + static_cast<int64_t>(bh) * T, t0, 1);
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncthreads();
  CumsumDecays<C, kPerChannel>(G, L::LDG, kUpdRows);
  __syncthreads();
  for (int e = threadIdx.x; e < C * kUpdRows; e += blockDim.x) {
    const int i = e / kUpdRows, d = e % kUpdRows;
    const float gi = kPerChannel ? G[i * L::LDG + d] : G[i];
    const float gl = kPerChannel ? G[(C - 1) * L::LDG + d] : G[C - 1];
    A[i * L::LDA + d] = ToBf(ToF(A[i * L::LDA + d]) * (kReverse ? __expf(gi) : __expf(gl - gi)));
  }
  __syncthreads();
  BlockGemm<true, false>(A, L::LDA, B, L::LDB, U, L::LDU, kUpdRows, DV, C, /*accumulate=*/false);
  __syncthreads();
  float* out = updates + ((static_cast<int64_t>(bh) * N + n) * DK + k0) * DV;
  for (int e = threadIdx.x; e < kUpdRows * DV; e += blockDim.x) {
    const int d = e / DV, j = e % DV;
    out[static_cast<int64_t>(d) * DV + j] = U[d * L::LDU + j];
  }
  if constexpr (kPerChannel) {
    for (int d = threadIdx.x; d < kUpdRows; d += blockDim.x)
      gamma[(static_cast<int64_t>(bh) * N + n) * DK + k0 + d] = G[(C - 1) * L::LDG + d];
  } else {
    if (blockIdx.x == 0 && threadIdx.x == 0) gamma[static_cast<int64_t>(bh) * N + n] = G[C - 1];
  }
}

template <int C, bool kPerChannel, bool kReverse>
cudaError_t TwoPhaseFor(const ChunkProblem& p, const bf16* a, const bf16* b, const float* g, const float* s_in,
                        float* updates, float* gamma, bf16* states, float* s_out, cudaStream_t stream) {
  const int N = p.T / C;
  cudaError_t err =
      p.DV == 64
          ? Launch(GlaChunkUpdateKernel<C, 64, kPerChannel, kReverse>, dim3(p.DK / kUpdRows, N, p.BH), kUpdThreads,
                   UpdateLayout<C, 64, kPerChannel>::Bytes(), stream, a, b, g, updates, gamma, p.T, p.DK)
          : Launch(GlaChunkUpdateKernel<C, 128, kPerChannel, kReverse>, dim3(p.DK / kUpdRows, N, p.BH), kUpdThreads,
                   UpdateLayout<C, 128, kPerChannel>::Bytes(), stream, a, b, g, updates, gamma, p.T, p.DK);
  if (err != cudaSuccess) return err;
  return LaunchStateCombine<bf16, kPerChannel, kReverse>(p.BH, N, p.DK, p.DV, updates, gamma, s_in, states, s_out,
                                                         stream);
}

// ---------------------------------------------------------------------------------------------------------------
// Intra-chunk scores, shared by the output and gradient kernels.

// A[i][j] = sum_d q_id k_jd exp(G_id - G_jd) for j <= i, else 0 (fp32, ld lda). Per-channel case (C = 32): Qh, Kh
// are [16 x ldk] bf16 scratch that keep q_i exp(G_i - G_15) (i >= 16) and k_j exp(G_15 - G_j) (j < 16) for the
// backward. Scalar case: A = (q.k) exp(G_i - G_j). Ends synchronised.
template <int C, int DK, bool kPerChannel>
__device__ __forceinline__ void IntraScores(const bf16* Q, const bf16* K, int ldk, const float* G, int ldg, float* A,
                                            int lda, bf16* Qh, bf16* Kh) {
  if constexpr (!kPerChannel) {
    BlockGemm<false, true>(Q, ldk, K, ldk, A, lda, C, C, DK, false);
    __syncthreads();
    for (int e = threadIdx.x; e < C * C; e += blockDim.x) {
      const int i = e / C, j = e % C;
      A[i * lda + j] = j <= i ? A[i * lda + j] * __expf(G[i] - G[j]) : 0.f;
    }
    __syncthreads();
  } else {
    static_assert(C == 2 * kSub, "per-channel chunks are two sub-chunks");
    constexpr int r = kSub - 1;
    for (int e = threadIdx.x; e < kSub * DK; e += blockDim.x) {
      const int i = e / DK, d = e % DK;
      const float gr = G[r * ldg + d];
      Qh[i * ldk + d] = ToBf(ToF(Q[(kSub + i) * ldk + d]) * __expf(G[(kSub + i) * ldg + d] - gr));
      Kh[i * ldk + d] = ToBf(ToF(K[i * ldk + d]) * __expf(gr - G[i * ldg + d]));
    }
    __syncthreads();
    // Off-diagonal sub-block (rows 16..31, columns 0..15) on one warp's tensor cores; the diagonal sub-blocks and
    // the zeros above the diagonal on every thread meanwhile (disjoint entries).
    if (threadIdx.x < 32) BlockGemm<false, true>(Qh, ldk, Kh, ldk, A + kSub * lda, lda, kSub, kSub, DK, false);
    for (int e = threadIdx.x; e < C * C; e += blockDim.x) {
      const int i = e / C, j = e % C;
      if (j > i) {
        A[i * lda + j] = 0.f;
      } else if (i / kSub == j / kSub) {
        float acc = 0.f;
        for (int d = 0; d < DK; ++d) {
          acc += ToF(Q[i * ldk + d]) * ToF(K[j * ldk + d]) * __expf(G[i * ldg + d] - G[j * ldg + d]);
        }
        A[i * lda + j] = acc;
      }
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Output.

template <int C, int DK, int DV, bool kPerChannel>
struct OutLayout {
  static constexpr int LDK = DK + kPadBf16, LDV = DV + kPadBf16, LDA = C + kPadF32, LDAB = C + kPadBf16;
  static constexpr int LDO = DV + kPadF32;
  static constexpr int LDG = kPerChannel ? DK + kPadF32 : C;
  static constexpr int GROWS = kPerChannel ? C : 1;
  static constexpr size_t RegionBytes() {
    SmemSize r;
    r.Take<bf16>(C * LDK);
    r.Take<float>(C * LDA);
    if (kPerChannel) {
      r.Take<bf16>(kSub * LDK);
      r.Take<bf16>(kSub * LDK);
    }
    SmemSize o;
    o.Take<float>(C * LDO);
    return std::max(r.used, o.used);
  }
  static size_t Bytes() {
    SmemSize s;
    s.Take<bf16>(C * LDK);
    s.Take<bf16>(C * LDV);
    s.Take<bf16>(DK * LDV);
    s.Take<float>(GROWS * LDG);
    s.Take<bf16>(C * LDAB);
    s.Take<char>(RegionBytes());
    return s.used;
  }
};

template <int C, int DK, int DV, bool kPerChannel>
__global__ void __launch_bounds__(256)
    GlaOutputKernel(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                    const float* __restrict__ g, const bf16* __restrict__ states, bf16* __restrict__ out, int T) {
  using L = OutLayout<C, DK, DV, kPerChannel>;
  SmemCarver sc{DynamicSmem()};
  bf16* Q = sc.Take<bf16>(C * L::LDK);
  bf16* V = sc.Take<bf16>(C * L::LDV);
  bf16* S = sc.Take<bf16>(DK * L::LDV);
  float* G = sc.Take<float>(L::GROWS * L::LDG);
  bf16* Ab = sc.Take<bf16>(C * L::LDAB);
  char* region = sc.Take<char>(L::RegionBytes());
  SmemCarver rc{region};
  bf16* K = rc.Take<bf16>(C * L::LDK);
  float* A = rc.Take<float>(C * L::LDA);
  bf16* Qh = kPerChannel ? rc.Take<bf16>(kSub * L::LDK) : nullptr;
  bf16* Kh = kPerChannel ? rc.Take<bf16>(kSub * L::LDK) : nullptr;
  float* O = reinterpret_cast<float*>(region);  // after A and K are dead

  const int n = blockIdx.x, bh = blockIdx.y, N = T / C;
  const int64_t row0 = static_cast<int64_t>(bh) * T + static_cast<int64_t>(n) * C;
  AsyncCopyRows(Q, L::LDK, q + row0 * DK, DK, C, DK);
  AsyncCopyRows(K, L::LDK, k + row0 * DK, DK, C, DK);
  AsyncCopyRows(V, L::LDV, v + row0 * DV, DV, C, DV);
  AsyncCopyRows(S, L::LDV, states + (static_cast<int64_t>(bh) * N + n) * DK * DV, DV, DK, DV);
  CopyDecays<C, kPerChannel>(G, L::LDG, g, row0, DK);
  WaitAndCumsum<C, kPerChannel>(G, L::LDG, DK);

  IntraScores<C, DK, kPerChannel>(Q, K, L::LDK, G, L::LDG, A, L::LDA, Qh, Kh);
  for (int e = threadIdx.x; e < C * C; e += blockDim.x) {
    const int i = e / C, j = e % C;
    Ab[i * L::LDAB + j] = ToBf(A[i * L::LDA + j]);
  }
  for (int e = threadIdx.x; e < C * DK; e += blockDim.x) {  // q_i exp(G_i), in place
    const int i = e / DK, d = e % DK;
    const float gi = kPerChannel ? G[i * L::LDG + d] : G[i];
    Q[i * L::LDK + d] = ToBf(ToF(Q[i * L::LDK + d]) * __expf(gi));
  }
  __syncthreads();
  // Same M x N tiling in both calls: every warp re-reads only the tiles it wrote.
  BlockGemm<false, false>(Q, L::LDK, S, L::LDV, O, L::LDO, C, DV, DK, false);
  BlockGemm<false, false>(Ab, L::LDAB, V, L::LDV, O, L::LDO, C, DV, C, true);
  __syncthreads();
  StoreRowsBf16(out + row0 * DV, DV, O, L::LDO, C, DV);
}

// ---------------------------------------------------------------------------------------------------------------
// Gradients.

template <int C, int DK, int DV, bool kPerChannel>
struct GradLayout {
  static constexpr int LDK = DK + kPadBf16, LDV = DV + kPadBf16, LDAB = C + kPadBf16;
  static constexpr int LDW = (DK > DV ? DK : DV) + kPadF32;  // fp32 work rows
  static constexpr int LDA = C + kPadF32;                    // fp32 C x C scratch inside a work buffer
  static constexpr int LDG = kPerChannel ? DK + kPadF32 : C;
  static constexpr int GROWS = kPerChannel ? C : 1;
  static size_t Bytes() {
    SmemSize s;
    s.Take<bf16>(C * LDK);  // Q
    s.Take<bf16>(C * LDK);  // K
    s.Take<bf16>(C * LDV);  // V
    s.Take<bf16>(C * LDV);  // dO
    s.Take<float>(GROWS * LDG);
    s.Take<bf16>(DK * LDV);  // dH, then S
    s.Take<bf16>(C * LDAB);  // A
    s.Take<bf16>(C * LDAB);  // dA (scalar) or masked dP (per channel)
    s.Take<float>(C * LDW);  // work 1: A scratch, dv, then dq
    s.Take<float>(C * LDW);  // work 2: dP scratch, then dk
    s.Take<bf16>(C * LDK);   // k exp(G_last - G)
    if (kPerChannel) {
      s.Take<bf16>(kSub * LDK);
      s.Take<bf16>(kSub * LDK);
      s.Take<float>(kSub * LDW);
    }
    return s.used;
  }
};

template <int C, int DK, int DV, bool kPerChannel>
__global__ void __launch_bounds__(256)
    GlaGradKernel(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                  const float* __restrict__ g, const bf16* __restrict__ dout, const bf16* __restrict__ states,
                  const bf16* __restrict__ dstates, bf16* __restrict__ dq, bf16* __restrict__ dk, bf16* __restrict__ dv,
                  float* __restrict__ dgamma, float* __restrict__ dgamma_chunk_sums, int T) {
  using L = GradLayout<C, DK, DV, kPerChannel>;
  SmemCarver sc{DynamicSmem()};
  bf16* Q = sc.Take<bf16>(C * L::LDK);
  bf16* K = sc.Take<bf16>(C * L::LDK);
  bf16* V = sc.Take<bf16>(C * L::LDV);
  bf16* dO = sc.Take<bf16>(C * L::LDV);
  float* G = sc.Take<float>(L::GROWS * L::LDG);
  bf16* SB = sc.Take<bf16>(DK * L::LDV);
  bf16* Ab = sc.Take<bf16>(C * L::LDAB);
  bf16* dAb = sc.Take<bf16>(C * L::LDAB);
  float* W1 = sc.Take<float>(C * L::LDW);
  float* W2 = sc.Take<float>(C * L::LDW);
  bf16* Kt = sc.Take<bf16>(C * L::LDK);
  bf16* Qh = kPerChannel ? sc.Take<bf16>(kSub * L::LDK) : nullptr;
  bf16* Kh = kPerChannel ? sc.Take<bf16>(kSub * L::LDK) : nullptr;
  float* W3 = kPerChannel ? sc.Take<float>(kSub * L::LDW) : nullptr;

  const int n = blockIdx.x, bh = blockIdx.y, N = T / C;
  const int64_t row0 = static_cast<int64_t>(bh) * T + static_cast<int64_t>(n) * C;
  const int64_t state_off = (static_cast<int64_t>(bh) * N + n) * DK * DV;
  AsyncCopyRows(Q, L::LDK, q + row0 * DK, DK, C, DK);
  AsyncCopyRows(K, L::LDK, k + row0 * DK, DK, C, DK);
  AsyncCopyRows(V, L::LDV, v + row0 * DV, DV, C, DV);
  AsyncCopyRows(dO, L::LDV, dout + row0 * DV, DV, C, DV);
  AsyncCopyRows(SB, L::LDV, dstates + state_off, DV, DK, DV);
  CopyDecays<C, kPerChannel>(G, L::LDG, g, row0, DK);
  WaitAndCumsum<C, kPerChannel>(G, L::LDG, DK);
  auto Gat = [&](int i, int d) { return kPerChannel ? G[i * L::LDG + d] : G[i]; };

  // Phase 1: A (decayed, masked) and dP = dO V^T -> dA (scalar: decayed; per channel: masked only).
  IntraScores<C, DK, kPerChannel>(Q, K, L::LDK, G, L::LDG, W1, L::LDA, Qh, Kh);
  BlockGemm<false, true>(dO, L::LDV, V, L::LDV, W2, L::LDA, C, C, DV, false);
  for (int e = threadIdx.x; e < C * DK; e += blockDim.x) {  // k exp(G_last - G)
    const int i = e / DK, d = e % DK;
    Kt[i * L::LDK + d] = ToBf(ToF(K[i * L::LDK + d]) * __expf(Gat(C - 1, d) - Gat(i, d)));
  }
  __syncthreads();
  for (int e = threadIdx.x; e < C * C; e += blockDim.x) {
    const int i = e / C, j = e % C;
    Ab[i * L::LDAB + j] = ToBf(W1[i * L::LDA + j]);
    float dp = j <= i ? W2[i * L::LDA + j] : 0.f;
    if constexpr (!kPerChannel) dp = j <= i ? dp * __expf(G[i] - G[j]) : 0.f;
    dAb[i * L::LDAB + j] = ToBf(dp);
  }
  __syncthreads();

  // Phase 2: dv = A^T dO + (k exp(G_last - G)) dH  (W1);  dk1 = V dH^T (W2).
  BlockGemm<true, false>(Ab, L::LDAB, dO, L::LDV, W1, L::LDW, C, DV, C, false);
  BlockGemm<false, false>(Kt, L::LDK, SB, L::LDV, W1, L::LDW, C, DV, DK, true);
  BlockGemm<false, true>(V, L::LDV, SB, L::LDV, W2, L::LDW, C, DK, DV, false);
  __syncthreads();
  StoreRowsBf16(dv + row0 * DV, DV, W1, L::LDW, C, DV);
  for (int e = threadIdx.x; e < C * DK; e += blockDim.x) {
    const int i = e / DK, d = e % DK;
    W2[i * L::LDW + d] *= __expf(Gat(C - 1, d) - Gat(i, d));
  }
  __syncthreads();
  // S (entering the chunk) replaces dH; nothing reads dH any more.
  AsyncCopyRows(SB, L::LDV, states + state_off, DV, DK, DV);
  __pipeline_commit();

  // Phase 3: dk += intra.
  if constexpr (!kPerChannel) {
    BlockGemm<true, false>(dAb, L::LDAB, Q, L::LDK, W2, L::LDW, C, DK, C, true);
  } else {
    // Off-diagonal: rows j < 16 gain exp(G_15 - G_j) * (dP[16.., ..16]^T Qh)_j.
    BlockGemm<true, false>(dAb + kSub * L::LDAB, L::LDAB, Qh, L::LDK, W3, L::LDW, kSub, DK, kSub, false);
    __syncthreads();
    for (int d = threadIdx.x; d < DK; d += blockDim.x) {
      const float gr = G[(kSub - 1) * L::LDG + d];
      for (int j = 0; j < kSub; ++j) W2[j * L::LDW + d] += __expf(gr - G[j * L::LDG + d]) * W3[j * L::LDW + d];
      for (int s0 = 0; s0 < C; s0 += kSub) {  // diagonal sub-blocks, exact pairwise factors
        for (int j = s0; j < s0 + kSub; ++j) {
          const float gj = G[j * L::LDG + d];
          float acc = 0.f;
          for (int i = j; i < s0 + kSub; ++i) {
            acc += ToF(dAb[i * L::LDAB + j]) * ToF(Q[i * L::LDK + d]) * __expf(G[i * L::LDG + d] - gj);
          }
          W2[j * L::LDW + d] += acc;
        }
      }
    }
  }
  __pipeline_wait_prior(0);
  __syncthreads();

  // Phase 4: dq = exp(G) (dO S^T) + intra (W1).
  BlockGemm<false, true>(dO, L::LDV, SB, L::LDV, W1, L::LDW, C, DK, DV, false);
  __syncthreads();
  for (int e = threadIdx.x; e < C * DK; e += blockDim.x) {
    const int i = e / DK, d = e % DK;
    W1[i * L::LDW + d] *= __expf(Gat(i, d));
  }
  __syncthreads();
  if constexpr (!kPerChannel) {
    BlockGemm<false, false>(dAb, L::LDAB, K, L::LDK, W1, L::LDW, C, DK, C, true);
  } else {
    // Off-diagonal: rows i >= 16 gain exp(G_i - G_15) * (dP[16.., ..16] Kh)_i.
    BlockGemm<false, false>(dAb + kSub * L::LDAB, L::LDAB, Kh, L::LDK, W3, L::LDW, kSub, DK, kSub, false);
    __syncthreads();
    for (int d = threadIdx.x; d < DK; d += blockDim.x) {
      const float gr = G[(kSub - 1) * L::LDG + d];
      for (int i = kSub; i < C; ++i) {
        W1[i * L::LDW + d] += __expf(G[i * L::LDG + d] - gr) * W3[(i - kSub) * L::LDW + d];
      }
      for (int s0 = 0; s0 < C; s0 += kSub) {
        for (int i = s0; i < s0 + kSub; ++i) {
          const float gi = G[i * L::LDG + d];
          float acc = 0.f;
          for (int j = s0; j <= i; ++j) {
            acc += ToF(dAb[i * L::LDAB + j]) * ToF(K[j * L::LDK + d]) * __expf(gi - G[j * L::LDG + d]);
          }
          W1[i * L::LDW + d] += acc;
        }
      }
    }
  }
  __syncthreads();

  // Phase 5: stores and dgamma = q.dq - k.dk (per channel: reverse-summed within the chunk).
  StoreRowsBf16(dq + row0 * DK, DK, W1, L::LDW, C, DK);
  StoreRowsBf16(dk + row0 * DK, DK, W2, L::LDW, C, DK);
  if constexpr (kPerChannel) {
    // Reverse cumulative sums inside the chunk (one thread per channel) and the chunk's totals: the glue adds the
    // totals of the later chunks, a small [BH, N, DK] scan instead of one over [BH, T, DK].
    for (int d = threadIdx.x; d < DK; d += blockDim.x) {
      float acc = 0.f;
      for (int i = C - 1; i >= 0; --i) {
        acc += ToF(Q[i * L::LDK + d]) * W1[i * L::LDW + d] - ToF(K[i * L::LDK + d]) * W2[i * L::LDW + d];
        dgamma[(row0 + i) * DK + d] = acc;
      }
      dgamma_chunk_sums[(static_cast<int64_t>(bh) * N + n) * DK + d] = acc;
    }
  } else {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int i = warp; i < C; i += warps) {
      float acc = 0.f;
      for (int d = lane; d < DK; d += 32) {
        acc += ToF(Q[i * L::LDK + d]) * W1[i * L::LDW + d] - ToF(K[i * L::LDK + d]) * W2[i * L::LDW + d];
      }
      for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, off);
      if (lane == 0) dgamma[row0 + i] = acc;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Launchers.

template <int C, bool kPerChannel, bool kReverse>
cudaError_t ScanFor(const ChunkProblem& p, const bf16* a, const bf16* b, const float* g, const float* s_in,
                    bf16* states, float* s_out, cudaStream_t stream) {
  using L = ScanLayout<C, kScanRows, kScanCols, kPerChannel>;
  return Launch(GlaStateScanKernel<C, kScanRows, kScanCols, kPerChannel, kReverse>,
                dim3(p.DV / kScanCols, p.BH, p.DK / kScanRows), kScanThreads, L::Bytes(), stream, a, b, g, s_in, states,
                s_out, p.T, p.DK, p.DV);
}

template <int C, int DV, bool kPerChannel>
cudaError_t OutputFor(const ChunkProblem& p, const bf16* q, const bf16* k, const bf16* v, const float* g,
                      const bf16* states, bf16* out, cudaStream_t stream) {
  if (p.DK == 64) {
    return Launch(GlaOutputKernel<C, 64, DV, kPerChannel>, dim3(p.T / C, p.BH), 256,
                  OutLayout<C, 64, DV, kPerChannel>::Bytes(), stream, q, k, v, g, states, out, p.T);
  }
  return Launch(GlaOutputKernel<C, 128, DV, kPerChannel>, dim3(p.T / C, p.BH), 256,
                OutLayout<C, 128, DV, kPerChannel>::Bytes(), stream, q, k, v, g, states, out, p.T);
}

template <int C, int DV, bool kPerChannel>
cudaError_t GradFor(const ChunkProblem& p, const bf16* q, const bf16* k, const bf16* v, const float* g,
                    const bf16* dout, const bf16* states, const bf16* dstates, bf16* dq, bf16* dk, bf16* dv,
                    float* dgamma, float* dgamma_chunk_sums, cudaStream_t stream) {
  if (p.DK == 64) {
    return Launch(GlaGradKernel<C, 64, DV, kPerChannel>, dim3(p.T / C, p.BH), 256,
                  GradLayout<C, 64, DV, kPerChannel>::Bytes(), stream, q, k, v, g, dout, states, dstates, dq, dk, dv,
                  dgamma, dgamma_chunk_sums, p.T);
  }
  return Launch(GlaGradKernel<C, 128, DV, kPerChannel>, dim3(p.T / C, p.BH), 256,
                GradLayout<C, 128, DV, kPerChannel>::Bytes(), stream, q, k, v, g, dout, states, dstates, dq, dk, dv,
                dgamma, dgamma_chunk_sums, p.T);
}

bool ValidHeads(const ChunkProblem& p) { return (p.DK == 64 || p.DK == 128) && (p.DV == 64 || p.DV == 128); }

}  // namespace

cudaError_t LaunchGlaStateScan(const ChunkProblem& p, bool reverse, const bf16* rows_a, const bf16* rows_b,
                               const float* g, const float* initial_state, bf16* chunk_states, float* final_state,
                               cudaStream_t stream) {
  if (!ValidHeads(p) || p.T % ChunkFor(p.per_channel) != 0) return cudaErrorInvalidValue;
#define FM_SCAN(C, PC, REV) ScanFor<C, PC, REV>(p, rows_a, rows_b, g, initial_state, chunk_states, final_state, stream)
  if (p.per_channel) return reverse ? FM_SCAN(32, true, true) : FM_SCAN(32, true, false);
  return reverse ? FM_SCAN(64, false, true) : FM_SCAN(64, false, false);
#undef FM_SCAN
}

size_t GlaStatePassWorkspaceFloats(const ChunkProblem& p) {
  const int64_t N = p.T / ChunkFor(p.per_channel);
  return static_cast<size_t>(p.BH) * N * (static_cast<int64_t>(p.DK) * p.DV + (p.per_channel ? p.DK : 1));
}

cudaError_t LaunchGlaStatePass(const ChunkProblem& p, bool reverse, const bf16* rows_a, const bf16* rows_b,
                               const float* g, const float* initial_state, float* workspace, bf16* chunk_states,
                               float* final_state, cudaStream_t stream) {
  if (!ValidHeads(p) || p.T % ChunkFor(p.per_channel) != 0 || workspace == nullptr) return cudaErrorInvalidValue;
  if (p.BH == 0 || p.T == 0) return cudaSuccess;
  float* updates = workspace;
  float* gamma = workspace + static_cast<int64_t>(p.BH) * (p.T / ChunkFor(p.per_channel)) * p.DK * p.DV;
#define FM_PASS(C, PC, REV) \
  TwoPhaseFor<C, PC, REV>(p, rows_a, rows_b, g, initial_state, updates, gamma, chunk_states, final_state, stream)
  if (p.per_channel) return reverse ? FM_PASS(32, true, true) : FM_PASS(32, true, false);
  return reverse ? FM_PASS(64, false, true) : FM_PASS(64, false, false);
#undef FM_PASS
}

cudaError_t LaunchGlaOutput(const ChunkProblem& p, const bf16* q, const bf16* k, const bf16* v, const float* g,
                            const bf16* chunk_states, bf16* out, cudaStream_t stream) {
  if (!ValidHeads(p) || p.T % ChunkFor(p.per_channel) != 0) return cudaErrorInvalidValue;
  if (p.per_channel) {
    return p.DV == 64 ? OutputFor<32, 64, true>(p, q, k, v, g, chunk_states, out, stream)
                      : OutputFor<32, 128, true>(p, q, k, v, g, chunk_states, out, stream);
  }
  return p.DV == 64 ? OutputFor<64, 64, false>(p, q, k, v, g, chunk_states, out, stream)
                    : OutputFor<64, 128, false>(p, q, k, v, g, chunk_states, out, stream);
}

cudaError_t LaunchGlaGrad(const ChunkProblem& p, const bf16* q, const bf16* k, const bf16* v, const float* g,
                          const bf16* dout, const bf16* chunk_states, const bf16* chunk_dstates, bf16* dq, bf16* dk,
                          bf16* dv, float* dgamma, float* dgamma_chunk_sums, cudaStream_t stream) {
  if (!ValidHeads(p) || p.T % ChunkFor(p.per_channel) != 0) return cudaErrorInvalidValue;
  if (p.per_channel && dgamma_chunk_sums == nullptr) return cudaErrorInvalidValue;
  if (p.per_channel) {
    return p.DV == 64 ? GradFor<32, 64, true>(p, q, k, v, g, dout, chunk_states, chunk_dstates, dq, dk, dv, dgamma,
                                              dgamma_chunk_sums, stream)
                      : GradFor<32, 128, true>(p, q, k, v, g, dout, chunk_states, chunk_dstates, dq, dk, dv, dgamma,
                                               dgamma_chunk_sums, stream);
  }
  return p.DV == 64 ? GradFor<64, 64, false>(p, q, k, v, g, dout, chunk_states, chunk_dstates, dq, dk, dv, dgamma,
                                             dgamma_chunk_sums, stream)
                    : GradFor<64, 128, false>(p, q, k, v, g, dout, chunk_states, chunk_dstates, dq, dk, dv, dgamma,
                                              dgamma_chunk_sums, stream);
}

}  // namespace fm::kernels::cuda
