// CPU emulation (tests/cuda_emu/) of the WMMA API the kernels use (nvcuda::wmma, 16x16x16, bf16 operands, fp32
// accumulators): every operation is a warp collective performed once for the warp, so that loads, products and
// stores keep their warp-synchronous order. Fragments hold their whole tile (the hardware's distribution over lanes
// is opaque to WMMA code, which never indexes fragment elements here).
#pragma once

#include <cuda_bf16.h>

#include <type_traits>

#include "tests/cuda_emu/emu_runtime.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  float x[kRows * kCols];  // row-major tile
};

namespace emu_detail {

inline float Load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
inline float Load(const float* p) { return *p; }

template <typename Frag, typename T, bool kColMajor>
struct LoadOp {
  struct In {
    const T* ptr;
    unsigned ldm;
  };
  static void Run(const void* const* in, void* const* out) {
    const In& a = *static_cast<const In*>(in[0]);
    Frag f;
    for (int r = 0; r < Frag::kRows; ++r)
      for (int c = 0; c < Frag::kCols; ++c)
        f.x[r * Frag::kCols + c] = Load(kColMajor ? a.ptr + c * a.ldm + r : a.ptr + r * a.ldm + c);
    for (int lane = 0; lane < 32; ++lane) *static_cast<Frag*>(out[lane]) = f;
  }
};

template <typename Frag>
struct StoreOp {
  struct In {
    float* ptr;
    unsigned ldm;
    bool col_major;
    const Frag* frag;
  };
  static void Run(const void* const* in, void* const*) {
    const In& a = *static_cast<const In*>(in[0]);
    for (int r = 0; r < Frag::kRows; ++r)
      for (int c = 0; c < Frag::kCols; ++c)
        (a.col_major ? a.ptr[c * a.ldm + r] : a.ptr[r * a.ldm + c]) = a.frag->x[r * Frag::kCols + c];
  }
};

template <typename FA, typename FB, typename FC>
struct MmaOp {
  struct In {
    const FA* a;
    const FB* b;
    const FC* c;
  };
  static void Run(const void* const* in, void* const* out) {
    const In& p = *static_cast<const In*>(in[0]);
    FC d;
    for (int i = 0; i < FC::kRows; ++i)
      for (int j = 0; j < FC::kCols; ++j) {
        float acc = p.c->x[i * FC::kCols + j];
        for (int k = 0; k < FA::kCols; ++k) acc += p.a->x[i * FA::kCols + k] * p.b->x[k * FB::kCols + j];
        d.x[i * FC::kCols + j] = acc;
      }
    for (int lane = 0; lane < 32; ++lane) *static_cast<FC*>(out[lane]) = d;
  }
};

}  // namespace emu_detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float v) {
  for (float& e : f.x) e = v;
}

// Operand tiles (layout from the fragment type).
template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* ptr, unsigned ldm) {
  using Op = emu_detail::LoadOp<fragment<Use, M, N, K, T, Layout>, P, std::is_same_v<Layout, col_major>>;
  typename Op::In in{ptr, ldm};
  ::cuda_emu::WarpCollective(&in, &f, &Op::Run);
}

// Accumulator tiles (layout given).
template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* ptr, unsigned ldm, layout_t layout) {
  using Frag = fragment<accumulator, M, N, K, float>;
  typename emu_detail::LoadOp<Frag, float, false>::In in{ptr, ldm};
  if (layout == mem_col_major) {
    ::cuda_emu::WarpCollective(&in, &f, &emu_detail::LoadOp<Frag, float, true>::Run);
  } else {
    ::cuda_emu::WarpCollective(&in, &f, &emu_detail::LoadOp<Frag, float, false>::Run);
  }
}

template <int M, int N, int K>
void store_matrix_sync(float* ptr, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  using Frag = fragment<accumulator, M, N, K, float>;
  typename emu_detail::StoreOp<Frag>::In in{ptr, ldm, layout == mem_col_major, &f};
  ::cuda_emu::WarpCollective(&in, nullptr, &emu_detail::StoreOp<Frag>::Run);
}

template <typename FA, typename FB, int M, int N, int K>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const FA& a, const FB& b,
              const fragment<accumulator, M, N, K, float>& c) {
  using FC = fragment<accumulator, M, N, K, float>;
  using Op = emu_detail::MmaOp<FA, FB, FC>;
  typename Op::In in{&a, &b, &c};
  ::cuda_emu::WarpCollective(&in, &d, &Op::Run);
}

}  // namespace nvcuda::wmma
