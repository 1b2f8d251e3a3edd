// Row-wise fused kernels: one warp per row, grid-stride over rows. See row_ops_launch.h for the contracts.
#include <cuda_bf16.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/row_ops_launch.h"

namespace fm::kernels::cuda {
namespace {

constexpr int kWarps = 8;  // warps per block
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float Round(float v) { return __bfloat162float(__float2bfloat16(v)); }
__device__ __forceinline__ float F(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

__device__ __forceinline__ void Unpack(const uint4& u, float* f) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(p[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

__device__ __forceinline__ uint4 Pack(const float* f) {
  uint4 u;
  __nv_bfloat162* p = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) p[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return u;
}

__device__ __forceinline__ float Sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

__device__ __forceinline__ int64_t FirstRow() { return static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; }
__device__ __forceinline__ int64_t RowStep() { return static_cast<int64_t>(gridDim.x) * kWarps; }

// Elementwise kernels: 256 threads, one 8-element vector each, grid-stride beyond 8192 blocks.
int ElementBlocks(int64_t nvec) {
  const int64_t b = (nvec + 255) / 256;
  return static_cast<int>(b < 1 ? 1 : (b > 8192 ? 8192 : b));
}

int Blocks(int64_t rows, int64_t cap) {
  const int64_t b = (rows + kWarps - 1) / kWarps;
  return static_cast<int>(b < 1 ? 1 : (b > cap ? cap : b));
}

// ---- RMSNorm over model-width rows: two passes over the row (the second read hits L1/L2), 8 elements per load.
// With a residual r: v = bf16(x + r) is normed and also stored to y (the second pass re-reads it from y: this
// lane's own stores); without: v = x.
__global__ void RmsNormRowsKernel(int64_t rows, int D, const uint4* __restrict__ x, const uint4* __restrict__ r,
                                  const uint4* __restrict__ w, float eps, uint4* __restrict__ y,
                                  uint4* __restrict__ n) {
  const int lane = threadIdx.x & 31, nvec = D / 8;
  for (int64_t row = FirstRow(); row < rows; row += RowStep()) {
    const uint4* xr = x + row * nvec;
    float ss = 0.f;
    for (int c = lane; c < nvec; c += 32) {
      float v[8];
      Unpack(xr[c], v);
      if (r) {
        float b[8];
        Unpack(r[row * nvec + c], b);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = Round(v[e] + b[e]);
        y[row * nvec + c] = Pack(v);
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
    }
    const float rstd = rsqrtf(WarpSum(ss) / static_cast<float>(D) + eps);
    const uint4* vr = r ? y + row * nvec : xr;
    uint4* nr = n + row * nvec;
    for (int c = lane; c < nvec; c += 32) {
      float v[8], wf[8];
      Unpack(vr[c], v);
      Unpack(w[c], wf);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = wf[e] * Round(v[e] * rstd);
      nr[c] = Pack(v);
    }
  }
}

// dx = rstd * (g - xh * mean(g * xh)), g = dn * w, xh = x * rstd; with a residual gradient dy: dx = bf16(bf16(that)
// + dy), rounded as the two-step composition (norm backward, then the gradient sum) rounds it.
__global__ void RmsNormRowsBackwardKernel(int64_t rows, int D, const uint4* __restrict__ x, const uint4* __restrict__ w,
                                          const uint4* __restrict__ dn, const uint4* __restrict__ dy, float eps,
                                          uint4* __restrict__ dx) {
  const int lane = threadIdx.x & 31, nvec = D / 8;
  for (int64_t row = FirstRow(); row < rows; row += RowStep()) {
    const uint4 *xr = x + row * nvec, *gr = dn + row * nvec;
    float ss = 0.f, gx = 0.f;
    for (int c = lane; c < nvec; c += 32) {
      float v[8], g[8], wf[8];
      Unpack(xr[c], v);
      Unpack(gr[c], g);
      Unpack(w[c], wf);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        ss += v[e] * v[e];
        gx += g[e] * wf[e] * v[e];
      }
    }
    const float rstd = rsqrtf(WarpSum(ss) / static_cast<float>(D) + eps);
    // mean(g w * xh) = rstd * gx / D, so dx = rstd * (g w - x * k) with k = rstd^2 * gx / D.
    const float k = rstd * rstd * WarpSum(gx) / static_cast<float>(D);
    uint4* dr = dx + row * nvec;
    for (int c = lane; c < nvec; c += 32) {
      float v[8], g[8], wf[8];
      Unpack(xr[c], v);
      Unpack(gr[c], g);
      Unpack(w[c], wf);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = rstd * (g[e] * wf[e] - v[e] * k);
      if (dy) {
        float d[8];
        Unpack(dy[row * nvec + c], d);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = Round(v[e]) + d[e];
      }
      dr[c] = Pack(v);
    }
  }
}

// ---- Head transforms: one warp per [D] row, lane l holds elements l + 32 j (j < E = D / 32), so the rotary
// partner d + D/2 of element d is in the same lane (j + E/2).
__device__ __forceinline__ const __nv_bfloat16* RowPtr(const __nv_bfloat16* base, const HeadRows& r, int64_t row,
                                                       int* t_out) {
  const int h = static_cast<int>(row % r.H);
  const int64_t bt = row / r.H;
  const int t = static_cast<int>(bt % r.T), b = static_cast<int>(bt / r.T);
  *t_out = t;
  return base + b * r.stride_b + t * r.stride_t + h * r.stride_h;
}

// Forward of one row held as v[E] (lane's elements), token t.
template <int E>
__device__ __forceinline__ void HeadForwardRow(float (&v)[E], int t, const HeadTransformArgs& a, int lane) {
  constexpr int D = 32 * E;
  if (a.weight || a.unit_norm) {
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < E; ++j) ss += v[j] * v[j];
    const float rstd = rsqrtf(WarpSum(ss) / static_cast<float>(D) + a.eps);
#pragma unroll
    for (int j = 0; j < E; ++j)
      v[j] = a.weight ? Round(F(a.weight[lane + 32 * j]) * Round(v[j] * rstd)) : Round(v[j] * rstd);
  }
  if (a.cos) {
    const __nv_bfloat16 *c = a.cos + static_cast<int64_t>(t) * D, *s = a.sin + static_cast<int64_t>(t) * D;
#pragma unroll
    for (int j = 0; j < E / 2; ++j) {
      const int i = lane + 32 * j, i2 = i + D / 2;
      const float x1 = v[j], x2 = v[j + E / 2];
      v[j] = Round(Round(x1 * F(c[i])) + Round(-x2 * F(s[i])));
      v[j + E / 2] = Round(Round(x2 * F(c[i2])) + Round(x1 * F(s[i2])));
    }
  }
  if (a.silu) {
#pragma unroll
    for (int j = 0; j < E; ++j) v[j] = Round(v[j] * Sigmoid(v[j]));
  }
  if (a.l2) {
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < E; ++j) ss += v[j] * v[j];
    const float inv = rsqrtf(WarpSum(ss) + 1e-6f);
#pragma unroll
    for (int j = 0; j < E; ++j) v[j] = Round(v[j] * inv);
  }
#pragma unroll
  for (int j = 0; j < E; ++j) v[j] *= a.scale;
}

// Backward of one row: x in v (overwritten), dy in g (becomes dx); recomputes the forward in fp32 (without the
// intermediate roundings) and walks it back. Accumulates the weight's gradient into dw.
template <int E>
__device__ __forceinline__ void HeadBackwardRow(float (&v)[E], float (&g)[E], int t, const HeadTransformArgs& a,
                                                int lane, float (&dw)[E]) {
  constexpr int D = 32 * E;
  float xh[E], pre[E], wv[E];
  float rstd = 1.f, rho_inv = 1.f;
#pragma unroll
  for (int j = 0; j < E; ++j) wv[j] = a.weight ? F(a.weight[lane + 32 * j]) : 1.f;
  const bool norm = a.weight || a.unit_norm;
  if (norm) {
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < E; ++j) ss += v[j] * v[j];
    rstd = rsqrtf(WarpSum(ss) / static_cast<float>(D) + a.eps);
#pragma unroll
    for (int j = 0; j < E; ++j) {
      xh[j] = v[j] * rstd;
      v[j] = wv[j] * xh[j];
    }
  }
  const __nv_bfloat16 *c = nullptr, *s = nullptr;
  if (a.cos) {
    c = a.cos + static_cast<int64_t>(t) * D;
    s = a.sin + static_cast<int64_t>(t) * D;
#pragma unroll
    for (int j = 0; j < E / 2; ++j) {
      const int i = lane + 32 * j, i2 = i + D / 2;
      const float x1 = v[j], x2 = v[j + E / 2];
      v[j] = x1 * F(c[i]) - x2 * F(s[i]);
      v[j + E / 2] = x2 * F(c[i2]) + x1 * F(s[i2]);
    }
  }
  if (a.silu) {
#pragma unroll
    for (int j = 0; j < E; ++j) {
      pre[j] = v[j];
      v[j] = v[j] * Sigmoid(v[j]);
    }
  }
  if (a.l2) {
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < E; ++j) ss += v[j] * v[j];
    rho_inv = rsqrtf(WarpSum(ss) + 1e-6f);
#pragma unroll
    for (int j = 0; j < E; ++j) v[j] *= rho_inv;  // the L2 output y
  }
#pragma unroll
  for (int j = 0; j < E; ++j) g[j] *= a.scale;
  if (a.l2) {  // dv = (g - y <g, y>) / rho
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < E; ++j) dot += g[j] * v[j];
    dot = WarpSum(dot);
#pragma unroll
    for (int j = 0; j < E; ++j) g[j] = (g[j] - v[j] * dot) * rho_inv;
  }
  if (a.silu) {
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const float sg = Sigmoid(pre[j]);
      g[j] *= sg * (1.f + pre[j] * (1.f - sg));
    }
  }
  if (a.cos) {  // transpose of the rotation
#pragma unroll
    for (int j = 0; j < E / 2; ++j) {
      const int i = lane + 32 * j, i2 = i + D / 2;
      const float g1 = g[j], g2 = g[j + E / 2];
      g[j] = g1 * F(c[i]) + g2 * F(s[i2]);
      g[j + E / 2] = g2 * F(c[i2]) - g1 * F(s[i]);
    }
  }
  if (norm) {
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < E; ++j) {
      dw[j] += g[j] * xh[j];
      g[j] *= wv[j];
      dot += g[j] * xh[j];
    }
    dot = WarpSum(dot) / static_cast<float>(D);
