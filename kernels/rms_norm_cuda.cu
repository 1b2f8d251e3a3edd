#include "kernels/rms_norm_cuda.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fm::kernels {
namespace {

template <typename T>
__device__ inline float ToFloat(T v) { return static_cast<float>(v); }
template <>
__device__ inline float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ inline float ToFloat(__half v) { return __half2float(v); }

template <typename T>
__device__ inline T FromFloat(float v) { return static_cast<T>(v); }
template <>
__device__ inline __nv_bfloat16 FromFloat(float v) { return __float2bfloat16(v); }
template <>
__device__ inline __half FromFloat(float v) { return __float2half(v); }

// One block per row. Reduction of x^2 in fp32 through warp shuffles, then y = w * cast(x * inv_rms): the cast to T
// happens before the multiply by w, as in the Hugging Face reference.
template <typename T, int kThreads>
__global__ void RmsNormKernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, int64_t cols,
                              float eps) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
    float v = ToFloat(xr[i]);
    sum += v * v;
  }
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  __shared__ float warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    sum = lane < kThreads / 32 ? warp_sums[lane] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if (lane == 0) warp_sums[0] = sum;
  }
  __syncthreads();
  const float inv = rsqrtf(warp_sums[0] / static_cast<float>(cols) + eps);
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
    T normed = FromFloat<T>(ToFloat(xr[i]) * inv);
    yr[i] = FromFloat<T>(ToFloat(w[i]) * ToFloat(normed));
  }
}

template <typename T>
void Launch(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, double eps) {
  const int64_t cols = x.size(-1);
  const int64_t rows = x.numel() / cols;
  constexpr int kThreads = 256;
  auto stream = at::cuda::getCurrentCUDAStream();
  RmsNormKernel<T, kThreads><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(w.data_ptr()),
      reinterpret_cast<T*>(y.data_ptr()), cols, static_cast<float>(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool RmsNormCudaSupports(const at::Tensor& x, const at::Tensor& weight) {
  auto t = x.scalar_type();
  return x.is_cuda() && weight.is_cuda() && x.get_device() == weight.get_device() && weight.dim() == 1 &&
         x.dim() >= 1 && x.size(-1) == weight.size(0) && weight.scalar_type() == t && x.numel() > 0 &&
         x.numel() / x.size(-1) <= std::numeric_limits<int32_t>::max() &&
         (t == at::kFloat || t == at::kHalf || t == at::kBFloat16);
}

at::Tensor RmsNormCuda(const at::Tensor& x_in, const at::Tensor& weight_in, double eps) {
  c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous();
  at::Tensor w = weight_in.contiguous();
  at::Tensor y = at::empty_like(x);
  switch (x.scalar_type()) {
    case at::kFloat: Launch<float>(x, w, y, eps); break;
    case at::kHalf: Launch<__half>(x, w, y, eps); break;
    case at::kBFloat16: Launch<__nv_bfloat16>(x, w, y, eps); break;
    default: TORCH_CHECK(false, "RmsNormCuda: unsupported dtype ", x.scalar_type());
  }
  return y;
}

}  // namespace fm::kernels
