// The pre-tokenizer stage: splits a piece of normalized text into the words the BPE model encodes. Supports the
// tokenizer.json types ByteLevel (add_prefix_space, use_regex), Split (String or Regex pattern, the five
// behaviors, invert), Digits (individual_digits) and Sequence, with the semantics of the `tokenizers` library.
// Immutable after construction; safe to use from several threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/tokenizer/json_fields.h"
#include "worker/engine/tokenizer/regex.h"

namespace fm::tokenizer_internal {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

class PreTokenizer {
 public:
  struct Step {
    enum class Kind { kByteLevel, kSplit, kDigits };
    Kind kind = Kind::kByteLevel;
    bool add_prefix_space = false;       // ByteLevel
    bool use_regex = true;               // ByteLevel
    std::shared_ptr<const Regex> regex;  // Split (also set for ByteLevel with use_regex: the GPT-2 pattern)
    SplitBehavior behavior = SplitBehavior::kIsolated;  // Split
    bool invert = false;                                // Split
    bool individual_digits = false;                     // Digits
  };

  PreTokenizer() = default;  // none: the whole piece is one word
  explicit PreTokenizer(std::vector<Step> steps) : steps_(std::move(steps)) {}

  // Parses tokenizer.json's "pre_tokenizer" value (may be null). Unsupported types are UNIMPLEMENTED.
  static absl::StatusOr<PreTokenizer> FromJson(const Json& value, const JsonPath& path);

  // Step builders (used for GGUF families and by FromJson).
  static absl::StatusOr<Step> ByteLevel(bool add_prefix_space, bool use_regex);
  static absl::StatusOr<Step> SplitRegex(std::string_view onig_pattern, SplitBehavior behavior, bool invert);
  static Step Digits(bool individual_digits);

  // Appends the non-empty words of `text` (valid UTF-8) to `words`.
  void Apply(std::string_view text, std::vector<std::string>* words) const;

  // Whether some step maps text to the byte-level alphabet.
  bool has_byte_level() const;

 private:
  static absl::Status Flatten(const Json& value, const JsonPath& path, int depth, std::vector<Step>* steps);
  static void ApplyStep(const Step& step, std::string_view piece, std::vector<std::string>* out);

  std::vector<Step> steps_;
};

}  // namespace fm::tokenizer_internal
