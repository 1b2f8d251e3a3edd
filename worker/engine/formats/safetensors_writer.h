// Writers for safetensors files and Hugging Face checkpoint directories, byte-compatible with the reference tools:
//  - WriteSafetensors writes what the Rust `safetensors` library (safetensors.torch.save_file) writes for the same
//    tensors: compact JSON header with "__metadata__" first, then tensors sorted by dtype alignment (largest first)
//    and then by name, data in that order, header padded with spaces so the data starts at a multiple of 8.
//    Metadata keys are written sorted (the Rust library's order is a hash order).
//  - WriteShardedCheckpoint splits tensors into shards exactly as transformers' save_pretrained does
//    (huggingface_hub's split_torch_state_dict_into_shards, in the given order) and writes `model.safetensors`, or
//    `model-0000k-of-0000N.safetensors` plus `model.safetensors.index.json` formatted like json.dumps(indent=2,
//    sort_keys=True).
// Every file is written atomically (see atomic_file.h): after an error no new or partial file is left at its path.
// Inputs are validated before anything is written: unique names, valid UTF-8, non-negative dims, and nbytes equal
// to numel x dtype size; violations are INVALID_ARGUMENT naming the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/engine/formats/dtype.h"
#include "worker/engine/formats/safetensors.h"

namespace fm {

// A tensor to write: `nbytes` bytes at `data` (row-major, little-endian), borrowed for the duration of the call.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t nbytes;
};

// {"format": "pt"}, what transformers puts into every file it saves.
const SafetensorsMetadata& DefaultSafetensorsMetadata();

// The whole file's bytes up to the data section: length prefix + padded header. `metadata` nullopt writes no
// "__metadata__" key (an empty map writes an empty object, as Python does for metadata={}).
absl::StatusOr<std::string> SerializeSafetensorsHeader(absl::Span<const TensorToWrite> tensors,
                                                       const std::optional<SafetensorsMetadata>& metadata);

// The complete file in memory (tests, small files).
absl::StatusOr<std::string> SerializeSafetensors(absl::Span<const TensorToWrite> tensors,
                                                 const std::optional<SafetensorsMetadata>& metadata =
                                                     DefaultSafetensorsMetadata());

// Writes one safetensors file atomically. NOT_FOUND if the directory does not exist.
absl::Status WriteSafetensors(const std::string& path, absl::Span<const TensorToWrite> tensors,
                              const std::optional<SafetensorsMetadata>& metadata = DefaultSafetensorsMetadata());

// Names used by Hugging Face checkpoint directories.
inline constexpr char kSingleCheckpointFile[] = "model.safetensors";
inline constexpr char kCheckpointIndexFile[] = "model.safetensors.index.json";

// Writes the checkpoint into the existing directory `dir`: shards of at most `max_shard_bytes` each (a tensor
// larger than that gets a shard of its own), in the order given. One shard -> `model.safetensors` only (also for
// no tensors: an empty file); several -> `model-00001-of-0000N.safetensors`... and the index, written last, whose
// "metadata" holds "total_parameters" (sum of numel) and "total_size" (sum of bytes). Weight files of an earlier
// save in `dir` that the new checkpoint does not use (model.safetensors, the index, other model-*-of-*.safetensors)
// are removed. Returns the file names written, the index last.
absl::StatusOr<std::vector<std::string>> WriteShardedCheckpoint(
    const std::string& dir, absl::Span<const TensorToWrite> tensors, uint64_t max_shard_bytes,
    const std::optional<SafetensorsMetadata>& metadata = DefaultSafetensorsMetadata());

}  // namespace fm
