#include "worker/agent/model_facts.h"

#include "worker/engine/common/status_macros.h"
#include "worker/engine/gguf/gguf_file.h"
#include "worker/engine/model/gguf_model_spec.h"
#include "worker/engine/model/model_config.h"

namespace fm::worker {
namespace {

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

absl::StatusOr<ModelFacts> ReadModelFacts(const std::string& model_path) {
  fm::ModelConfig config;
  if (EndsWith(model_path, ".gguf")) {
    FM_ASSIGN_OR_RETURN(fm::GgufFile file, fm::GgufFile::Open(model_path));
    FM_ASSIGN_OR_RETURN(config, fm::ModelConfigFromGguf(file));
  } else {
    FM_ASSIGN_OR_RETURN(config, fm::LoadModelConfig(model_path));
  }
  ModelFacts facts;
  facts.shape = {config.num_layers, config.num_heads, config.hidden_size, config.max_position_embeddings, 0};
  facts.torch_dtype = config.torch_dtype;
  return facts;
}

}  // namespace fm::worker