#pragma unroll
    for (int j = 0; j < E; ++j) g[j] = rstd * (g[j] - xh[j] * dot);
  }
}

// The forward kernel's warp takes kRowsPerIter rows at a time and issues all their loads before computing
// (memory-level parallelism: a row is only 128-512 bytes). The backward keeps one row per warp: with four, its
// register use (137) cut occupancy and it ran 30 % slower on the H200 (run 4).
constexpr int kRowsPerIter = 4;
constexpr int kBackwardRowsPerIter = 1;

template <int E>
__global__ void HeadTransformKernel(int64_t rows, HeadRows in, HeadRows out, HeadTransformArgs a,
                                    const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  for (int64_t base = FirstRow() * kRowsPerIter; base < rows; base += RowStep() * kRowsPerIter) {
    float v[kRowsPerIter][E];
    int t[kRowsPerIter];
#pragma unroll
    for (int r = 0; r < kRowsPerIter; ++r) {
      if (base + r >= rows) break;
      const __nv_bfloat16* xr = RowPtr(x, in, base + r, &t[r]);
#pragma unroll
      for (int j = 0; j < E; ++j) v[r][j] = F(xr[lane + 32 * j]);
    }
#pragma unroll
    for (int r = 0; r < kRowsPerIter; ++r) {
      if (base + r >= rows) break;
      HeadForwardRow<E>(v[r], t[r], a, lane);
      int t2;
      __nv_bfloat16* yr = const_cast<__nv_bfloat16*>(RowPtr(y, out, base + r, &t2));
#pragma unroll
      for (int j = 0; j < E; ++j) yr[lane + 32 * j] = __float2bfloat16(v[r][j]);
    }
  }
}

