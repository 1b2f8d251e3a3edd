// CPU emulation (tests/cuda_emu/) of kernels/cuda/smem.cuh.
#pragma once

#include "tests/cuda_emu/emu_runtime.h"

namespace fm::kernels::cuda {

inline char* DynamicSmem() { return ::cuda_emu::DynamicSmem(); }

}  // namespace fm::kernels::cuda
