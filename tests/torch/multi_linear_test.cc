// MultiLinear (worker/engine/model/multi_linear.h): the outputs and every gradient (input, weights, biases, with
// and without biases, with some outputs unused) equal those of separate linear maps, in float64.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

#include "tests/torch/test_util.h"
#include "worker/engine/model/multi_linear.h"

namespace fm {
namespace {

TEST(MultiLinear, MatchesSeparateLinearMapsWithGradients) {
  at::manual_seed(11);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  for (bool with_bias : {false, true}) {
    for (bool weights_train : {false, true}) {
      SCOPED_TRACE(std::string(with_bias ? "biases" : "no biases") + (weights_train ? ", weights train" : ""));
      const std::vector<int64_t> outs = {7, 3, 5};
      at::Tensor x0 = at::randn({2, 4, 6}, f64);
      std::vector<at::Tensor> w0, b0;
      for (int64_t o : outs) {
        w0.push_back(at::randn({o, 6}, f64));
        b0.push_back(with_bias ? at::randn({o}, f64) : at::Tensor());
      }
      b0[1] = at::Tensor();  // a map without bias among ones with
      auto leaves = [&](std::vector<at::Tensor>& w, std::vector<at::Tensor>& b) {
        for (size_t i = 0; i < w0.size(); ++i) {
          w.push_back(w0[i].clone().requires_grad_(weights_train));
          b.push_back(b0[i].defined() ? b0[i].clone().requires_grad_(weights_train) : at::Tensor());
        }
      };
      std::vector<at::Tensor> dy;
      for (int64_t o : outs) dy.push_back(at::randn({2, 4, o}, f64));

      at::Tensor x1 = x0.clone().requires_grad_();
      std::vector<at::Tensor> w1, b1;
      leaves(w1, b1);
      std::vector<at::Tensor> y1 = MultiLinear(x1, w1, b1);
      // Output 2 unused: its gradient never arrives.
      ((y1[0] * dy[0]).sum() + (y1[1] * dy[1]).sum()).backward();

      at::Tensor x2 = x0.clone().requires_grad_();
      std::vector<at::Tensor> w2, b2;
      leaves(w2, b2);
      std::vector<at::Tensor> y2;
      for (size_t i = 0; i < w2.size(); ++i)
        y2.push_back(b2[i].defined() ? at::linear(x2, w2[i], b2[i]) : at::linear(x2, w2[i]));
      ((y2[0] * dy[0]).sum() + (y2[1] * dy[1]).sum()).backward();

      for (size_t i = 0; i < y1.size(); ++i) EXPECT_LT(testing::MaxAbsDiff(y1[i], y2[i]), 1e-12) << "y" << i;
      ASSERT_TRUE(x1.grad().defined());
      EXPECT_LT(testing::MaxAbsDiff(x1.grad(), x2.grad()), 1e-12);
      for (size_t i = 0; i < w1.size(); ++i) {
        EXPECT_EQ(w1[i].grad().defined(), w2[i].grad().defined()) << "w" << i;
        if (w1[i].grad().defined() && i < 2) EXPECT_LT(testing::MaxAbsDiff(w1[i].grad(), w2[i].grad()), 1e-12);
        if (b1[i].defined() && b1[i].grad().defined() && i < 2) {
          EXPECT_LT(testing::MaxAbsDiff(b1[i].grad(), b2[i].grad()), 1e-12) << "b" << i;
        }
      }
    }
  }
}

TEST(MultiLinear, WithoutGradientsIsPlainProducts) {
  at::Tensor x = at::randn({3, 4}), w = at::randn({5, 4});
  std::vector<at::Tensor> y = MultiLinear(x, {w, w});
  ASSERT_EQ(y.size(), 2u);
  EXPECT_FALSE(y[0].requires_grad());
  EXPECT_LT(testing::MaxAbsDiff(y[1], at::linear(x, w)), 1e-6);
}

}  // namespace
}  // namespace fm
