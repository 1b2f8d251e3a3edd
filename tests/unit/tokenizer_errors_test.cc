// fm::Tokenizer on bad input: malformed or unsupported tokenizer.json, inconsistent GGUF vocabulary data,
// damaged files and arbitrary bytes to encode. Every failure is a status naming the file and field; nothing
// crashes.
#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "worker/engine/tokenizer/tokenizer.h"
#include "worker/engine/common/utf8.h"

namespace fm {
namespace {

using Json = nlohmann::json;

const std::string kFixtureDir = std::string(FM_FIXTURES_DIR) + "/tokenizer";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A small but complete byte-level BPE tokenizer.json (the structure `tokenizers` writes).
Json MinimalJson() {
  return Json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [
      {"id": 5, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false,
       "special": true},
      {"id": 6, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false,
       "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "post_processor": null,
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
              "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3, "abc": 4},
              "merges": ["a b", ["ab", "c"]]}
  })");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const Json& j) { return Tokenizer::FromJsonString(j.dump(), "t.json"); }

// The status of loading `j`, which must fail with `code` and mention each of `needles`.
void ExpectError(const Json& j, absl::StatusCode code, std::vector<std::string> needles) {
  auto tok = Load(j);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), code) << tok.status();
  needles.push_back("t.json");
  for (const std::string& n : needles) {
    EXPECT_NE(std::string(tok.status().message()).find(n), std::string::npos)
        << "\"" << n << "\" not in: " << tok.status();
  }
}

TEST(TokenizerErrors, MinimalJsonLoadsAndEncodes) {
  auto tok = Load(MinimalJson());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode("abc"), std::vector<int32_t>({4}));
  EXPECT_EQ((*tok)->Encode("ab<s>c"), std::vector<int32_t>({2, 5, 3}));
  EXPECT_EQ((*tok)->Decode(std::vector<int32_t>{4, 5, 99, 3}), "abc<s>c");  // unknown ids are skipped
  EXPECT_EQ((*tok)->Decode(std::vector<int32_t>{4, 5, 3}, /*skip_special_tokens=*/true), "abcc");
  EXPECT_EQ((*tok)->vocab_size(), 7);
  EXPECT_EQ((*tok)->bos_id(), std::optional<int32_t>(5));  // by conventional name: no template
  EXPECT_EQ((*tok)->eos_id(), std::optional<int32_t>(6));
}

TEST(TokenizerErrors, FilesAndJsonSyntax) {
  auto missing = Tokenizer::FromJsonFile("/nonexistent/dir/tokenizer.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(missing.status().message()).find("/nonexistent/dir/tokenizer.json"), std::string::npos);
  auto dir = Tokenizer::FromJsonFile("/");
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);

  for (const char* bad : {"", "{", "[1, 2]", "{\"model\": }", "null", "\"text\"", "{\"model\": 1}"}) {
    auto tok = Tokenizer::FromJsonString(bad, "bad.json");
    ASSERT_FALSE(tok.ok()) << bad;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(std::string(tok.status().message()).find("bad.json"), std::string::npos) << tok.status();
  }
}

TEST(TokenizerErrors, MissingOrMistypedFields) {
  Json j = MinimalJson();
  j.erase("model");
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"model"});

  j = MinimalJson();
  j["model"].erase("merges");
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"model.merges"});

  j = MinimalJson();
  j["model"]["vocab"]["b"] = "one";
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"model.vocab.b"});

  j = MinimalJson();
  j["model"]["vocab"]["b"] = -3;
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"model.vocab.b"});

  j = MinimalJson();
  j["model"]["merges"][1] = "ab c d";
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"model.merges[1]"});

  j = MinimalJson();
  j["model"]["merges"][1] = Json::array({"ab"});
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"model.merges[1]"});

  j = MinimalJson();
  j["added_tokens"][1].erase("special");
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"added_tokens[1].special"});

  j = MinimalJson();
  j["pre_tokenizer"].erase("add_prefix_space");
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"pre_tokenizer.add_prefix_space"});

  j = MinimalJson();
  j["pre_tokenizer"] = Json::parse(R"({"type": "Split", "pattern": {"Regex": "(unclosed"},
                                       "behavior": "Isolated", "invert": false})");
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"pre_tokenizer.pattern", "(unclosed"});

  j = MinimalJson();
  j["pre_tokenizer"] = Json::parse(R"({"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways",
                                       "invert": false})");
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"pre_tokenizer.behavior", "Sideways"});

  j = MinimalJson();
  j["post_processor"] = Json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {}})");
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"post_processor.special_tokens", "<bos>"});

  j = MinimalJson();
  j["post_processor"] = Json::parse(R"({"type": "TemplateProcessing",
      "single": [{"Sequence": {"id": "B", "type_id": 0}}], "pair": [], "special_tokens": {}})");
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"post_processor.single[0]"});

  j = MinimalJson();
  j["normalizer"] = {{"type", "Sequence"}};
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"normalizer.normalizers"});

  // Sequences nested beyond any real file are refused, not recursed into.
  Json deep = {{"type", "NFC"}};
  for (int i = 0; i < 1000; ++i) deep = {{"type", "Sequence"}, {"normalizers", Json::array({deep})}};
  j = MinimalJson();
  j["normalizer"] = deep;
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"nested too deeply"});
}

