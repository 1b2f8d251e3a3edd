// Small helpers shared by the ATen glue of the CUDA kernels (kernels/*_cuda.cc; compiled by the host compiler with
// LibTorch): launch-error checks and raw pointers of tensors on the current stream.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace fm::kernels::glue {

// Throws (c10::Error) when a launcher reported an error.
inline void Check(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA error ", cudaGetErrorString(err));
}
inline __nv_bfloat16* Bf(const at::Tensor& t) { return reinterpret_cast<__nv_bfloat16*>(t.data_ptr()); }
// Null for an undefined or empty tensor ("none").
inline const __nv_bfloat16* CBf(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? reinterpret_cast<const __nv_bfloat16*>(t.data_ptr()) : nullptr;
}
inline const float* CF(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
inline cudaStream_t Stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace fm::kernels::glue
