// Force-included (-include) into every translation unit compiled for the CPU emulation (tests/cuda_emu/): the CUDA
// keywords, built-in indices and device intrinsics that kernels/cuda/*.cu use, mapped onto emu_runtime.h, and the
// project namespace renamed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "tests/cuda_emu/emu_runtime.h"

// The project's namespace becomes another one in emulated translation units, so that the emulated kernels and
// launchers never collide with the real ones when a CUDA build links both into one test binary.
#define fm fm_cuda_emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Static shared arrays become function statics: one block runs at a time, and all its threads see one copy.
#define __shared__ static
#define __align__(n) alignas(n)

#define threadIdx (::cuda_emu::Current().thread_idx)
#define blockIdx (::cuda_emu::Current().block_idx)
#define blockDim (::cuda_emu::Current().block_dim)
#define gridDim (::cuda_emu::Current().grid_dim)

inline void __syncthreads() { ::cuda_emu::SyncThreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::cuda_emu::SyncWarp(); }

namespace cuda_emu {
// Warp shuffles: kind 0 = from lane `arg`, 1 = from lane - arg (own value below arg), 2 = from lane ^ arg.
template <typename T, int kKind>
struct Shuffle {
  struct In {
    T value;
    int arg;
  };
  static void Op(const void* const* in, void* const* out) {
    for (int lane = 0; lane < 32; ++lane) {
      const int arg = static_cast<const In*>(in[lane])->arg;
      const int src = kKind == 0 ? (arg & 31) : kKind == 1 ? (lane >= arg ? lane - arg : lane) : ((lane ^ arg) & 31);
      *static_cast<T*>(out[lane]) = static_cast<const In*>(in[src])->value;
    }
  }
  static T Run(T value, int arg) {
    In in{value, arg};
    T out;
    WarpCollective(&in, &out, &Op);
    return out;
  }
};
}  // namespace cuda_emu

template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int = 32) {
  return ::cuda_emu::Shuffle<T, 0>::Run(v, src);
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int = 32) {
  return ::cuda_emu::Shuffle<T, 1>::Run(v, static_cast<int>(delta));
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
  return ::cuda_emu::Shuffle<T, 2>::Run(v, mask);
}

// Which lanes are converged cannot be known here: none is reported, so code with a converged fast path and a
// per-lane fallback (small_ops.cu's gate-mix backward) takes the fallback.
inline unsigned __activemask() { return 0u; }
namespace cuda_emu {
template <typename T>
struct MatchAny {
  static void Op(const void* const* in, void* const* out) {
    for (int lane = 0; lane < 32; ++lane) {
      unsigned mask = 0;
      for (int other = 0; other < 32; ++other)
        if (*static_cast<const T*>(in[other]) == *static_cast<const T*>(in[lane])) mask |= 1u << other;
      *static_cast<unsigned*>(out[lane]) = mask;
    }
  }
};
}  // namespace cuda_emu
template <typename T>
inline unsigned __match_any_sync(unsigned, T value) {
  unsigned out;
  ::cuda_emu::WarpCollective(&value, &out, &::cuda_emu::MatchAny<T>::Op);
  return out;
}

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
// Threads of a block run one at a time, so shared-memory atomics are plain updates.
inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
