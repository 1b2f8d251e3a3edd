// CPU emulation (tests/cuda_emu/) of kernels/cuda/mma_ptx.cuh: ldmatrix and mma.sync m16n8k16 as warp collectives
// that move the same elements into the same fragment registers as the PTX ISA specifies (layouts in
// kernels/cuda/mma.cuh); the product accumulates in fp32 in k order.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "tests/cuda_emu/emu_runtime.h"

namespace fm::kernels::cuda::mma {
namespace emu_detail {

inline uint16_t Half(uint32_t v, int hi) { return static_cast<uint16_t>(hi ? v >> 16 : v & 0xffffu); }
inline float F(uint16_t bits) { return __bfloat162float(__nv_bfloat16{bits}); }
inline uint32_t Pack(uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16); }

// Lane l's address is row l % 8 of matrix l / 8 (8 contiguous b16 elements each).
template <bool kTrans>
void LdMatrixOp(const void* const* in, void* const* out) {
  for (int lane = 0; lane < 32; ++lane) {
    uint32_t* r = static_cast<uint32_t*>(out[lane]);
    for (int i = 0; i < 4; ++i) {
      if (!kTrans) {  // (row lane / 4, cols 2 (lane % 4), +1)
        const uint16_t* row = *reinterpret_cast<const uint16_t* const*>(in[8 * i + lane / 4]);
        r[i] = Pack(row[2 * (lane % 4)], row[2 * (lane % 4) + 1]);
      } else {  // (rows 2 (lane % 4), +1, col lane / 4)
        const uint16_t* r0 = *reinterpret_cast<const uint16_t* const*>(in[8 * i + 2 * (lane % 4)]);
        const uint16_t* r1 = *reinterpret_cast<const uint16_t* const*>(in[8 * i + 2 * (lane % 4) + 1]);
        r[i] = Pack(r0[lane / 4], r1[lane / 4]);
      }
    }
  }
}

struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};

inline void MmaOp(const void* const* in, void* const* out) {
  float A[16][16], B[16][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const MmaIn& x = *static_cast<const MmaIn*>(in[lane]);
    const int g = lane / 4, q = lane % 4;
    for (int h = 0; h < 2; ++h) {
      A[g][2 * q + h] = F(Half(x.a[0], h));
      A[g + 8][2 * q + h] = F(Half(x.a[1], h));
      A[g][2 * q + 8 + h] = F(Half(x.a[2], h));
      A[g + 8][2 * q + 8 + h] = F(Half(x.a[3], h));
      B[2 * q + h][g] = F(Half(x.b[0], h));
      B[2 * q + 8 + h][g] = F(Half(x.b[1], h));
      C[g][2 * q + h] = x.c[h];
      C[g + 8][2 * q + h] = x.c[2 + h];
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, q = lane % 4;
    float* d = static_cast<float*>(out[lane]);
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e / 2), col = 2 * q + e % 2;
      float acc = C[row][col];
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
      d[e] = acc;
    }
  }
}

}  // namespace emu_detail

inline void LdMatrixX4(uint32_t (&r)[4], const void* row) {
  ::cuda_emu::WarpCollective(&row, r, &emu_detail::LdMatrixOp<false>);
}
inline void LdMatrixX4Trans(uint32_t (&r)[4], const void* row) {
  ::cuda_emu::WarpCollective(&row, r, &emu_detail::LdMatrixOp<true>);
}
inline void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu_detail::MmaIn in{{a[0], a[1], a[2], a[3]}, {b0, b1}, {d[0], d[1], d[2], d[3]}};
  float out[4];
  ::cuda_emu::WarpCollective(&in, out, &emu_detail::MmaOp);
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

}  // namespace fm::kernels::cuda::mma
