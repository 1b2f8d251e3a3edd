// The decoder stage: turns token strings back into text. Supports tokenizer.json "decoder" null (tokens joined
// with spaces, as `tokenizers` does), ByteLevel (byte-level characters back to bytes, then lossy UTF-8), and a
// Sequence of ByteLevel decoders.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/tokenizer/json_fields.h"

namespace fm::tokenizer_internal {

class Decoder {
 public:
  Decoder() = default;  // null decoder
  explicit Decoder(int byte_level_steps) : present_(true), byte_level_steps_(byte_level_steps) {}

  static absl::StatusOr<Decoder> FromJson(const Json& value, const JsonPath& path);

  // With `lossy`, the result is valid UTF-8 (tokenizers' decode); without it, a byte-level decoder's last step
  // returns the raw bytes.
  std::string Decode(const std::vector<std::string_view>& tokens, bool lossy = true) const;

 private:
  static absl::Status Count(const Json& value, const JsonPath& path, int depth, int* byte_level_steps);

  bool present_ = false;
  int byte_level_steps_ = 0;
};

}  // namespace fm::tokenizer_internal
