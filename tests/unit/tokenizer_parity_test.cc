// Parity of fm::Tokenizer with the Hugging Face `tokenizers` library, on tokenizers trained by
// tests/parity/make_tokenizer_fixtures.py (GPT-2, SmolLM2, Llama-3 and Qwen2 style configurations and variants)
// and the ids and decodes `tokenizers` gives for held-out Brown text and tricky strings.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "worker/engine/tokenizer/tokenizer.h"

namespace fm {
namespace {

using Json = nlohmann::json;

const std::string kFixtureDir = std::string(FM_FIXTURES_DIR) + "/tokenizer";

// The configurations the fixture script writes (it lists them in index.json; ConfigsMatchTheFixtureIndex checks).
const char* const kConfigs[] = {
    "gpt2",           "smollm", "llama3",    "qwen2", "gpt2_prefix_space", "llama3_whole_words", "llama3_trunc_pad",
    "gpt2_trunc_pad", "misc",   "misc_nfkc", "unk",   "unk_fused",         "byte_fallback"};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Json ReadJson(const std::string& path) {
  Json j = Json::parse(ReadFile(path), nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << path;
  return j;
}

std::vector<int32_t> Ids(const Json& j) { return j.get<std::vector<int32_t>>(); }

std::string Escape(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

// Empty when equal; otherwise the first mismatch with the ids and tokens around it.
std::string FirstMismatch(const Tokenizer& tok, const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  if (got == want) return "";
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  std::ostringstream os;
  os << "first mismatch at index " << i << " (got " << got.size() << " ids, want " << want.size() << ")\n";
  const size_t from = i >= 5 ? i - 5 : 0;
  auto show = [&](const char* label, const std::vector<int32_t>& ids) {
    os << label;
    for (size_t k = from; k < ids.size() && k < i + 6; ++k) {
      auto token = tok.IdToToken(ids[k]);
      os << (k == i ? " >>" : " ") << ids[k] << "'" << Escape(token ? *token : "?") << "'";
    }
    os << "\n";
  };
  show("  got: ", got);
  show("  want:", want);
  std::vector<int32_t> prefix(want.begin(), want.begin() + static_cast<std::ptrdiff_t>(from));
  const std::string before = tok.Decode(prefix);
  os << "  text before: \"..." << Escape(before.substr(before.size() > 80 ? before.size() - 80 : 0)) << "\"";
  return os.str();
}

std::string CaseLabel(const Json& c, size_t index) {
  const std::string text = c["text"].get<std::string>();
  return "case " + std::to_string(index) + " text \"" + Escape(text.substr(0, 60)) +
         (text.size() > 60 ? "...\"" : "\"");
}

std::string Unhex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

TEST(TokenizerParity, ConfigsMatchTheFixtureIndex) {
  Json index = ReadJson(kFixtureDir + "/index.json");
  ASSERT_TRUE(index.contains("configs"));
  std::vector<std::string> listed = index["configs"].get<std::vector<std::string>>();
  std::vector<std::string> ours(std::begin(kConfigs), std::end(kConfigs));
  EXPECT_EQ(listed, ours);
}

class TokenizerConfigTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    dir_ = kFixtureDir + "/" + GetParam();
    cases_ = ReadJson(dir_ + "/cases.json");
    ASSERT_TRUE(cases_.is_object());
    auto tok = Tokenizer::FromJsonFile(dir_ + "/tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *std::move(tok);
  }

  std::string dir_;
  Json cases_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_P(TokenizerConfigTest, EncodeAndDecodeMatchTokenizers) {
  const Json& cs = cases_["cases"];
  for (size_t k = 0; k < cs.size(); ++k) {
    const Json& c = cs[k];
    SCOPED_TRACE(CaseLabel(c, k));
    const std::string text = c["text"].get<std::string>();
    const std::vector<int32_t> ids = tok_->Encode(text, /*add_special_tokens=*/true);
    EXPECT_EQ(FirstMismatch(*tok_, ids, Ids(c["ids"])), "");
    if (!c["ids_plain"].is_null()) {
      EXPECT_EQ(FirstMismatch(*tok_, tok_->Encode(text, false), Ids(c["ids_plain"])), "");
    }
    const std::vector<int32_t> want_ids = Ids(c["ids"]);
    const std::string want_decode = c["decode"].is_null() ? text : c["decode"].get<std::string>();
    EXPECT_EQ(tok_->Decode(want_ids, /*skip_special_tokens=*/false), want_decode);
    EXPECT_EQ(tok_->Decode(want_ids, /*skip_special_tokens=*/true), c["decode_skip"].get<std::string>());
    if (!c["roundtrip"].is_null()) {
      const std::string want = c["roundtrip"].is_boolean() ? text : c["roundtrip"].get<std::string>();
      EXPECT_EQ(tok_->Decode(tok_->Encode(text, false)), want);
    }
  }
}

TEST_P(TokenizerConfigTest, VocabularyLookups) {
  EXPECT_EQ(tok_->vocab_size(), cases_["vocab_size"].get<int32_t>());
  for (const Json& probe : cases_["id_to_token"]) {
    const int32_t id = probe[0].get<int32_t>();
    auto token = tok_->IdToToken(id);
    if (probe[1].is_null()) {
      EXPECT_FALSE(token.has_value()) << id;
    } else {
      ASSERT_TRUE(token.has_value()) << id;
      EXPECT_EQ(std::string(*token), probe[1].get<std::string>()) << id;
    }
  }
  for (const Json& probe : cases_["token_to_id"]) {
    const std::string token = probe[0].get<std::string>();
    auto id = tok_->TokenToId(token);
    if (probe[1].is_null()) {
      EXPECT_FALSE(id.has_value()) << token;
    } else {
      EXPECT_EQ(id, std::optional<int32_t>(probe[1].get<int32_t>())) << token;
    }
  }
  std::vector<int32_t> special;
  for (const AddedTokenInfo& t : tok_->added_tokens()) {
    EXPECT_EQ(tok_->IsSpecial(t.id), t.special);
    if (t.special) special.push_back(t.id);
  }
  EXPECT_EQ(special, Ids(cases_["special_ids"]));
  if (!cases_["bos_id"].is_null()) {
    EXPECT_EQ(tok_->bos_id(), std::optional<int32_t>(cases_["bos_id"].get<int32_t>()));
  }
}

TEST_P(TokenizerConfigTest, InvalidUtf8FollowsTheDocumentedRule) {
  for (const Json& c : cases_["invalid"]) {
    const std::string bytes = Unhex(c["hex"].get<std::string>());
    SCOPED_TRACE("bytes " + c["hex"].get<std::string>());
    const std::vector<int32_t> ids = tok_->Encode(bytes, false);
    if (!c["ids_plain"].is_null()) {
      EXPECT_EQ(FirstMismatch(*tok_, ids, Ids(c["ids_plain"])), "");
    }
    tok_->Encode(bytes, true);  // must not crash either
    if (cases_["roundtrips"].get<bool>()) {
      EXPECT_EQ(tok_->DecodeBytes(ids), bytes);
      EXPECT_EQ(tok_->Decode(ids), c["lossy"].get<std::string>());
    }
  }
}

TEST_P(TokenizerConfigTest, ConcurrentEncodesAgree) {
  const Json& cs = cases_["cases"];
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> want;
  for (size_t k = 1; k < cs.size(); ++k) {  // the short cases; the first one is the long held-out text
    texts.push_back(cs[k]["text"].get<std::string>());
    want.push_back(Ids(cs[k]["ids"]));
  }
  std::vector<int> failures(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (size_t k = 0; k < texts.size(); ++k) {
          const size_t i = (k + static_cast<size_t>(t) * 7 + static_cast<size_t>(round)) % texts.size();
          if (tok_->Encode(texts[i]) != want[i]) ++failures[t];
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures, std::vector<int>(4, 0));
}

// The configurations with a GGUF view (spec.json): the four family mirrors.
class TokenizerSpecTest : public TokenizerConfigTest {};

TEST_P(TokenizerSpecTest, FromBpeSpecMatchesTheGgufView) {
  Json spec_json = ReadJson(dir_ + "/spec.json");
  BpeSpec spec;
  spec.tokens = spec_json["tokens"].get<std::vector<std::string>>();
  spec.merges = spec_json["merges"].get<std::vector<std::string>>();
  spec.token_types = spec_json["token_types"].get<std::vector<int32_t>>();
  spec.pre = spec_json["pre"].get<std::string>();
  if (!spec_json["bos_id"].is_null()) spec.bos_id = spec_json["bos_id"].get<int32_t>();
  if (!spec_json["eos_id"].is_null()) spec.eos_id = spec_json["eos_id"].get<int32_t>();
  spec.add_bos = spec_json["add_bos"].get<bool>();
  spec.add_eos = spec_json["add_eos"].get<bool>();
  spec.source_name = dir_ + "/spec.json";
  auto tok = Tokenizer::FromBpeSpec(spec);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // The other names of the same family give the same tokenizer.
  for (const auto& [name, alias] : {std::pair<std::string, std::string>{"gpt2", "default"}, {"llama-bpe", "llama3"}}) {
    if (spec.pre != name) continue;
    BpeSpec other = spec;
    other.pre = alias;
    auto alias_tok = Tokenizer::FromBpeSpec(other);
    ASSERT_TRUE(alias_tok.ok()) << alias_tok.status();
    const std::string text = cases_["cases"][0]["text"].get<std::string>();
    EXPECT_EQ((*alias_tok)->Encode(text), (*tok)->Encode(text)) << alias;
  }
  EXPECT_EQ((*tok)->vocab_size(), static_cast<int32_t>(spec.tokens.size()));
  EXPECT_EQ((*tok)->bos_id(), spec.bos_id);
  const Json& cs = cases_["cases"];
  const Json& spec_cases = spec_json["cases"];
  ASSERT_EQ(cs.size(), spec_cases.size());
  for (size_t k = 0; k < cs.size(); ++k) {
    SCOPED_TRACE(CaseLabel(cs[k], k));
    const std::string text = cs[k]["text"].get<std::string>();
    const Json& c = spec_cases[k];
    EXPECT_EQ(FirstMismatch(**tok, (*tok)->Encode(text, true), Ids(c["ids"])), "");
    if (!c["ids_plain"].is_null()) {
      EXPECT_EQ(FirstMismatch(**tok, (*tok)->Encode(text, false), Ids(c["ids_plain"])), "");
    }
    const std::string want_decode = c["decode"].is_null() ? text : c["decode"].get<std::string>();
    EXPECT_EQ((*tok)->Decode(Ids(c["ids"])), want_decode);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, TokenizerConfigTest, ::testing::ValuesIn(kConfigs),
                         [](const ::testing::TestParamInfo<const char*>& info) { return std::string(info.param); });
INSTANTIATE_TEST_SUITE_P(Tokenizer, TokenizerSpecTest, ::testing::Values("gpt2", "smollm", "llama3", "qwen2"),
                         [](const ::testing::TestParamInfo<const char*>& info) { return std::string(info.param); });

}  // namespace
}  // namespace fm
