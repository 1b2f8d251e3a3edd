#include "worker/engine/model/weight_spec.h"

#include <unordered_set>

#include "worker/engine/common/str_cat.h"


namespace fm {

std::vector<ExpectedTensor> ExpectedDecoderTensors(const ModelConfig& c) {
  std::vector<ExpectedTensor> out;
  const int64_t d = c.hidden_size, ff = c.intermediate_size;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, d}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = StrCat("model.layers.", l, ".");
    out.push_back({p + "input_layernorm.weight", {d}});
    out.push_back({p + "self_attn.q_proj.weight", {c.q_dim(), d}});
    out.push_back({p + "self_attn.k_proj.weight", {c.kv_dim(), d}});
    out.push_back({p + "self_attn.v_proj.weight", {c.kv_dim(), d}});
    out.push_back({p + "self_attn.o_proj.weight", {d, c.q_dim()}});
    if (c.qkv_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {c.q_dim()}});
      out.push_back({p + "self_attn.k_proj.bias", {c.kv_dim()}});
      out.push_back({p + "self_attn.v_proj.bias", {c.kv_dim()}});
    }
    if (c.o_bias) out.push_back({p + "self_attn.o_proj.bias", {d}});
    if (c.qk_norm) {
      out.push_back({p + "self_attn.q_norm.weight", {c.head_dim}});
      out.push_back({p + "self_attn.k_norm.weight", {c.head_dim}});
    }
    out.push_back({p + "post_attention_layernorm.weight", {d}});
    out.push_back({p + "mlp.gate_proj.weight", {ff, d}});
    out.push_back({p + "mlp.up_proj.weight", {ff, d}});
    out.push_back({p + "mlp.down_proj.weight", {d, ff}});
    if (c.mlp_bias) {
      out.push_back({p + "mlp.gate_proj.bias", {ff}});
      out.push_back({p + "mlp.up_proj.bias", {ff}});
      out.push_back({p + "mlp.down_proj.bias", {d}});
    }
  }
  out.push_back({"model.norm.weight", {d}});
  // With tied embeddings transformers omits lm_head.weight (a copy, if present, is accepted and ignored).
  out.push_back({"lm_head.weight", {c.vocab_size, d}, /*optional=*/c.tie_word_embeddings});
  return out;
}

namespace {
std::string ShapeString(const std::vector<int64_t>& s) { std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += StrCat(i ? ", " : "", s[i]);
  return out + "]"; }
}  // namespace

absl::Status ValidateDecoderCheckpoint(const ModelConfig& config,
                                       const std::function<std::optional<FoundTensor>(const std::string&)>& lookup,
                                       const std::vector<std::string>& all_names, const std::string& source) {
  std::unordered_set<std::string> expected_names;
  for (const ExpectedTensor& e : ExpectedDecoderTensors(config)) {
    expected_names.insert(e.name);
    std::optional<FoundTensor> t = lookup(e.name);
    if (!t) {
      if (e.optional) continue;
      return absl::InvalidArgumentError(
          StrCat(source, ": missing tensor \"", e.name, "\" (expected shape ", ShapeString(e.shape), ")"));
    }
    if (t->shape != e.shape)
      return absl::InvalidArgumentError(StrCat(t->file, ": tensor \"", e.name, "\" has shape ",
                                                     ShapeString(t->shape), " but the config implies ",
                                                     ShapeString(e.shape)));
    if (t->dtype && *t->dtype != DType::kF32 && *t->dtype != DType::kF16 && *t->dtype != DType::kBF16)
      return absl::InvalidArgumentError(StrCat(t->file, ": tensor \"", e.name, "\" has dtype ",
                                               DTypeName(*t->dtype), "; weights must be F32, F16 or BF16"));
  }
  for (const std::string& name : all_names) {
    if (expected_names.count(name)) continue;
    // Rotary caches some old exports carry are harmless.
    if (name.ends_with("rotary_emb.inv_freq")) continue;
    std::optional<FoundTensor> t = lookup(name);
    return absl::InvalidArgumentError(StrCat(t ? t->file : source, ": unexpected tensor \"", name,
                                                   "\" for a ", ArchitectureName(config.arch), " model with ",
                                                   config.num_layers, " layers"));
  }
  return absl::OkStatus();
}

}  // namespace fm
