// The normalizer stage of a tokenizer: a list of steps (NFC, NFD, NFKC, NFKD, Lowercase) applied in order, as
// tokenizer.json's "normalizer" describes them (null, one of those types, or a Sequence of them, nested).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/tokenizer/json_fields.h"
#include "worker/engine/tokenizer/unicode_text.h"

namespace fm::tokenizer_internal {

class Normalizer {
 public:
  enum class Step { kNFC, kNFD, kNFKC, kNFKD, kLowercase };

  Normalizer() = default;  // no normalizer (JSON null)
  explicit Normalizer(std::vector<Step> steps) : present_(true), steps_(std::move(steps)) {}

  // Parses tokenizer.json's "normalizer" value (`value` may be null). Unsupported types are UNIMPLEMENTED.
  static absl::StatusOr<Normalizer> FromJson(const Json& value, const JsonPath& path);

  // Whether the tokenizer has a normalizer at all (an empty Sequence counts as present, as in `tokenizers`).
  bool present() const { return present_; }

  // Applies the steps to valid UTF-8 text.
  std::string Apply(std::string_view text) const;

 private:
  static absl::Status Flatten(const Json& value, const JsonPath& path, int depth, std::vector<Step>* steps);

  bool present_ = false;
  std::vector<Step> steps_;
};

}  // namespace fm::tokenizer_internal