template <int E>
__global__ void HeadTransformBackwardKernel(int64_t rows, HeadRows xl, HeadRows gl, HeadRows dl, HeadTransformArgs a,
                                            const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ dy,
                                            __nv_bfloat16* __restrict__ dx, float* __restrict__ dweight) {
  const int lane = threadIdx.x & 31;
  constexpr int D = 32 * E;
  float dw[E];
#pragma unroll
  for (int j = 0; j < E; ++j) dw[j] = 0.f;
  for (int64_t base = FirstRow() * kBackwardRowsPerIter; base < rows; base += RowStep() * kBackwardRowsPerIter) {
    float v[kBackwardRowsPerIter][E], g[kBackwardRowsPerIter][E];
    int t[kBackwardRowsPerIter];
#pragma unroll
    for (int r = 0; r < kBackwardRowsPerIter; ++r) {
      if (base + r >= rows) break;
      int tg;
      const __nv_bfloat16* xr = RowPtr(x, xl, base + r, &t[r]);
      const __nv_bfloat16* gr = RowPtr(dy, gl, base + r, &tg);
#pragma unroll
      for (int j = 0; j < E; ++j) {
        v[r][j] = F(xr[lane + 32 * j]);
        g[r][j] = F(gr[lane + 32 * j]);
      }
    }
#pragma unroll
    for (int r = 0; r < kBackwardRowsPerIter; ++r) {
      if (base + r >= rows) break;
      HeadBackwardRow<E>(v[r], g[r], t[r], a, lane, dw);
      int td;
      __nv_bfloat16* dr = const_cast<__nv_bfloat16*>(RowPtr(dx, dl, base + r, &td));
#pragma unroll
      for (int j = 0; j < E; ++j) dr[lane + 32 * j] = __float2bfloat16(g[r][j]);
    }
  }
  if (dweight) {  // block-level sum in shared memory, then one atomic per element and block
    __shared__ float part[32 * 8];
    for (int i = threadIdx.x; i < D; i += blockDim.x) part[i] = 0.f;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < E; ++j) atomicAdd(&part[lane + 32 * j], dw[j]);
    __syncthreads();
    for (int i = threadIdx.x; i < D; i += blockDim.x) atomicAdd(&dweight[i], part[i]);
  }
}

