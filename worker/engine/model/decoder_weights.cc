#include "worker/engine/model/decoder_weights.h"

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm {

absl::StatusOr<DecoderWeights> AssembleDecoderWeights(const ModelConfig& c, const TensorGetter& get) {
  auto get_if = [&](bool present, const std::string& name) -> absl::StatusOr<at::Tensor> {
    if (!present) return at::Tensor();
    return get(name);
  };
  DecoderWeights w;
  FM_ASSIGN_OR_RETURN(w.embed_tokens, get("model.embed_tokens.weight"));
  FM_ASSIGN_OR_RETURN(w.final_norm, get("model.norm.weight"));
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
  } else {
    FM_ASSIGN_OR_RETURN(w.lm_head, get("lm_head.weight"));
  }
  w.layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    DecoderLayerWeights& L = w.layers[l];
    const std::string p = StrCat("model.layers.", l, ".");
    FM_ASSIGN_OR_RETURN(L.input_norm, get(p + "input_layernorm.weight"));
    FM_ASSIGN_OR_RETURN(L.q_proj, get(p + "self_attn.q_proj.weight"));
    FM_ASSIGN_OR_RETURN(L.k_proj, get(p + "self_attn.k_proj.weight"));
    FM_ASSIGN_OR_RETURN(L.v_proj, get(p + "self_attn.v_proj.weight"));
    FM_ASSIGN_OR_RETURN(L.o_proj, get(p + "self_attn.o_proj.weight"));
    FM_ASSIGN_OR_RETURN(L.q_bias, get_if(c.qkv_bias, p + "self_attn.q_proj.bias"));
    FM_ASSIGN_OR_RETURN(L.k_bias, get_if(c.qkv_bias, p + "self_attn.k_proj.bias"));
    FM_ASSIGN_OR_RETURN(L.v_bias, get_if(c.qkv_bias, p + "self_attn.v_proj.bias"));
    FM_ASSIGN_OR_RETURN(L.o_bias, get_if(c.o_bias, p + "self_attn.o_proj.bias"));
    FM_ASSIGN_OR_RETURN(L.q_norm, get_if(c.qk_norm, p + "self_attn.q_norm.weight"));
    FM_ASSIGN_OR_RETURN(L.k_norm, get_if(c.qk_norm, p + "self_attn.k_norm.weight"));
    FM_ASSIGN_OR_RETURN(L.post_attention_norm, get(p + "post_attention_layernorm.weight"));
    FM_ASSIGN_OR_RETURN(L.gate_proj, get(p + "mlp.gate_proj.weight"));
    FM_ASSIGN_OR_RETURN(L.up_proj, get(p + "mlp.up_proj.weight"));
    FM_ASSIGN_OR_RETURN(L.down_proj, get(p + "mlp.down_proj.weight"));
    FM_ASSIGN_OR_RETURN(L.gate_bias, get_if(c.mlp_bias, p + "mlp.gate_proj.bias"));
    FM_ASSIGN_OR_RETURN(L.up_bias, get_if(c.mlp_bias, p + "mlp.up_proj.bias"));
    FM_ASSIGN_OR_RETURN(L.down_bias, get_if(c.mlp_bias, p + "mlp.down_proj.bias"));
  }
  return w;
}

std::vector<std::pair<std::string, at::Tensor*>> NamedLayerTensors(DecoderLayerWeights& x) {
  std::vector<std::pair<std::string, at::Tensor*>> all = {{"input_layernorm.weight", &x.input_norm},
                                                          {"self_attn.q_proj.weight", &x.q_proj},
                                                          {"self_attn.q_proj.bias", &x.q_bias},
                                                          {"self_attn.k_proj.weight", &x.k_proj},
                                                          {"self_attn.k_proj.bias", &x.k_bias},
                                                          {"self_attn.v_proj.weight", &x.v_proj},
                                                          {"self_attn.v_proj.bias", &x.v_bias},
                                                          {"self_attn.o_proj.weight", &x.o_proj},
                                                          {"self_attn.o_proj.bias", &x.o_bias},
                                                          {"self_attn.q_norm.weight", &x.q_norm},
                                                          {"self_attn.k_norm.weight", &x.k_norm},
                                                          {"post_attention_layernorm.weight", &x.post_attention_norm},
                                                          {"mlp.gate_proj.weight", &x.gate_proj},
                                                          {"mlp.gate_proj.bias", &x.gate_bias},
                                                          {"mlp.up_proj.weight", &x.up_proj},
                                                          {"mlp.up_proj.bias", &x.up_bias},
                                                          {"mlp.down_proj.weight", &x.down_proj},
                                                          {"mlp.down_proj.bias", &x.down_bias}};
  std::vector<std::pair<std::string, at::Tensor*>> out;
  for (auto& nt : all)
    if (nt.second->defined()) out.push_back(nt);
  return out;
}

std::vector<std::pair<std::string, at::Tensor*>> NamedDecoderTensors(DecoderWeights& w, bool tied) {
  std::vector<std::pair<std::string, at::Tensor*>> out = {{"model.embed_tokens.weight", &w.embed_tokens}};
  for (size_t l = 0; l < w.layers.size(); ++l)
    for (auto& [name, t] : NamedLayerTensors(w.layers[l]))
      out.emplace_back("model.layers." + std::to_string(l) + "." + name, t);
  out.emplace_back("model.norm.weight", &w.final_norm);
  if (!tied) out.emplace_back("lm_head.weight", &w.lm_head);
  return out;
}

}  // namespace fm
