// Discretisation (top-K with ties, margins, near-ties), the uniform peer, budgets and option validation.
#include "worker/engine/morph/layout.h"

#include <gtest/gtest.h>

#include "worker/engine/morph/conversion_options.h"

namespace fm {
namespace {

Budget Layers(int64_t k) { return Budget{Budget::Unit::kLayers, static_cast<double>(k)}; }

TEST(Layout, TopKKeepsTheLargestGatesAndRecordsTheMargin) {
  std::vector<double> gates = {0.1, 0.9, 0.3, 0.8, 0.05, 0.6};
  auto l = SelectTopK(gates, Layers(2), 6, 4, false, "flashmorph");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->kept, (std::vector<int64_t>{1, 3}));
  ASSERT_TRUE(l->margin.has_value());
  EXPECT_DOUBLE_EQ(*l->margin, 0.8 - 0.6);
  EXPECT_TRUE(l->near_ties.empty());
  auto types = l->LayerTypes();
  EXPECT_EQ(types[1], LayerType::kFullAttention);
  EXPECT_EQ(types[0], LayerType::kLinearAttention);
  EXPECT_EQ(l->Mask(), (std::vector<float>{0, 1, 0, 1, 0, 0}));
}

TEST(Layout, TiesGoToTheLowerIndexAndAreReported) {
  std::vector<double> gates = {0.5, 0.7, 0.5, 0.5, 0.69};
  auto l = SelectTopK(gates, Layers(3), 5, 1, false, "flashmorph");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->kept, (std::vector<int64_t>{0, 1, 4}));
  EXPECT_DOUBLE_EQ(*l->margin, 0.0);
  // 0.7 vs 0.5 is no tie; 0.69 and 0.5 are 0.19 apart; 0.5 (kept, layer 0) ties layers 2 and 3.
  ASSERT_EQ(l->near_ties.size(), 2u);
  EXPECT_EQ(l->near_ties[0].kept, 0);
  EXPECT_EQ(l->near_ties[0].dropped, 2);
  EXPECT_EQ(l->near_ties[1].dropped, 3);
}

TEST(Layout, IdenticalScoresGiveIdenticalLayouts) {
  std::vector<double> gates = {0.3, 0.3, 0.3, 0.3};
  auto a = SelectTopK(gates, Layers(2), 4, 2, false, "x");
  auto b = SelectTopK(gates, Layers(2), 4, 2, false, "x");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->kept, b->kept);
  EXPECT_EQ(a->kept, (std::vector<int64_t>{0, 1}));
}

TEST(Layout, RatioBudgetsRoundAndKeepAtLeastOne) {
  EXPECT_EQ(*ResolveBudget({Budget::Unit::kRatio, 0.25}, 30, 9), 8);  // round(7.5)
  EXPECT_EQ(*ResolveBudget({Budget::Unit::kRatio, 0.125}, 8, 4), 1);
  EXPECT_EQ(*ResolveBudget({Budget::Unit::kRatio, 0.01}, 8, 4), 1);
  EXPECT_EQ(*ResolveBudget({Budget::Unit::kHeads, 5}, 8, 4), 5);
  EXPECT_FALSE(ResolveBudget(Layers(9), 8, 4).ok());
  EXPECT_FALSE(ResolveBudget({Budget::Unit::kHeads, 33}, 8, 4).ok());
}

TEST(Layout, HeadLevelSelectionGroupsHeadsPerLayer) {
  // 3 layers x 2 heads.
  std::vector<double> gates = {0.9, 0.8, 0.1, 0.2, 0.7, 0.05};
  auto l = SelectTopK(gates, {Budget::Unit::kHeads, 3}, 3, 2, true, "head");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->kept, (std::vector<int64_t>{0, 1, 4}));
  auto heads = l->FullAttentionHeads();
  EXPECT_EQ(heads[0], (std::vector<int64_t>{0, 1}));
  EXPECT_TRUE(heads[1].empty());
  EXPECT_EQ(heads[2], (std::vector<int64_t>{0}));
  auto types = l->LayerTypes();
  EXPECT_EQ(types[0], LayerType::kFullAttention);
  EXPECT_EQ(types[1], LayerType::kLinearAttention);
  EXPECT_EQ(types[2], LayerType::kHybridAttention);
  // A layer budget on head gates (and the reverse) is refused.
  EXPECT_FALSE(SelectTopK(gates, Layers(1), 3, 2, true, "head").ok());
}

