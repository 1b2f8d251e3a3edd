// fm::Rng and fm::PasskeyGenerator: the random numbers against an independent Python xoshiro256**, passkey
// samples against an independent Python implementation of docs/ENGINE.md §3 (tests/parity/make_data_fixtures.py),
// and the sample properties (reproducible, lengths, passkeys in the text, answer mask, positions), option errors
// and answer scoring.
#include "worker/engine/data/passkey.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "worker/engine/data/rng.h"
#include "worker/engine/data/text_dataset.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace fm {
namespace {

const std::string kFixtures = std::string(FM_FIXTURES_DIR) + "/data";

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

uint64_t U64(const nlohmann::json& j) { return std::stoull(j.get<std::string>()); }

bool Contains(const absl::Status& s, const std::string& needle) {
  return std::string(s.message()).find(needle) != std::string::npos;
}

TEST(Rng, MatchesPythonReference) {
  const nlohmann::json ref = ReadJson(kFixtures + "/rng.json");
  ASSERT_GE(ref["cases"].size(), 6u);
  for (const auto& c : ref["cases"]) {
    Rng rng = Rng::ForStream(U64(c["seed"]), U64(c["index"]));
    for (const auto& raw : c["raw"]) ASSERT_EQ(rng.Next(), U64(raw));
    for (const auto& u : c["uniform"]) ASSERT_EQ(rng.Uniform(U64(u[0])), U64(u[1])) << u[0];
    for (const auto& r : c["real"]) ASSERT_EQ(rng.UniformReal(), r.get<double>());
  }
}

TEST(Rng, RangesAndStreams) {
  Rng rng(42);
  EXPECT_EQ(rng.Uniform(0), 0u);
  std::vector<int> hits(7, 0);
  for (int i = 0; i < 7000; ++i) {
    const int64_t v = rng.UniformInRange(-3, 3);
    ASSERT_GE(v, -3);
    ASSERT_LE(v, 3);
    ++hits[v + 3];
    const double r = rng.UniformReal();
    ASSERT_GE(r, 0.0);
    ASSERT_LT(r, 1.0);
  }
  for (int h : hits) EXPECT_GT(h, 800);  // expected 1000 each
  EXPECT_EQ(rng.UniformInRange(5, 5), 5);
  EXPECT_EQ(rng.UniformInRange(5, 4), 5);
  std::set<uint64_t> seeds;
  for (uint64_t i = 0; i < 1000; ++i) seeds.insert(Rng::StreamSeed(9, i));
  EXPECT_EQ(seeds.size(), 1000u);
}

class PasskeyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok = Tokenizer::FromJsonFile(kFixtures + "/tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = tok->release();
    auto ds = TextDataset::FromTokenFile(kFixtures + "/brown_train.u32", 4, tok_->vocab_size());
    ASSERT_TRUE(ds.ok()) << ds.status();
    background_ = new TextDataset(*std::move(ds));
  }
  static void TearDownTestSuite() {
    delete background_;
    delete tok_;
  }
  void SetUp() override { ASSERT_NE(background_, nullptr); }

  // nullopt (and a test failure) if the options are refused.
  static std::optional<PasskeyGenerator> Make(const PasskeyOptions& o) {
    auto g = PasskeyGenerator::Create(*tok_, *background_, DataSplit::kTrain, o);
    EXPECT_TRUE(g.ok()) << g.status();
    if (!g.ok()) return std::nullopt;
    return *std::move(g);
  }
  static PasskeyOptions Small() {
    PasskeyOptions o;
    o.num_passkeys = 3;
    o.words_per_passkey = 5;
    o.num_depths = 50;
    o.min_length = 300;
    o.max_length = 900;
    o.seed = 11;
    return o;
  }
  static std::string Words(const std::vector<std::string>& words) {
    std::string s;
    for (const std::string& w : words) s += " " + w;
    return s;
  }

  static Tokenizer* tok_;
  static TextDataset* background_;
};
Tokenizer* PasskeyTest::tok_ = nullptr;
TextDataset* PasskeyTest::background_ = nullptr;

