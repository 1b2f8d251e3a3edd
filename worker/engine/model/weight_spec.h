// The tensors a decoder checkpoint must hold, by Hugging Face name and shape, derived from its ModelConfig, and a
// check of a checkpoint's tensor list against them (missing, wrong shape, unexpected, unsupported dtype) that names
// the file and the tensor. Torch-free so malformed checkpoints are rejected before any tensor is built.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine/formats/dtype.h"
#include "worker/engine/model/model_config.h"

namespace fm {

struct ExpectedTensor {
  std::string name;            // e.g. "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // e.g. {q_dim, hidden_size}
  bool optional = false;       // lm_head.weight when embeddings are tied
};

std::vector<ExpectedTensor> ExpectedDecoderTensors(const ModelConfig& config);

// What a checkpoint says about one tensor.
struct FoundTensor {
  std::optional<DType> dtype;  // nullopt: a quantised GGUF tensor the loader dequantises
  std::vector<int64_t> shape;
  std::string file;  // the file holding it, for messages
};

// `lookup(name)` returns the tensor or nullopt; `all_names` is every tensor in the checkpoint. Fails with
// INVALID_ARGUMENT on a missing tensor, a wrong shape, a tensor the config does not use, or a dtype other than
// F32/F16/BF16. `source` names the checkpoint in messages.
absl::Status ValidateDecoderCheckpoint(const ModelConfig& config,
                                       const std::function<std::optional<FoundTensor>(const std::string&)>& lookup,
                                       const std::vector<std::string>& all_names, const std::string& source);

}  // namespace fm