// ---- Head transforms, vectorized (HeadTransformArgs::vectorized): G = D / 8 lanes per row, each holding 8
// consecutive elements (one 16-byte load), 32 / G rows per warp; row sums over the lane group by xor-shuffles; the
// rotary partner d + D/2 sits G/2 lanes away. Needs 16-byte aligned rows (strides multiples of 8 elements).
template <int G>
__device__ __forceinline__ float GroupSum(float v) {
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// RowPtr with 32-bit index arithmetic (rows < 2^31, which the glue checks): cheaper than 64-bit division.
__device__ __forceinline__ const __nv_bfloat16* RowPtr32(const __nv_bfloat16* base, const HeadRows& r, int row,
                                                         int* t_out) {
  const int h = row % r.H, bt = row / r.H, t = bt % r.T, b = bt / r.T;
  *t_out = t;
  return base + b * r.stride_b + t * r.stride_t + h * r.stride_h;
}

__device__ __forceinline__ void Load8(const __nv_bfloat16* p, float (&f)[8]) {
  Unpack(*reinterpret_cast<const uint4*>(p), f);
}

// sub = the lane's index in its row group; every lane of the warp calls this (shuffles), valid row or not.
template <int G>
__device__ __forceinline__ void VecForwardRow(float (&v)[8], int t, const HeadTransformArgs& a, int sub) {
  constexpr int D = 8 * G;
  const int c0 = 8 * sub;
  if (a.weight || a.unit_norm) {
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
    const float rstd = rsqrtf(GroupSum<G>(ss) / static_cast<float>(D) + a.eps);
    float w[8];
    if (a.weight) Load8(a.weight + c0, w);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = a.weight ? Round(w[e] * Round(v[e] * rstd)) : Round(v[e] * rstd);
  }
  if (a.cos) {
    float c[8], sn[8], p[8];
    Load8(a.cos + static_cast<int64_t>(t) * D + c0, c);
    Load8(a.sin + static_cast<int64_t>(t) * D + c0, sn);
    const float sign = sub < G / 2 ? -1.f : 1.f;  // x1 c - x2 s (first half), x2 c + x1 s (second half)
#pragma unroll
    for (int e = 0; e < 8; ++e) p[e] = __shfl_xor_sync(kFull, v[e], G / 2);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = Round(Round(v[e] * c[e]) + Round(sign * p[e] * sn[e]));
  }
  if (a.silu) {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = Round(v[e] * Sigmoid(v[e]));
  }
  if (a.l2) {
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
    const float inv = rsqrtf(GroupSum<G>(ss) + 1e-6f);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = Round(v[e] * inv);
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] *= a.scale;
}

// x in v, dy in g (becomes dx); the weight's gradient accumulates into dw. Same math as HeadBackwardRow.
template <int G>
__device__ __forceinline__ void VecBackwardRow(float (&v)[8], float (&g)[8], int t, const HeadTransformArgs& a, int sub,
                                               float (&dw)[8]) {
  constexpr int D = 8 * G;
  const int c0 = 8 * sub, partner0 = 8 * (sub ^ (G / 2));
  float xh[8], pre[8], w[8];
  float rstd = 1.f, rho_inv = 1.f;
#pragma unroll
  for (int e = 0; e < 8; ++e) w[e] = 1.f;
  if (a.weight) Load8(a.weight + c0, w);
  const bool norm = a.weight || a.unit_norm;
  if (norm) {
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
    rstd = rsqrtf(GroupSum<G>(ss) / static_cast<float>(D) + a.eps);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      xh[e] = v[e] * rstd;
      v[e] = w[e] * xh[e];
    }
  }
  float c[8], sn[8], psn[8];
  const float sign = sub < G / 2 ? -1.f : 1.f;
  if (a.cos) {
    Load8(a.cos + static_cast<int64_t>(t) * D + c0, c);
    Load8(a.sin + static_cast<int64_t>(t) * D + c0, sn);
    Load8(a.sin + static_cast<int64_t>(t) * D + partner0, psn);
    float p[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) p[e] = __shfl_xor_sync(kFull, v[e], G / 2);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = v[e] * c[e] + sign * p[e] * sn[e];
  }
  if (a.silu) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      pre[e] = v[e];
      v[e] = v[e] * Sigmoid(v[e]);
    }
  }
  if (a.l2) {
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
    rho_inv = rsqrtf(GroupSum<G>(ss) + 1e-6f);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] *= rho_inv;
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) g[e] *= a.scale;
  if (a.l2) {
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) dot += g[e] * v[e];
    dot = GroupSum<G>(dot);
