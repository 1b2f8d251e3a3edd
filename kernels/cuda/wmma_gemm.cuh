// Block-level bf16 tensor-core GEMM on shared-memory tiles (WMMA m16n16k16, fp32 accumulation in shared memory),
// used by the per-chunk kernels of gla_chunk.cu and gdn_chunk.cu. Device-only. No LibTorch.
#pragma once

#include <cuda_bf16.h>
#include <mma.h>

#include <type_traits>

namespace fm::kernels::cuda {

namespace wmma = nvcuda::wmma;

// C[M x N] (+)= op(A)[M x K] * op(B)[K x N], all operands in shared memory; M, N, K multiples of 16.
// op(A) = A (row-major, lda) or, with kTransA, the transpose of a row-major [K x M] matrix (lda is its row stride).
// op(B) = B (row-major [K x N], ldb) or, with kTransB, the transpose of a row-major [N x K] matrix.
// C is row-major fp32 with ldc; with accumulate it is read first. The 16x16 output tiles are spread over the
// block's warps; the caller synchronises before reading C.
template <bool kTransA, bool kTransB>
__device__ __forceinline__ void BlockGemm(const __nv_bfloat16* A, int lda, const __nv_bfloat16* B, int ldb, float* C,
                                          int ldc, int M, int N, int K, bool accumulate) {
  using LayoutA = std::conditional_t<kTransA, wmma::col_major, wmma::row_major>;
  using LayoutB = std::conditional_t<kTransB, wmma::col_major, wmma::row_major>;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int tiles_n = N / 16, tiles = (M / 16) * tiles_n;
  for (int t = warp; t < tiles; t += warps) {
    const int tm = t / tiles_n, tn = t % tiles_n;
    float* c = C + tm * 16 * ldc + tn * 16;
    if (accumulate) {
      wmma::load_matrix_sync(fc, c, ldc, wmma::mem_row_major);
    } else {
      wmma::fill_fragment(fc, 0.f);
    }
    for (int kk = 0; kk < K; kk += 16) {
      const __nv_bfloat16* a = kTransA ? A + kk * lda + tm * 16 : A + tm * 16 * lda + kk;
      const __nv_bfloat16* b = kTransB ? B + tn * 16 * ldb + kk : B + kk * ldb + tn * 16;
      wmma::load_matrix_sync(fa, a, lda);
      wmma::load_matrix_sync(fb, b, ldb);
      wmma::mma_sync(fc, fa, fb, fc);
    }
    wmma::store_matrix_sync(c, fc, ldc, wmma::mem_row_major);
  }
}

}  // namespace fm::kernels::cuda
