// The on-disk checkpoint of one stage: `<dir>/state.json` (progress and results, written last and atomically) plus
// named safetensors files beside it. A stage resumes from whatever state.json describes; a crash between writing a
// tensor file and state.json leaves the previous, consistent pair (tensor files are versioned by step).
#pragma once

#include <map>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "worker/engine/morph/tensor_file.h"

namespace fm {

class StageCheckpoint {
 public:
  // `fingerprint` describes the settings the stage runs with; a saved state with another fingerprint is refused
  // (FAILED_PRECONDITION) instead of being resumed with different settings.
  explicit StageCheckpoint(std::string dir, std::string fingerprint = "")
      : dir_(std::move(dir)), fingerprint_(std::move(fingerprint)) {}
  const std::string& dir() const { return dir_; }

  // The saved state, or nullopt when the stage has not checkpointed yet.
  absl::StatusOr<std::optional<nlohmann::json>> LoadState() const;
  // Loads tensors file `name` recorded in the state under "files".
  absl::StatusOr<std::map<std::string, at::Tensor>> LoadFile(const nlohmann::json& state,
                                                             const std::string& name) const;
  // Writes each tensor group to `<name>.<step>.safetensors`, then state.json (with "files" filled in), then removes
  // the files of older steps.
  absl::Status Save(nlohmann::json state, const std::map<std::string, NamedTensorList>& groups, int64_t step);

 private:
  std::string dir_;
  std::string fingerprint_;
};

}  // namespace fm
