#include "worker/engine/model/tensor_bridge.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#include "worker/engine/common/str_cat.h"

namespace fm {

absl::StatusOr<at::ScalarType> ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kBool: return at::kBool;
    case DType::kU8: return at::kByte;
    case DType::kI8: return at::kChar;
    case DType::kI16: return at::kShort;
    case DType::kI32: return at::kInt;
    case DType::kI64: return at::kLong;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF32: return at::kFloat;
    case DType::kF64: return at::kDouble;
    case DType::kF8E4M3: return at::kFloat8_e4m3fn;
    case DType::kF8E5M2: return at::kFloat8_e5m2;
    case DType::kU16: return at::kUInt16;
    case DType::kU32: return at::kUInt32;
    case DType::kU64: return at::kUInt64;
  }
  return absl::UnimplementedError(StrCat("dtype ", DTypeName(dtype), " has no torch equivalent"));
}

absl::StatusOr<at::Tensor> TensorFromView(const TensorView& view, std::shared_ptr<const MappedFile> owner) {
  auto st = ToScalarType(view.dtype);
  if (!st.ok()) return st.status();
  auto options = at::TensorOptions().dtype(*st).device(at::kCPU);
  const size_t elem = DTypeSize(view.dtype);
  void* data = const_cast<void*>(view.data);
  if (reinterpret_cast<uintptr_t>(view.data) % elem != 0) {
    // Misaligned for its element type: copy into an aligned tensor.
    at::Tensor t = at::empty(view.shape, options);
    if (view.nbytes) std::memcpy(t.data_ptr(), view.data, view.nbytes);
    return t;
  }
  return at::from_blob(data, view.shape, [owner = std::move(owner)](void*) mutable { owner.reset(); }, options);
}

}  // namespace fm