#pragma unroll
    for (int e = 0; e < 8; ++e) g[e] = (g[e] - v[e] * dot) * rho_inv;
  }
  if (a.silu) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float sg = Sigmoid(pre[e]);
      g[e] *= sg * (1.f + pre[e] * (1.f - sg));
    }
  }
  if (a.cos) {  // first half: g1 c1 + g2 s2; second half: g2 c2 - g1 s1 (the partner's g and sin)
    float pg[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) pg[e] = __shfl_xor_sync(kFull, g[e], G / 2);
#pragma unroll
    for (int e = 0; e < 8; ++e) g[e] = g[e] * c[e] - sign * pg[e] * psn[e];
  }
  if (norm) {
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      dw[e] += g[e] * xh[e];
      g[e] *= w[e];
      dot += g[e] * xh[e];
    }
    dot = GroupSum<G>(dot) / static_cast<float>(D);
#pragma unroll
    for (int e = 0; e < 8; ++e) g[e] = rstd * (g[e] - xh[e] * dot);
  }
}

template <int G>
__global__ void HeadTransformVecKernel(int64_t rows, HeadRows in, HeadRows out, HeadTransformArgs a,
                                       const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y) {
  constexpr int kRowsPerWarp = 32 / G;
  const int lane = threadIdx.x & 31, sub = lane % G;
  for (int64_t first = FirstRow() * kRowsPerWarp; first < rows; first += RowStep() * kRowsPerWarp) {
    const int64_t row = first + lane / G;
    const bool valid = row < rows;
    int t = 0;
    float v[8] = {};
    if (valid) Load8(RowPtr32(x, in, static_cast<int>(row), &t) + 8 * sub, v);
    VecForwardRow<G>(v, t, a, sub);
    if (valid) {
      int t2;
      *reinterpret_cast<uint4*>(const_cast<__nv_bfloat16*>(RowPtr32(y, out, static_cast<int>(row), &t2)) + 8 * sub) =
          Pack(v);
    }
  }
}

