// A Hugging Face checkpoint directory: `model.safetensors`, or `model.safetensors.index.json` and the shards its
// weight_map names. Like transformers, a single `model.safetensors` is preferred when both exist.
//
// Validation of a sharded checkpoint: the index is strict JSON (no duplicate keys) whose "weight_map" is an object
// of tensor name -> shard file name ("metadata", if present, must be an object; its contents are not checked);
// shard names are plain file names inside the directory (no '/', not "." or "..", no NUL); every named shard exists
// (NOT_FOUND otherwise) and parses as safetensors; every tensor of the weight_map is in the shard it names; no tensor
// is in two shards; and every tensor of a shard is listed in the weight_map with that shard (stricter than
// transformers, which ignores unlisted tensors). Errors name the directory and the file and tensor at fault.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "worker/engine/formats/mapped_file.h"
#include "worker/engine/formats/safetensors.h"

namespace fm {

// A tensor of the checkpoint, with the mapping that owns its bytes.
struct CheckpointTensor {
  const SafetensorsTensorInfo* info;  // valid while the CheckpointDir lives
  TensorView view;                    // valid while `file` (or the CheckpointDir) lives
  std::shared_ptr<const MappedFile> file;
};

class CheckpointDir {
 public:
  // NOT_FOUND naming `dir` if it has neither model.safetensors nor model.safetensors.index.json.
  static absl::StatusOr<CheckpointDir> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool sharded() const { return sharded_; }
  // The parsed files: one for model.safetensors, else the shards sorted by file name.
  const std::vector<SafetensorsFile>& files() const { return files_; }
  // All tensor names, sorted.
  const std::vector<std::string>& names() const { return names_; }
  size_t size() const { return names_.size(); }

  // NOT_FOUND naming the directory and the tensor if it is absent.
  absl::StatusOr<CheckpointTensor> Get(std::string_view name) const;
  // nullptr if absent; otherwise the file that holds `name` is set in *file_index (if given).
  const SafetensorsTensorInfo* Find(std::string_view name, size_t* file_index = nullptr) const;

 private:
  CheckpointDir() = default;
  absl::Status IndexFiles();

  std::string dir_;
  bool sharded_ = false;
  std::vector<SafetensorsFile> files_;
  std::vector<std::string> names_;
  absl::flat_hash_map<std::string, std::pair<size_t, size_t>> by_name_;  // -> (file, tensor) indices
};

}  // namespace fm
