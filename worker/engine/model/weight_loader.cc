#include "worker/engine/model/weight_loader.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <filesystem>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/model/gguf_loader.h"
#include "worker/engine/model/tensor_bridge.h"
#include "worker/engine/model/validated_checkpoint.h"

namespace fm {

absl::StatusOr<std::unique_ptr<Decoder>> LoadDecoderFromCheckpointDir(const std::string& dir,
                                                                      const LoadOptions& options) {
  FM_ASSIGN_OR_RETURN(ValidatedCheckpoint checkpoint, OpenDecoderCheckpoint(dir));
  const CheckpointDir& ckpt = checkpoint.tensors;
  auto get = [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
    FM_ASSIGN_OR_RETURN(CheckpointTensor t, ckpt.Get(name));
    FM_ASSIGN_OR_RETURN(at::Tensor raw, TensorFromView(t.view, t.file));
    return raw.to(options.device, options.dtype);
  };
  try {
    FM_ASSIGN_OR_RETURN(DecoderWeights weights, AssembleDecoderWeights(checkpoint.config, get));
    return std::make_unique<Decoder>(std::move(checkpoint.config), std::move(weights));
  } catch (const c10::Error& e) {
    return absl::InternalError(StrCat(dir, ": loading weights failed: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<std::unique_ptr<Decoder>> LoadDecoder(const std::string& path, const LoadOptions& options) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return LoadDecoderFromCheckpointDir(path, options);
  if (path.ends_with(".gguf")) return LoadDecoderFromGguf(path, options);
  if (!std::filesystem::exists(path, ec)) return absl::NotFoundError(StrCat(path, ": no such file or directory"));
  return absl::InvalidArgumentError(
      StrCat(path, ": not a checkpoint directory (config.json + safetensors) nor a .gguf file"));
}

}  // namespace fm