template <int G>
__global__ void HeadTransformVecBackwardKernel(int64_t rows, HeadRows xl, HeadRows gl, HeadRows dl, HeadTransformArgs a,
                                               const __nv_bfloat16* __restrict__ x,
                                               const __nv_bfloat16* __restrict__ dy, __nv_bfloat16* __restrict__ dx,
                                               float* __restrict__ dweight) {
  constexpr int kRowsPerWarp = 32 / G, D = 8 * G;
  const int lane = threadIdx.x & 31, sub = lane % G;
  float dw[8] = {};
  for (int64_t first = FirstRow() * kRowsPerWarp; first < rows; first += RowStep() * kRowsPerWarp) {
    const int64_t row = first + lane / G;
    const bool valid = row < rows;
    int t = 0, tg;
    float v[8] = {}, g[8] = {};
    if (valid) {
      Load8(RowPtr32(x, xl, static_cast<int>(row), &t) + 8 * sub, v);
      Load8(RowPtr32(dy, gl, static_cast<int>(row), &tg) + 8 * sub, g);
    }
    VecBackwardRow<G>(v, g, t, a, sub, dw);
    if (valid) {
      int td;
      *reinterpret_cast<uint4*>(const_cast<__nv_bfloat16*>(RowPtr32(dx, dl, static_cast<int>(row), &td)) + 8 * sub) =
          Pack(g);
    }
  }
  if (dweight) {  // block-level sum in shared memory, then one atomic per element and block
    __shared__ float part[D];
    for (int i = threadIdx.x; i < D; i += blockDim.x) part[i] = 0.f;
    __syncthreads();
#pragma unroll
    for (int e = 0; e < 8; ++e) atomicAdd(&part[8 * sub + e], dw[e]);
    __syncthreads();
    for (int i = threadIdx.x; i < D; i += blockDim.x) atomicAdd(&dweight[i], part[i]);
  }
}

// ---- SwiGLU, 8 elements per thread.
__global__ void SwiGluKernel(int64_t nvec, const uint4* __restrict__ g, const uint4* __restrict__ u,
                             uint4* __restrict__ y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float gf[8], uf[8];
    Unpack(g[i], gf);
    Unpack(u[i], uf);
#pragma unroll
    for (int e = 0; e < 8; ++e) gf[e] = Round(gf[e] * Sigmoid(gf[e])) * uf[e];
    y[i] = Pack(gf);
  }
}