TEST(TokenizerErrors, MergesNamingUnknownTokens) {
  Json j = MinimalJson();
  j["model"]["merges"][0] = "a z";
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"model.merges[0]", "\"z\""});

  j = MinimalJson();
  j["model"]["merges"][0] = "b a";  // both known, but "ba" is not in the vocabulary
  ExpectError(j, absl::StatusCode::kInvalidArgument, {"model.merges[0]", "\"ba\""});
}

TEST(TokenizerErrors, UnsupportedComponentsAreUnimplemented) {
  struct Case {
    const char* field;
    const char* json;
    const char* needle;
  };
  const Case cases[] = {
      {"model", R"({"type": "WordPiece", "vocab": {}, "unk_token": "[UNK]"})", "WordPiece"},
      {"model", R"({"type": "Unigram", "vocab": [], "unk_id": 0})", "Unigram"},
      {"normalizer", R"({"type": "BertNormalizer", "clean_text": true})", "BertNormalizer"},
      {"normalizer", R"({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Precompiled"}]})",
       "normalizer.normalizers[1]"},
      {"pre_tokenizer", R"({"type": "Metaspace", "replacement": "_"})", "Metaspace"},
      {"post_processor", R"({"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]})",
       "RobertaProcessing"},
      {"decoder", R"({"type": "WordPiece", "prefix": "##"})", "WordPiece"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.json);
    Json j = MinimalJson();
    j[c.field] = Json::parse(c.json);
    ExpectError(j, absl::StatusCode::kUnimplemented, {c.needle});
  }
  Json j = MinimalJson();
  j["model"]["dropout"] = 0.1;
  ExpectError(j, absl::StatusCode::kUnimplemented, {"model.dropout"});
  j["model"]["dropout"] = 0.0;  // as good as null, as in `tokenizers`
  EXPECT_TRUE(Load(j).ok());
  j = MinimalJson();
  j["truncation"] = Json::parse(R"({"direction": "Right", "max_length": 4, "strategy": "OnlySecond", "stride": 0})");
  ExpectError(j, absl::StatusCode::kUnimplemented, {"truncation.strategy"});
}

BpeSpec SmallSpec() {
  BpeSpec spec;
  spec.tokens = {"a", "b", "ab", "<|end|>"};
  spec.merges = {"a b"};
  spec.token_types = {1, 1, 1, 3};
  spec.pre = "gpt2";
  spec.eos_id = 3;
  spec.source_name = "model.gguf";
  return spec;
}

