#include "worker/engine/tokenizer/json_fields.h"
#include "worker/engine/common/absl_compat.h"

#include "absl/strings/str_cat.h"

namespace fm::tokenizer_internal {

JsonPath JsonPath::Child(std::string_view key) const {
  return JsonPath(source_, path_.empty() ? std::string(key) : absl::StrCat(path_, ".", Sv(key)));
}

JsonPath JsonPath::Index(size_t i) const { return JsonPath(source_, absl::StrCat(path_, "[", i, "]")); }

absl::Status JsonPath::Invalid(absl::string_view message) const {
  return absl::InvalidArgumentError(absl::StrCat(source_, ": field \"", path_, "\": ", message));
}

absl::Status JsonPath::Unimplemented(absl::string_view message) const {
  return absl::UnimplementedError(absl::StrCat(source_, ": field \"", path_, "\": ", message));
}

const Json* FindField(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<const Json*> RequireField(const Json& obj, std::string_view key, const JsonPath& path) {
  const Json* field = FindField(obj, key);
  if (field == nullptr) return path.Child(key).Invalid("missing");
  return field;
}

absl::StatusOr<bool> GetBool(const Json& obj, std::string_view key, const JsonPath& path,
                             std::optional<bool> default_value) {
  const Json* field = FindField(obj, key);
  if (field == nullptr) {
    if (default_value.has_value()) return *default_value;
    return path.Child(key).Invalid("missing");
  }
  if (!field->is_boolean()) return path.Child(key).Invalid("expected true or false");
  return field->get<bool>();
}

absl::StatusOr<std::string> GetString(const Json& obj, std::string_view key, const JsonPath& path) {
  const Json* field = FindField(obj, key);
  if (field == nullptr) return path.Child(key).Invalid("missing");
  return AsString(*field, path.Child(key));
}

absl::StatusOr<std::optional<std::string>> GetOptionalString(const Json& obj, std::string_view key,
                                                             const JsonPath& path) {
  const Json* field = FindField(obj, key);
  if (field == nullptr) return std::optional<std::string>();
  auto s = AsString(*field, path.Child(key));
  if (!s.ok()) return s.status();
  return std::optional<std::string>(*std::move(s));
}

absl::StatusOr<int64_t> GetInt(const Json& obj, std::string_view key, const JsonPath& path, int64_t min_value,
                               int64_t max_value) {
  const Json* field = FindField(obj, key);
  if (field == nullptr) return path.Child(key).Invalid("missing");
  return AsInt(*field, path.Child(key), min_value, max_value);
}

absl::StatusOr<std::string> GetType(const Json& value, const JsonPath& path) {
  if (!value.is_object()) return path.Invalid("expected an object");
  return GetString(value, "type", path);
}

absl::StatusOr<std::string> AsString(const Json& value, const JsonPath& path) {
  if (!value.is_string()) return path.Invalid("expected a string");
  return value.get<std::string>();
}

absl::StatusOr<int64_t> AsInt(const Json& value, const JsonPath& path, int64_t min_value, int64_t max_value) {
  int64_t v;
  if (value.is_number_unsigned()) {
    uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(max_value)) {
      return path.Invalid(absl::StrCat("value ", u, " is out of range [", min_value, ", ", max_value, "]"));
    }
    v = static_cast<int64_t>(u);
  } else if (value.is_number_integer()) {
    v = value.get<int64_t>();
  } else {
    return path.Invalid("expected an integer");
  }
  if (v < min_value || v > max_value) {
    return path.Invalid(absl::StrCat("value ", v, " is out of range [", min_value, ", ", max_value, "]"));
  }
  return v;
}

}  // namespace fm::tokenizer_internal
