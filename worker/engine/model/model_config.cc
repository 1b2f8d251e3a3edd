#include "worker/engine/model/model_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "worker/engine/common/str_cat.h"
#include "worker/engine/common/status_macros.h"

namespace fm {
namespace {

using nlohmann::json;

absl::Status Bad(std::string_view source, std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(StrCat(source, ": field \"", field, "\": ", what));
}

// Reads an integer field. Missing or null → `fallback` (nullopt fallback = required).
absl::StatusOr<int64_t> GetInt(const json& j, std::string_view source, const char* key,
                               std::optional<int64_t> fallback = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    return Bad(source, key, "is required");
  }
  if (!it->is_number_integer()) return Bad(source, key, "must be an integer");
  return it->get<int64_t>();
}

absl::StatusOr<double> GetNumber(const json& j, std::string_view source, const char* key,
                                 std::optional<double> fallback = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    return Bad(source, key, "is required");
  }
  if (!it->is_number()) return Bad(source, key, "must be a number");
  double v = it->get<double>();
  if (!std::isfinite(v)) return Bad(source, key, "must be finite");
  return v;
}

absl::StatusOr<bool> GetBool(const json& j, std::string_view source, const char* key, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return Bad(source, key, "must be true or false");
  return it->get<bool>();
}

absl::StatusOr<std::optional<int64_t>> GetOptionalTokenId(const json& j, std::string_view source, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::optional<int64_t>();
  if (it->is_number_integer()) return std::optional<int64_t>(it->get<int64_t>());
  // Some configs list several eos ids; the first is the canonical one.
  if (it->is_array() && !it->empty() && (*it)[0].is_number_integer())
    return std::optional<int64_t>((*it)[0].get<int64_t>());
  return Bad(source, key, "must be an integer or a list of integers");
}

absl::StatusOr<Architecture> ParseArchitecture(const json& j, std::string_view source) {
  std::string model_type;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) model_type = it->get<std::string>();
  if (model_type.empty()) {
    if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
      std::string a = (*it)[0].get<std::string>();
      if (a.starts_with("Llama")) model_type = "llama";
      else if (a.starts_with("Mistral")) model_type = "mistral";
      else if (a.starts_with("Qwen2")) model_type = "qwen2";
      else if (a.starts_with("Qwen3")) model_type = "qwen3";
      else return absl::InvalidArgumentError(StrCat(source, ": unknown architecture \"", a,
                                                          "\" (supported: Llama, Mistral, Qwen2, Qwen3)"));
    } else {
      return Bad(source, "model_type", "is required (or \"architectures\")");
    }
  }
  if (model_type == "llama") return Architecture::kLlama;
  if (model_type == "mistral") return Architecture::kMistral;
  if (model_type == "qwen2") return Architecture::kQwen2;
  if (model_type == "qwen3") return Architecture::kQwen3;
  return absl::InvalidArgumentError(StrCat(source, ": unknown architecture model_type=\"", model_type,
                                                 "\" (supported: llama, mistral, qwen2, qwen3)"));
}

