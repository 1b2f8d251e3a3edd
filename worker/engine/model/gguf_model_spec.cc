#include "worker/engine/model/gguf_model_spec.h"

#include <array>
#include <utility>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/gguf/gguf_dequant.h"
#include "worker/engine/model/weight_spec.h"

namespace fm {
namespace {

constexpr std::array<std::pair<std::string_view, std::string_view>, 15> kLayerNames = {{
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
}};

constexpr std::string_view kRopeFreqs = "rope_freqs.weight";

}  // namespace

std::string GgufTensorName(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  constexpr std::string_view kPrefix = "model.layers.";
  if (!hf.starts_with(kPrefix)) return "";
  size_t dot = hf.find('.', kPrefix.size());
  if (dot == std::string::npos) return "";
  std::string_view layer(hf.data() + kPrefix.size(), dot - kPrefix.size());
  std::string_view rest(hf.data() + dot + 1, hf.size() - dot - 1);
  for (const auto& [h, g] : kLayerNames)
    if (rest == h) return StrCat("blk.", layer, ".", g);
  return "";
}

bool GgufQkPermuted(const GgufFile& file) {
  auto arch = file.GetString("general.architecture");
  return arch.ok() && *arch == "llama";
}

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& f) {
  FM_ASSIGN_OR_RETURN(std::string arch, f.GetString("general.architecture"));
  ModelConfig c;
  if (arch == "llama") {
    c.arch = Architecture::kLlama;
  } else if (arch == "qwen2") {
    c.arch = Architecture::kQwen2;
    c.qkv_bias = true;
  } else if (arch == "qwen3") {
    c.arch = Architecture::kQwen3;
    c.qk_norm = true;
  } else {
    return absl::InvalidArgumentError(StrCat(f.path(), ": unknown architecture general.architecture=\"", arch,
                                             "\" (supported: llama, qwen2, qwen3)"));
  }
  const std::string p = arch + ".";
  auto get_int = [&](const std::string& key) { return f.GetInt(p + key); };
  FM_ASSIGN_OR_RETURN(c.num_layers, get_int("block_count"));
  FM_ASSIGN_OR_RETURN(c.hidden_size, get_int("embedding_length"));
  FM_ASSIGN_OR_RETURN(c.intermediate_size, get_int("feed_forward_length"));
  FM_ASSIGN_OR_RETURN(c.num_heads, get_int("attention.head_count"));
  c.num_kv_heads = c.num_heads;
  if (f.HasKey(p + "attention.head_count_kv")) {
    FM_ASSIGN_OR_RETURN(c.num_kv_heads, get_int("attention.head_count_kv"));
  }
  if (c.num_heads <= 0) return absl::InvalidArgumentError(StrCat(f.path(), ": ", p, "attention.head_count must be > 0"));
  c.head_dim = c.hidden_size / c.num_heads;
  if (f.HasKey(p + "attention.key_length")) {
    FM_ASSIGN_OR_RETURN(c.head_dim, get_int("attention.key_length"));
  }
  c.max_position_embeddings = 2048;
  if (f.HasKey(p + "context_length")) {
    FM_ASSIGN_OR_RETURN(c.max_position_embeddings, get_int("context_length"));
  }
  FM_ASSIGN_OR_RETURN(c.rms_norm_eps, f.GetFloat(p + "attention.layer_norm_rms_epsilon"));
  if (f.HasKey(p + "rope.freq_base")) {
    FM_ASSIGN_OR_RETURN(c.rope.theta, f.GetFloat(p + "rope.freq_base"));
  }
  if (f.HasKey(p + "rope.dimension_count")) {
    FM_ASSIGN_OR_RETURN(int64_t rope_dims, get_int("rope.dimension_count"));
    if (rope_dims != c.head_dim)
      return absl::UnimplementedError(StrCat(f.path(), ": ", p, "rope.dimension_count (", rope_dims,
                                             ") != head dim (", c.head_dim, "): partial rotary is not supported"));
  }
  if (f.HasKey(p + "rope.scaling.type")) {
    FM_ASSIGN_OR_RETURN(std::string type, f.GetString(p + "rope.scaling.type"));
    if (type == "linear" || type == "yarn") {
      c.rope.type = type == "linear" ? RopeType::kLinear : RopeType::kYarn;
      FM_ASSIGN_OR_RETURN(c.rope.factor, f.GetFloat(p + "rope.scaling.factor"));
      if (type == "yarn") {
        FM_ASSIGN_OR_RETURN(c.rope.original_max_position_embeddings,
                            get_int("rope.scaling.original_context_length"));
        c.rope.attention_factor = c.rope.factor <= 1 ? 1.0 : 0.1 * std::log(c.rope.factor) + 1.0;
      }
    } else if (type != "none") {
      return absl::UnimplementedError(StrCat(f.path(), ": rope scaling type \"", type, "\" is not supported"));
    }
  }
  if (const GgufTensorInfo* freqs = f.FindTensor(kRopeFreqs)) {
    if (freqs->num_elements != static_cast<uint64_t>(c.head_dim / 2))
      return absl::InvalidArgumentError(StrCat(f.path(), ": tensor \"", kRopeFreqs, "\" has ", freqs->num_elements,
                                               " values; head_dim/2 = ", c.head_dim / 2));
    FM_ASSIGN_OR_RETURN(std::vector<float> factors, DequantizeToVector(f, *freqs));
    c.rope.freq_factors = std::move(factors);
  }
  const GgufTensorInfo* embed = f.FindTensor("token_embd.weight");
  if (!embed || embed->dims.size() != 2)
    return absl::InvalidArgumentError(StrCat(f.path(), ": missing 2-D tensor \"token_embd.weight\""));
  c.vocab_size = static_cast<int64_t>(embed->dims[1]);
  if (f.HasKey(p + "vocab_size")) {
    FM_ASSIGN_OR_RETURN(c.vocab_size, get_int("vocab_size"));
  }
  c.tie_word_embeddings = f.FindTensor("output.weight") == nullptr;
  if (f.HasKey("tokenizer.ggml.bos_token_id")) {
    FM_ASSIGN_OR_RETURN(int64_t bos, f.GetInt("tokenizer.ggml.bos_token_id"));
    c.bos_token_id = bos;
  }
  if (f.HasKey("tokenizer.ggml.eos_token_id")) {
    FM_ASSIGN_OR_RETURN(int64_t eos, f.GetInt("tokenizer.ggml.eos_token_id"));
    c.eos_token_id = eos;
  }
  if (c.num_layers <= 0 || c.num_layers > (int64_t{1} << 16))
    return absl::InvalidArgumentError(StrCat(f.path(), ": ", p, "block_count must be in 1..65536"));
  c.sliding_window.assign(c.num_layers, 0);
  // Biases are optional in llama-arch files (some fine-tunes carry them): follow the tensors.
  if (c.arch == Architecture::kLlama && f.FindTensor("blk.0.attn_q.bias")) c.qkv_bias = true;
  if (c.arch != Architecture::kQwen2 && f.FindTensor("blk.0.attn_output.bias")) c.o_bias = true;
  FM_RETURN_IF_ERROR(ValidateModelConfig(c, f.path()));
  return c;
}

