// Our forward pass against transformers on tiny random Qwen3 / Qwen2 / Llama (sharded) / Mistral checkpoints that
// tests/parity/make_models_fixtures.py writes: logits, per-layer residual outputs and attention outputs in float32.
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "tests/torch/test_util.h"
#include "worker/engine/model/generate.h"
#include "worker/engine/model/weight_loader.h"

namespace fm {
namespace {

using testing::FixturePath;
using testing::MaxAbsDiff;
using testing::ReferenceTensors;

constexpr double kTolerance = 1e-4;

class DecoderParity : public ::testing::TestWithParam<std::string> {
 protected:
  std::string CaseDir() const { return FixturePath("models/" + GetParam()); }
};

TEST_P(DecoderParity, LogitsHiddenStatesAndAttentionMatchTransformers) {
  auto model = LoadDecoder(CaseDir() + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  ReferenceTensors ref(CaseDir() + "/reference.safetensors");
  at::Tensor ids = ref.Get("input_ids");
  ForwardOptions opts;
  opts.return_hidden_states = true;
  opts.return_attention_outputs = true;
  auto out = (*model)->Forward(ids, opts);
  ASSERT_TRUE(out.ok()) << out.status();

  at::Tensor logits = ref.Get("logits");
  ASSERT_EQ(out->logits.sizes(), logits.sizes());
  // The reference logits are O(1..10): a missing bias, norm or rotary detail moves them far beyond the tolerance.
  EXPECT_GT(logits.abs().max().item<double>(), 1.0);
  EXPECT_LE(MaxAbsDiff(out->logits, logits), kTolerance);
  EXPECT_LE(MaxAbsDiff(out->hidden_states[0], ref.Get("embeddings")), kTolerance);
  const int64_t L = (*model)->config().num_layers;
  ASSERT_EQ(static_cast<int64_t>(out->hidden_states.size()), L + 1);
  ASSERT_EQ(static_cast<int64_t>(out->attention_outputs.size()), L);
  for (int64_t l = 0; l < L; ++l) {
    EXPECT_LE(MaxAbsDiff(out->hidden_states[l + 1], ref.Get("hidden." + std::to_string(l))), kTolerance)
        << "layer " << l;
    EXPECT_LE(MaxAbsDiff(out->attention_outputs[l], ref.Get("attn." + std::to_string(l))), kTolerance)
        << "layer " << l;
  }
}

TEST_P(DecoderParity, IncrementalDecodingWithKvCacheMatchesFullForward) {
  auto model = LoadDecoder(CaseDir() + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  ReferenceTensors ref(CaseDir() + "/reference.safetensors");
  at::Tensor ids = ref.Get("input_ids");
  auto full = (*model)->Forward(ids);
  ASSERT_TRUE(full.ok()) << full.status();
  // Prefill 11 tokens, then feed chunks of 1 and 5 tokens: every position's logits equal the full pass.
  KvCache cache;
  ForwardOptions opts;
  opts.cache = &cache;
  std::vector<at::Tensor> pieces;
  int64_t pos = 0;
  for (int64_t len : {11, 1, 5, 1, 1, 18}) {
    auto r = (*model)->Forward(ids.narrow(1, pos, len), opts);
    ASSERT_TRUE(r.ok()) << r.status();
    pieces.push_back(r->logits);
    pos += len;
  }
  ASSERT_EQ(pos, ids.size(1));
  EXPECT_EQ(cache.length, pos);
  EXPECT_LE(MaxAbsDiff(at::cat(pieces, 1), full->logits), kTolerance);
}

TEST_P(DecoderParity, GreedyGenerationMatchesTransformersGenerate) {
  auto model = LoadDecoder(CaseDir() + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  ReferenceTensors ref(CaseDir() + "/reference.safetensors");
  at::Tensor prompt = ref.Get("generate_prompt");
  at::Tensor expected = ref.Get("generate_output");
  for (int64_t row = 0; row < prompt.size(0); ++row) {
    at::Tensor p = prompt[row].contiguous();
    std::vector<int64_t> prompt_ids(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
    GenerateOptions g;
    g.max_new_tokens = expected.size(1) - prompt.size(1);
    auto got = GenerateGreedy(**model, prompt_ids, g);
    ASSERT_TRUE(got.ok()) << got.status();
    at::Tensor e = expected[row].contiguous();
    std::vector<int64_t> want(e.data_ptr<int64_t>(), e.data_ptr<int64_t>() + e.numel());
    EXPECT_EQ(*got, want) << "row " << row;
  }
}

TEST_P(DecoderParity, OnCudaInFloat32AndBfloat16) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device in this process";
  ReferenceTensors ref(CaseDir() + "/reference.safetensors");
  at::Tensor ids = ref.Get("input_ids");
  at::Tensor want = ref.Get("logits");
  const double scale = want.abs().max().item<double>();
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    LoadOptions load;
    load.device = at::kCUDA;
    load.dtype = dtype;
    auto model = LoadDecoder(CaseDir() + "/model", load);
    ASSERT_TRUE(model.ok()) << model.status();
    auto out = (*model)->Forward(ids);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_TRUE(out->logits.is_cuda());
    // float32: GPU kernels sum in another order; bf16: 8 mantissa bits through a few layers.
    const double tol = dtype == at::kFloat ? 1e-4 : 0.05 * scale;
    EXPECT_LE(MaxAbsDiff(out->logits.cpu(), want), tol) << dtype;
  }
}

INSTANTIATE_TEST_SUITE_P(Transformers, DecoderParity, ::testing::Values("qwen3", "qwen2", "llama", "mistral"),
                         [](const auto& info) { return info.param; });

TEST(Decoder, RejectsBadInputIds) {
  auto model = LoadDecoder(FixturePath("models/qwen3/model"));
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t V = (*model)->config().vocab_size;
  EXPECT_EQ((*model)->Forward(at::full({1, 3}, V, at::kLong)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*model)->Forward(at::full({1, 3}, -1, at::kLong)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*model)->Forward(at::zeros({3}, at::kLong)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*model)->Forward(at::zeros({1, 3}, at::kFloat)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*model)->Forward(at::zeros({1, 0}, at::kLong)).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fm
