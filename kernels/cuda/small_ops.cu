// Token-by-token recurrence (decoding) and the fused gate mix, on sm_90. See linear_attention_launch.h.
#include <cuda_bf16.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/linear_attention_launch.h"
#include "kernels/cuda/smem.cuh"

namespace fm::kernels::cuda {
namespace {

template <typename T>
__device__ __forceinline__ float Load(const T* p, int64_t i);
template <>
__device__ __forceinline__ float Load(const float* p, int64_t i) {
  return p[i];
}
template <>
__device__ __forceinline__ float Load(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ void Store(float* p, int64_t i, float x) { p[i] = x; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, int64_t i, float x) { p[i] = __float2bfloat16(x); }

constexpr int kMaxHead = 256;

// One block per batch*head, one thread per value column; the state column stays in global memory (fp32, coalesced
// across the block) and q, k, decay of the step in shared memory.
template <typename T, bool kDelta>
__global__ void RecurrentKernel(int T_steps, int DK, int DV, bool per_channel, const T* __restrict__ q,
                                const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ g,
                                const float* __restrict__ beta, float* __restrict__ state, T* __restrict__ out) {
  __shared__ float qs[kMaxHead], ks[kMaxHead], gs[kMaxHead];
  const int bh = blockIdx.x, j = threadIdx.x;
  float* S = state + static_cast<int64_t>(bh) * DK * DV;
  for (int t = 0; t < T_steps; ++t) {
    const int64_t row = static_cast<int64_t>(bh) * T_steps + t;
    for (int d = threadIdx.x; d < DK; d += blockDim.x) {
      qs[d] = Load(q, row * DK + d);
      ks[d] = Load(k, row * DK + d);
      gs[d] = __expf(per_channel ? g[row * DK + d] : g[row]);
    }
    __syncthreads();
    if (j < DV) {
      const float vj = Load(v, row * DV + j);
      float o = 0.f;
      if constexpr (kDelta) {
        float ks_dot = 0.f;
        for (int d = 0; d < DK; ++d) ks_dot += ks[d] * gs[d] * S[d * DV + j];
        const float uj = beta[row] * (vj - ks_dot);
        for (int d = 0; d < DK; ++d) {
          const float s = gs[d] * S[d * DV + j] + ks[d] * uj;
          S[d * DV + j] = s;
          o += qs[d] * s;
        }
      } else {
        for (int d = 0; d < DK; ++d) {
          const float s = gs[d] * S[d * DV + j] + ks[d] * vj;
          S[d * DV + j] = s;
          o += qs[d] * s;
        }
      }
      Store(out, row * DV + j, o);
    }
    __syncthreads();
  }
}

// Gate mix: each thread handles two adjacent elements of one head.
__global__ void GateMixKernel(int64_t rows, int H, int D, const __nv_bfloat162* __restrict__ full,
                              const __nv_bfloat162* __restrict__ linear, const float* __restrict__ a,
                              __nv_bfloat162* __restrict__ out) {
  const int64_t half = static_cast<int64_t>(H) * D / 2;  // bf16 pairs per row and side
  const int64_t total = rows * half;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / half, c = e % half;
    const float ah = a[(c * 2) / D];
    const float2 f = __bfloat1622float2(full[e]), l = __bfloat1622float2(linear[e]);
    out[r * 2 * half + c] = __floats2bfloat162_rn(ah * f.x, ah * f.y);
    out[r * 2 * half + half + c] = __floats2bfloat162_rn((1.f - ah) * l.x, (1.f - ah) * l.y);
  }
}

// Backward: elementwise input gradients; per-head sums for d_a reduced in shared memory, then one atomicAdd per
// head and block.
__global__ void GateMixBackwardKernel(int64_t rows, int H, int D, const __nv_bfloat162* __restrict__ full,
                                      const __nv_bfloat162* __restrict__ linear, const float* __restrict__ a,
                                      const __nv_bfloat162* __restrict__ dy, __nv_bfloat162* __restrict__ d_full,
                                      __nv_bfloat162* __restrict__ d_linear, float* __restrict__ d_a) {
  float* head_sums = reinterpret_cast<float*>(DynamicSmem());  // [H]
  for (int h = threadIdx.x; h < H; h += blockDim.x) head_sums[h] = 0.f;
  __syncthreads();
  const int64_t half = static_cast<int64_t>(H) * D / 2;
  const int64_t total = rows * half;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / half, c = e % half;
    const int h = static_cast<int>((c * 2) / D);
    const float ah = a[h];
    const float2 f = __bfloat1622float2(full[e]), l = __bfloat1622float2(linear[e]);
    const float2 gf = __bfloat1622float2(dy[r * 2 * half + c]);
    const float2 gl = __bfloat1622float2(dy[r * 2 * half + half + c]);
    d_full[e] = __floats2bfloat162_rn(ah * gf.x, ah * gf.y);
    d_linear[e] = __floats2bfloat162_rn((1.f - ah) * gl.x, (1.f - ah) * gl.y);
    float part = gf.x * f.x + gf.y * f.y - gl.x * l.x - gl.y * l.y;
    // A full warp on one head (the common case: D/2 a multiple of 32) reduces with shuffles first.
    const unsigned active = __activemask();
    if (active == 0xffffffffu && __match_any_sync(active, h) == active) {
      for (int off = 16; off > 0; off >>= 1) part += __shfl_xor_sync(active, part, off);
      if (threadIdx.x % 32 == 0) atomicAdd(&head_sums[h], part);
    } else {
      atomicAdd(&head_sums[h], part);
    }
  }
  __syncthreads();
  for (int h = threadIdx.x; h < H; h += blockDim.x) atomicAdd(&d_a[h], head_sums[h]);
}

int GridFor(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

}  // namespace

cudaError_t LaunchRecurrentStep(int BH, int T, int DK, int DV, bool per_channel, bool dtype_bf16, const void* q,
                                const void* k, const void* v, const float* g, const float* beta, float* state,
                                void* out, cudaStream_t stream) {
  if (DK > kMaxHead || DV > kMaxHead || DK < 1 || DV < 1 || (beta && per_channel)) return cudaErrorInvalidValue;
  if (BH == 0 || T == 0) return cudaSuccess;
  const int threads = (DV + 31) / 32 * 32;
  if (dtype_bf16) {
    using T16 = __nv_bfloat16;
    auto* qq = static_cast<const T16*>(q);
    auto* kk = static_cast<const T16*>(k);
    auto* vv = static_cast<const T16*>(v);
    auto* oo = static_cast<T16*>(out);
    return beta ? Launch(RecurrentKernel<T16, true>, dim3(BH), threads, 0, stream, T, DK, DV, false, qq, kk, vv, g,
                         beta, state, oo)
                : Launch(RecurrentKernel<T16, false>, dim3(BH), threads, 0, stream, T, DK, DV, per_channel, qq, kk, vv,
                         g, beta, state, oo);
  } else {
    auto* qq = static_cast<const float*>(q);
    auto* kk = static_cast<const float*>(k);
    auto* vv = static_cast<const float*>(v);
    auto* oo = static_cast<float*>(out);
    return beta ? Launch(RecurrentKernel<float, true>, dim3(BH), threads, 0, stream, T, DK, DV, false, qq, kk, vv, g,
                         beta, state, oo)
                : Launch(RecurrentKernel<float, false>, dim3(BH), threads, 0, stream, T, DK, DV, per_channel, qq, kk,
                         vv, g, beta, state, oo);
  }
}

cudaError_t LaunchGateMix(int64_t rows, int H, int D, const __nv_bfloat16* full, const __nv_bfloat16* linear,
                          const float* a, __nv_bfloat16* out, cudaStream_t stream) {
  if (D % 2 != 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int threads = 256;
  return Launch(GateMixKernel, dim3(GridFor(rows * H * D / 2, threads)), threads, 0, stream, rows, H, D,
                reinterpret_cast<const __nv_bfloat162*>(full), reinterpret_cast<const __nv_bfloat162*>(linear), a,
                reinterpret_cast<__nv_bfloat162*>(out));
}

cudaError_t LaunchGateMixBackward(int64_t rows, int H, int D, const __nv_bfloat16* full, const __nv_bfloat16* linear,
                                  const float* a, const __nv_bfloat16* dy, __nv_bfloat16* d_full,
                                  __nv_bfloat16* d_linear, float* d_a, cudaStream_t stream) {
  if (D % 2 != 0) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(d_a, 0, sizeof(float) * H, stream);
  if (err != cudaSuccess || rows == 0) return err;
  const int threads = 256;
  return Launch(GateMixBackwardKernel, dim3(GridFor(rows * H * D / 2, threads)), threads, sizeof(float) * H, stream,
                rows, H, D, reinterpret_cast<const __nv_bfloat162*>(full),
                reinterpret_cast<const __nv_bfloat162*>(linear), a, reinterpret_cast<const __nv_bfloat162*>(dy),
                reinterpret_cast<__nv_bfloat162*>(d_full), reinterpret_cast<__nv_bfloat162*>(d_linear), d_a);
}

}  // namespace fm::kernels::cuda
