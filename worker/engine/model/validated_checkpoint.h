// Opens a Hugging Face decoder checkpoint directory and checks it completely before any tensor is built:
// config.json parses and is consistent, the safetensors files (single or sharded) are valid, and the tensors are
// exactly the ones the config implies, with the right shapes and float dtypes. Torch-free.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/formats/checkpoint_dir.h"
#include "worker/engine/model/model_config.h"

namespace fm {

struct ValidatedCheckpoint {
  ModelConfig config;
  CheckpointDir tensors;
};

absl::StatusOr<ValidatedCheckpoint> OpenDecoderCheckpoint(const std::string& dir);

}  // namespace fm