TEST_F(PasskeyTest, MatchesPythonReference) {
  const nlohmann::json ref = ReadJson(kFixtures + "/passkey.json");
  ASSERT_EQ(ref["sets"].size(), 3u);
  for (const auto& set : ref["sets"]) {
    const auto& o = set["options"];
    PasskeyOptions opt;
    opt.num_passkeys = static_cast<int32_t>(U64(o["num_passkeys"]));
    opt.words_per_passkey = static_cast<int32_t>(U64(o["words_per_passkey"]));
    opt.num_depths = static_cast<int32_t>(U64(o["num_depths"]));
    opt.min_length = static_cast<int64_t>(U64(o["min_length"]));
    opt.max_length = static_cast<int64_t>(U64(o["max_length"]));
    opt.seed = U64(o["seed"]);
    const auto g = Make(opt);
    ASSERT_TRUE(g.has_value());
    for (const auto& want : set["samples"]) {
      const int64_t index = want["index"];
      auto s = g->Sample(index);
      ASSERT_TRUE(s.ok()) << s.status();
      SCOPED_TRACE("seed " + std::to_string(opt.seed) + " index " + std::to_string(index));
      EXPECT_EQ(s->ids, want["ids"].get<std::vector<int32_t>>());
      EXPECT_EQ(s->answer_mask, want["mask"].get<std::vector<uint8_t>>());
      EXPECT_EQ(s->passkeys, want["passkeys"].get<std::vector<std::vector<std::string>>>());
      EXPECT_EQ(s->depths, want["depths"].get<std::vector<int32_t>>());
      EXPECT_EQ(s->background_positions, want["background_positions"].get<std::vector<int64_t>>());
      EXPECT_EQ(s->insert_positions, want["insert_positions"].get<std::vector<int64_t>>());
      EXPECT_EQ(s->background_offset, want["background_offset"].get<int64_t>());
      EXPECT_EQ(s->answer_start, want["answer_start"].get<int64_t>());
    }
  }
}

TEST_F(PasskeyTest, ReproducibleAndIndexDependent) {
  const auto g = Make(Small());
  ASSERT_TRUE(g.has_value());
  const auto g2 = Make(Small());
  ASSERT_TRUE(g2.has_value());
  std::set<std::vector<int32_t>> distinct;
  for (int64_t i = 0; i < 20; ++i) {
    auto a = g->Sample(i), b = g->Sample(i), c = g2->Sample(i);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    EXPECT_EQ(a->ids, b->ids);
    EXPECT_EQ(a->ids, c->ids);
    EXPECT_EQ(a->answer_mask, c->answer_mask);
    EXPECT_EQ(a->passkeys, c->passkeys);
    distinct.insert(a->ids);
  }
  EXPECT_EQ(distinct.size(), 20u);
  PasskeyOptions other = Small();
  other.seed = 12;
  const auto g3 = Make(other);
  ASSERT_TRUE(g3.has_value());
  EXPECT_NE(g3->Sample(0)->ids, g->Sample(0)->ids);
}

