// CheckpointDir on directories written by transformers' save_pretrained (sharded and single-file fixtures) and on
// broken directories built here: each defect must be rejected with the right code, naming the file and tensor.
#include "worker/engine/formats/checkpoint_dir.h"

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "tests/unit/safetensors_test_util.h"
#include "worker/engine/formats/safetensors_writer.h"
#include "worker/engine/formats/sha256.h"

namespace fm {
namespace {

using ::fm::testing::Fixture;
using ::fm::testing::LoadJson;
using ::fm::testing::TempDir;
using ::fm::testing::WriteBytes;

::testing::AssertionResult Fails(const std::string& dir, absl::StatusCode code,
                                 std::initializer_list<std::string_view> mentions) {
  auto opened = CheckpointDir::Open(dir);
  if (opened.ok()) return ::testing::AssertionFailure() << "opened without error";
  const absl::Status& s = opened.status();
  if (s.code() != code) {
    return ::testing::AssertionFailure() << "code " << absl::StatusCodeToString(s.code()) << ": " << s.message();
  }
  std::string_view msg(s.message().data(), s.message().size());
  for (std::string_view m : mentions) {
    if (msg.find(m) == std::string_view::npos) return ::testing::AssertionFailure() << "'" << m << "' not in: " << msg;
  }
  return ::testing::AssertionSuccess() << msg;
}

void ExpectMatchesLlamaFixture(const CheckpointDir& dir) {
  const nlohmann::json expected = LoadJson(Fixture("llama.json"));
  std::vector<std::string> names;
  for (const auto& [name, unused] : expected["tensors"].items()) names.push_back(name);  // sorted keys
  EXPECT_EQ(dir.names(), names);
  for (const auto& [name, want] : expected["tensors"].items()) {
    SCOPED_TRACE(name);
    auto t = dir.Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(DTypeName(t->view.dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(t->view.shape, want["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(Sha256Hex(t->view.data, t->view.nbytes), want["sha256"].get<std::string>());
    size_t file_index;
    ASSERT_EQ(dir.Find(name, &file_index), t->info);
    EXPECT_EQ(t->file, dir.files()[file_index].file());
    EXPECT_EQ(dir.files()[file_index].metadata(), (SafetensorsMetadata{{"format", "pt"}}));
  }
}

TEST(CheckpointDir, OpensTransformersShardedCheckpoint) {
  auto dir = CheckpointDir::Open(Fixture("llama_sharded"));
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_TRUE(dir->sharded());
  EXPECT_EQ(dir->files().size(), LoadJson(Fixture("llama.json"))["num_shards"].get<size_t>());
  ExpectMatchesLlamaFixture(*dir);
}

TEST(CheckpointDir, OpensTransformersSingleFileCheckpoint) {
  auto dir = CheckpointDir::Open(Fixture("llama_single"));
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_FALSE(dir->sharded());
  EXPECT_EQ(dir->files().size(), 1u);
  ExpectMatchesLlamaFixture(*dir);
}

TEST(CheckpointDir, TensorViewsOutliveTheDirectoryObject) {
  CheckpointTensor kept{};
  {
    auto dir = CheckpointDir::Open(Fixture("llama_sharded"));
    ASSERT_TRUE(dir.ok()) << dir.status();
    auto t = dir->Get("lm_head.weight");
    ASSERT_TRUE(t.ok());
    kept = *t;
  }
  EXPECT_EQ(Sha256Hex(kept.view.data, kept.view.nbytes),
            LoadJson(Fixture("llama.json"))["tensors"]["lm_head.weight"]["sha256"].get<std::string>());
}

TEST(CheckpointDir, UnknownTensorIsNotFound) {
  auto dir = CheckpointDir::Open(Fixture("llama_sharded"));
  ASSERT_TRUE(dir.ok());
  auto t = dir->Get("model.nope");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(t.status().message().find("llama_sharded"), std::string::npos);
  EXPECT_NE(t.status().message().find("'model.nope'"), std::string::npos);
  EXPECT_EQ(dir->Find("model.nope"), nullptr);
}

TEST(CheckpointDir, MissingDirectoryOrFilesAreNotFound) {
  TempDir tmp;
  EXPECT_TRUE(Fails(tmp / "absent", absl::StatusCode::kNotFound, {"absent"}));
  EXPECT_TRUE(Fails(tmp.path(), absl::StatusCode::kNotFound, {tmp.path(), "model.safetensors"}));
  WriteBytes(tmp / "file", "x");
  EXPECT_TRUE(Fails(tmp / "file", absl::StatusCode::kInvalidArgument, {"file"}));
}

// A small valid sharded checkpoint written by our writer, to be broken by the tests below.
class BrokenCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 4; ++i) storage_.push_back(std::string(16, static_cast<char>('a' + i)));
    std::vector<TensorToWrite> tensors;
    for (int i = 0; i < 4; ++i) {
      tensors.push_back({"w" + std::to_string(i), DType::kF32, {4}, storage_[i].data(), 16});
    }
    auto files = WriteShardedCheckpoint(tmp_.path(), tensors, 32);  // 2 shards of 2 tensors
    ASSERT_TRUE(files.ok()) << files.status();
    ASSERT_EQ(files->size(), 3u);
    ASSERT_TRUE(CheckpointDir::Open(tmp_.path()).ok());
  }
  std::string Shard(int k) const { return "model-0000" + std::to_string(k) + "-of-00002.safetensors"; }
  void WriteIndex(const std::string& weight_map_json) {
    WriteBytes(tmp_ / kCheckpointIndexFile,
               "{\"metadata\": {\"total_size\": 64}, \"weight_map\": " + weight_map_json + "}");
  }
  std::string dir() const { return tmp_.path(); }

  TempDir tmp_;
  std::vector<std::string> storage_;
};

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

TEST_F(BrokenCheckpoint, IndexNotJson) {
  WriteBytes(tmp_ / kCheckpointIndexFile, "{\"weight_map\": {");
  EXPECT_TRUE(Fails(dir(), kInvalid, {kCheckpointIndexFile}));
}

TEST_F(BrokenCheckpoint, IndexDuplicateKey) {
  WriteIndex("{\"w0\": \"" + Shard(1) + "\", \"w0\": \"" + Shard(1) + "\"}");
  EXPECT_TRUE(Fails(dir(), kInvalid, {kCheckpointIndexFile, "duplicate", "'w0'"}));
}

TEST_F(BrokenCheckpoint, WeightMapMissingOrNotAnObject) {
  WriteBytes(tmp_ / kCheckpointIndexFile, "{\"metadata\": {}}");
  EXPECT_TRUE(Fails(dir(), kInvalid, {kCheckpointIndexFile, "weight_map"}));
  WriteIndex("[\"w0\"]");
  EXPECT_TRUE(Fails(dir(), kInvalid, {kCheckpointIndexFile, "weight_map"}));
  WriteBytes(tmp_ / kCheckpointIndexFile, "[]");
  EXPECT_TRUE(Fails(dir(), kInvalid, {kCheckpointIndexFile}));
  WriteBytes(tmp_ / kCheckpointIndexFile, "{\"metadata\": 5, \"weight_map\": {}}");
  EXPECT_TRUE(Fails(dir(), kInvalid, {kCheckpointIndexFile, "metadata"}));
}

TEST_F(BrokenCheckpoint, WeightMapValueNotString) {
  WriteIndex("{\"w0\": 1}");
  EXPECT_TRUE(Fails(dir(), kInvalid, {kCheckpointIndexFile, "'w0'"}));
}

TEST_F(BrokenCheckpoint, ShardNameEscapesDirectory) {
  for (const std::string& bad : {"../" + Shard(1), std::string("/etc/passwd"), "sub/" + Shard(1), std::string(".."),
                                std::string("."), std::string("")}) {
    SCOPED_TRACE(bad);
    WriteIndex("{\"w0\": \"" + bad + "\"}");
    EXPECT_TRUE(Fails(dir(), kInvalid, {kCheckpointIndexFile, "'w0'", "plain file name"}));
  }
  WriteIndex("{\"w0\": \"a\\u0000b\"}");
  EXPECT_TRUE(Fails(dir(), kInvalid, {"'w0'", "plain file name"}));
}

TEST_F(BrokenCheckpoint, ListedShardMissing) {
  ASSERT_EQ(std::remove((tmp_ / Shard(2)).c_str()), 0);
  EXPECT_TRUE(Fails(dir(), absl::StatusCode::kNotFound, {Shard(2), kCheckpointIndexFile}));
}

TEST_F(BrokenCheckpoint, ShardCorrupt) {
  WriteBytes(tmp_ / Shard(2), "garbage!garbage!");
  EXPECT_TRUE(Fails(dir(), kInvalid, {Shard(2)}));
}

TEST_F(BrokenCheckpoint, MappedTensorMissingFromShard) {
  WriteIndex("{\"w0\": \"" + Shard(1) + "\", \"w1\": \"" + Shard(1) + "\", \"w2\": \"" + Shard(2) +
             "\", \"w3\": \"" + Shard(2) + "\", \"w9\": \"" + Shard(2) + "\"}");
  EXPECT_TRUE(Fails(dir(), kInvalid, {kCheckpointIndexFile, "'w9'", Shard(2)}));
}

TEST_F(BrokenCheckpoint, TensorMappedToTheWrongShard) {
  WriteIndex("{\"w0\": \"" + Shard(2) + "\", \"w1\": \"" + Shard(1) + "\", \"w2\": \"" + Shard(2) +
             "\", \"w3\": \"" + Shard(2) + "\"}");
  EXPECT_TRUE(Fails(dir(), kInvalid, {"'w0'", Shard(1), Shard(2)}));
}

TEST_F(BrokenCheckpoint, TensorNotInWeightMap) {
  WriteIndex("{\"w0\": \"" + Shard(1) + "\", \"w2\": \"" + Shard(2) + "\", \"w3\": \"" + Shard(2) + "\"}");
  EXPECT_TRUE(Fails(dir(), kInvalid, {"'w1'", Shard(1), "weight_map"}));
}

TEST_F(BrokenCheckpoint, TensorInTwoShards) {
  // Rewrite shard 2 so that it also holds w1.
  std::vector<TensorToWrite> tensors = {{"w1", DType::kF32, {4}, storage_[1].data(), 16},
                                        {"w2", DType::kF32, {4}, storage_[2].data(), 16},
                                        {"w3", DType::kF32, {4}, storage_[3].data(), 16}};
  ASSERT_TRUE(WriteSafetensors(tmp_ / Shard(2), tensors).ok());
  EXPECT_TRUE(Fails(dir(), kInvalid, {"'w1'", Shard(1), Shard(2), "two shards"}));
}

TEST_F(BrokenCheckpoint, SingleFileWinsOverIndexLikeTransformers) {
  std::string bytes(4, 'z');
  ASSERT_TRUE(WriteSafetensors(tmp_ / kSingleCheckpointFile, {{"only", DType::kU8, {4}, bytes.data(), 4}}).ok());
  auto opened = CheckpointDir::Open(dir());
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_FALSE(opened->sharded());
  EXPECT_EQ(opened->names(), std::vector<std::string>{"only"});
}

}  // namespace
}  // namespace fm
