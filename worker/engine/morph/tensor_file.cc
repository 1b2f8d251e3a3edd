#include "worker/engine/morph/tensor_file.h"

#include <ATen/ATen.h>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/safetensors_writer.h"
#include "worker/engine/model/tensor_bridge.h"

namespace fm {

absl::StatusOr<DType> ToDType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kF32;
    case at::kBFloat16: return DType::kBF16;
    case at::kHalf: return DType::kF16;
    case at::kDouble: return DType::kF64;
    case at::kLong: return DType::kI64;
    case at::kInt: return DType::kI32;
    case at::kByte: return DType::kU8;
    case at::kBool: return DType::kBool;
    default: return absl::UnimplementedError(StrCat("no checkpoint dtype for torch dtype ", c10::toString(t)));
  }
}

absl::Status SaveTensors(const std::string& path, const NamedTensorList& tensors,
                         const SafetensorsMetadata& metadata) {
  std::vector<at::Tensor> cpu;
  std::vector<TensorToWrite> items;
  cpu.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) return absl::InvalidArgumentError(StrCat("SaveTensors ", path, ": tensor ", name, " is empty"));
    cpu.push_back(t.detach().to(at::kCPU).contiguous());
    FM_ASSIGN_OR_RETURN(DType dt, ToDType(cpu.back().scalar_type()));
    items.push_back({name, dt, cpu.back().sizes().vec(), cpu.back().data_ptr(), cpu.back().nbytes()});
  }
  return WriteSafetensors(path, items, metadata);
}

absl::StatusOr<std::map<std::string, at::Tensor>> LoadTensors(const std::string& path,
                                                              SafetensorsMetadata* metadata) {
  FM_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
  std::map<std::string, at::Tensor> out;
  for (const SafetensorsTensorInfo& info : file.tensors()) {
    FM_ASSIGN_OR_RETURN(at::Tensor t, TensorFromView(file.View(info), file.file()));
    out[info.name] = t.clone();
  }
  if (metadata) *metadata = file.metadata();
  return out;
}

}  // namespace fm
