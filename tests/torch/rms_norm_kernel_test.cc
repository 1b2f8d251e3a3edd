// fm::kernels::RmsNorm against a float64 evaluation of the same formula: the ATen reference on CPU always, and the
// fused CUDA kernel when this build has CUDA and a GPU is present (otherwise those cases are skipped, not faked).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "kernels/rms_norm.h"

namespace fm {
namespace {

// y = w * round_to_dtype(x * rsqrt(mean(x^2) + eps)), evaluated in float64 from the same rounded inputs.
at::Tensor RmsNormFloat64(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xd = x.to(at::kDouble);
  at::Tensor normed = (xd * at::rsqrt(xd.pow(2).mean(-1, true) + eps)).to(x.scalar_type()).to(at::kDouble);
  return w.to(at::kDouble) * normed;
}

double Tolerance(at::ScalarType t) {
  return t == at::kFloat ? 2e-6 : t == at::kHalf ? 2e-3 : 1.6e-2;  // relative, about 2 ulp of the output dtype
}

void CheckAgainstFloat64(const at::Device& device, at::ScalarType dtype, std::vector<int64_t> shape, double eps) {
  at::manual_seed(shape.back() * 7 + static_cast<int>(dtype));
  at::Tensor x = (at::randn(shape, at::kFloat) * 3 + 0.5).to(dtype).to(device);
  at::Tensor w = (1 + 0.3 * at::randn({shape.back()}, at::kFloat)).to(dtype).to(device);
  at::Tensor y = kernels::RmsNorm(x, w, eps);
  ASSERT_EQ(y.sizes(), x.sizes());
  ASSERT_EQ(y.scalar_type(), dtype);
  ASSERT_EQ(y.device(), x.device());
  at::Tensor want = RmsNormFloat64(x.cpu(), w.cpu(), eps);
  at::Tensor got = y.cpu().to(at::kDouble);
  EXPECT_FALSE(got.isnan().any().item<bool>());
  const double err = ((got - want).abs() / (want.abs() + 1e-3)).max().item<double>();
  EXPECT_LE(err, Tolerance(dtype)) << "dtype " << dtype << " cols " << shape.back() << " on " << device;
}

TEST(RmsNormKernel, CpuReferenceMatchesFloat64) {
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf})
    for (int64_t cols : {1, 7, 64, 576, 2048}) CheckAgainstFloat64(at::kCPU, dtype, {3, 5, cols}, 1e-6);
}

TEST(RmsNormKernel, CudaKernelMatchesFloat64) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device in this process";
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf})
    for (int64_t cols : {1, 31, 128, 576, 2048, 5120}) CheckAgainstFloat64(at::kCUDA, dtype, {2, 33, cols}, 1e-5);
}

TEST(RmsNormKernel, CudaKernelHandlesNonContiguousInput) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device in this process";
  at::Tensor x = at::randn({64, 128}, at::kCUDA).t();  // [128, 64], strided
  at::Tensor w = at::rand({64}, at::kCUDA);
  at::Tensor want = kernels::RmsNormReference(x.contiguous(), w, 1e-6);
  EXPECT_LE((kernels::RmsNorm(x, w, 1e-6) - want).abs().max().item<float>(), 1e-5);
}

}  // namespace
}  // namespace fm