TEST(TokenizerErrors, BpeSpecValidation) {
  auto ok = Tokenizer::FromBpeSpec(SmallSpec());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->Encode("ab<|end|>"), std::vector<int32_t>({2, 3}));
  EXPECT_TRUE((*ok)->IsSpecial(3));
  EXPECT_EQ((*ok)->eos_id(), std::optional<int32_t>(3));

  auto expect = [](const BpeSpec& spec, absl::StatusCode code, const std::string& needle) {
    auto tok = Tokenizer::FromBpeSpec(spec);
    ASSERT_FALSE(tok.ok()) << needle;
    EXPECT_EQ(tok.status().code(), code) << tok.status();
    EXPECT_NE(std::string(tok.status().message()).find("model.gguf"), std::string::npos) << tok.status();
    EXPECT_NE(std::string(tok.status().message()).find(needle), std::string::npos) << tok.status();
  };
  BpeSpec s = SmallSpec();
  s.pre = "deepseek-llm";
  expect(s, absl::StatusCode::kUnimplemented, "deepseek-llm");
  s = SmallSpec();
  s.token_types = {1, 1};
  expect(s, absl::StatusCode::kInvalidArgument, "token types");
  s = SmallSpec();
  s.token_types[1] = 9;
  expect(s, absl::StatusCode::kInvalidArgument, "type 9");
  s = SmallSpec();
  s.merges = {"a c"};
  expect(s, absl::StatusCode::kInvalidArgument, "\"c\"");
  s = SmallSpec();
  s.merges = {"ab"};
  expect(s, absl::StatusCode::kInvalidArgument, "merge 0");
  s = SmallSpec();
  s.bos_id = 4;
  expect(s, absl::StatusCode::kInvalidArgument, "bos id 4");
  s = SmallSpec();
  s.add_bos = true;
  expect(s, absl::StatusCode::kInvalidArgument, "add_bos");
  s = SmallSpec();
  s.tokens.clear();
  s.token_types.clear();
  expect(s, absl::StatusCode::kInvalidArgument, "empty");
}

// Every prefix of a real tokenizer.json, and copies with bytes overwritten, load or fail cleanly.
TEST(TokenizerErrors, DamagedFilesNeverCrash) {
  const std::string good = ReadFile(kFixtureDir + "/llama3/tokenizer.json");
  ASSERT_GT(good.size(), 1000u);
  int loaded = 0;
  for (size_t cut = 0; cut < good.size(); cut += good.size() / 97 + 1) {
    auto tok = Tokenizer::FromJsonString(std::string_view(good).substr(0, cut), "cut.json");
    loaded += tok.ok();
  }
  EXPECT_EQ(loaded, 0);  // no prefix is a complete JSON document
  std::mt19937 rng(1234);
  for (int round = 0; round < 60; ++round) {
    std::string damaged = good;
    for (int k = 0; k < 3; ++k) {
      damaged[rng() % damaged.size()] = static_cast<char>("\"{}[]:,0a\\\xff"[rng() % 12]);
    }
    auto tok = Tokenizer::FromJsonString(damaged, "damaged.json");
    if (tok.ok()) {
      (*tok)->Encode("Hello <|begin_of_text|> world 123");
    } else {
      EXPECT_NE(std::string(tok.status().message()).find("damaged.json"), std::string::npos) << tok.status();
    }
  }
}

// Arbitrary bytes (mostly invalid UTF-8) through every fixture configuration: no crash, and for byte-level
// tokenizers whose text survives normalisation, DecodeBytes gives the bytes back.
TEST(TokenizerErrors, ArbitraryBytesEncode) {
  std::mt19937 rng(42);
  std::vector<std::string> inputs;
  for (int n = 0; n < 40; ++n) {
    std::string s;
    const int len = static_cast<int>(rng() % 200);
    for (int i = 0; i < len; ++i) s.push_back(static_cast<char>(rng() % 256));
    inputs.push_back(std::move(s));
  }
  inputs.push_back(std::string(200000, ' ') + "x" + std::string(100000, '\n') + std::string(100000, 'a'));
  inputs.push_back(std::string(50000, '\xff'));
  for (const char* name : {"gpt2", "smollm", "llama3", "qwen2", "misc", "unk", "byte_fallback"}) {
    SCOPED_TRACE(name);
    auto tok = Tokenizer::FromJsonFile(kFixtureDir + "/" + name + "/tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    const bool roundtrips =
        std::string(name) == "gpt2" || std::string(name) == "smollm" || std::string(name) == "llama3";
    for (const std::string& in : inputs) {
      const std::vector<int32_t> ids = (*tok)->Encode(in, /*add_special_tokens=*/false);
      for (int32_t id : ids) ASSERT_TRUE((*tok)->IdToToken(id).has_value()) << id;
      EXPECT_TRUE(IsValidUtf8((*tok)->Decode(ids)));
      if (roundtrips) {
        // Inputs with an added token's text inside (e.g. "[NOTE]" with its stripped spaces) do not occur here.
        EXPECT_EQ((*tok)->DecodeBytes(ids), in);
      }
    }
  }
}

}  // namespace
}  // namespace fm
