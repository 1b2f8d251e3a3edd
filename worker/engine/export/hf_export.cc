#include "worker/engine/export/hf_export.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/atomic_file.h"
#include "worker/engine/formats/safetensors_writer.h"
#include "worker/engine/morph/tensor_file.h"

namespace fm {
namespace fs = std::filesystem;
namespace {

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A config.json for a source that has none (GGUF): the fields transformers' Llama/Qwen configs read.
nlohmann::ordered_json ConfigFromModelConfig(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["model_type"] = std::string(ArchitectureName(c.arch));
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.qkv_bias || c.o_bias;
  j["mlp_bias"] = c.mlp_bias;
  j["hidden_act"] = "silu";
  nlohmann::ordered_json rope = {{"rope_theta", c.rope.theta}};
  switch (c.rope.type) {
    case RopeType::kDefault: rope["rope_type"] = "default"; break;
    case RopeType::kLinear: rope["rope_type"] = "linear"; rope["factor"] = c.rope.factor; break;
    case RopeType::kLlama3:
      rope["rope_type"] = "llama3";
      rope["factor"] = c.rope.factor;
      rope["low_freq_factor"] = c.rope.low_freq_factor;
      rope["high_freq_factor"] = c.rope.high_freq_factor;
      rope["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;
      break;
    case RopeType::kYarn:
      rope["rope_type"] = "yarn";
      rope["factor"] = c.rope.factor;
      rope["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;
      break;
  }
  j["rope_parameters"] = rope;
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id) j["eos_token_id"] = *c.eos_token_id;
  return j;
}

bool IsDirectory(const std::string& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

}  // namespace

absl::StatusOr<nlohmann::ordered_json> HybridConfigJson(const ExportRequest& r) {
  nlohmann::ordered_json j;
  if (IsDirectory(r.source_path)) {
    FM_ASSIGN_OR_RETURN(std::string text, ReadText(r.source_path + "/config.json"));
    j = nlohmann::ordered_json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      return absl::InvalidArgumentError(StrCat(r.source_path, "/config.json is not a JSON object"));
  } else {
    j = ConfigFromModelConfig(*r.config);
  }
  const std::string base = j.value("model_type", std::string(ArchitectureName(r.config->arch)));
  j["model_type"] = "flashmorph";
  j["base_model_type"] = base;
  j["architectures"] = {"FlashMorphForCausalLM"};
  j["auto_map"] = {{"AutoConfig", "configuration_flashmorph.FlashMorphConfig"},
                   {"AutoModelForCausalLM", "modeling_flashmorph.FlashMorphForCausalLM"}};
  const std::vector<LayerType> types = r.layout->LayerTypes();
  const std::vector<std::vector<int64_t>> heads = r.layout->FullAttentionHeads();
  nlohmann::ordered_json layer_types = nlohmann::ordered_json::array();
  nlohmann::ordered_json full_heads = nlohmann::ordered_json::array();
  bool any_hybrid = false;
  for (size_t l = 0; l < types.size(); ++l) {
    std::string t(LayerTypeName(types[l]));
    if (types[l] == LayerType::kFullAttention && l < r.config->sliding_window.size() &&
        r.config->sliding_window[l] > 0)
      t = "sliding_attention";
    layer_types.push_back(t);
    if (types[l] == LayerType::kHybridAttention) {
      full_heads.push_back(heads[l]);
      any_hybrid = true;
    } else {
      full_heads.push_back(nullptr);
    }
  }
  j["layer_types"] = layer_types;
  if (any_hybrid) {
    j["full_attention_heads"] = full_heads;
  } else {
    j.erase("full_attention_heads");
  }
  j["linear_attention"] = {{"kind", std::string(BranchKindName(r.branch.kind))},
                           {"num_heads", r.config->num_heads},
                           {"head_dim", r.config->head_dim},
                           {"chunk_size", r.branch.chunk_size},
                           {"gla_low_rank_dim", r.branch.gla_low_rank_dim},
                           {"gla_gate_normalizer", r.branch.gla_gate_normalizer},
                           {"norm_eps", r.config->rms_norm_eps}};
  j.erase("torch_dtype");
  j["dtype"] = r.dtype;
  return j;
}

absl::Status ExportHybrid(const ExportRequest& r, const std::string& out_dir) {
  if (!r.config || !r.weights || !r.branches || !r.layout) return absl::InvalidArgumentError("ExportHybrid: incomplete request");
  const ModelConfig& c = *r.config;
  at::ScalarType dtype = r.dtype == "float32" ? at::kFloat : r.dtype == "float16" ? at::kHalf : at::kBFloat16;
  FM_ASSIGN_OR_RETURN(nlohmann::ordered_json config, HybridConfigJson(r));

  const std::string partial = out_dir + ".partial";
  std::error_code ec;
  fs::remove_all(partial, ec);
  fs::create_directories(partial, ec);
  if (ec) return absl::InternalError(StrCat("cannot create ", partial, ": ", ec.message()));

  // Weights in Hugging Face order: embeddings, layers, final norm, lm_head.
  const DecoderWeights& w = *r.weights;
  NamedTensorList tensors;
  auto add = [&](const std::string& name, const at::Tensor& t) {
    if (t.defined()) tensors.emplace_back(name, t.detach().to(at::kCPU, dtype).contiguous());
  };
  add("model.embed_tokens.weight", w.embed_tokens);
  const std::vector<LayerType> types = r.layout->LayerTypes();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = StrCat("model.layers.", l, ".");
    // A linear layer has no softmax attention weights; a full one no branch (docs/ENGINE.md §5).
    for (auto& [name, t] : NamedLayerTensors(const_cast<DecoderLayerWeights&>(w.layers[l])))
      if (types[l] != LayerType::kLinearAttention || name.rfind("self_attn.", 0) != 0) add(p + name, *t);
    if (types[l] != LayerType::kFullAttention)
      for (auto& [name, t] : (*r.branches)[l].NamedTensors()) add(p + "linear_attn." + name, *t);
  }
  add("model.norm.weight", w.final_norm);
  if (!c.tie_word_embeddings) add("lm_head.weight", w.lm_head);
  std::vector<TensorToWrite> items;
  for (const auto& [name, t] : tensors) {
    FM_ASSIGN_OR_RETURN(DType dt, ToDType(t.scalar_type()));
    items.push_back({name, dt, t.sizes().vec(), t.data_ptr(), t.nbytes()});
  }
  FM_RETURN_IF_ERROR(
      WriteShardedCheckpoint(partial, items, static_cast<uint64_t>(r.max_shard_bytes)).status());

  FM_RETURN_IF_ERROR(WriteFileAtomically(partial + "/config.json", config.dump(2) + "\n"));
  // Tokenizer and generation files from a source directory.
  if (IsDirectory(r.source_path)) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "generation_config.json", "vocab.json", "merges.txt", "chat_template.jinja"}) {
      const std::string src = r.source_path + "/" + f;
      if (fs::exists(src, ec)) {
        fs::copy_file(src, partial + "/" + f, fs::copy_options::overwrite_existing, ec);
        if (ec) return absl::InternalError(StrCat("cannot copy ", src, ": ", ec.message()));
      }
    }
  }
  for (const auto& [name, text] : ModelingFiles()) FM_RETURN_IF_ERROR(WriteFileAtomically(partial + "/" + name, text));
  FM_RETURN_IF_ERROR(WriteFileAtomically(partial + "/conversion_layout.json", r.conversion_record.dump(2) + "\n"));
  FM_RETURN_IF_ERROR(WriteFileAtomically(partial + "/README.md", r.model_card));
  FM_RETURN_IF_ERROR(SyncDirectory(partial));

  // Promote: replace an earlier export atomically enough (rename of a directory cannot replace a non-empty one).
  if (fs::exists(out_dir, ec)) {
    const std::string old = out_dir + ".old";
    fs::remove_all(old, ec);
    fs::rename(out_dir, old, ec);
    if (ec) return absl::InternalError(StrCat("cannot move the earlier ", out_dir, " aside: ", ec.message()));
    fs::rename(partial, out_dir, ec);
    if (ec) return absl::InternalError(StrCat("cannot rename ", partial, " to ", out_dir, ": ", ec.message()));
    fs::remove_all(old, ec);
  } else {
    fs::rename(partial, out_dir, ec);
    if (ec) return absl::InternalError(StrCat("cannot rename ", partial, " to ", out_dir, ": ", ec.message()));
  }
  return SyncDirectory(fs::path(out_dir).parent_path().empty() ? "." : fs::path(out_dir).parent_path().string());
}

}  // namespace fm
