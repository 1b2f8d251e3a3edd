// Turns checkpoint bytes into at::Tensors. CPU tensors borrow the mapped bytes without copying (the tensor's deleter
// holds the mapping alive); a misaligned or big-endian-unsafe view is copied instead. Borrowed tensors are
// read-only memory: clone before writing into them.
#pragma once

#include <memory>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/formats/mapped_file.h"
#include "worker/engine/formats/safetensors.h"

namespace fm {

// UNIMPLEMENTED for dtypes torch cannot hold (U16/U32/U64 are held as their signed twins only when asked to copy).
absl::StatusOr<at::ScalarType> ToScalarType(DType dtype);

absl::StatusOr<at::Tensor> TensorFromView(const TensorView& view, std::shared_ptr<const MappedFile> owner);

}  // namespace fm
