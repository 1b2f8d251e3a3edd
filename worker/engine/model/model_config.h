// The decoder configuration FlashMorph understands, parsed from a Hugging Face `config.json` (Llama incl. Llama-3
// rope scaling, Mistral, Qwen2, Qwen3; old `rope_scaling`/`rope_theta` and transformers-5 `rope_parameters` forms).
// Parsing checks that the shape is consistent (heads divide, positive sizes) and that every feature the file turns on
// is one we implement; anything else is an error naming the file and the field, never a silent approximation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fm {

enum class Architecture { kLlama, kMistral, kQwen2, kQwen3 };
std::string_view ArchitectureName(Architecture a);  // the HF model_type: "llama", "mistral", "qwen2", "qwen3"

enum class RopeType { kDefault, kLinear, kLlama3, kYarn };

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  double factor = 1.0;                        // linear, llama3, yarn
  double low_freq_factor = 1.0;               // llama3
  double high_freq_factor = 4.0;              // llama3
  int64_t original_max_position_embeddings = 0;  // llama3, yarn
  double attention_factor = 1.0;              // yarn: scales cos/sin (resolved at parse time)
  double beta_fast = 32.0, beta_slow = 1.0;   // yarn
  bool truncate = true;                       // yarn
  // Per-frequency divisors (head_dim/2 of them) that GGUF files carry as `rope_freqs.weight` (Llama-3 scaling
  // precomputed by the converter); empty otherwise. Applied after the rope type's own scaling.
  std::vector<float> freq_factors;
};

struct ModelConfig {
  Architecture arch = Architecture::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;        // Qwen2: always; Llama/Qwen3: `attention_bias`
  bool o_bias = false;          // Llama/Qwen3: `attention_bias`
  bool mlp_bias = false;        // Llama only
  bool qk_norm = false;         // Qwen3: per-head RMSNorm on q and k before RoPE
  // Per layer: 0 = full causal attention, w > 0 = causal sliding window of w tokens (key j visible to query i iff
  // i - w < j <= i).
  std::vector<int64_t> sliding_window;
  std::optional<int64_t> bos_token_id, eos_token_id;
  std::string torch_dtype;  // as written ("bfloat16", "float32", ...); may be empty

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
};

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source);
// Reads and parses `<dir>/config.json` (or a path to the file itself).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
// Checks the invariants the forward pass relies on (what ParseModelConfig checks; used for GGUF-derived configs).
absl::Status ValidateModelConfig(const ModelConfig& c, std::string_view source);

}  // namespace fm
