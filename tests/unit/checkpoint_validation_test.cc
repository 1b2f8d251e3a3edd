// A decoder checkpoint directory is checked as a whole before any tensor is built: each defect (missing tensor,
// wrong shape for the config, unexpected tensor, non-float weights, bad config, broken shard) is a clear error
// naming the file and the tensor. Checkpoints are written with our own writer into a temporary directory.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "worker/engine/formats/safetensors_writer.h"
#include "worker/engine/model/validated_checkpoint.h"
#include "worker/engine/model/weight_spec.h"

namespace fm {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using json = nlohmann::json;

json TinyConfig() {
  return json{{"model_type", "qwen3"},     {"vocab_size", 64},        {"hidden_size", 16},
              {"intermediate_size", 32},   {"num_hidden_layers", 2},  {"num_attention_heads", 4},
              {"num_key_value_heads", 2},  {"head_dim", 8},           {"tie_word_embeddings", true}};
}

struct OwnedTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::vector<OwnedTensor> TensorsFor(const json& config_json) {
  auto config = ParseModelConfig(config_json.dump(), "config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  std::vector<OwnedTensor> out;
  for (const ExpectedTensor& e : ExpectedDecoderTensors(*config)) {
    if (e.optional) continue;
    int64_t n = 1;
    for (int64_t d : e.shape) n *= d;
    out.push_back({e.name, DType::kF32, e.shape, std::vector<uint8_t>(n * 4, 0)});
  }
  return out;
}

class CheckpointValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("fm_ckpt_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Write(const json& config, const std::vector<OwnedTensor>& tensors, uint64_t shard_bytes = 1 << 30) {
    std::ofstream(dir_ / "config.json") << config.dump(2);
    std::vector<TensorToWrite> w;
    for (const OwnedTensor& t : tensors) w.push_back({t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
    auto files = WriteShardedCheckpoint(dir_.string(), w, shard_bytes);
    ASSERT_TRUE(files.ok()) << files.status();
  }

  absl::Status Open() { return OpenDecoderCheckpoint(dir_.string()).status(); }

  fs::path dir_;
};

TEST_F(CheckpointValidation, ValidSingleAndShardedCheckpointsOpen) {
  Write(TinyConfig(), TensorsFor(TinyConfig()));
  auto ok = OpenDecoderCheckpoint(dir_.string());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_FALSE(ok->tensors.sharded());
  EXPECT_EQ(ok->config.num_layers, 2);

  fs::remove_all(dir_);
  fs::create_directories(dir_);
  Write(TinyConfig(), TensorsFor(TinyConfig()), /*shard_bytes=*/3000);
  auto sharded = OpenDecoderCheckpoint(dir_.string());
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  EXPECT_TRUE(sharded->tensors.sharded());
  EXPECT_GT(sharded->tensors.files().size(), 2u);
}

TEST_F(CheckpointValidation, MissingTensorNamesTheTensor) {
  auto t = TensorsFor(TinyConfig());
  t.erase(std::find_if(t.begin(), t.end(), [](auto& x) { return x.name == "model.layers.1.self_attn.k_norm.weight"; }));
  Write(TinyConfig(), t);
  absl::Status s = Open();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("missing tensor \"model.layers.1.self_attn.k_norm.weight\""));
  EXPECT_THAT(std::string(s.message()), HasSubstr(dir_.string()));
}

TEST_F(CheckpointValidation, WrongShapeForTheConfigNamesFileAndTensor) {
  auto t = TensorsFor(TinyConfig());
  for (auto& x : t)
    if (x.name == "model.layers.0.mlp.up_proj.weight") {
      x.shape = {16, 32};  // transposed
    }
  Write(TinyConfig(), t);
  absl::Status s = Open();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.safetensors"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"model.layers.0.mlp.up_proj.weight\" has shape [16, 32]"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("[32, 16]"));
}

TEST_F(CheckpointValidation, ConfigWithMoreLayersThanTheCheckpoint) {
  json config = TinyConfig();
  auto t = TensorsFor(config);
  config["num_hidden_layers"] = 3;
  Write(config, t);
  absl::Status s = Open();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("missing tensor \"model.layers.2."));
}

TEST_F(CheckpointValidation, UnexpectedTensorIsRejected) {
  auto t = TensorsFor(TinyConfig());
  t.push_back({"model.layers.0.self_attn.extra.weight", DType::kF32, {2}, std::vector<uint8_t>(8, 0)});
  Write(TinyConfig(), t);
  absl::Status s = Open();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("unexpected tensor \"model.layers.0.self_attn.extra.weight\""));
}

TEST_F(CheckpointValidation, IntegerWeightsAreRejected) {
  auto t = TensorsFor(TinyConfig());
  for (auto& x : t)
    if (x.name == "model.norm.weight") x.dtype = DType::kI32;
  Write(TinyConfig(), t);
  absl::Status s = Open();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"model.norm.weight\" has dtype I32"));
}

TEST_F(CheckpointValidation, BadConfigIsRejectedBeforeTheWeights) {
  json unknown = TinyConfig();
  unknown["model_type"] = "falcon";
  Write(unknown, TensorsFor(TinyConfig()));
  absl::Status s = Open();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("config.json"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("unknown architecture"));

  json heads = TinyConfig();
  heads["num_key_value_heads"] = 3;
  std::ofstream(dir_ / "config.json") << heads.dump();
  s = Open();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("inconsistent heads"));
}

TEST_F(CheckpointValidation, TruncatedShardNamesTheFile) {
  Write(TinyConfig(), TensorsFor(TinyConfig()), /*shard_bytes=*/3000);
  fs::path shard;
  {
    auto ckpt = OpenDecoderCheckpoint(dir_.string());  // released before the file is cut
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ASSERT_GE(ckpt->tensors.files().size(), 3u);
    shard = ckpt->tensors.files()[1].path();
  }
  const std::string shard_name = shard.filename().string();
  fs::resize_file(shard, fs::file_size(shard) - 5);
  absl::Status s = Open();
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr(shard_name));
}

TEST_F(CheckpointValidation, MissingConfigOrWeights) {
  EXPECT_EQ(Open().code(), absl::StatusCode::kNotFound);  // empty directory
  std::ofstream(dir_ / "config.json") << TinyConfig().dump();
  absl::Status s = Open();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr(dir_.string()));
}

}  // namespace
}  // namespace fm
