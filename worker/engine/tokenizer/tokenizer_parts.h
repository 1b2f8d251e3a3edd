// The stages a Tokenizer is assembled from, and the two ways to build them: from tokenizer.json
// (tokenizer_json.cc) and from GGUF vocabulary data (bpe_spec.cc).
#pragma once

#include <memory>
#include <optional>
#include <string_view>

#include "absl/status/statusor.h"
#include "worker/engine/tokenizer/added_vocabulary.h"
#include "worker/engine/tokenizer/bpe_model.h"
#include "worker/engine/tokenizer/decoder.h"
#include "worker/engine/tokenizer/normalizer.h"
#include "worker/engine/tokenizer/post_processor.h"
#include "worker/engine/tokenizer/pre_tokenizer.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace fm::tokenizer_internal {

struct TokenizerParts {
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<AddedVocabulary> added;
  PostProcessor post_processor;
  Decoder decoder;
  std::optional<int32_t> bos_id;  // explicit (GGUF); otherwise derived by Tokenizer
  std::optional<int32_t> eos_id;
  bool explicit_bos_eos = false;
};

absl::StatusOr<std::unique_ptr<TokenizerParts>> PartsFromJson(std::string_view json, std::string_view source);
absl::StatusOr<std::unique_ptr<TokenizerParts>> PartsFromBpeSpec(const BpeSpec& spec);

}  // namespace fm::tokenizer_internal