// Rope settings: transformers 5 writes `rope_parameters` {rope_type, rope_theta, ...}; older files write
// `rope_theta` plus an optional `rope_scaling` {type|rope_type, factor, ...}.
absl::StatusOr<RopeConfig> ParseRope(const json& j, const ModelConfig& c, std::string_view source) {
  const json* params = nullptr;
  const char* params_name = "rope_parameters";
  if (auto it = j.find("rope_parameters"); it != j.end() && !it->is_null()) {
    params = &*it;
  } else if (auto it2 = j.find("rope_scaling"); it2 != j.end() && !it2->is_null()) {
    params = &*it2;
    params_name = "rope_scaling";
  }
  if (params && !params->is_object()) return Bad(source, params_name, "must be an object");
  RopeConfig r;
  json empty = json::object();
  const json& p = params ? *params : empty;
  // rope_theta: inside rope_parameters, else top level, else the architecture's default (10000).
  FM_ASSIGN_OR_RETURN(r.theta, GetNumber(j, source, "rope_theta", 10000.0));
  if (auto it = p.find("rope_theta"); it != p.end() && !it->is_null()) {
    if (!it->is_number()) return Bad(source, std::string(params_name) + ".rope_theta", "must be a number");
    r.theta = it->get<double>();
  }
  if (r.theta <= 0) return Bad(source, "rope_theta", "must be positive");

  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (auto it = p.find(key); it != p.end() && !it->is_null()) {
      if (!it->is_string()) return Bad(source, std::string(params_name) + "." + key, "must be a string");
      type = it->get<std::string>();
      break;
    }
  }
  if (auto it = p.find("partial_rotary_factor"); it != p.end() && it->is_number() && it->get<double>() != 1.0)
    return absl::UnimplementedError(StrCat(source, ": partial_rotary_factor != 1 is not supported"));
  if (auto it = j.find("partial_rotary_factor"); it != j.end() && it->is_number() && it->get<double>() != 1.0)
    return absl::UnimplementedError(StrCat(source, ": partial_rotary_factor != 1 is not supported"));

  auto field = [&](const char* k) { return std::string(params_name) + "." + k; };
  auto number = [&](const char* k, std::optional<double> fallback) -> absl::StatusOr<double> {
    auto it = p.find(k);
    if (it == p.end() || it->is_null()) {
      if (fallback) return *fallback;
      return Bad(source, field(k), "is required for rope type \"" + type + "\"");
    }
    if (!it->is_number()) return Bad(source, field(k), "must be a number");
    return it->get<double>();
  };
  int64_t top_original = c.max_position_embeddings;
  if (auto it = j.find("original_max_position_embeddings"); it != j.end() && it->is_number_integer())
    top_original = it->get<int64_t>();

  if (type == "default") {
    r.type = RopeType::kDefault;
  } else if (type == "linear") {
    r.type = RopeType::kLinear;
    FM_ASSIGN_OR_RETURN(r.factor, number("factor", std::nullopt));
  } else if (type == "llama3") {
    r.type = RopeType::kLlama3;
    FM_ASSIGN_OR_RETURN(r.factor, number("factor", std::nullopt));
    FM_ASSIGN_OR_RETURN(r.low_freq_factor, number("low_freq_factor", std::nullopt));
    FM_ASSIGN_OR_RETURN(r.high_freq_factor, number("high_freq_factor", std::nullopt));
    FM_ASSIGN_OR_RETURN(double orig, number("original_max_position_embeddings", double(top_original)));
    r.original_max_position_embeddings = static_cast<int64_t>(orig);
    if (r.high_freq_factor <= r.low_freq_factor)
      return Bad(source, field("high_freq_factor"), "must exceed low_freq_factor");
  } else if (type == "yarn") {
    r.type = RopeType::kYarn;
    FM_ASSIGN_OR_RETURN(double orig, number("original_max_position_embeddings", double(top_original)));
    r.original_max_position_embeddings = static_cast<int64_t>(orig);
    FM_ASSIGN_OR_RETURN(r.factor, number("factor", double(c.max_position_embeddings) / orig));
    FM_ASSIGN_OR_RETURN(r.beta_fast, number("beta_fast", 32.0));
    FM_ASSIGN_OR_RETURN(r.beta_slow, number("beta_slow", 1.0));
    if (auto it = p.find("truncate"); it != p.end() && it->is_boolean()) r.truncate = it->get<bool>();
    auto mscale_of = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
    if (auto it = p.find("attention_factor"); it != p.end() && it->is_number()) {
      r.attention_factor = it->get<double>();
    } else {
      double mscale = 0, mscale_all = 0;
      if (auto m = p.find("mscale"); m != p.end() && m->is_number()) mscale = m->get<double>();
      if (auto m = p.find("mscale_all_dim"); m != p.end() && m->is_number()) mscale_all = m->get<double>();
      r.attention_factor = (mscale != 0 && mscale_all != 0)
                               ? mscale_of(r.factor, mscale) / mscale_of(r.factor, mscale_all)
                               : mscale_of(r.factor, 1.0);
    }
  } else {
    return absl::UnimplementedError(
        StrCat(source, ": rope type \"", type, "\" is not supported (default, linear, llama3, yarn)"));
  }
  if (r.type != RopeType::kDefault && !(r.factor > 0)) return Bad(source, field("factor"), "must be positive");
  if ((r.type == RopeType::kLlama3 || r.type == RopeType::kYarn) && r.original_max_position_embeddings <= 0)
    return Bad(source, field("original_max_position_embeddings"), "must be positive");
  return r;
}

