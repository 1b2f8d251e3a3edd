// Turns checkpoint bytes into at::Tensors. CPU tensors borrow the mapped bytes without copying (the tensor's deleter
// holds the mapping alive); a view misaligned for its element type is copied instead. Borrowed tensors are
// read-only memory: clone before writing into them.
#pragma once

#include <memory>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/formats/mapped_file.h"
#include "worker/engine/formats/safetensors.h"

namespace fm {

// The torch dtype of a checkpoint dtype (every DType has one; UNIMPLEMENTED guards future additions).
absl::StatusOr<at::ScalarType> ToScalarType(DType dtype);

absl::StatusOr<at::Tensor> TensorFromView(const TensorView& view, std::shared_ptr<const MappedFile> owner);

}  // namespace fm
