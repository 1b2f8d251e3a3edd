// The multi-device paths on the demo model (docs/ENGINE.md §7): layer placement, data-parallel gate steps and the
// layer-parallel calibration pipeline give the single-device results. On a CPU machine the "devices" are the CPU
// twice (real threads, real channels, shared tensors); with CUDA the placement test also splits layers between
// the CPU and the GPU, and with two GPUs between them.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/torch/test_util.h"
#include "worker/engine/model/decoder_placement.h"
#include "worker/engine/model/weight_loader.h"
#include "worker/engine/morph/calibration.h"
#include "worker/engine/morph/calibration_pipeline.h"
#include "worker/engine/morph/gate_optimization.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/replicas.h"

namespace fm {
namespace {

class MultiDeviceTest : public testing::DemoModelTest {
 protected:
  static std::vector<LinearBranch> Branches(BranchKind kind, const Decoder& t = *teacher_) {
    std::vector<LinearBranch> b;
    BranchSettings s;
    s.kind = kind;
    s.chunk_size = 16;
    for (int64_t l = 0; l < t.config().num_layers; ++l)
      b.push_back(LinearBranch::FromTeacher(t.config(), t.weights().layers[l], l, s, 7));
    return b;
  }
  static at::Tensor Batch(int64_t step) {
    at::manual_seed(1000 + step);
    return at::randint(0, teacher_->config().vocab_size, {2, 48}, at::kLong);
  }
  static MaskedSample Sample(int64_t i, int64_t T = 40) {
    at::manual_seed(2000 + i);
    MaskedSample s;
    s.ids = at::randint(0, teacher_->config().vocab_size, {1, T}, at::kLong);
    s.answer_mask = at::zeros({1, T}, at::kBool);
    s.answer_mask.narrow(1, T - 6 - i % 3, 5).fill_(true);
    return s;
  }
  static double MaxBranchDiff(std::vector<LinearBranch>& a, std::vector<LinearBranch>& b) {
    double worst = 0;
    for (size_t l = 0; l < a.size(); ++l) {
      auto ta = a[l].NamedTensors(), tb = b[l].NamedTensors();
      for (size_t i = 0; i < ta.size(); ++i) worst = std::max(worst, testing::MaxAbsDiff(*ta[i].second, *tb[i].second));
    }
    return worst;
  }
  static std::string FreshDir(const std::string& name) {
    const std::string dir = ::testing::TempDir() + "/multi_device_" + name;
    std::filesystem::remove_all(dir);
    return dir;
  }
};

// Cancels once `after` progress events were seen.
class CancelAfter final : public ProgressSink {
 public:
  explicit CancelAfter(int64_t after) : after_(after) {}
  void OnProgress(const ProgressEvent&) override { ++seen_; }
  bool CancelRequested() override { return seen_ >= after_; }