TEST_F(PasskeyTest, SampleProperties) {
  const PasskeyOptions o = Small();
  const auto g = Make(o);
  ASSERT_TRUE(g.has_value());
  const auto& vocab = PasskeyWords();
  std::set<int64_t> lengths;
  for (int64_t i = 0; i < 60; ++i) {
    auto s = g->Sample(i);
    ASSERT_TRUE(s.ok()) << s.status();
    SCOPED_TRACE("sample " + std::to_string(i));
    // Length: in range, exactly the drawn one.
    ASSERT_GE(s->length, o.min_length);
    ASSERT_LE(s->length, o.max_length);
    ASSERT_EQ(static_cast<int64_t>(s->ids.size()), s->length);
    ASSERT_EQ(s->answer_mask.size(), s->ids.size());
    lengths.insert(s->length);

    // Passkeys: N of W known words; depths distinct, ascending, in range.
    ASSERT_EQ(s->passkeys.size(), static_cast<size_t>(o.num_passkeys));
    for (const auto& pk : s->passkeys) {
      ASSERT_EQ(pk.size(), static_cast<size_t>(o.words_per_passkey));
      for (const std::string& w : pk) EXPECT_NE(std::find(vocab.begin(), vocab.end(), w), vocab.end());
    }
    ASSERT_EQ(s->depths.size(), static_cast<size_t>(o.num_passkeys));
    for (size_t j = 0; j < s->depths.size(); ++j) {
      EXPECT_GE(s->depths[j], 0);
      EXPECT_LT(s->depths[j], o.num_depths);
      if (j > 0) {
        EXPECT_LT(s->depths[j - 1], s->depths[j]);
      }
    }
    // Positions: background ones non-decreasing and within the background; insert positions increasing.
    for (size_t j = 0; j < s->insert_positions.size(); ++j) {
      EXPECT_GE(s->background_positions[j], 0);
      EXPECT_LE(s->background_positions[j], s->background_length);
      if (j > 0) {
        EXPECT_LE(s->background_positions[j - 1], s->background_positions[j]);
        EXPECT_LT(s->insert_positions[j - 1], s->insert_positions[j]);
      }
      // The context segment begins at the insert position.
      const std::vector<int32_t> number = tok_->Encode(" The passkey number " + std::to_string(j + 1) + " is:", false);
      ASSERT_TRUE(std::equal(number.begin(), number.end(), s->ids.begin() + s->insert_positions[j]));
    }
    // The background is the stream window at the drawn offset, cut at the background positions.
    auto bg = background_->Slice(DataSplit::kTrain, s->background_offset, s->background_length);
    ASSERT_TRUE(bg.ok());
    const std::vector<int32_t> header = tok_->Encode(
        "There is important information hidden in the following text. Find and remember the passkeys.\n", false);
    ASSERT_TRUE(std::equal(header.begin(), header.end(), s->ids.begin()));
    ASSERT_TRUE(std::equal(bg->begin(), bg->begin() + s->background_positions[0], s->ids.begin() + header.size()));

    // Decoded text: each passkey twice (hidden and answered), in order, with its number.
    const std::string text = tok_->Decode(s->ids);
    size_t pos = 0;
    for (int pass = 0; pass < 2; ++pass) {
      if (pass == 1) {
        pos = text.find("\nQuestion: What are the passkeys?\nAnswer:", pos);
        ASSERT_NE(pos, std::string::npos);
      }
      for (int j = 0; j < o.num_passkeys; ++j) {
        const std::string want = " The passkey number " + std::to_string(j + 1) + " is:" + Words(s->passkeys[j]) + ".";
        const size_t hit = text.find(want, pos);
        ASSERT_NE(hit, std::string::npos) << want;
        pos = hit + want.size();
      }
    }
    EXPECT_EQ(pos, text.size());  // the answer ends the sample

    // The mask: exactly the answer word segments, decoding to the passkey words.
    int64_t masked = 0;
    for (size_t t = 0; t < s->ids.size(); ++t) masked += s->answer_mask[t];
    int64_t spans = 0;
    for (int j = 0; j < o.num_passkeys; ++j) {
      const auto [b, e] = s->answer_spans[j];
      ASSERT_GE(b, s->answer_start);
      spans += e - b;
      for (int64_t t = b; t < e; ++t) ASSERT_EQ(s->answer_mask[t], 1);
      EXPECT_EQ(tok_->Decode(absl::MakeConstSpan(s->ids).subspan(b, e - b)), Words(s->passkeys[j]));
      ASSERT_EQ(s->answer_mask[b - 1], 0);
      ASSERT_EQ(s->answer_mask[e], 0);
      // Word token ranges cover the segment in order, each decoding to (a piece containing) the word.
      ASSERT_EQ(s->answer_word_tokens[j].size(), s->passkeys[j].size());
      EXPECT_EQ(s->answer_word_tokens[j].front().first, b);
      EXPECT_EQ(s->answer_word_tokens[j].back().second, e);
      for (size_t w = 0; w < s->passkeys[j].size(); ++w) {
        const auto [wb, we] = s->answer_word_tokens[j][w];
        EXPECT_EQ(tok_->Decode(absl::MakeConstSpan(s->ids).subspan(wb, we - wb)), " " + s->passkeys[j][w]);
      }
    }
    EXPECT_EQ(masked, spans);
    for (int64_t t = 0; t < s->answer_start; ++t) ASSERT_EQ(s->answer_mask[t], 0);
  }
  EXPECT_GT(lengths.size(), 40u);
}

