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

}  // namespace fm