__global__ void SwiGluBackwardKernel(int64_t nvec, const uint4* __restrict__ g, const uint4* __restrict__ u,
                                     const uint4* __restrict__ dy, uint4* __restrict__ dg, uint4* __restrict__ du) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float gf[8], uf[8], d[8], a[8], b[8];
    Unpack(g[i], gf);
    Unpack(u[i], uf);
    Unpack(dy[i], d);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float sg = Sigmoid(gf[e]);
      b[e] = d[e] * gf[e] * sg;                               // du = dy * silu(g)
      a[e] = d[e] * uf[e] * sg * (1.f + gf[e] * (1.f - sg));  // dg = dy * u * silu'(g)
    }
    dg[i] = Pack(a);
    du[i] = Pack(b);
  }
}

template <int E>
cudaError_t HeadForward(int64_t rows, const HeadRows& in, const HeadRows& out, const HeadTransformArgs& a,
                        const __nv_bfloat16* x, __nv_bfloat16* y, cudaStream_t stream) {
  if (a.vectorized) {
    constexpr int G = 32 * E / 8, kRowsPerBlock = kWarps * 32 / G;
    return Launch(HeadTransformVecKernel<G>, dim3(Blocks((rows + kRowsPerBlock - 1) / kRowsPerBlock * kWarps, 1 << 16)),
                  32 * kWarps, 0, stream, rows, in, out, a, x, y);
  }
  const int64_t iters = (rows + kRowsPerIter - 1) / kRowsPerIter;
  return Launch(HeadTransformKernel<E>, dim3(Blocks(iters, 1 << 16)), 32 * kWarps, 0, stream, rows, in, out, a, x, y);
}

template <int E>
cudaError_t HeadBackward(int64_t rows, const HeadRows& xl, const HeadRows& gl, const HeadRows& dl,
                         const HeadTransformArgs& a, const __nv_bfloat16* x, const __nv_bfloat16* dy, __nv_bfloat16* dx,
                         float* dweight, cudaStream_t stream) {
  if (a.vectorized) {
    constexpr int G = 32 * E / 8, kRowsPerBlock = kWarps * 32 / G;
    return Launch(HeadTransformVecBackwardKernel<G>,
                  dim3(Blocks((rows + kRowsPerBlock - 1) / kRowsPerBlock * kWarps, dweight ? 1024 : (1 << 16))),
                  32 * kWarps, 0, stream, rows, xl, gl, dl, a, x, dy, dx, dweight);
  }
  // With a weight gradient, fewer blocks (more rows per warp) keep the atomics few.
  const int64_t iters = (rows + kBackwardRowsPerIter - 1) / kBackwardRowsPerIter;
  return Launch(HeadTransformBackwardKernel<E>, dim3(Blocks(iters, dweight ? 1024 : (1 << 16))), 32 * kWarps, 0, stream,
                rows, xl, gl, dl, a, x, dy, dx, dweight);
}

}  // namespace

bool RmsNormRowsSupported(int64_t D) { return D > 0 && D % 8 == 0; }

cudaError_t LaunchRmsNormRows(int64_t rows, int D, const __nv_bfloat16* x, const __nv_bfloat16* w, float eps,
                              __nv_bfloat16* y, cudaStream_t stream) {
  return LaunchAddRmsNormRows(rows, D, x, nullptr, w, eps, nullptr, y, stream);
}

cudaError_t LaunchRmsNormRowsBackward(int64_t rows, int D, const __nv_bfloat16* x, const __nv_bfloat16* w,
                                      const __nv_bfloat16* dy, float eps, __nv_bfloat16* dx, cudaStream_t stream) {
  return LaunchAddRmsNormRowsBackward(rows, D, x, w, dy, nullptr, eps, dx, stream);
}

