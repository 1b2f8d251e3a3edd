// Warp-level bf16 tensor-core products on registers: mma.sync m16n8k16 (bf16 operands, fp32 accumulators) and
// ldmatrix loads of its operand fragments from shared-memory tiles, with the PTX fragment layouts written out so
// that callers can scale or mask fragment elements by their row/column. Device-only; no LibTorch.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16), lane = 4 * group + quad:
//   A (16 x 16, 4 regs of bf16x2): reg0 (row group,     cols 2quad, 2quad+1), reg1 (row group + 8, same cols),
//                                  reg2 (row group,     cols 2quad+8, +9),    reg3 (row group + 8, cols +8, +9)
//   B (16 x 8, 2 regs):            reg0 (rows 2quad, 2quad+1, col group),      reg1 (rows 2quad+8, +9, col group)
//   C (16 x 8, 4 fp32):            c0, c1 (row group, cols 2quad, 2quad+1),    c2, c3 (row group + 8, same cols)
// The lower 16 bits of a bf16x2 register hold the element of the smaller column (A, C) or row (B) index.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "kernels/cuda/mma_ptx.cuh"

namespace fm::kernels::cuda::mma {

// A fragment at (m0, k0) of an operand stored row-major as [m][k] (leading dimension ld, in elements).
__device__ __forceinline__ void LoadA(uint32_t (&a)[4], const __nv_bfloat16* tile, int ld, int m0, int k0, int lane) {
  const int i = lane / 8, r = lane % 8;
  LdMatrixX4(a, tile + (m0 + r + 8 * (i % 2)) * ld + k0 + 8 * (i / 2));
}

// A fragment at (m0, k0) of an operand whose transpose is stored row-major ([k][m]).
__device__ __forceinline__ void LoadATransposed(uint32_t (&a)[4], const __nv_bfloat16* tile, int ld, int m0, int k0,
                                                int lane) {
  const int i = lane / 8, r = lane % 8;
  LdMatrixX4Trans(a, tile + (k0 + r + 8 * (i / 2)) * ld + m0 + 8 * (i % 2));
}

// B fragments of the two n8 tiles at n0 and n0 + 8 (k16 at k0) of an operand stored as [n][k] (its rows are B's
// columns, e.g. K in Q K^T): b[0], b[1] for the tile at n0, b[2], b[3] for n0 + 8.
__device__ __forceinline__ void LoadBPairNK(uint32_t (&b)[4], const __nv_bfloat16* tile, int ld, int n0, int k0,
                                            int lane) {
  const int i = lane / 8, r = lane % 8;
  LdMatrixX4(b, tile + (n0 + r + 8 * (i / 2)) * ld + k0 + 8 * (i % 2));
}

// The same from an operand stored row-major as [k][n] (e.g. V in P V, a state S in Q S).
__device__ __forceinline__ void LoadBPairKN(uint32_t (&b)[4], const __nv_bfloat16* tile, int ld, int n0, int k0,
                                            int lane) {
  const int i = lane / 8, r = lane % 8;
  LdMatrixX4Trans(b, tile + (k0 + r + 8 * (i % 2)) * ld + n0 + 8 * (i / 2));
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

// Multiplies the two bf16 halves of a register by lo and hi (in fp32, rounded back to bf16).
__device__ __forceinline__ uint32_t ScaleBf16x2(uint32_t v, float lo, float hi) {
  __nv_bfloat162 h;
  memcpy(&h, &v, sizeof(h));
  const float2 f = __bfloat1622float2(h);
  return PackBf16(f.x * lo, f.y * hi);
}

}  // namespace fm::kernels::cuda::mma
