// The dynamic shared memory of the running block (128-byte aligned), for the tiled kernels' SmemCarver. Device-only;
// a CPU emulation of the kernels (tests/cuda_emu/) replaces this header.
#pragma once

namespace fm::kernels::cuda {

__device__ __forceinline__ char* DynamicSmem() {
  extern __shared__ __align__(128) char fm_dynamic_smem[];
  return fm_dynamic_smem;
}

}  // namespace fm::kernels::cuda
