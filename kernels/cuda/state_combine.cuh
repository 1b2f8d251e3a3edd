// The elementwise recurrence over chunks (or segments of chunks) shared by the GLA/Lightning state passes:
// S_{n+1} = exp(gamma_n) S_n + U_n with every U_n and gamma_n known in advance, one thread per state element.
// Device-only; included by kernels/cuda/gla_*.cu.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/launch.cuh"

namespace fm::kernels::cuda {

__device__ __forceinline__ void StoreState(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void StoreState(float* p, float v) { *p = v; }

// Thread (bh, d, j) walks the N steps in the pass's order (last to first when kReverse): stores the entering state
// to states[bh, n, d, j] (bf16 or fp32), then S <- exp(gamma[bh, n(, d)]) S + updates[bh, n, d, j]. s_in (initial,
// may be null: zeros) and s_out (after the last step, may be null) are [BH, DK, DV]. Per channel: gamma is
// [BH, N, DK].
template <typename StateT, bool kPerChannel, bool kReverse>
__global__ void StateCombineKernel(const float* __restrict__ updates, const float* __restrict__ gamma,
                                   const float* __restrict__ s_in, StateT* __restrict__ states,
                                   float* __restrict__ s_out, int N, int DK, int DV, int64_t total) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const int64_t per_head = static_cast<int64_t>(DK) * DV, bh = idx / per_head, rem = idx % per_head;
  const int d = static_cast<int>(rem / DV);
  const float* u = updates + bh * N * per_head + rem;
  StateT* st = states + bh * N * per_head + rem;
  const float* gm = kPerChannel ? gamma + bh * N * DK + d : gamma + bh * N;
  const int gstride = kPerChannel ? DK : 1;
  float S = s_in ? s_in[idx] : 0.f;
#pragma unroll 8
  for (int step = 0; step < N; ++step) {
    const int n = kReverse ? N - 1 - step : step;
    StoreState(st + n * per_head, S);
    S = __expf(gm[n * gstride]) * S + u[n * per_head];
  }
  if (s_out) s_out[idx] = S;
}

template <typename StateT, bool kPerChannel, bool kReverse>
cudaError_t LaunchStateCombine(int BH, int N, int DK, int DV, const float* updates, const float* gamma,
                               const float* s_in, StateT* states, float* s_out, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(BH) * DK * DV;
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  return Launch(StateCombineKernel<StateT, kPerChannel, kReverse>,
                dim3(static_cast<unsigned>((total + kThreads - 1) / kThreads)), kThreads, 0, stream, updates, gamma,
                s_in, states, s_out, N, DK, DV, total);
}

}  // namespace fm::kernels::cuda
