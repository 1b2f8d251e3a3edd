#include "worker/engine/model/validated_checkpoint.h"

#include "worker/engine/common/status_macros.h"
#include "worker/engine/model/weight_spec.h"

namespace fm {

absl::StatusOr<ValidatedCheckpoint> OpenDecoderCheckpoint(const std::string& dir) {
  FM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  FM_ASSIGN_OR_RETURN(CheckpointDir ckpt, CheckpointDir::Open(dir));
  auto lookup = [&](const std::string& name) -> std::optional<FoundTensor> {
    size_t file_index = 0;
    const SafetensorsTensorInfo* info = ckpt.Find(name, &file_index);
    if (!info) return std::nullopt;
    return FoundTensor{info->dtype, info->shape, ckpt.files()[file_index].path()};
  };
  FM_RETURN_IF_ERROR(ValidateDecoderCheckpoint(config, lookup, ckpt.names(), dir));
  return ValidatedCheckpoint{std::move(config), std::move(ckpt)};
}

}  // namespace fm
