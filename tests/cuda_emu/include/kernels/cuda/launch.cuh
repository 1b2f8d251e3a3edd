// CPU emulation (tests/cuda_emu/) of kernels/cuda/launch.cuh: a launch runs the grid on emulated threads.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "tests/cuda_emu/emu_runtime.h"

namespace fm::kernels::cuda {

template <typename Kernel, typename... Args>
cudaError_t Launch(Kernel kernel, dim3 grid, int threads, size_t smem, cudaStream_t, Args... args) {
  if (grid.x == 0 || grid.y == 0) return cudaSuccess;
  ::cuda_emu::RunGrid({grid.x, grid.y, grid.z}, {static_cast<unsigned>(threads), 1, 1}, smem, [&] { kernel(args...); });
  return cudaSuccess;
}

}  // namespace fm::kernels::cuda
