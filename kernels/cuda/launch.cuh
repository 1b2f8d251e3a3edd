// The one place that launches the tiled kernels (kernels/cuda/*.cu): raises a kernel's dynamic shared-memory limit
// and launches it on a stream. Host-side; a CPU emulation of the kernels (tests/cuda_emu/) replaces this header.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace fm::kernels::cuda {

// Dynamic shared memory a kernel may take without raising its limit.
constexpr size_t kDefaultDynamicSmem = 48 * 1024;

// Host side: launches `kernel` with `smem` bytes of dynamic shared memory (raising the kernel's limit first when it
// is above 48 KiB); nothing for an empty grid. Returns the launch error.
template <typename Kernel, typename... Args>
cudaError_t Launch(Kernel kernel, dim3 grid, int threads, size_t smem, cudaStream_t stream, Args... args) {
  if (grid.x == 0 || grid.y == 0) return cudaSuccess;
  if (smem > kDefaultDynamicSmem) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, threads, smem, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace fm::kernels::cuda