TEST(Layout, BadScoresAreRefused) {
  EXPECT_FALSE(SelectTopK({0.1, 0.2}, Layers(1), 3, 1, false, "x").ok());
  EXPECT_FALSE(SelectTopK({0.1, std::nan(""), 0.3}, Layers(1), 3, 1, false, "x").ok());
}

TEST(Layout, UniformSpreadsLayersAndKeepsTheLast) {
  auto l = UniformLayout(Layers(2), 8, 4);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->kept, (std::vector<int64_t>{3, 7}));
  auto r = UniformLayout({Budget::Unit::kRatio, 0.25}, 30, 9);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kept, (std::vector<int64_t>{2, 6, 10, 14, 17, 21, 25, 29}));
  auto all = UniformLayout(Layers(8), 8, 4);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->kept.size(), 8u);
  EXPECT_FALSE(UniformLayout({Budget::Unit::kHeads, 3}, 8, 4).ok());
}

TEST(ConversionOptions, ParsesBudgetsMethodsAndBranches) {
  EXPECT_EQ(ParseBudget("4")->unit, Budget::Unit::kLayers);
  EXPECT_DOUBLE_EQ(ParseBudget("0.25")->value, 0.25);
  EXPECT_DOUBLE_EQ(ParseBudget("12.5%")->value, 0.125);
  EXPECT_EQ(ParseBudget("32h")->unit, Budget::Unit::kHeads);
  for (const char* bad : {"", "0", "-1", "1.5", "abc", "0h", "200%"}) EXPECT_FALSE(ParseBudget(bad).ok()) << bad;
  EXPECT_EQ(*ParseSelectionMethod("NLL"), SelectionMethod::kNll);
  EXPECT_FALSE(ParseSelectionMethod("random").ok());
  EXPECT_EQ(*ParseBranchKind("gdn"), BranchKind::kGatedDeltaNet);
  EXPECT_EQ(BranchKindName(*ParseBranchKind("gla")), "gla");
  EXPECT_FALSE(ParseBranchKind("mamba").ok());
}

TEST(ConversionOptions, ScalingFillsEveryDefaultAndValidationCatchesInconsistencies) {
  ModelShape shape{8, 4, 192, 4096, 0};
  ConversionOptions o;
  o.model_path = "m";
  o.output_dir = "out";
  ScaleToModel(shape, /*on_gpu=*/false, o);
  EXPECT_GT(o.calibration.train_tokens, 0);
  EXPECT_GT(o.gates.train_tokens, 0);
  EXPECT_LE(o.gates.min_context, o.gates.max_context);
  EXPECT_FALSE(o.evaluation.needle_lengths.empty());
  EXPECT_EQ(o.work_dir, "out.work");
  EXPECT_TRUE(ValidateConversionOptions(o, shape).ok());

  ConversionOptions gpu = ConversionOptions{};
  gpu.model_path = "m";
  gpu.output_dir = "out";
  ScaleToModel(shape, /*on_gpu=*/true, gpu);
  EXPECT_EQ(gpu.gates.train_tokens, 20'000'000);  // the paper's budget
  EXPECT_DOUBLE_EQ(gpu.gates.learning_rate_start, 2e-2);
  EXPECT_EQ(gpu.dtype, "bfloat16");

  ConversionOptions bad = o;
  bad.budgets = {Budget{Budget::Unit::kHeads, 4}};
  EXPECT_EQ(ValidateConversionOptions(bad, shape).code(), absl::StatusCode::kInvalidArgument);
  bad = o;
  bad.budgets = {Layers(9)};
  EXPECT_FALSE(ValidateConversionOptions(bad, shape).ok());
  bad = o;
  bad.gates.min_context = 600;
  bad.gates.max_context = 500;
  EXPECT_FALSE(ValidateConversionOptions(bad, shape).ok());
  bad = o;
  bad.dtype = "int8";
  EXPECT_FALSE(ValidateConversionOptions(bad, shape).ok());
  bad = o;
  bad.method = SelectionMethod::kHead;  // a layer budget with the head method
  EXPECT_FALSE(ValidateConversionOptions(bad, shape).ok());
}

}  // namespace
}  // namespace fm
