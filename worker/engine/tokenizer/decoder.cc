#include "worker/engine/tokenizer/decoder.h"
#include "worker/engine/common/absl_compat.h"

#include "absl/strings/str_cat.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/tokenizer/byte_level.h"
#include "worker/engine/common/utf8.h"

namespace fm::tokenizer_internal {

absl::StatusOr<Decoder> Decoder::FromJson(const Json& value, const JsonPath& path) {
  if (value.is_null()) return Decoder();
  int steps = 0;
  FM_RETURN_IF_ERROR(Count(value, path, 0, &steps));
  return Decoder(steps);
}

absl::Status Decoder::Count(const Json& value, const JsonPath& path, int depth, int* byte_level_steps) {
  if (depth > kMaxJsonNesting) return path.Invalid("Sequence nested too deeply");
  FM_ASSIGN_OR_RETURN(std::string type, GetType(value, path));
  if (type == "ByteLevel") {
    ++*byte_level_steps;
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    FM_ASSIGN_OR_RETURN(const Json* list, RequireField(value, "decoders", path));
    const JsonPath list_path = path.Child("decoders");
    if (!list->is_array()) return list_path.Invalid("expected an array");
    for (size_t i = 0; i < list->size(); ++i) {
      FM_RETURN_IF_ERROR(Count((*list)[i], list_path.Index(i), depth + 1, byte_level_steps));
    }
    return absl::OkStatus();
  }
  return path.Unimplemented(
      absl::StrCat("decoder type \"", type, "\" is not supported (supported: ByteLevel, Sequence of ByteLevel)"));
}

std::string Decoder::Decode(const std::vector<std::string_view>& tokens, bool lossy) const {
  if (!present_) {
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) joined.push_back(' ');
      joined.append(tokens[i]);
    }
    return joined;
  }
  // Each ByteLevel step maps its tokens to bytes and returns one lossy UTF-8 string (decode_chain); the next step,
  // if any, receives that single string.
  std::vector<std::string> current(tokens.begin(), tokens.end());
  for (int step = 0; step < byte_level_steps_; ++step) {
    std::string bytes;
    for (const std::string& t : current) {
      if (!DecodeByteLevel(t, &bytes)) bytes.append(t);
    }
    const bool last = step + 1 == byte_level_steps_;
    current.assign(1, lossy || !last ? Utf8Lossy(bytes) : std::move(bytes));
  }
  std::string joined;
  for (const std::string& t : current) joined.append(t);
  return joined;
}

}  // namespace fm::tokenizer_internal
