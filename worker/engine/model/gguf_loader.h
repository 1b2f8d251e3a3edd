// Loads a decoder from a GGUF file: config from its metadata, every tensor dequantised to float32 (gguf-py's exact
// arithmetic) and then cast to the requested dtype/device; Q and K rows un-permuted for "llama" files so the weights
// equal the Hugging Face layout the forward pass expects.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/model/weight_loader.h"

namespace fm {

absl::StatusOr<std::unique_ptr<Decoder>> LoadDecoderFromGguf(const std::string& path, const LoadOptions& options = {});

}  // namespace fm
