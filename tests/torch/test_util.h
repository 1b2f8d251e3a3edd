// Helpers for the LibTorch tests: reading reference tensors that the Python fixtures wrote.
#pragma once

#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "worker/engine/formats/safetensors.h"
#include "worker/engine/model/tensor_bridge.h"
#include "worker/engine/model/weight_loader.h"

namespace fm::testing {

inline std::string FixturePath(const std::string& relative) { return std::string(FM_FIXTURES_DIR) + "/" + relative; }

// Loads every tensor of a reference .safetensors file (copied, so the file may go away).
class ReferenceTensors {
 public:
  explicit ReferenceTensors(const std::string& path) {
    auto f = SafetensorsFile::Open(path);
    if (!f.ok()) {
      ADD_FAILURE() << f.status();
      return;
    }
    file_.emplace(std::move(*f));
  }
  at::Tensor Get(const std::string& name) const {
    if (!file_) return {};
    auto view = file_->View(name);
    EXPECT_TRUE(view.ok()) << view.status();
    if (!view.ok()) return {};
    auto t = TensorFromView(*view, file_->file());
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? t->clone() : at::Tensor();
  }

 private:
  std::optional<SafetensorsFile> file_;
};

// A suite whose tests share the project's demo model (models/demo/qwen3-demo), loaded once per suite.
class DemoModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto d = LoadDecoder(FM_SOURCE_DIR "/models/demo/qwen3-demo");
    ASSERT_TRUE(d.ok()) << d.status();
    teacher_ = d->release();
  }
  static void TearDownTestSuite() {
    delete teacher_;
    teacher_ = nullptr;
  }
  inline static Decoder* teacher_ = nullptr;
};

inline double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace fm::testing
