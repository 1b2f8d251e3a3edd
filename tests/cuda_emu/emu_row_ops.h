// The row kernels of kernels/cuda/row_ops.cu (head transforms in both kernel families, RMSNorm rows, SwiGLU, each
// with its backward) on the CPU emulation (emu_runtime.h), behind an interface free of CUDA types so that LibTorch
// tests can drive them. bf16 as raw uint16 bits; the contracts are those of kernels/cuda/row_ops_launch.h. Each
// returns false when the launcher reports an error.
#pragma once

#include <cstdint>

namespace cuda_emu {

// Element (b, t, h, d) of a [B, T, H, D] tensor at b * stride_b + t * stride_t + h * stride_h + d.
struct HeadRowsLayout {
  int B = 0, T = 0, H = 0, D = 0;
  int64_t stride_b = 0, stride_t = 0, stride_h = 0;
};

struct HeadOptions {
  const uint16_t* weight = nullptr;
  bool unit_norm = false;
  float eps = 1e-6f;
  const uint16_t* cos = nullptr;
  const uint16_t* sin = nullptr;
  bool silu = false, l2 = false;
  float scale = 1.f;
  bool vectorized = false;
};

bool HeadTransform(const HeadRowsLayout& in, const HeadRowsLayout& out, const HeadOptions& options, const uint16_t* x,
                   uint16_t* y);
bool HeadTransformBackward(const HeadRowsLayout& x_rows, const HeadRowsLayout& dy_rows, const HeadRowsLayout& dx_rows,
                           const HeadOptions& options, const uint16_t* x, const uint16_t* dy, uint16_t* dx,
                           float* dweight);
bool RmsNormRows(int64_t rows, int D, const uint16_t* x, const uint16_t* w, float eps, uint16_t* y);
bool RmsNormRowsBackward(int64_t rows, int D, const uint16_t* x, const uint16_t* w, const uint16_t* dy, float eps,
                         uint16_t* dx);
bool AddRmsNormRows(int64_t rows, int D, const uint16_t* x, const uint16_t* r, const uint16_t* w, float eps,
                    uint16_t* y, uint16_t* n);
bool AddRmsNormRowsBackward(int64_t rows, int D, const uint16_t* y, const uint16_t* w, const uint16_t* dn,
                            const uint16_t* dy, float eps, uint16_t* dx);
bool SwiGlu(int64_t n, const uint16_t* g, const uint16_t* u, uint16_t* y);
bool SwiGluBackward(int64_t n, const uint16_t* g, const uint16_t* u, const uint16_t* dy, uint16_t* dg, uint16_t* du);

}  // namespace cuda_emu
