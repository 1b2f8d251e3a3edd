// Host entry points of the row-wise fused kernels (kernels/cuda/row_ops.cu, sm_80+) on raw device pointers: RMSNorm
// over model-width rows, the per-head transforms around attention (q/k norm, rotary embedding, feature maps, output
// norm) and SwiGLU, each with its backward. bf16 in and out, fp32 arithmetic. No LibTorch: the ATen glue and the
// autograd functions are in kernels/fused_ops_cuda.cc. Every launcher returns the launch error.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fm::kernels::cuda {

// RMSNorm of contiguous rows of D (D % 8 == 0; x, w, y, dy, dx 16-byte aligned), one warp per row:
// y = bf16(w * bf16(x * rstd)), rstd = rsqrt(mean(x^2) + eps) (Hugging Face's roundings). The backward forms dx only.
bool RmsNormRowsSupported(int64_t D);
cudaError_t LaunchRmsNormRows(int64_t rows, int D, const __nv_bfloat16* x, const __nv_bfloat16* w, float eps,
                              __nv_bfloat16* y, cudaStream_t stream);
cudaError_t LaunchRmsNormRowsBackward(int64_t rows, int D, const __nv_bfloat16* x, const __nv_bfloat16* w,
                                      const __nv_bfloat16* dy, float eps, __nv_bfloat16* dx, cudaStream_t stream);

// The residual add before a norm, fused with it: y = bf16(x + r), n = RMSNorm(y; w) as LaunchRmsNormRows (same
// contracts on D and alignment; r like x). Backward: dx = bf16(bf16(the norm's input gradient for dn) + dy), the
// gradient of both x and r; dy (the gradient reaching y directly) may be null.
cudaError_t LaunchAddRmsNormRows(int64_t rows, int D, const __nv_bfloat16* x, const __nv_bfloat16* r,
                                 const __nv_bfloat16* w, float eps, __nv_bfloat16* y, __nv_bfloat16* n,
                                 cudaStream_t stream);
cudaError_t LaunchAddRmsNormRowsBackward(int64_t rows, int D, const __nv_bfloat16* y, const __nv_bfloat16* w,
                                         const __nv_bfloat16* dn, const __nv_bfloat16* dy, float eps, __nv_bfloat16* dx,
                                         cudaStream_t stream);

// Rows of a [B, T, H, D] tensor in any layout whose D elements are contiguous: element (b, t, h, d) sits at
// b * stride_b + t * stride_t + h * stride_h + d.
struct HeadRows {
  int B = 0, T = 0, H = 0, D = 0;
  int64_t stride_b = 0, stride_t = 0, stride_h = 0;
};

// What a head transform applies to each row, in this order (each stage rounded to bf16 like the ATen composition):
// RMSNorm with `weight` [D] (or, with unit_norm and no weight, x * rstd), the rotary embedding of the row's token t
// (x * cos[t] + rotate_half(x) * sin[t], tables [T, D]), silu, L2 normalisation x * rsqrt(sum(x^2) + 1e-6), * scale.
struct HeadTransformArgs {
  const __nv_bfloat16* weight = nullptr;
  bool unit_norm = false;
  float eps = 1e-6f;
  const __nv_bfloat16* cos = nullptr;
  const __nv_bfloat16* sin = nullptr;
  bool silu = false, l2 = false;
  float scale = 1.f;
  // 8 elements per lane with 16-byte loads (D / 8 lanes per row) instead of one warp per row with 2-byte loads; needs
  // every row of x, y, dy, dx, the weight and the tables 16-byte aligned (strides multiples of 8 elements).
  bool vectorized = false;
};
// D in {64, 128, 256}.
bool HeadTransformSupported(int D);
cudaError_t LaunchHeadTransform(const HeadRows& in, const HeadRows& out, const HeadTransformArgs& args,
                                const __nv_bfloat16* x, __nv_bfloat16* y, cudaStream_t stream);
// dx (layout dx_rows) from x and dy; when dweight is given (fp32 [D], zeroed by the caller) the weight's gradient
// is accumulated into it.
cudaError_t LaunchHeadTransformBackward(const HeadRows& x_rows, const HeadRows& dy_rows, const HeadRows& dx_rows,
                                        const HeadTransformArgs& args, const __nv_bfloat16* x, const __nv_bfloat16* dy,
                                        __nv_bfloat16* dx, float* dweight, cudaStream_t stream);

// SwiGLU over n contiguous elements (n % 8 == 0, 16-byte aligned): y = bf16(bf16(silu(g)) * u); backward
// du = dy * silu(g), dg = dy * u * silu'(g).
cudaError_t LaunchSwiGlu(int64_t n, const __nv_bfloat16* g, const __nv_bfloat16* u, __nv_bfloat16* y,
                         cudaStream_t stream);
cudaError_t LaunchSwiGluBackward(int64_t n, const __nv_bfloat16* g, const __nv_bfloat16* u, const __nv_bfloat16* dy,
                                 __nv_bfloat16* dg, __nv_bfloat16* du, cudaStream_t stream);

}  // namespace fm::kernels::cuda
