// config.json parsing: the forms transformers 4.x and 5.x write, per-architecture features, and clear errors.
#include "worker/engine/model/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace fm {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

json Base(const char* model_type) {
  return json{{"model_type", model_type},      {"vocab_size", 1000},        {"hidden_size", 64},
              {"intermediate_size", 128},      {"num_hidden_layers", 3},    {"num_attention_heads", 4},
              {"num_key_value_heads", 2},      {"rms_norm_eps", 1e-5},      {"max_position_embeddings", 4096},
              {"hidden_act", "silu"}};
}

absl::StatusOr<ModelConfig> Parse(const json& j) { return ParseModelConfig(j.dump(), "dir/config.json"); }

TEST(ModelConfig, LlamaDefaults) {
  auto c = Parse(Base("llama"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kLlama);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->q_dim(), 64);
  EXPECT_EQ(c->kv_dim(), 32);
  EXPECT_EQ(c->rope.type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(c->rope.theta, 10000.0);
  EXPECT_FALSE(c->qkv_bias || c->o_bias || c->mlp_bias || c->qk_norm || c->tie_word_embeddings);
  EXPECT_EQ(c->sliding_window, std::vector<int64_t>(3, 0));
}

TEST(ModelConfig, Llama3RopeScalingOldAndNewFormsAgree) {
  json old_form = Base("llama");
  old_form["rope_theta"] = 500000.0;
  old_form["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  json new_form = Base("llama");
  new_form["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                                 {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                 {"original_max_position_embeddings", 8192}};
  for (const json& j : {old_form, new_form}) {
    auto c = Parse(j);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->rope.type, RopeType::kLlama3);
    EXPECT_DOUBLE_EQ(c->rope.theta, 500000.0);
    EXPECT_DOUBLE_EQ(c->rope.factor, 8.0);
    EXPECT_DOUBLE_EQ(c->rope.high_freq_factor, 4.0);
    EXPECT_EQ(c->rope.original_max_position_embeddings, 8192);
  }
}

TEST(ModelConfig, ArchitectureFeatures) {
  json qwen2 = Base("qwen2");
  auto c2 = Parse(qwen2);
  ASSERT_TRUE(c2.ok()) << c2.status();
  EXPECT_TRUE(c2->qkv_bias);
  EXPECT_FALSE(c2->o_bias);

  json qwen3 = Base("qwen3");
  qwen3["head_dim"] = 32;  // explicit, != hidden/heads
  qwen3["tie_word_embeddings"] = true;
  auto c3 = Parse(qwen3);
  ASSERT_TRUE(c3.ok()) << c3.status();
  EXPECT_TRUE(c3->qk_norm);
  EXPECT_EQ(c3->head_dim, 32);
  EXPECT_EQ(c3->q_dim(), 128);
  EXPECT_TRUE(c3->tie_word_embeddings);

  json llama = Base("llama");
  llama["attention_bias"] = true;
  llama["mlp_bias"] = true;
  auto cl = Parse(llama);
  ASSERT_TRUE(cl.ok()) << cl.status();
  EXPECT_TRUE(cl->qkv_bias && cl->o_bias && cl->mlp_bias);

  // Architecture from "architectures" when model_type is absent.
  json by_class = Base("llama");
  by_class.erase("model_type");
  by_class["architectures"] = {"MistralForCausalLM"};
  auto cm = Parse(by_class);
  ASSERT_TRUE(cm.ok()) << cm.status();
  EXPECT_EQ(cm->arch, Architecture::kMistral);
}

TEST(ModelConfig, SlidingWindows) {
  json mistral = Base("mistral");
  mistral["sliding_window"] = 4096;
  auto m = Parse(mistral);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->sliding_window, std::vector<int64_t>(3, 4096));

  json mistral_none = Base("mistral");
  mistral_none["sliding_window"] = nullptr;
  EXPECT_EQ(Parse(mistral_none)->sliding_window, std::vector<int64_t>(3, 0));

  json qwen_off = Base("qwen2");  // use_sliding_window false: the window is ignored
  qwen_off["sliding_window"] = 32;
  EXPECT_EQ(Parse(qwen_off)->sliding_window, std::vector<int64_t>(3, 0));

  json qwen_types = Base("qwen3");
  qwen_types["use_sliding_window"] = true;
  qwen_types["sliding_window"] = 32;
  qwen_types["layer_types"] = {"full_attention", "sliding_attention", "full_attention"};
  EXPECT_EQ(Parse(qwen_types)->sliding_window, (std::vector<int64_t>{0, 32, 0}));

  json qwen_max = Base("qwen2");
  qwen_max["use_sliding_window"] = true;
  qwen_max["sliding_window"] = 32;
  qwen_max["max_window_layers"] = 1;
  EXPECT_EQ(Parse(qwen_max)->sliding_window, (std::vector<int64_t>{0, 32, 32}));
}

TEST(ModelConfig, YarnResolvesAttentionFactor) {
  json j = Base("qwen3");
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}};
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(c->rope.attention_factor, 0.1 * std::log(4.0) + 1.0);
}

