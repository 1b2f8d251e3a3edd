#include "worker/engine/model/gguf_tokenizer.h"

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm {

absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromGguf(const GgufFile& f) {
  FM_ASSIGN_OR_RETURN(std::string model, f.GetString("tokenizer.ggml.model"));
  if (model != "gpt2")
    return absl::UnimplementedError(StrCat(f.path(), ": tokenizer model \"", model,
                                           "\" is not supported (byte-level BPE \"gpt2\" only)"));
  BpeSpec spec;
  spec.source_name = f.path();
  FM_ASSIGN_OR_RETURN(spec.tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  FM_ASSIGN_OR_RETURN(spec.merges, f.GetStringArray("tokenizer.ggml.merges"));
  if (f.HasKey("tokenizer.ggml.token_type")) {
    FM_ASSIGN_OR_RETURN(std::vector<int64_t> types, f.GetIntArray("tokenizer.ggml.token_type"));
    spec.token_types.assign(types.begin(), types.end());
  }
  if (f.HasKey("tokenizer.ggml.pre")) {
    FM_ASSIGN_OR_RETURN(spec.pre, f.GetString("tokenizer.ggml.pre"));
  }
  auto optional_id = [&](const char* key) -> absl::StatusOr<std::optional<int32_t>> {
    if (!f.HasKey(key)) return std::optional<int32_t>();
    FM_ASSIGN_OR_RETURN(int64_t id, f.GetInt(key));
    if (id < 0 || id >= static_cast<int64_t>(spec.tokens.size()))
      return absl::InvalidArgumentError(StrCat(f.path(), ": key '", key, "' = ", id, " is not a token id"));
    return std::optional<int32_t>(static_cast<int32_t>(id));
  };
  FM_ASSIGN_OR_RETURN(spec.bos_id, optional_id("tokenizer.ggml.bos_token_id"));
  FM_ASSIGN_OR_RETURN(spec.eos_id, optional_id("tokenizer.ggml.eos_token_id"));
  // llama.cpp's default for "gpt2" vocabularies is no bos unless the file says add_bos_token.
  if (f.HasKey("tokenizer.ggml.add_bos_token")) {
    FM_ASSIGN_OR_RETURN(spec.add_bos, f.GetBool("tokenizer.ggml.add_bos_token"));
  }
  if (f.HasKey("tokenizer.ggml.add_eos_token")) {
    FM_ASSIGN_OR_RETURN(spec.add_eos, f.GetBool("tokenizer.ggml.add_eos_token"));
  }
  return Tokenizer::FromBpeSpec(spec);
}

}  // namespace fm
