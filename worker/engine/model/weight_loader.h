// Loads a decoder from a Hugging Face checkpoint directory (config.json + safetensors, single or sharded) or from a
// GGUF file, validating every tensor against the config before building anything, then converting weights to the
// requested dtype and device. On CPU with a matching dtype the weights borrow the mapped file (no copy).
#pragma once

#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"

namespace fm {

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
};

// `path` is a checkpoint directory or a .gguf file.
absl::StatusOr<std::unique_ptr<Decoder>> LoadDecoder(const std::string& path, const LoadOptions& options = {});
absl::StatusOr<std::unique_ptr<Decoder>> LoadDecoderFromCheckpointDir(const std::string& dir,
                                                                      const LoadOptions& options = {});

}  // namespace fm