struct BadCase {
  const char* what;
  std::function<void(json&)> edit;
  absl::StatusCode code;
  const char* message;
};

TEST(ModelConfig, BadConfigsAreClearErrors) {
  const std::vector<BadCase> cases = {
      {"unknown architecture", [](json& j) { j["model_type"] = "gpt_neox"; }, absl::StatusCode::kInvalidArgument,
       "unknown architecture"},
      {"unknown class", [](json& j) { j.erase("model_type"); j["architectures"] = {"BertModel"}; },
       absl::StatusCode::kInvalidArgument, "unknown architecture"},
      {"heads not a multiple of kv heads", [](json& j) { j["num_key_value_heads"] = 3; },
       absl::StatusCode::kInvalidArgument, "inconsistent heads"},
      {"hidden not a multiple of heads", [](json& j) { j["num_attention_heads"] = 5; j["num_key_value_heads"] = 5; },
       absl::StatusCode::kInvalidArgument, "inconsistent heads"},
      {"odd head_dim", [](json& j) { j["head_dim"] = 15; }, absl::StatusCode::kInvalidArgument, "head_dim"},
      {"missing field", [](json& j) { j.erase("hidden_size"); }, absl::StatusCode::kInvalidArgument, "hidden_size"},
      {"wrong type", [](json& j) { j["vocab_size"] = "1000"; }, absl::StatusCode::kInvalidArgument, "vocab_size"},
      {"zero layers", [](json& j) { j["num_hidden_layers"] = 0; }, absl::StatusCode::kInvalidArgument,
       "num_hidden_layers"},
      {"negative size", [](json& j) { j["intermediate_size"] = -4; }, absl::StatusCode::kInvalidArgument,
       "intermediate_size"},
      {"gelu", [](json& j) { j["hidden_act"] = "gelu"; }, absl::StatusCode::kUnimplemented, "hidden_act"},
      {"dynamic rope", [](json& j) { j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}}; },
       absl::StatusCode::kUnimplemented, "dynamic"},
      {"llama3 rope without factors", [](json& j) { j["rope_scaling"] = {{"rope_type", "llama3"}}; },
       absl::StatusCode::kInvalidArgument, "factor"},
      {"layer_types of wrong length", [](json& j) { j["layer_types"] = {"full_attention"}; },
       absl::StatusCode::kInvalidArgument, "layer_types"},
      {"unknown layer type", [](json& j) { j["layer_types"] = {"full_attention", "linear_attention", "x"}; },
       absl::StatusCode::kUnimplemented, "layer_types"},
      {"absurd size", [](json& j) { j["vocab_size"] = int64_t{1} << 40; }, absl::StatusCode::kInvalidArgument,
       "vocab_size"},
  };
  for (const BadCase& bc : cases) {
    json j = Base("llama");
    bc.edit(j);
    auto c = Parse(j);
    ASSERT_FALSE(c.ok()) << bc.what;
    EXPECT_EQ(c.status().code(), bc.code) << bc.what << ": " << c.status();
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("dir/config.json")) << bc.what;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(bc.message)) << bc.what;
  }
  for (const char* text : {"", "[1,2]", "{\"model_type\": ", "not json"}) {
    auto c = ParseModelConfig(text, "x/config.json");
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
}

TEST(ModelConfig, LoadFromMissingDirectoryIsNotFound) {
  auto c = LoadModelConfig("/nonexistent/model");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("/nonexistent/model/config.json"));
}

}  // namespace
}  // namespace fm
