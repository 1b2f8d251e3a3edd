// Reading a Llama-family decoder out of a GGUF file, torch-free: its ModelConfig from the metadata
// (general.architecture "llama" — which also covers Mistral —, "qwen2" or "qwen3"), the GGUF name of each Hugging
// Face tensor, and a check that the file holds exactly the tensors that config needs, with the right shapes and
// types we can dequantise. llama.cpp's converter permutes the rows of Q and K of "llama" models for its rotary
// layout; GgufQkPermuted() says whether the loader must undo it.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/gguf/gguf_file.h"
#include "worker/engine/model/model_config.h"

namespace fm {

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file);

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"; empty if the name has no GGUF counterpart.
std::string GgufTensorName(const std::string& hf_name);

bool GgufQkPermuted(const GgufFile& file);

// Shapes against the config, types against the dequantiser, nothing missing, nothing unexpected (besides
// rope_freqs.weight, which ModelConfigFromGguf reads). Errors name the file and the tensor.
absl::Status ValidateGgufDecoder(const ModelConfig& config, const GgufFile& file);

}  // namespace fm