// Per-layer sliding windows: from `layer_types` when present; Mistral applies `sliding_window` to every layer;
// Qwen2/3 only when `use_sliding_window` (to layers >= max_window_layers).
absl::Status ParseLayerWindows(const json& j, ModelConfig& c, std::string_view source) {
  c.sliding_window.assign(c.num_layers, 0);
  int64_t window = 0;  // 0: none
  if (auto it = j.find("sliding_window"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() <= 0) return Bad(source, "sliding_window", "must be > 0");
    window = it->get<int64_t>();
  }
  bool qwen = c.arch == Architecture::kQwen2 || c.arch == Architecture::kQwen3;
  FM_ASSIGN_OR_RETURN(bool use_sw, GetBool(j, source, "use_sliding_window", false));
  if (qwen && !use_sw) window = 0;

  if (auto it = j.find("layer_types"); it != j.end() && !it->is_null()) {
    if (!it->is_array() || static_cast<int64_t>(it->size()) != c.num_layers)
      return Bad(source, "layer_types", StrCat("must list one type per layer (", c.num_layers, ")"));
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const json& t = (*it)[l];
      std::string s = t.is_string() ? t.get<std::string>() : "";
      if (s == "full_attention") continue;
      if (s == "sliding_attention") {
        if (window == 0) return Bad(source, "layer_types", "sliding_attention needs a sliding_window");
        c.sliding_window[l] = window;
        continue;
      }
      return absl::UnimplementedError(StrCat(source, ": field \"layer_types\"[", l, "] = ", t.dump(),
                                                   " is not supported by this loader"));
    }
    return absl::OkStatus();
  }
  if (window == 0) return absl::OkStatus();
  int64_t first = 0;
  if (qwen) {
    FM_ASSIGN_OR_RETURN(first, GetInt(j, source, "max_window_layers", int64_t{28}));
  }
  for (int64_t l = std::max<int64_t>(first, 0); l < c.num_layers; ++l) c.sliding_window[l] = window;
  return absl::OkStatus();
}

}  // namespace

std::string_view ArchitectureName(Architecture a) {
  switch (a) {
    case Architecture::kLlama: return "llama";
    case Architecture::kMistral: return "mistral";
    case Architecture::kQwen2: return "qwen2";
    case Architecture::kQwen3: return "qwen3";
  }
  return "?";
}

