// The safetensors writer: round trips through our reader, byte-for-byte parity with files written by the Python
// `safetensors` library and with checkpoint directories written by transformers' save_pretrained, Python reading
// our output (tests/parity/check_safetensors_written.py), shard splitting as huggingface_hub does it, and atomicity.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tests/unit/safetensors_test_util.h"
#include "worker/engine/formats/checkpoint_dir.h"
#include "worker/engine/formats/safetensors.h"
#include "worker/engine/formats/safetensors_writer.h"
#include "worker/engine/formats/sha256.h"

namespace fm {
namespace {

using ::fm::testing::Fixture;
using ::fm::testing::LoadJson;
using ::fm::testing::ReadBytes;
using ::fm::testing::RunPythonScript;
using ::fm::testing::TempDir;

// Tensors of every dtype with deterministic contents; the buffers live in `storage`.
std::vector<TensorToWrite> SampleTensors(std::vector<std::string>* storage) {
  struct Spec {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  const std::vector<Spec> specs = {
      {"model.embed_tokens.weight", DType::kBF16, {5, 3}}, {"f32", DType::kF32, {2, 2, 2}},
      {"f64", DType::kF64, {3}},                            {"f16", DType::kF16, {7}},
      {"i64", DType::kI64, {2}},                            {"i32", DType::kI32, {3}},
      {"i16", DType::kI16, {1, 3}},                         {"i8", DType::kI8, {5}},
      {"u8", DType::kU8, {9}},                              {"mask", DType::kBool, {2, 2}},
      {"u16", DType::kU16, {2}},                            {"u32", DType::kU32, {2}},
      {"u64", DType::kU64, {1}},                            {"e4m3", DType::kF8E4M3, {4}},
      {"e5m2", DType::kF8E5M2, {3}},                        {"empty", DType::kF32, {0, 4}},
      {"scalar", DType::kF32, {}},                          {"unicode.\xC3\xA9\xF0\x9F\x98\x80", DType::kF16, {2}},
      {"esc\"\\\n\x01/", DType::kU8, {1}},
  };
  storage->clear();
  storage->reserve(specs.size());
  std::mt19937 rng(42);
  std::vector<TensorToWrite> out;
  for (const Spec& s : specs) {
    size_t n = DTypeSize(s.dtype);
    for (int64_t d : s.shape) n *= static_cast<size_t>(d);
    std::string bytes(n, '\0');
    for (char& c : bytes) c = static_cast<char>(s.dtype == DType::kBool ? rng() % 2 : rng());
    storage->push_back(std::move(bytes));
    out.push_back({s.name, s.dtype, s.shape, storage->back().data(), n});
  }
  return out;
}

// The expected.json that check_safetensors_written.py reads.
std::string ExpectedJson(const std::vector<TensorToWrite>& tensors, const std::optional<SafetensorsMetadata>& meta) {
  nlohmann::json j;
  j["metadata"] = meta ? nlohmann::json(*meta) : nlohmann::json(nullptr);
  j["tensors"] = nlohmann::json::object();
  for (const TensorToWrite& t : tensors) {
    j["tensors"][t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                            {"shape", t.shape},
                            {"sha256", Sha256Hex(t.data, t.nbytes)}};
  }
  return j.dump();
}

void ExpectSameTensors(const SafetensorsFile& file, const std::vector<TensorToWrite>& tensors) {
  ASSERT_EQ(file.tensors().size(), tensors.size());
  for (const TensorToWrite& t : tensors) {
    SCOPED_TRACE(t.name);
    auto v = file.View(t.name);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(v->dtype, t.dtype);
    EXPECT_EQ(v->shape, t.shape);
    ASSERT_EQ(v->nbytes, t.nbytes);
    EXPECT_EQ(std::string(static_cast<const char*>(v->data), v->nbytes),
              std::string(static_cast<const char*>(t.data), t.nbytes));
  }
}

// Tensors borrowed from a parsed file, in `order` (names) or file order.
std::vector<TensorToWrite> FromFile(const SafetensorsFile& file) {
  std::vector<TensorToWrite> out;
  for (const SafetensorsTensorInfo& t : file.tensors()) {
    TensorView v = file.View(t);
    out.push_back({t.name, t.dtype, t.shape, v.data, v.nbytes});
  }
  return out;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(SafetensorsWriter, RoundTripThroughReader) {
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors = SampleTensors(&storage);
  TempDir tmp;
  const std::string path = tmp / "round.safetensors";
  SafetensorsMetadata meta = {{"format", "pt"}, {"note", "caf\xC3\xA9\n\"q\""}, {"a", ""}};
  ASSERT_TRUE(WriteSafetensors(path, tensors, meta).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->data_start() % 8, 0u);
  EXPECT_EQ(file->metadata(), meta);
  ExpectSameTensors(*file, tensors);
  EXPECT_EQ(ListDir(tmp.path()), std::vector<std::string>{"round.safetensors"});  // no temporary left
}

TEST(SafetensorsWriter, DefaultAndAbsentMetadata) {
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors = SampleTensors(&storage);
  auto with_default = SerializeSafetensors(tensors);
  ASSERT_TRUE(with_default.ok());
  auto f1 = SafetensorsFile::Parse(MappedFile::FromBytes(*with_default, "default"));
  ASSERT_TRUE(f1.ok()) << f1.status();
  EXPECT_EQ(f1->metadata(), (SafetensorsMetadata{{"format", "pt"}}));
  auto without = SerializeSafetensors(tensors, std::nullopt);
  ASSERT_TRUE(without.ok());
  auto f2 = SafetensorsFile::Parse(MappedFile::FromBytes(*without, "none"));
  ASSERT_TRUE(f2.ok()) << f2.status();
  EXPECT_FALSE(f2->has_metadata());
}

// Our bytes equal the Python library's for the same tensors, whatever order they are given in.
TEST(SafetensorsWriter, ByteIdenticalToPythonSafetensors) {
  for (const auto& [fixture, meta] :
       std::vector<std::pair<std::string, std::optional<SafetensorsMetadata>>>{
           {"basic_pt.safetensors", DefaultSafetensorsMetadata()}, {"basic_nometa.safetensors", std::nullopt}}) {
    SCOPED_TRACE(fixture);
    auto file = SafetensorsFile::Open(Fixture(fixture));
    ASSERT_TRUE(file.ok()) << file.status();
    std::vector<TensorToWrite> tensors = FromFile(*file);
    std::mt19937 rng(3);
    std::shuffle(tensors.begin(), tensors.end(), rng);
    auto bytes = SerializeSafetensors(tensors, meta);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(*bytes, ReadBytes(Fixture(fixture)));
  }
}

TEST(SafetensorsWriter, PythonReadsOurFile) {
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors = SampleTensors(&storage);
  TempDir tmp;
  SafetensorsMetadata meta = {{"format", "pt"}, {"producer", "flashmorph \xE2\x80\xA6"}};
  ASSERT_TRUE(WriteSafetensors(tmp / "ours.safetensors", tensors, meta).ok());
  testing::WriteBytes(tmp / "expected.json", ExpectedJson(tensors, meta));
  EXPECT_EQ(RunPythonScript("check_safetensors_written.py",
                            "'" + (tmp / "ours.safetensors") + "' '" + (tmp / "expected.json") + "'"),
            0);
}

TEST(SafetensorsWriter, PythonAndTransformersReadOurShardedCheckpoint) {
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors = SampleTensors(&storage);
  TempDir tmp;
  auto files = WriteShardedCheckpoint(tmp.path(), tensors, /*max_shard_bytes=*/40);
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_GE(files->size(), 4u);  // 3+ shards and the index
  EXPECT_EQ(files->back(), kCheckpointIndexFile);

  auto dir = CheckpointDir::Open(tmp.path());
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_TRUE(dir->sharded());
  EXPECT_EQ(dir->size(), tensors.size());
  for (const TensorToWrite& t : tensors) {
    auto got = dir->Get(t.name);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Sha256Hex(got->view.data, got->view.nbytes), Sha256Hex(t.data, t.nbytes)) << t.name;
  }
  const std::string expected = tmp / "expected.json";
  testing::WriteBytes(expected, ExpectedJson(tensors, DefaultSafetensorsMetadata()));
  EXPECT_EQ(RunPythonScript("check_safetensors_written.py", "'" + tmp.path() + "' '" + expected + "'"), 0);
}

// Writing transformers' own state dict (in state-dict order) with the same shard limit reproduces
// save_pretrained's files byte for byte: shards, their headers, and the index JSON.
TEST(SafetensorsWriter, ShardedCheckpointByteIdenticalToTransformers) {
  const nlohmann::json expected = LoadJson(Fixture("llama.json"));
  for (const auto& [fixture, max_shard] : std::vector<std::pair<std::string, uint64_t>>{
           {"llama_sharded", expected["max_shard_size"].get<uint64_t>()},
           {"llama_single", 50'000'000'000ull}}) {  // save_pretrained's default "50GB"
    SCOPED_TRACE(fixture);
    auto source = CheckpointDir::Open(Fixture(fixture));
    ASSERT_TRUE(source.ok()) << source.status();
    std::vector<TensorToWrite> tensors;
    for (const auto& name : expected["order"]) {
      auto t = source->Get(name.get<std::string>());
      ASSERT_TRUE(t.ok()) << t.status();
      tensors.push_back({t->info->name, t->view.dtype, t->view.shape, t->view.data, t->view.nbytes});
    }
    TempDir tmp;
    auto files = WriteShardedCheckpoint(tmp.path(), tensors, max_shard);
    ASSERT_TRUE(files.ok()) << files.status();
    for (const std::string& name : *files) {
      EXPECT_EQ(ReadBytes(tmp / name), ReadBytes(Fixture(fixture) + "/" + name)) << name;
    }
    std::set<std::string> theirs;
    for (const std::string& name : ListDir(Fixture(fixture))) {
      if (name.find(".safetensors") != std::string::npos) theirs.insert(name);
    }
    EXPECT_EQ(std::set<std::string>(files->begin(), files->end()), theirs);
  }
}

// The shard assignment equals huggingface_hub's split_state_dict_into_shards_factory on the same sizes.
TEST(SafetensorsWriter, ShardSplitMatchesHuggingfaceHub) {
  for (const auto& c : LoadJson(Fixture("split_cases.json"))) {
    std::vector<uint64_t> sizes = c["sizes"].get<std::vector<uint64_t>>();
    SCOPED_TRACE(c["sizes"].dump() + " max " + c["max_shard_size"].dump());
    std::string zeros(*std::max_element(sizes.begin(), sizes.end()), '\0');
    std::vector<TensorToWrite> tensors;
    for (size_t i = 0; i < sizes.size(); ++i) {
      tensors.push_back({(i < 10 ? "t0" : "t") + std::to_string(i), DType::kU8, {static_cast<int64_t>(sizes[i])},
                         zeros.data(), sizes[i]});
    }
    TempDir tmp;
    auto files = WriteShardedCheckpoint(tmp.path(), tensors, c["max_shard_size"].get<uint64_t>());
    ASSERT_TRUE(files.ok()) << files.status();
    auto dir = CheckpointDir::Open(tmp.path());
    ASSERT_TRUE(dir.ok()) << dir.status();
    std::map<std::string, std::string> got;
    for (const std::string& name : dir->names()) {
      size_t file_index;
      ASSERT_NE(dir->Find(name, &file_index), nullptr);
      got[name] = std::filesystem::path(dir->files()[file_index].path()).filename().string();
    }
    using WeightMap = std::map<std::string, std::string>;
    EXPECT_EQ(got, c["weight_map"].get<WeightMap>());
  }
}

TEST(SafetensorsWriter, RejectsDuplicateNamesAndLeavesNoFile) {
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors = SampleTensors(&storage);
  tensors.push_back(tensors[3]);
  TempDir tmp;
  absl::Status s = WriteSafetensors(tmp / "dup.safetensors", tensors);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("duplicate"), std::string::npos) << s;
  EXPECT_NE(s.message().find("'" + tensors[3].name + "'"), std::string::npos) << s;
  EXPECT_NE(s.message().find("dup.safetensors"), std::string::npos) << s;
  auto sharded = WriteShardedCheckpoint(tmp.path(), tensors, 40);
  EXPECT_EQ(sharded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ListDir(tmp.path()).empty());
}

TEST(SafetensorsWriter, RejectsInconsistentTensors) {
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors = SampleTensors(&storage);
  TempDir tmp;
  auto bad = tensors;
  bad[1].nbytes -= 1;
  EXPECT_EQ(WriteSafetensors(tmp / "a.safetensors", bad).code(), absl::StatusCode::kInvalidArgument);
  bad = tensors;
  bad[1].shape[0] = -2;
  EXPECT_EQ(WriteSafetensors(tmp / "a.safetensors", bad).code(), absl::StatusCode::kInvalidArgument);
  bad = tensors;
  bad[1].name = "__metadata__";
  EXPECT_EQ(WriteSafetensors(tmp / "a.safetensors", bad).code(), absl::StatusCode::kInvalidArgument);
  bad = tensors;
  bad[1].name = "bad\xFFutf8";
  EXPECT_EQ(WriteSafetensors(tmp / "a.safetensors", bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(tmp / "a.safetensors", tensors, SafetensorsMetadata{{"k", "\xC3"}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ListDir(tmp.path()).empty());
}

TEST(SafetensorsWriter, FailedWriteKeepsTheOldFile) {
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors = SampleTensors(&storage);
  TempDir tmp;
  const std::string path = tmp / "model.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
  const std::string before = ReadBytes(path);
  auto dup = tensors;
  dup.push_back(dup[0]);
  EXPECT_FALSE(WriteSafetensors(path, dup).ok());
  EXPECT_EQ(ReadBytes(path), before);
  EXPECT_EQ(ListDir(tmp.path()), std::vector<std::string>{"model.safetensors"});
}

TEST(SafetensorsWriter, MissingDirectoryIsNotFoundAndCreatesNothing) {
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors = SampleTensors(&storage);
  TempDir tmp;
  absl::Status s = WriteSafetensors(tmp / "no/such/dir/model.safetensors", tensors);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_NE(s.message().find("no/such/dir/model.safetensors"), std::string::npos) << s;
  auto sharded = WriteShardedCheckpoint(tmp / "missing", tensors, 40);
  EXPECT_EQ(sharded.status().code(), absl::StatusCode::kNotFound) << sharded.status();
  EXPECT_TRUE(ListDir(tmp.path()).empty());
}

TEST(SafetensorsWriter, ResavingRemovesStaleWeightFiles) {
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors = SampleTensors(&storage);
  TempDir tmp;
  testing::WriteBytes(tmp / "config.json", "{}");
  ASSERT_TRUE(WriteShardedCheckpoint(tmp.path(), tensors, 40).ok());
  auto single = WriteShardedCheckpoint(tmp.path(), tensors, 1 << 20);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ(*single, std::vector<std::string>{kSingleCheckpointFile});
  EXPECT_EQ(ListDir(tmp.path()), (std::vector<std::string>{"config.json", "model.safetensors"}));

  auto sharded = WriteShardedCheckpoint(tmp.path(), tensors, 40);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  std::vector<std::string> want(sharded->begin(), sharded->end());
  want.push_back("config.json");
  std::sort(want.begin(), want.end());
  EXPECT_EQ(ListDir(tmp.path()), want);
  auto dir = CheckpointDir::Open(tmp.path());
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_TRUE(dir->sharded());
}

TEST(SafetensorsWriter, NoTensorsWritesAnEmptySingleFile) {
  TempDir tmp;
  auto files = WriteShardedCheckpoint(tmp.path(), {}, 100);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(*files, std::vector<std::string>{kSingleCheckpointFile});
  auto dir = CheckpointDir::Open(tmp.path());
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_EQ(dir->size(), 0u);
}

}  // namespace
}  // namespace fm
