// Block-level building blocks shared by the chunked linear-attention kernels: shared-memory carving, async copies of
// global rows into shared memory, in-chunk cumulative decays. Device-only; included by kernels/cuda/*.cu (the
// WMMA block GEMM is in wmma_gemm.cuh, the launch helper in launch.cuh). No LibTorch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/launch.cuh"

namespace fm::kernels::cuda {

using bf16 = __nv_bfloat16;

// Shared-memory rows are padded so that consecutive rows start in different banks (16 bytes for bf16, 16 for f32).
constexpr int kPadBf16 = 8;
constexpr int kPadF32 = 4;

__device__ __forceinline__ float ToF(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 ToBf(float x) { return __float2bfloat16(x); }

// Bump allocator over dynamic shared memory; every region starts on a 128-byte boundary (WMMA wants 32).
struct SmemCarver {
  char* base;
  size_t used = 0;
  template <typename T>
  __device__ T* Take(size_t count) {
    T* p = reinterpret_cast<T*>(base + used);
    used += (count * sizeof(T) + 127) / 128 * 128;
    return p;
  }
};

// Host-side twin of SmemCarver for computing a kernel's dynamic shared-memory size.
struct SmemSize {
  size_t used = 0;
  template <typename T>
  constexpr void Take(size_t count) {
    used += (count * sizeof(T) + 127) / 128 * 128;
  }
};

// Copies `rows` rows of `cols` bf16 (cols * 2 a multiple of 16 bytes) from global (row stride src_ld) into shared
// memory (row stride dst_ld) with cp.async; the caller commits and waits.
__device__ __forceinline__ void AsyncCopyRows(bf16* dst, int dst_ld, const bf16* src, int64_t src_ld, int rows,
                                              int cols) {
  const int segs_per_row = cols * 2 / 16;
  for (int s = threadIdx.x; s < rows * segs_per_row; s += blockDim.x) {
    const int r = s / segs_per_row, c = (s % segs_per_row) * 8;
    __pipeline_memcpy_async(dst + r * dst_ld + c, src + r * src_ld + c, 16);
  }
}

// Same for fp32 rows (cols a multiple of 4).
__device__ __forceinline__ void AsyncCopyRowsF32(float* dst, int dst_ld, const float* src, int64_t src_ld, int rows,
                                                 int cols) {
  const int segs_per_row = cols / 4;
  for (int s = threadIdx.x; s < rows * segs_per_row; s += blockDim.x) {
    const int r = s / segs_per_row, c = (s % segs_per_row) * 4;
    __pipeline_memcpy_async(dst + r * dst_ld + c, src + r * src_ld + c, 16);
  }
}

// Synchronous variants (plain 16-byte loads), for kernels that do not pipeline.
__device__ __forceinline__ void CopyRows(bf16* dst, int dst_ld, const bf16* src, int64_t src_ld, int rows, int cols) {
  const int segs_per_row = cols / 8;
  for (int s = threadIdx.x; s < rows * segs_per_row; s += blockDim.x) {
    const int r = s / segs_per_row, c = (s % segs_per_row) * 8;
    *reinterpret_cast<uint4*>(dst + r * dst_ld + c) = *reinterpret_cast<const uint4*>(src + r * src_ld + c);
  }
}

__device__ __forceinline__ void CopyRowsF32(float* dst, int dst_ld, const float* src, int64_t src_ld, int rows,
                                            int cols) {
  const int segs_per_row = cols / 4;
  for (int s = threadIdx.x; s < rows * segs_per_row; s += blockDim.x) {
    const int r = s / segs_per_row, c = (s % segs_per_row) * 4;
    *reinterpret_cast<float4*>(dst + r * dst_ld + c) = *reinterpret_cast<const float4*>(src + r * src_ld + c);
  }
}

// Writes an fp32 shared tile [rows x cols] to global bf16 rows (cols a multiple of 2).
__device__ __forceinline__ void StoreRowsBf16(bf16* dst, int64_t dst_ld, const float* src, int src_ld, int rows,
                                              int cols) {
  const int pairs_per_row = cols / 2;
  for (int s = threadIdx.x; s < rows * pairs_per_row; s += blockDim.x) {
    const int r = s / pairs_per_row, c = (s % pairs_per_row) * 2;
    *reinterpret_cast<__nv_bfloat162*>(dst + r * dst_ld + c) =
        __floats2bfloat162_rn(src[r * src_ld + c], src[r * src_ld + c + 1]);
  }
}

// Cumulative sums of log decays inside one chunk, in place: scalar decays g[C] (one per step) or per-channel decays
// g[C x ld] (columns < dk). Uses threads [0, C) or [0, dk); the caller synchronises.
template <int C>
__device__ __forceinline__ void ChunkCumsumScalar(float* g) {
  // Warp-level inclusive scan over C <= 64 values held two per lane.
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float a = lane < C ? g[lane] : 0.f;
    float b = lane + 32 < C ? g[lane + 32] : 0.f;
    for (int off = 1; off < 32; off <<= 1) {
      const float ya = __shfl_up_sync(0xffffffff, a, off);
      const float yb = __shfl_up_sync(0xffffffff, b, off);
      if (lane >= off) a += ya, b += yb;
    }
    const float total_a = __shfl_sync(0xffffffff, a, 31);
    b += total_a;
    if (lane < C) g[lane] = a;
    if (lane + 32 < C) g[lane + 32] = b;
  }
}

template <int C>
__device__ __forceinline__ void ChunkCumsumChannels(float* g, int ld, int dk) {
  for (int d = threadIdx.x; d < dk; d += blockDim.x) {
    float acc = 0.f;
#pragma unroll 8
    for (int i = 0; i < C; ++i) {
      acc += g[i * ld + d];
      g[i * ld + d] = acc;
    }
  }
}

}  // namespace fm::kernels::cuda
