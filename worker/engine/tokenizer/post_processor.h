// What happens to a single sequence's ids after the model: truncation (tokenizer.json "truncation"), the
// post-processor ("post_processor": null, ByteLevel, TemplateProcessing's single template, or a Sequence of them)
// and padding ("padding"), in the order and with the arithmetic of the `tokenizers` library.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/tokenizer/json_fields.h"

namespace fm::tokenizer_internal {

class PostProcessor {
 public:
  // One element of a single-sequence template: the sequence itself (ids empty) or a special token's ids.
  struct TemplatePiece {
    bool is_sequence = false;
    std::vector<int32_t> ids;
    std::string name;  // the special token's name in the template
  };
  using Template = std::vector<TemplatePiece>;

  struct Truncation {
    size_t max_length = 0;
    bool left = false;  // direction Left keeps the last tokens
  };
  struct Padding {
    std::optional<size_t> fixed_length;  // nullopt: BatchLongest (a single sequence's own length)
    std::optional<size_t> multiple_of;
    bool left = false;
    int32_t pad_id = 0;
  };

  PostProcessor() = default;
  // Templates applied in order (a Sequence of TemplateProcessing); ByteLevel steps add nothing to ids.
  explicit PostProcessor(std::vector<Template> templates) : templates_(std::move(templates)) {}

  // Parses "post_processor", "truncation" and "padding" of tokenizer.json's top-level object `root`.
  static absl::StatusOr<PostProcessor> FromJson(const Json& root, const JsonPath& path);

  // Applies truncation, the templates (special tokens only when add_special_tokens) and padding to `ids`.
  void Apply(std::vector<int32_t>* ids, bool add_special_tokens) const;

  // The first special token of the first template when it comes before the sequence, and the last one when it
  // comes after: the tokenizer's bos and eos as its template adds them.
  std::optional<int32_t> TemplateBos() const;
  std::optional<int32_t> TemplateEos() const;

 private:
  static absl::Status FlattenProcessor(const Json& value, const JsonPath& path, int depth,
                                       std::vector<Template>* templates);
  static absl::StatusOr<Template> ParseTemplate(const Json& value, const JsonPath& path);
  size_t AddedTokens() const;

  std::vector<Template> templates_;
  std::optional<Truncation> truncation_;
  std::optional<Padding> padding_;
};

}  // namespace fm::tokenizer_internal
