#include "worker/engine/formats/json_strict.h"

#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/common/utf8.h"

namespace fm {
namespace {

using json = nlohmann::json;

// nlohmann SAX handler that builds a DOM and stops at the first duplicate key or too-deep container.
class StrictDomBuilder {
 public:
  StrictDomBuilder(json& root, int max_depth) : root_(root), max_depth_(max_depth) {}

  bool null() { return Put(json(nullptr)) != nullptr; }
  bool boolean(bool v) { return Put(json(v)) != nullptr; }
  bool number_integer(json::number_integer_t v) { return Put(json(v)) != nullptr; }
  bool number_unsigned(json::number_unsigned_t v) { return Put(json(v)) != nullptr; }
  bool number_float(json::number_float_t v, const json::string_t&) { return Put(json(v)) != nullptr; }
  bool string(json::string_t& v) { return Put(json(std::move(v))) != nullptr; }
  bool binary(json::binary_t&) {
    error_ = "binary values are not JSON";
    return false;
  }
  bool start_object(std::size_t) { return Open(json::object()); }
  bool start_array(std::size_t) { return Open(json::array()); }
  bool end_object() { return Close(); }
  bool end_array() { return Close(); }
  bool key(json::string_t& k) {
    Frame& f = stack_.back();
    auto [it, inserted] = f.value->get_ref<json::object_t&>().emplace(k, json());
    if (!inserted) {
      error_ = absl::StrCat("duplicate key ", QuoteForMessage(k));
      return false;
    }
    f.pending = &it->second;
    f.key = std::move(k);
    return true;
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) {
    // Drop nlohmann's "[json.exception.parse_error.101] " prefix.
    absl::string_view what = ex.what();
    if (size_t p = what.find("] "); p != absl::string_view::npos) what.remove_prefix(p + 2);
    error_ = absl::StrCat(what, " (byte ", position, ")");
    return false;
  }

  const std::string& error() const { return error_; }

  // Where the parser stopped: "/key/3/key".
  std::string Path() const {
    std::string path;
    for (const Frame& f : stack_) {
      if (f.value->is_object()) {
        if (f.pending == nullptr) break;
        absl::StrAppend(&path, "/", QuoteForMessage(f.key));
      } else {
        if (f.value->empty()) break;
        absl::StrAppend(&path, "/", f.value->size() - 1);
      }
    }
    return path.empty() ? "/" : path;
  }

 private:
  struct Frame {
    json* value;
    json* pending = nullptr;  // objects: the slot for the value of the last key
    std::string key;          // objects: the last key
  };

  json* Put(json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Frame& f = stack_.back();
    if (f.value->is_array()) {
      auto& arr = f.value->get_ref<json::array_t&>();
      arr.push_back(std::move(v));
      return &arr.back();
    }
    *f.pending = std::move(v);
    return f.pending;
  }
  bool Open(json&& container) {
    if (static_cast<int>(stack_.size()) >= max_depth_) {
      error_ = absl::StrCat("nesting deeper than ", max_depth_, " levels");
      return false;
    }
    json* slot = Put(std::move(container));
    stack_.push_back(Frame{slot, nullptr, {}});
    return true;
  }
  bool Close() {
    stack_.pop_back();
    return true;
  }

  json& root_;
  const int max_depth_;
  std::vector<Frame> stack_;
  std::string error_;
};

}  // namespace

std::string QuoteForMessage(std::string_view name) {
  return absl::StrCat("'", absl::CHexEscape(absl::string_view(name.data(), name.size())), "'");
}

absl::StatusOr<json> ParseStrictJson(std::string_view text, int max_depth) {
  // nlohmann's lexer treats a NUL byte as the end of input, which would hide whatever follows it.
  if (const void* nul = std::memchr(text.data(), 0, text.size()); nul != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("JSON contains a NUL byte at byte ", static_cast<const char*>(nul) - text.data()));
  }
  if (auto bad = FindInvalidUtf8(text)) {
    return absl::InvalidArgumentError(absl::StrCat("JSON is not valid UTF-8 at byte ", *bad));
  }
  json root;
  StrictDomBuilder builder(root, max_depth);
  bool ok = false;
  try {
    ok = json::sax_parse(text.begin(), text.end(), &builder, json::input_format_t::json, /*strict=*/true);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory while parsing JSON");
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON: ", e.what()));
  }
  if (!ok) {
    std::string error = builder.error().empty() ? "invalid JSON" : builder.error();
    return absl::InvalidArgumentError(absl::StrCat(error, " at ", builder.Path()));
  }
  return root;
}

}  // namespace fm
