// What the agent needs to know about a source checkpoint without loading it: its shape (layers, heads, context) and
// the dtype its config declares, read torch-free from config.json or GGUF metadata. Used to label head-level gate
// snapshots (heads per layer), to resolve "the source checkpoint's dtype" for the export, and to report the
// sample counts the engine's scaler picks. Errors are those of the config readers (NOT_FOUND, INVALID_ARGUMENT...).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/morph/conversion_options.h"

namespace fm::worker {

struct ModelFacts {
  fm::ModelShape shape;
  std::string torch_dtype;  // as config.json writes it ("bfloat16", ...); empty when not declared (or GGUF)
};

absl::StatusOr<ModelFacts> ReadModelFacts(const std::string& model_path);

}  // namespace fm::worker