TEST_F(PasskeyTest, InsertionsSnapToWordStarts) {
  PasskeyOptions o = Small();
  o.num_depths = 1000;
  o.num_passkeys = 10;
  o.words_per_passkey = 2;
  o.min_length = o.max_length = 2000;
  const auto g = Make(o);
  ASSERT_TRUE(g.has_value());
  int snapped = 0, total = 0;
  for (int64_t i = 0; i < 10; ++i) {
    auto s = g->Sample(i);
    ASSERT_TRUE(s.ok()) << s.status();
    auto bg = background_->Slice(DataSplit::kTrain, s->background_offset, s->background_length);
    ASSERT_TRUE(bg.ok());
    for (size_t j = 0; j < s->depths.size(); ++j) {
      const int64_t q = s->background_positions[j];
      const double exact = static_cast<double>(s->depths[j]) * s->background_length / o.num_depths;
      EXPECT_GE(q, static_cast<int64_t>(exact + 0.5) - 0) << "never moved backward";
      EXPECT_LE(q, static_cast<int64_t>(exact + 0.5) + 32);
      ++total;
      if (q < s->background_length) {
        const std::string piece = tok_->Decode(absl::MakeConstSpan(&(*bg)[q], 1));
        snapped += !piece.empty() && (piece[0] == ' ' || piece[0] == '\n' || piece[0] == '\t');
      }
    }
  }
  EXPECT_GE(snapped, total - 2);  // prose has a word start within 32 tokens almost everywhere
}

TEST_F(PasskeyTest, AllDepthsChosenWhenAsManyPasskeys) {
  PasskeyOptions o = Small();
  o.num_depths = o.num_passkeys;
  const auto g = Make(o);
  ASSERT_TRUE(g.has_value());
  auto s = g->Sample(3);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->depths, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(s->background_positions[0], 0);
}

TEST_F(PasskeyTest, OptionErrors) {
  struct Case {
    std::function<void(PasskeyOptions&)> edit;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[](PasskeyOptions& o) { o.num_passkeys = 0; }, "num_passkeys"},
      {[](PasskeyOptions& o) { o.words_per_passkey = 0; }, "words_per_passkey"},
      {[](PasskeyOptions& o) { o.num_depths = 0; }, "num_depths"},
      {[](PasskeyOptions& o) { o.words_per_passkey = 2147483647; }, "at most"},
      {[](PasskeyOptions& o) { o.num_passkeys = o.num_depths = 2147483647; }, "at most"},
      {[](PasskeyOptions& o) { o.num_depths = 2; }, "exceeds num_depths 2"},
      {[](PasskeyOptions& o) { o.min_length = 0; }, "min_length"},
      {[](PasskeyOptions& o) { o.min_length = 901; }, "exceeds max_length 900"},
      {[](PasskeyOptions& o) { o.min_length = 20; }, "too short"},
      {[](PasskeyOptions& o) { o.max_length = int64_t{1} << 40; }, "split has"},
  };
  for (const Case& c : cases) {
    PasskeyOptions o = Small();
    c.edit(o);
    auto g = PasskeyGenerator::Create(*tok_, *background_, DataSplit::kTrain, o);
    ASSERT_FALSE(g.ok()) << c.needle;
    EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << g.status();
    EXPECT_TRUE(Contains(g.status(), c.needle)) << g.status();
  }
  // The "too short" message says how many tokens the segments need, and that many is accepted.
  PasskeyOptions o = Small();
  o.min_length = 20;
  auto bad = PasskeyGenerator::Create(*tok_, *background_, DataSplit::kTrain, o);
  const auto ok = Make(Small());
  ASSERT_TRUE(ok.has_value());
  EXPECT_TRUE(Contains(bad.status(), "need up to " + std::to_string(ok->max_fixed_tokens()) + " tokens"))
      << bad.status();
  o.min_length = o.max_length = ok->max_fixed_tokens();
  auto tight = PasskeyGenerator::Create(*tok_, *background_, DataSplit::kTrain, o);
  ASSERT_TRUE(tight.ok()) << tight.status();
  for (int64_t i = 0; i < 5; ++i) {
    auto s = tight->Sample(i);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(static_cast<int64_t>(s->ids.size()), o.min_length);
  }
  EXPECT_LE(ok->min_fixed_tokens(), ok->max_fixed_tokens());
}