absl::Status ValidateGgufDecoder(const ModelConfig& config, const GgufFile& f) {
  std::vector<std::string> hf_names;
  absl::flat_hash_map<std::string, std::string> gguf_to_hf;
  for (const ExpectedTensor& e : ExpectedDecoderTensors(config)) gguf_to_hf[GgufTensorName(e.name)] = e.name;
  for (const GgufTensorInfo& t : f.tensors()) {
    if (t.name == kRopeFreqs) continue;
    auto it = gguf_to_hf.find(t.name);
    if (it == gguf_to_hf.end())
      return absl::InvalidArgumentError(StrCat(f.path(), ": unexpected tensor \"", t.name, "\" for a ",
                                               ArchitectureName(config.arch), " model with ", config.num_layers,
                                               " layers"));
    if (!CanDequantize(t.type))
      return absl::UnimplementedError(StrCat(f.path(), ": tensor \"", t.name, "\" has type ", GgmlTypeName(t.type),
                                             ", which this loader cannot dequantise"));
    hf_names.push_back(it->second);
  }
  auto lookup = [&](const std::string& hf) -> std::optional<FoundTensor> {
    const GgufTensorInfo* t = f.FindTensor(GgufTensorName(hf));
    if (!t) return std::nullopt;
    std::vector<int64_t> shape(t->dims.rbegin(), t->dims.rend());
    return FoundTensor{GgmlTypeToDType(t->type), std::move(shape), StrCat(f.path(), " (", t->name, ")")};
  };
  // Quantised tensors report no dtype; float ones must be F32/F16/BF16 like any checkpoint.
  return ValidateDecoderCheckpoint(config, lookup, hf_names, f.path());
}

}  // namespace fm
