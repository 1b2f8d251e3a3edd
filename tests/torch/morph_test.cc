// The morphable model and its branches on the project's demo model (Qwen3: GQA 4/2 heads, q/k norms): branch
// initialisation from the teacher, gate mixing identities, activation checkpointing, recurrent continuation, and
// calibration actually reducing the alignment error.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "tests/torch/test_util.h"
#include "worker/engine/model/attention_record.h"
#include "worker/engine/model/weight_loader.h"
#include "worker/engine/morph/calibration.h"
#include "worker/engine/morph/gate_optimization.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/morphable_model.h"

namespace fm {
namespace {

class MorphTest : public testing::DemoModelTest {
 protected:
  std::vector<LinearBranch> Branches(BranchKind kind, uint64_t seed = 1) {
    std::vector<LinearBranch> b;
    BranchSettings s;
    s.kind = kind;
    s.chunk_size = 16;
    for (int64_t l = 0; l < teacher_->config().num_layers; ++l)
      b.push_back(LinearBranch::FromTeacher(teacher_->config(), teacher_->weights().layers[l], l, s, seed));
    return b;
  }
  at::Tensor Ids(int64_t T, int64_t seed = 0) {
    at::manual_seed(seed);
    return at::randint(0, teacher_->config().vocab_size, {1, T}, at::kLong);
  }
};

TEST_F(MorphTest, BranchCopiesQueryAndOutputAndRepeatsKeyValueHeads) {
  auto branches = Branches(BranchKind::kGatedDeltaNet);
  const ModelConfig& c = teacher_->config();
  const int64_t D = c.head_dim, n_rep = c.num_heads / c.num_kv_heads;
  ASSERT_GT(n_rep, 1) << "the demo model should use GQA";
  std::map<std::string, at::Tensor> t;
  for (auto& [name, p] : branches[2].NamedTensors()) t[name] = *p;
  const DecoderLayerWeights& w = teacher_->weights().layers[2];
  EXPECT_TRUE(at::equal(t["q_proj.weight"], w.q_proj));
  EXPECT_TRUE(at::equal(t["o_proj.weight"], w.o_proj));
  EXPECT_TRUE(at::equal(t["q_norm.weight"], w.q_norm));
  ASSERT_EQ(t["k_proj.weight"].size(0), c.num_heads * D);
  for (int64_t h = 0; h < c.num_heads; ++h) {
    EXPECT_TRUE(at::equal(t["k_proj.weight"].narrow(0, h * D, D), w.k_proj.narrow(0, (h / n_rep) * D, D))) << h;
    EXPECT_TRUE(at::equal(t["v_proj.weight"].narrow(0, h * D, D), w.v_proj.narrow(0, (h / n_rep) * D, D))) << h;
  }
  EXPECT_EQ(t["A_log"].size(0), c.num_heads);
  EXPECT_EQ(t.count("gk_proj.0.weight"), 0u);
  // Lightning adds no parameters beyond the copied ones.
  auto lightning = Branches(BranchKind::kLightning);
  for (auto& [name, p] : lightning[0].NamedTensors())
    EXPECT_TRUE(name.find("proj.weight") != std::string::npos || name.find("norm") != std::string::npos) << name;
}

TEST_F(MorphTest, GatesAtOneReproduceTheTeacherAndAtZeroTheAllLinearModel) {
  for (BranchKind kind : {BranchKind::kLightning, BranchKind::kGla, BranchKind::kGatedDeltaNet}) {
    auto branches = Branches(kind);
    MorphableModel m(teacher_, &branches);
    at::Tensor ids = Ids(40);
    const int64_t L = teacher_->config().num_layers, H = teacher_->config().num_heads;
    auto ref = teacher_->Forward(ids);
    ASSERT_TRUE(ref.ok());
    at::Tensor ones = teacher_->Head(m.Forward(ids, GatedMixes(at::ones({L, 1}))));
    EXPECT_LT(testing::MaxAbsDiff(ones, ref->logits), 1e-4) << BranchKindName(kind);
    at::Tensor zeros = teacher_->Head(m.Forward(ids, GatedMixes(at::zeros({L, H}))));
    at::Tensor linear = teacher_->Head(m.Forward(ids, LayoutMixes(std::vector<std::vector<int64_t>>(L), H)));
    EXPECT_LT(testing::MaxAbsDiff(zeros, linear), 1e-4) << BranchKindName(kind);
    EXPECT_GT(testing::MaxAbsDiff(linear, ref->logits), 1e-2) << "the branches should differ from the teacher";
    // Uniform head gates equal the layer gate; a head-level layout equals per-head gates of 0/1.
    at::Tensor layer_mix = teacher_->Head(m.Forward(ids, GatedMixes(at::full({L, 1}, 0.3))));
    at::Tensor head_mix = teacher_->Head(m.Forward(ids, GatedMixes(at::full({L, H}, 0.3))));
    EXPECT_LT(testing::MaxAbsDiff(layer_mix, head_mix), 1e-4);
    std::vector<std::vector<int64_t>> heads(L);
    heads[1] = {0, 2};
    heads[4] = {0, 1, 2, 3};
    at::Tensor mask = at::zeros({L, H});
    mask[1][0] = 1;
    mask[1][2] = 1;
    mask[4].fill_(1);
    EXPECT_LT(testing::MaxAbsDiff(teacher_->Head(m.Forward(ids, LayoutMixes(heads, H))),
                                  teacher_->Head(m.Forward(ids, GatedMixes(mask)))),
              1e-4);
  }
}

TEST_F(MorphTest, CheckpointedBackwardGivesTheSameGradients) {
  auto branches = Branches(BranchKind::kGatedDeltaNet);
  MorphableModel m(teacher_, &branches);
  at::Tensor ids = Ids(48, 3);
  const int64_t L = teacher_->config().num_layers;
  auto loss = [&](const at::Tensor& x) { return teacher_->FinalNorm(x).pow(2).mean(); };
  std::vector<at::Tensor> grads;
  for (bool ckpt : {false, true}) {
    at::Tensor gates = at::full({L, 1}, 0.6).requires_grad_(true);
    at::Tensor value = m.ForwardBackward(ids, GatedMixes(gates), loss, ckpt);
    EXPECT_TRUE(std::isfinite(value.item<double>()));
    ASSERT_TRUE(gates.grad().defined());
    grads.push_back(gates.grad().clone());
  }
  EXPECT_GT(grads[0].abs().max().item<double>(), 0);
  EXPECT_LT(testing::MaxAbsDiff(grads[0], grads[1]), 1e-6 * (1 + grads[0].abs().max().item<double>()));
}

// Attention records (worker/engine/model/attention_record.h): a checkpointed backward that replays the forward's
// softmax attention gives the gradients of one that recomputes it. On the CPU nothing is recorded (cuDNN only), so
// that run checks the plumbing; with a GPU, the demo model in bf16 on it records (and replays) every layer.
TEST_F(MorphTest, RecordedAttentionGivesTheSameGradients) {
  std::vector<std::unique_ptr<Decoder>> gpu;
  std::vector<const Decoder*> teachers = {teacher_};
  if (at::hasCUDA()) {
    LoadOptions o;
    o.dtype = at::kBFloat16;
    o.device = at::Device(at::kCUDA);
    auto d = LoadDecoder(FM_SOURCE_DIR "/models/demo/qwen3-demo", o);
    ASSERT_TRUE(d.ok()) << d.status();
    gpu.push_back(std::move(*d));
    teachers.push_back(gpu.back().get());
  }
  const int64_t before = SetAttentionRecordBudget(0);
  for (const Decoder* t : teachers) {
    SCOPED_TRACE(t->device().str());
    std::vector<LinearBranch> branches;
    BranchSettings bs;
    bs.kind = BranchKind::kLightning;
    for (int64_t l = 0; l < t->config().num_layers; ++l)
      branches.push_back(LinearBranch::FromTeacher(t->config(), t->weights().layers[l], l, bs, 3));
    MorphableModel m(t, &branches);
    at::Tensor ids = Ids(256, 4).to(t->device());
    const int64_t L = t->config().num_layers;
    auto loss = [&](const at::Tensor& x) { return t->FinalNorm(x).to(at::kFloat).pow(2).mean(); };
    std::vector<at::Tensor> grads;
    for (int64_t budget : {int64_t{0}, int64_t{1} << 30}) {
      SetAttentionRecordBudget(budget);
      at::Tensor gates = at::full({L, 1}, 0.6, at::TensorOptions().device(t->device())).requires_grad_(true);
      at::Tensor value = m.ForwardBackward(ids, GatedMixes(gates), loss, /*checkpointing=*/true);
      EXPECT_TRUE(std::isfinite(value.item<double>()));
      ASSERT_TRUE(gates.grad().defined());
      grads.push_back(gates.grad().to(at::kCPU).clone());
    }
    EXPECT_GT(grads[0].abs().max().item<double>(), 0);
    EXPECT_LT(testing::MaxAbsDiff(grads[0], grads[1]), 1e-3 * (1 + grads[0].abs().max().item<double>()));
  }
  SetAttentionRecordBudget(before);
}

// The last layer restricted to some rows (the gate stage's answer rows): the teacher's and the morphable model's
// outputs equal those rows of the full forward, and the gate gradients of a loss on them are unchanged, with and
// without checkpointing.
TEST_F(MorphTest, LastLayerRowsEqualTheFullForwardsRows) {
  auto branches = Branches(BranchKind::kGla);
  MorphableModel m(teacher_, &branches);
  at::Tensor ids = Ids(50, 8);
  const int64_t L = teacher_->config().num_layers;
  at::Tensor rows = at::tensor(std::vector<int64_t>{3, 17, 18, 19, 49});
  ForwardOptions all, some;
  all.return_logits = some.return_logits = false;
  some.final_rows = rows;
  auto full = teacher_->Forward(ids, all), part = teacher_->Forward(ids, some);
  ASSERT_TRUE(full.ok() && part.ok());
  ASSERT_EQ(part->final_hidden.size(1), 5);
  EXPECT_LT(testing::MaxAbsDiff(part->final_hidden, full->final_hidden.index_select(1, rows)), 1e-5);
  at::Tensor gates0 = at::full({L, 1}, 0.7);
  EXPECT_LT(testing::MaxAbsDiff(m.Forward(ids, GatedMixes(gates0), nullptr, nullptr, rows),
                                m.Forward(ids, GatedMixes(gates0)).index_select(1, rows)),
            1e-5);
  for (bool ckpt : {false, true}) {
    std::vector<at::Tensor> grads;
    for (bool restricted : {false, true}) {
      at::Tensor gates = at::full({L, 1}, 0.7).requires_grad_(true);
      auto loss = [&](const at::Tensor& x) {
        at::Tensor h = teacher_->FinalNorm(restricted ? x : x.index_select(1, rows));
        return h.pow(2).mean();
      };
      m.ForwardBackward(ids, GatedMixes(gates), loss, ckpt, restricted ? rows : at::Tensor());
      grads.push_back(gates.grad().clone());
    }
    EXPECT_GT(grads[0].abs().max().item<double>(), 0);
    EXPECT_LT(testing::MaxAbsDiff(grads[0], grads[1]), 1e-6 * (1 + grads[0].abs().max().item<double>()))
        << (ckpt ? "checkpointed" : "plain");
  }
}

TEST_F(MorphTest, BranchRecurrenceContinuesThePrefill) {
  at::manual_seed(5);
  at::Tensor x = at::randn({2, 37, teacher_->config().hidden_size});
  for (BranchKind kind : {BranchKind::kLightning, BranchKind::kGla, BranchKind::kGatedDeltaNet}) {
    auto branches = Branches(kind);
    at::Tensor full = branches[3].Forward(x);
    at::Tensor state;
    std::vector<at::Tensor> parts = {branches[3].Forward(x.narrow(1, 0, 20), &state)};
    for (int64_t t = 20; t < 37; ++t) parts.push_back(branches[3].Forward(x.narrow(1, t, 1), &state));
    EXPECT_LT(testing::MaxAbsDiff(at::cat(parts, 1), full), 1e-4) << BranchKindName(kind);
  }
}

TEST_F(MorphTest, CalibrationReducesEveryLayersAlignmentError) {
  auto branches = Branches(BranchKind::kGla);
  const std::string dir = ::testing::TempDir() + "/calibration_test";
  std::filesystem::remove_all(dir);
  CalibrationPlan plan;
  plan.steps = 12;
  plan.learning_rate = 3e-3;
  at::Tensor eval = Ids(64, 99);
  NullProgressSink sink;
  auto r = CalibrateBranches(
      *teacher_, branches, plan,
      [&](int64_t step) -> absl::StatusOr<at::Tensor> {
        at::manual_seed(step);
        return at::randint(0, teacher_->config().vocab_size, {2, 64}, at::kLong);
      },
      eval, dir, sink);
  ASSERT_TRUE(r.ok()) << r.status();
  for (size_t l = 0; l < r->error_after.size(); ++l) EXPECT_LT(r->error_after[l], r->error_before[l]) << "layer " << l;
  // The finished stage reloads from its checkpoint instead of training again.
  auto fresh = Branches(BranchKind::kGla);
  auto again = CalibrateBranches(
      *teacher_, fresh, plan,
      [](int64_t) -> absl::StatusOr<at::Tensor> { return absl::InternalError("must not be called"); }, eval, dir, sink);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->error_after, r->error_after);
  EXPECT_LT(testing::MaxAbsDiff(fresh[5].Forward(teacher_->Embed(eval)), branches[5].Forward(teacher_->Embed(eval))),
            1e-6);
  // A checkpoint written with other settings is refused, not silently resumed.
  plan.fingerprint = "other";
  EXPECT_EQ(CalibrateBranches(*teacher_, fresh, plan, nullptr, eval, dir, sink).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace fm
