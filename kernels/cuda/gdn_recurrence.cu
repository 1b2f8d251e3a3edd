// The two sequential passes of the gated-delta-rule backward (kernels/gdn_backward.cc) in fp32, one kernel each
// direction. See linear_attention_launch.h (LaunchGdnChunkRecurrence) for the recurrence.
//
// One block per (batch*head, 16-column tile of the state); the state tile [DK, 16] stays in shared memory for the
// whole pass. Per chunk the block stages X, Y (and Z) [C, DK] and P (and R) [C, 16] in shared memory with coalesced
// loads, then c = P + sx X S (C x 16 outputs, 4 per thread) and S <- e^gamma S + sy Y^T c + Z^T R (DK x 16 outputs, up
// to 8 per thread), all in fp32.
#include <cuda_runtime.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/linear_attention_launch.h"
#include "kernels/cuda/smem.cuh"

namespace fm::kernels::cuda {
namespace {

constexpr int kCols = 16;      // state columns per block
constexpr int kThreads = 256;  // 16 columns x 16 row groups
constexpr int kMaxC = 64, kMaxDk = 128;

struct RecurrenceSmem {
  static constexpr int kRows = kMaxC * kMaxDk;  // one [C, DK] operand
  static size_t Bytes(bool with_z) {
    return sizeof(float) *
           ((with_z ? 3 : 2) * static_cast<size_t>(kRows) + (with_z ? 3 : 2) * kMaxC * kCols + kMaxDk * kCols);
  }
};

template <bool kWithZ>
__global__ void __launch_bounds__(kThreads)
    GdnRecurrenceKernel(int N, int C, int DK, int DV, float sx, float sy, bool reverse, const float* __restrict__ X,
                        const float* __restrict__ Y, const float* __restrict__ P, const float* __restrict__ Z,
                        const float* __restrict__ R, const float* __restrict__ gamma, const float* __restrict__ initial,
                        float* __restrict__ states, float* __restrict__ corr, float* __restrict__ final_state) {
  float* xs = reinterpret_cast<float*>(DynamicSmem());    // [C, DK]
  float* ys = xs + RecurrenceSmem::kRows;                 // [C, DK]
  float* zs = ys + RecurrenceSmem::kRows;                 // [C, DK] (kWithZ)
  float* ps = zs + (kWithZ ? RecurrenceSmem::kRows : 0);  // [C, 16]
  float* rs = ps + kMaxC * kCols;                         // [C, 16] (kWithZ)
  float* cs = rs + (kWithZ ? kMaxC * kCols : 0);          // [C, 16]: c of this chunk
  float* S = cs + kMaxC * kCols;                          // [DK, 16]

  const int bh = blockIdx.y, col0 = blockIdx.x * kCols;
  const int j = threadIdx.x % kCols, group = threadIdx.x / kCols;  // column, row group
  const int ncols = min(kCols, DV - col0);
  const int64_t state_base = static_cast<int64_t>(bh) * DK * DV;

  for (int k = group; k < DK; k += kThreads / kCols)
    S[k * kCols + j] =
        (initial != nullptr && j < ncols) ? initial[state_base + static_cast<int64_t>(k) * DV + col0 + j] : 0.f;
  for (int step = 0; step < N; ++step) {
    const int n = reverse ? N - 1 - step : step;
    const int64_t rows_base = (static_cast<int64_t>(bh) * N + n) * C;  // row index of the chunk's first step
    // Stage the chunk's operands.
    for (int e = threadIdx.x; e < C * DK; e += kThreads) {
      xs[e] = X[rows_base * DK + e];
      ys[e] = Y[rows_base * DK + e];
      if (kWithZ) zs[e] = Z[rows_base * DK + e];
    }
    for (int e = threadIdx.x; e < C * kCols; e += kThreads) {
      const int i = e / kCols, jj = e % kCols;
      const bool in = jj < ncols;
      ps[e] = in ? P[(rows_base + i) * DV + col0 + jj] : 0.f;
      if (kWithZ) rs[e] = in ? R[(rows_base + i) * DV + col0 + jj] : 0.f;
    }
    __syncthreads();
    // The state entering this step of the pass.
    if (j < ncols)
      for (int k = group; k < DK; k += kThreads / kCols)
        states[(static_cast<int64_t>(bh) * N + n) * DK * DV + static_cast<int64_t>(k) * DV + col0 + j] =
            S[k * kCols + j];
    // c = P + sx X S.
    for (int i = group; i < C; i += kThreads / kCols) {
      float acc = 0.f;
      const float* xrow = xs + i * DK;
#pragma unroll 8
      for (int k = 0; k < DK; ++k) acc = fmaf(xrow[k], S[k * kCols + j], acc);
      const float c = ps[i * kCols + j] + sx * acc;
      cs[i * kCols + j] = c;
      if (j < ncols) corr[(rows_base + i) * DV + col0 + j] = c;
    }
    __syncthreads();
    // S <- e^gamma S + sy Y^T c (+ Z^T R).
    const float decay = __expf(gamma[static_cast<int64_t>(bh) * N + n]);
    for (int k = group; k < DK; k += kThreads / kCols) {
      float acc = 0.f, acc_z = 0.f;
#pragma unroll 8
      for (int i = 0; i < C; ++i) {
        acc = fmaf(ys[i * DK + k], cs[i * kCols + j], acc);
        if (kWithZ) acc_z = fmaf(zs[i * DK + k], rs[i * kCols + j], acc_z);
      }
      S[k * kCols + j] = decay * S[k * kCols + j] + sy * acc + acc_z;
    }
    __syncthreads();
  }
  if (j < ncols)
    for (int k = group; k < DK; k += kThreads / kCols)
      final_state[state_base + static_cast<int64_t>(k) * DV + col0 + j] = S[k * kCols + j];
}

}  // namespace

bool GdnChunkRecurrenceSupported(int C, int DK) { return C >= 1 && C <= kMaxC && DK >= 1 && DK <= kMaxDk; }

cudaError_t LaunchGdnChunkRecurrence(int BH, int N, int C, int DK, int DV, bool reverse, const float* X, const float* Y,
                                     const float* P, const float* Z, const float* R, const float* gamma,
                                     const float* initial_state, float* states, float* corrected, float* final_state,
                                     cudaStream_t stream) {
  if (!GdnChunkRecurrenceSupported(C, DK) || DV < 1) return cudaErrorInvalidValue;
  if (BH == 0) return cudaSuccess;
  const bool with_z = Z != nullptr && R != nullptr;
  const dim3 grid((DV + kCols - 1) / kCols, BH);
  const size_t smem = RecurrenceSmem::Bytes(with_z);
  const float sx = reverse ? 1.f : -1.f, sy = reverse ? -1.f : 1.f;
  if (with_z) {
    return Launch(GdnRecurrenceKernel<true>, grid, kThreads, smem, stream, N, C, DK, DV, sx, sy, reverse, X, Y, P, Z, R,
                  gamma, initial_state, states, corrected, final_state);
  }
  return Launch(GdnRecurrenceKernel<false>, grid, kThreads, smem, stream, N, C, DK, DV, sx, sy, reverse, X, Y, P,
                static_cast<const float*>(nullptr), static_cast<const float*>(nullptr), gamma, initial_state, states,
                corrected, final_state);
}

}  // namespace fm::kernels::cuda