cudaError_t LaunchAddRmsNormRows(int64_t rows, int D, const __nv_bfloat16* x, const __nv_bfloat16* r,
                                 const __nv_bfloat16* w, float eps, __nv_bfloat16* y, __nv_bfloat16* n,
                                 cudaStream_t stream) {
  if (!RmsNormRowsSupported(D)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return Launch(RmsNormRowsKernel, dim3(Blocks(rows, 1 << 16)), 32 * kWarps, 0, stream, rows, D,
                reinterpret_cast<const uint4*>(x), reinterpret_cast<const uint4*>(r), reinterpret_cast<const uint4*>(w),
                eps, reinterpret_cast<uint4*>(y), reinterpret_cast<uint4*>(n));
}

cudaError_t LaunchAddRmsNormRowsBackward(int64_t rows, int D, const __nv_bfloat16* y, const __nv_bfloat16* w,
                                         const __nv_bfloat16* dn, const __nv_bfloat16* dy, float eps, __nv_bfloat16* dx,
                                         cudaStream_t stream) {
  if (!RmsNormRowsSupported(D)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return Launch(RmsNormRowsBackwardKernel, dim3(Blocks(rows, 1 << 16)), 32 * kWarps, 0, stream, rows, D,
                reinterpret_cast<const uint4*>(y), reinterpret_cast<const uint4*>(w),
                reinterpret_cast<const uint4*>(dn), reinterpret_cast<const uint4*>(dy), eps,
                reinterpret_cast<uint4*>(dx));
}

bool HeadTransformSupported(int D) { return D == 64 || D == 128 || D == 256; }

cudaError_t LaunchHeadTransform(const HeadRows& in, const HeadRows& out, const HeadTransformArgs& args,
                                const __nv_bfloat16* x, __nv_bfloat16* y, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(in.B) * in.T * in.H;
  if (!HeadTransformSupported(in.D) || (args.weight && args.unit_norm)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  switch (in.D) {
    case 64:
      return HeadForward<2>(rows, in, out, args, x, y, stream);
    case 128:
      return HeadForward<4>(rows, in, out, args, x, y, stream);
    default:
      return HeadForward<8>(rows, in, out, args, x, y, stream);
  }
}

cudaError_t LaunchHeadTransformBackward(const HeadRows& x_rows, const HeadRows& dy_rows, const HeadRows& dx_rows,
                                        const HeadTransformArgs& args, const __nv_bfloat16* x, const __nv_bfloat16* dy,
                                        __nv_bfloat16* dx, float* dweight, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(x_rows.B) * x_rows.T * x_rows.H;
  if (!HeadTransformSupported(x_rows.D) || (args.weight && args.unit_norm)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  switch (x_rows.D) {
    case 64:
      return HeadBackward<2>(rows, x_rows, dy_rows, dx_rows, args, x, dy, dx, dweight, stream);
    case 128:
      return HeadBackward<4>(rows, x_rows, dy_rows, dx_rows, args, x, dy, dx, dweight, stream);
    default:
      return HeadBackward<8>(rows, x_rows, dy_rows, dx_rows, args, x, dy, dx, dweight, stream);
  }
}

cudaError_t LaunchSwiGlu(int64_t n, const __nv_bfloat16* g, const __nv_bfloat16* u, __nv_bfloat16* y,
                         cudaStream_t stream) {
  if (n % 8 != 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const int64_t nvec = n / 8;
  return Launch(SwiGluKernel, dim3(ElementBlocks(nvec)), 256, 0, stream, nvec, reinterpret_cast<const uint4*>(g),
                reinterpret_cast<const uint4*>(u), reinterpret_cast<uint4*>(y));
}

cudaError_t LaunchSwiGluBackward(int64_t n, const __nv_bfloat16* g, const __nv_bfloat16* u, const __nv_bfloat16* dy,
                                 __nv_bfloat16* dg, __nv_bfloat16* du, cudaStream_t stream) {
  if (n % 8 != 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const int64_t nvec = n / 8;
  return Launch(SwiGluBackwardKernel, dim3(ElementBlocks(nvec)), 256, 0, stream, nvec,
                reinterpret_cast<const uint4*>(g), reinterpret_cast<const uint4*>(u),
                reinterpret_cast<const uint4*>(dy), reinterpret_cast<uint4*>(dg), reinterpret_cast<uint4*>(du));
}

}  // namespace fm::kernels::cuda
