// Named tensors to and from a safetensors file: stage checkpoints and the exported weights. Saving copies tensors
// to contiguous CPU memory and writes atomically (a crash leaves the previous file); loading copies into owned
// tensors (the file may be replaced afterwards).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/formats/safetensors.h"

namespace fm {

using NamedTensorList = std::vector<std::pair<std::string, at::Tensor>>;

absl::Status SaveTensors(const std::string& path, const NamedTensorList& tensors,
                         const SafetensorsMetadata& metadata = {});
absl::StatusOr<std::map<std::string, at::Tensor>> LoadTensors(const std::string& path,
                                                              SafetensorsMetadata* metadata = nullptr);

// The checkpoint dtype of a torch dtype (F32, BF16, F16, F64, I64, I32, U8, BOOL).
absl::StatusOr<DType> ToDType(at::ScalarType t);

}  // namespace fm