absl::Status ValidateModelConfig(const ModelConfig& c, std::string_view source) {
  auto positive = [&](int64_t v, const char* name) -> absl::Status {
    if (v <= 0) return Bad(source, name, StrCat("must be positive (got ", v, ")"));
    return absl::OkStatus();
  };
  FM_RETURN_IF_ERROR(positive(c.vocab_size, "vocab_size"));
  FM_RETURN_IF_ERROR(positive(c.hidden_size, "hidden_size"));
  FM_RETURN_IF_ERROR(positive(c.intermediate_size, "intermediate_size"));
  FM_RETURN_IF_ERROR(positive(c.num_layers, "num_hidden_layers"));
  FM_RETURN_IF_ERROR(positive(c.num_heads, "num_attention_heads"));
  FM_RETURN_IF_ERROR(positive(c.num_kv_heads, "num_key_value_heads"));
  FM_RETURN_IF_ERROR(positive(c.head_dim, "head_dim"));
  if (c.num_heads % c.num_kv_heads != 0)
    return Bad(source, "num_key_value_heads",
               StrCat("inconsistent heads: num_attention_heads (", c.num_heads,
                            ") is not a multiple of num_key_value_heads (", c.num_kv_heads, ")"));
  if (c.head_dim % 2 != 0) return Bad(source, "head_dim", StrCat("must be even for RoPE (got ", c.head_dim, ")"));
  if (!(c.rms_norm_eps > 0)) return Bad(source, "rms_norm_eps", "must be positive");
  // Guard against absurd sizes that would overflow element counts downstream.
  constexpr int64_t kMax = int64_t{1} << 24;
  for (auto [v, name] : {std::pair{c.vocab_size, "vocab_size"}, {c.hidden_size, "hidden_size"},
                         {c.intermediate_size, "intermediate_size"}, {c.num_layers, "num_hidden_layers"},
                         {c.num_heads * c.head_dim, "num_attention_heads*head_dim"}}) {
    if (v > kMax) return Bad(source, name, StrCat("is implausibly large (", v, ")"));
  }
  if (!c.rope.freq_factors.empty() && static_cast<int64_t>(c.rope.freq_factors.size()) != c.head_dim / 2)
    return Bad(source, "rope_freqs", StrCat("needs head_dim/2 = ", c.head_dim / 2, " factors"));
  if (static_cast<int64_t>(c.sliding_window.size()) != c.num_layers)
    return absl::InternalError(StrCat(source, ": per-layer settings do not match num_hidden_layers"));
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(StrCat(source, ": not valid JSON"));
  if (!j.is_object()) return absl::InvalidArgumentError(StrCat(source, ": must be a JSON object"));

  ModelConfig c;
  FM_ASSIGN_OR_RETURN(c.arch, ParseArchitecture(j, source));
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null()) {
    if (!it->is_string() || (it->get<std::string>() != "silu" && it->get<std::string>() != "swish"))
      return absl::UnimplementedError(
          StrCat(source, ": field \"hidden_act\" = ", it->dump(), " is not supported (silu only)"));
  }
  FM_ASSIGN_OR_RETURN(c.vocab_size, GetInt(j, source, "vocab_size"));
  FM_ASSIGN_OR_RETURN(c.hidden_size, GetInt(j, source, "hidden_size"));
  FM_ASSIGN_OR_RETURN(c.intermediate_size, GetInt(j, source, "intermediate_size"));
  FM_ASSIGN_OR_RETURN(c.num_layers, GetInt(j, source, "num_hidden_layers"));
  FM_ASSIGN_OR_RETURN(c.num_heads, GetInt(j, source, "num_attention_heads"));
  FM_ASSIGN_OR_RETURN(c.num_kv_heads, GetInt(j, source, "num_key_value_heads", c.num_heads));
  if (c.num_heads <= 0) return Bad(source, "num_attention_heads", "must be positive");
  if (c.hidden_size > 0 && c.hidden_size % c.num_heads != 0 && !j.contains("head_dim"))
    return Bad(source, "num_attention_heads",
               StrCat("inconsistent heads: hidden_size (", c.hidden_size,
                            ") is not a multiple of num_attention_heads (", c.num_heads, ") and head_dim is not given"));
  FM_ASSIGN_OR_RETURN(c.head_dim, GetInt(j, source, "head_dim", c.hidden_size / c.num_heads));
  FM_ASSIGN_OR_RETURN(c.max_position_embeddings, GetInt(j, source, "max_position_embeddings", int64_t{2048}));
  FM_ASSIGN_OR_RETURN(c.rms_norm_eps, GetNumber(j, source, "rms_norm_eps", 1e-6));
  FM_ASSIGN_OR_RETURN(c.tie_word_embeddings, GetBool(j, source, "tie_word_embeddings", false));
  switch (c.arch) {
    case Architecture::kLlama: {
      FM_ASSIGN_OR_RETURN(bool bias, GetBool(j, source, "attention_bias", false));
      c.qkv_bias = c.o_bias = bias;
      FM_ASSIGN_OR_RETURN(c.mlp_bias, GetBool(j, source, "mlp_bias", false));
      FM_ASSIGN_OR_RETURN(int64_t tp, GetInt(j, source, "pretraining_tp", int64_t{1}));
      if (tp != 1) return absl::UnimplementedError(StrCat(source, ": pretraining_tp != 1 is not supported"));
      break;
    }
    case Architecture::kMistral:
      break;
    case Architecture::kQwen2:
      c.qkv_bias = true;
      break;
    case Architecture::kQwen3: {
      FM_ASSIGN_OR_RETURN(bool bias, GetBool(j, source, "attention_bias", false));
      c.qkv_bias = c.o_bias = bias;
      c.qk_norm = true;
      break;
    }
  }
  FM_ASSIGN_OR_RETURN(c.rope, ParseRope(j, c, source));
  if (c.num_layers > 0 && c.num_layers <= (int64_t{1} << 16)) {
    FM_RETURN_IF_ERROR(ParseLayerWindows(j, c, source));
  } else {
    return Bad(source, "num_hidden_layers", StrCat("must be in 1..65536 (got ", c.num_layers, ")"));
  }
  FM_ASSIGN_OR_RETURN(c.bos_token_id, GetOptionalTokenId(j, source, "bos_token_id"));
  FM_ASSIGN_OR_RETURN(c.eos_token_id, GetOptionalTokenId(j, source, "eos_token_id"));
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (auto it = j.find(key); it != j.end() && it->is_string()) c.torch_dtype = it->get<std::string>();
  }
  FM_RETURN_IF_ERROR(ValidateModelConfig(c, source));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::string file = path;
  if (!file.ends_with(".json")) file = path + "/config.json";
  std::error_code ec;
  auto size = std::filesystem::file_size(file, ec);
  if (ec) return absl::NotFoundError(StrCat(file, ": cannot open: ", ec.message()));
  if (size > (uintmax_t{16} << 20))
    return absl::InvalidArgumentError(StrCat(file, ": larger than 16 MiB; not a model config"));
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError(StrCat(file, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str(), file);
}

}  // namespace fm
