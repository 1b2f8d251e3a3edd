// Writes the converted model as a Hugging Face directory (docs/ENGINE.md §5): config.json (the teacher's fields plus
// layer_types, full_attention_heads and the branch settings), safetensors weights (sharded with an index when large),
// the tokenizer files copied from the source, conversion_layout.json, a model card and the Python modeling files
// that let transformers load it with trust_remote_code. Everything goes to `<out>.partial` first and is renamed into
// place at the end, so `out` is either absent or complete.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "worker/engine/model/decoder_weights.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/morph/layout.h"
#include "worker/engine/morph/linear_branch.h"

namespace fm {

struct ExportRequest {
  std::string source_path;  // the teacher: HF directory or .gguf
  const ModelConfig* config = nullptr;
  const DecoderWeights* weights = nullptr;  // the student's body (teacher weights unless everything was trained)
  std::vector<LinearBranch>* branches = nullptr;
  const Layout* layout = nullptr;
  BranchSettings branch;
  std::string dtype = "bfloat16";
  int64_t max_shard_bytes = 5LL << 30;
  nlohmann::ordered_json conversion_record;  // written as conversion_layout.json
  std::string model_card;                    // written as README.md
};

// The exported config.json (also used by tests).
absl::StatusOr<nlohmann::ordered_json> HybridConfigJson(const ExportRequest& request);

absl::Status ExportHybrid(const ExportRequest& request, const std::string& out_dir);

// The Python files shipped in every export (embedded at build time from this directory).
const std::vector<std::pair<std::string, std::string>>& ModelingFiles();

}  // namespace fm
