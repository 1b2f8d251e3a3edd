// Checked access to fields of a parsed tokenizer.json (nlohmann::json) that never throws: each getter returns
// INVALID_ARGUMENT naming the source file and the field path ("model.merges[3]") when a field is missing or has
// the wrong type.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace fm::tokenizer_internal {

using Json = nlohmann::json;

// Deepest nesting of Sequence components accepted (deeper input is INVALID_ARGUMENT, not a stack overflow).
inline constexpr int kMaxJsonNesting = 32;

// Where a JSON value sits: the file (or other source name) and the path of the field inside it.
class JsonPath {
 public:
  JsonPath(std::string source, std::string path) : source_(std::move(source)), path_(std::move(path)) {}
  JsonPath Child(std::string_view key) const;
  JsonPath Index(size_t i) const;
  const std::string& source() const { return source_; }
  const std::string& path() const { return path_; }
  // "<source>: field "<path>": <message>" as INVALID_ARGUMENT / UNIMPLEMENTED.
  absl::Status Invalid(absl::string_view message) const;
  absl::Status Unimplemented(absl::string_view message) const;

 private:
  std::string source_;
  std::string path_;
};

// The member `key` of `obj` (an object), or nullptr if absent or JSON null.
const Json* FindField(const Json& obj, std::string_view key);

// The member `key` of `obj`; INVALID_ARGUMENT if absent or null.
absl::StatusOr<const Json*> RequireField(const Json& obj, std::string_view key, const JsonPath& path);

// Typed members. With a default, an absent or null member yields the default; without one it is an error.
absl::StatusOr<bool> GetBool(const Json& obj, std::string_view key, const JsonPath& path,
                             std::optional<bool> default_value = std::nullopt);
absl::StatusOr<std::string> GetString(const Json& obj, std::string_view key, const JsonPath& path);
absl::StatusOr<std::optional<std::string>> GetOptionalString(const Json& obj, std::string_view key,
                                                             const JsonPath& path);
// An integer member within [min_value, max_value].
absl::StatusOr<int64_t> GetInt(const Json& obj, std::string_view key, const JsonPath& path, int64_t min_value,
                               int64_t max_value);

// The "type" member of a component object (normalizer, pre_tokenizer, ...); INVALID_ARGUMENT if `value` is not an
// object or has no string "type".
absl::StatusOr<std::string> GetType(const Json& value, const JsonPath& path);

// Value checks for a JSON value that is itself the item (array elements).
absl::StatusOr<std::string> AsString(const Json& value, const JsonPath& path);
absl::StatusOr<int64_t> AsInt(const Json& value, const JsonPath& path, int64_t min_value, int64_t max_value);

}  // namespace fm::tokenizer_internal
