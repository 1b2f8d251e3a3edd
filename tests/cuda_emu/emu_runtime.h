// A small CPU emulation of CUDA's execution model, for running the project's kernels (kernels/cuda/*.cu) unchanged on
// machines without a GPU: every thread of a block is a coroutine; __syncthreads, __syncwarp, the warp shuffles and
// the warp-wide matrix instructions (ldmatrix, mma.sync; include/kernels/cuda/mma_ptx.cuh) are collectives that
// resume their threads once every participant has arrived. Blocks run one after another; asynchronous copies
// complete at once. A divergent collective or barrier (some threads never arrive) aborts with a message.
//
// What it checks: the kernels' indexing, fragment layouts, masks, synchronisation structure and arithmetic, on the
// same source the GPU compiles. What it cannot: timing, races between blocks or between a copy and its use, the
// hardware's own summation order inside an mma (emulated in fp32 in k order).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace cuda_emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// The emulated thread now running (outside a kernel: one host thread with all indices 0).
struct ThreadState {
  Dim3 thread_idx, block_idx, block_dim, grid_dim;
  int lane = 0, warp = 0;
};
ThreadState& Current();

// Runs `body` once per thread of every block of the grid (blocks one after another, x fastest), with
// `dynamic_smem` bytes of dynamic shared memory per block, filled with 0xff bytes first (reads of shared memory
// nothing wrote show as NaN). Threads per block: a multiple of 32 (whole warps).
void RunGrid(Dim3 grid, Dim3 block, size_t dynamic_smem, const std::function<void()>& body);

// The running block's dynamic shared memory (128-byte aligned).
char* DynamicSmem();

void SyncThreads();

// A collective of the running thread's warp: every lane passes pointers to its input and output; once all 32 have
// arrived, op(inputs, outputs) runs once over the 32 pointer pairs (in lane order), then every lane continues.
using CollectiveOp = void (*)(const void* const* in, void* const* out);
void WarpCollective(const void* in, void* out, CollectiveOp op);

void SyncWarp();

// Collective operations performed so far (all warps): a count for tests to show the emulation ran.
int64_t CollectiveCount();

}  // namespace cuda_emu