 private:
  int64_t after_, seen_ = 0;
};

TEST(DevicePlacement, BalancedSplitsAndDeviceLists) {
  auto split = BalancedLayerSplit(8, 3);
  ASSERT_TRUE(split.ok());
  EXPECT_EQ(*split, (std::vector<int64_t>{0, 0, 0, 1, 1, 1, 2, 2}));
  EXPECT_EQ(BalancedLayerSplit(4, 5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BalancedLayerSplit(4, 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto two = ParseDeviceList("cpu, cpu");
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->size(), 2u);
  EXPECT_EQ(ParseDeviceList("gpu7").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseDeviceList("").status().code(), absl::StatusCode::kInvalidArgument);
  if (!at::hasCUDA()) {
    EXPECT_EQ(ParseDeviceList("cuda:all").status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(ParseDeviceList("cpu,cuda:0").status().code(), absl::StatusCode::kFailedPrecondition);
  } else {
    auto all = ParseDeviceList("cuda:all");
    ASSERT_TRUE(all.ok()) << all.status();
    EXPECT_GE(all->size(), 1u);
    EXPECT_EQ(ParseDeviceList("cuda:99").status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

TEST_F(MultiDeviceTest, PlacedDecoderComputesTheSameLogits) {
  std::vector<at::Device> pool = {at::kCPU, at::kCPU};
  if (at::hasCUDA()) pool = {at::Device(at::kCPU), at::Device(at::kCUDA, 0)};
  if (at::hasCUDA() && at::detail::getCUDAHooks().deviceCount() >= 2) pool.emplace_back(at::kCUDA, 1);
  const int64_t L = teacher_->config().num_layers;
  auto split = BalancedLayerSplit(L, static_cast<int64_t>(pool.size()));
  ASSERT_TRUE(split.ok());
  std::vector<at::Device> layer_devices;
  for (int64_t p : *split) layer_devices.push_back(pool[p]);
  auto placed = PlaceDecoder(*teacher_, layer_devices);
  ASSERT_TRUE(placed.ok()) << placed.status();
  for (int64_t l = 0; l < L; ++l) EXPECT_EQ((*placed)->LayerDevice(l), layer_devices[l]);
  at::Tensor ids = Batch(0);
  ForwardOptions opt;
  opt.return_hidden_states = true;
  auto want = teacher_->Forward(ids, opt);
  auto got = (*placed)->Forward(ids, opt);
  ASSERT_TRUE(want.ok() && got.ok());
  EXPECT_LT(testing::MaxAbsDiff(got->logits.cpu(), want->logits), 1e-4);
  EXPECT_EQ(got->hidden_states.back().device(), layer_devices.back());
  // The morphable model runs on it too (gated mixes across the devices, with gradients into the gates).
  auto branches = Branches(BranchKind::kGla, **placed);
  for (int64_t l = 0; l < L; ++l) EXPECT_EQ(branches[l].o_proj().device(), layer_devices[l]);
  GatePlan plan;
  GateState state(**placed, false);
  auto step = GateOptimizationStep(**placed, branches, plan, {Sample(0)}, 1e-2, state);
  ASSERT_TRUE(step.ok()) << step.status();
  auto ref_branches = Branches(BranchKind::kGla);
  GateState ref_state(*teacher_, false);
  auto ref = GateOptimizationStep(*teacher_, ref_branches, plan, {Sample(0)}, 1e-2, ref_state);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_NEAR(step->distance, ref->distance, 1e-4 * std::max(1.0, ref->distance));
  EXPECT_LT(testing::MaxAbsDiff(state.gates.detach().cpu(), ref_state.gates.detach()), 1e-5);
}

TEST_F(MultiDeviceTest, DataParallelGateStepsEqualTheSingleDeviceSteps) {
  auto single_branches = Branches(BranchKind::kGatedDeltaNet);
  auto dp_branches = Branches(BranchKind::kGatedDeltaNet);
  for (auto* bs : {&single_branches, &dp_branches})
    for (auto& b : *bs) b.SetRequiresGrad(false);
  auto replicas = Replicas::Create(*teacher_, dp_branches, {at::kCPU, at::kCPU, at::kCPU});
  ASSERT_TRUE(replicas.ok()) << replicas.status();
  GatePlan plan;
  plan.checkpointing = true;
  GateState single(*teacher_, false), dp(*teacher_, false);
  for (int64_t step = 0; step < 3; ++step) {
    std::vector<MaskedSample> samples;
    for (int64_t i = 0; i < 5; ++i) samples.push_back(Sample(step * 5 + i));  // 5 samples over 3 replicas
    auto a = GateOptimizationStep(*teacher_, single_branches, plan, samples, 2e-2, single);
    auto b = ParallelGateOptimizationStep(**replicas, plan, samples, 2e-2, dp);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << " / " << b.status();
    EXPECT_NEAR(a->distance, b->distance, 1e-6 * std::max(1.0, a->distance));
    EXPECT_EQ(a->tokens, b->tokens);
    EXPECT_NEAR(a->penalty, b->penalty, 1e-9);
  }
  EXPECT_LT(testing::MaxAbsDiff(single.gates.detach(), dp.gates.detach()), 1e-6);
  EXPECT_LT(single.gates.detach().min().item<double>(), 1.0);  // the gates moved
  // A bad sample on any replica fails the step with its reason.
  std::vector<MaskedSample> bad = {Sample(0), Sample(1)};
  bad[1].answer_mask.zero_();
  EXPECT_EQ(ParallelGateOptimizationStep(**replicas, plan, bad, 2e-2, dp).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(MultiDeviceTest, LayerParallelCalibrationEqualsTheSerialLoop) {
  CalibrationPlan plan;
  plan.steps = 7;
  plan.warmup_steps = 1;
  plan.learning_rate = 3e-3;
  plan.checkpoint_every = 3;  // segments of 3, 3, 1 steps
  at::Tensor eval = Batch(99);
  NullProgressSink sink;
  auto serial = Branches(BranchKind::kGla);
  auto r1 = CalibrateBranches(*teacher_, serial, plan, Batch, eval, FreshDir("serial"), sink);
  ASSERT_TRUE(r1.ok()) << r1.status();
  // Three shards over one decoder (the layer-sharded form) ...
  auto piped = Branches(BranchKind::kGla);
  CalibrationPlan p2 = plan;
  p2.parallel_teachers = {teacher_, teacher_, teacher_};
  auto r2 = CalibrateBranches(*teacher_, piped, p2, Batch, eval, FreshDir("piped"), sink);
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_LT(MaxBranchDiff(serial, piped), 1e-6);
  EXPECT_EQ(r1->tokens, r2->tokens);
  for (size_t l = 0; l < r1->error_after.size(); ++l) {
    EXPECT_NEAR(r1->error_after[l], r2->error_after[l], 1e-6) << "layer " << l;
    EXPECT_NEAR(r1->final_loss[l], r2->final_loss[l], 1e-6) << "layer " << l;
  }
  // ... and a layer subset over two replicas' worth of shards, cancelled after 4 steps and resumed.
  plan.layers = {1, 2, 6};
  auto serial_subset = Branches(BranchKind::kGla);
  ASSERT_TRUE(CalibrateBranches(*teacher_, serial_subset, plan, Batch, eval, FreshDir("subset"), sink).ok());
  auto resumed = Branches(BranchKind::kGla);
  CalibrationPlan p3 = plan;
  p3.parallel_teachers = {teacher_, teacher_};
  const std::string dir = FreshDir("resumed");
  CancelAfter cancel(4);
  EXPECT_EQ(CalibrateBranches(*teacher_, resumed, p3, Batch, eval, dir, cancel).status().code(),
            absl::StatusCode::kCancelled);
  auto fresh = Branches(BranchKind::kGla);
  auto r3 = CalibrateBranches(*teacher_, fresh, p3, Batch, eval, dir, sink);
  ASSERT_TRUE(r3.ok()) << r3.status();
  EXPECT_LT(MaxBranchDiff(serial_subset, fresh), 1e-6);
}

TEST_F(MultiDeviceTest, APipelineShardErrorStopsEveryShard) {
  auto branches = Branches(BranchKind::kLightning);
  std::vector<int64_t> layers(teacher_->config().num_layers);
  for (size_t l = 0; l < layers.size(); ++l) layers[l] = static_cast<int64_t>(l);
  auto opts = CalibrationOptimizers(branches, layers);
  auto shards = MakeCalibrationShards({teacher_, teacher_, teacher_, teacher_});
  ASSERT_TRUE(shards.ok()) << shards.status();
  std::vector<int64_t> reported;
  CalibrationPipelineSteps steps;
  steps.first = 0;
  steps.end = 10;
  steps.batch = [](int64_t k) -> absl::StatusOr<at::Tensor> {
    if (k == 4) return absl::DataLossError("batch 4 is unreadable");
    return Batch(k);
  };
  steps.lr = [](int64_t) { return 1e-3; };
  steps.on_step = [&](int64_t k, const std::vector<double>& losses) {
    reported.push_back(k);
    EXPECT_EQ(losses.size(), layers.size());
    return true;
  };
  auto r = RunCalibrationPipeline(*shards, branches, layers, opts, steps);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  for (size_t i = 0; i < reported.size(); ++i) EXPECT_EQ(reported[i], static_cast<int64_t>(i));
  EXPECT_LE(reported.size(), 4u);
  // A stop requested by the caller ends cleanly with every started step finished and reported in order.
  reported.clear();
  steps.batch = Batch;
  steps.on_step = [&](int64_t k, const std::vector<double>&) {
    reported.push_back(k);
    return k < 2;
  };
  auto stopped = RunCalibrationPipeline(*shards, branches, layers, opts, steps);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(*stopped, static_cast<int64_t>(reported.size()));
  EXPECT_GE(reported.size(), 3u);
  EXPECT_LT(reported.size(), 10u);
}

}  // namespace
}  // namespace fm