TEST_F(PasskeyTest, ScoreAnswer) {
  const auto g = Make(Small());
  ASSERT_TRUE(g.has_value());
  auto s = g->Sample(5);
  ASSERT_TRUE(s.ok());
  const std::vector<int32_t> answer(s->ids.begin() + s->answer_start, s->ids.end());

  const PasskeyAnswerScore perfect = ScoreAnswer(*s, answer);
  EXPECT_EQ(perfect.passkey_exact, (std::vector<uint8_t>{1, 1, 1}));
  EXPECT_EQ(perfect.passkey_word_accuracy, (std::vector<double>{1, 1, 1}));
  EXPECT_EQ(perfect.exact_match, 1.0);
  EXPECT_EQ(perfect.word_accuracy, 1.0);
  EXPECT_EQ(perfect.token_accuracy, 1.0);
  int64_t masked = 0;
  for (uint8_t m : s->answer_mask) masked += m;
  EXPECT_EQ(perfect.tokens_total, masked);
  EXPECT_EQ(perfect.tokens_correct, masked);

  // Wrong tokens outside the mask do not matter; one wrong token of passkey 2's third word does.
  std::vector<int32_t> wrong = answer;
  for (size_t k = 0; k < wrong.size(); ++k) {
    if (!s->answer_mask[s->answer_start + k]) wrong[k] = 0;
  }
  const int64_t t = s->answer_word_tokens[1][2].first;
  wrong[t - s->answer_start] = s->ids[t] == 1 ? 2 : 1;
  const PasskeyAnswerScore one = ScoreAnswer(*s, wrong);
  EXPECT_EQ(one.passkey_exact, (std::vector<uint8_t>{1, 0, 1}));
  const int words = Small().words_per_passkey;
  int words_with_t = 0;
  for (const auto& [b, e] : s->answer_word_tokens[1]) words_with_t += (b <= t && t < e);
  EXPECT_EQ(words_with_t, 1);
  EXPECT_DOUBLE_EQ(one.passkey_word_accuracy[1], static_cast<double>(words - 1) / words);
  EXPECT_DOUBLE_EQ(one.exact_match, 2.0 / 3);
  EXPECT_DOUBLE_EQ(one.word_accuracy, (3.0 * words - 1) / (3 * words));
  EXPECT_EQ(one.tokens_correct, masked - 1);

  // A prediction that stops early: what is missing is wrong.
  const int64_t cut = s->answer_spans[1].first - s->answer_start;
  const PasskeyAnswerScore early = ScoreAnswer(*s, absl::MakeConstSpan(answer).subspan(0, cut));
  EXPECT_EQ(early.passkey_exact, (std::vector<uint8_t>{1, 0, 0}));
  EXPECT_EQ(early.passkey_word_accuracy, (std::vector<double>{1, 0, 0}));
  const PasskeyAnswerScore none = ScoreAnswer(*s, {});
  EXPECT_EQ(none.tokens_correct, 0);
  EXPECT_EQ(none.exact_match, 0.0);
}

}  // namespace
}  // namespace fm
