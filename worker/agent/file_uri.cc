#include "worker/agent/file_uri.h"

#include "worker/engine/common/str_cat.h"

namespace fm::worker {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

absl::StatusOr<std::string> PathFromUri(std::string_view uri, std::string_view field) {
  auto bad = [&](std::string_view why) { return absl::InvalidArgumentError(StrCat(field, " '", uri, "': ", why)); };
  if (uri.empty()) return bad("is empty");
  std::string_view rest = uri;
  constexpr std::string_view kFile = "file://";
  const bool is_file_uri = rest.size() >= kFile.size() && rest.substr(0, kFile.size()) == kFile;
  if (is_file_uri) {
    rest.remove_prefix(kFile.size());
    const size_t slash = rest.find('/');
    if (slash == std::string_view::npos) return bad("a file:// URI needs an absolute path");
    const std::string_view host = rest.substr(0, slash);
    if (!host.empty() && host != "localhost") return bad("file:// URIs on other hosts are not supported");
    rest.remove_prefix(slash);
  } else if (const size_t colon = rest.find("://"); colon != std::string_view::npos) {
    return bad(StrCat("the scheme '", rest.substr(0, colon), "' is not supported (use a path or file://)"));
  }
  if (rest.empty() || rest.front() != '/') return bad("must be an absolute path or a file:// URI");
  std::string path;
  path.reserve(rest.size());
  for (size_t i = 0; i < rest.size(); ++i) {
    const char c = rest[i];
    if (c == '\0') return bad("contains a NUL byte");
    if (is_file_uri && c == '%') {
      if (i + 2 >= rest.size()) return bad("has a truncated percent-escape");
      const int hi = HexValue(rest[i + 1]), lo = HexValue(rest[i + 2]);
      if (hi < 0 || lo < 0) return bad("has a malformed percent-escape");
      const char decoded = static_cast<char>(hi * 16 + lo);
      if (decoded == '\0') return bad("contains a NUL byte");
      path.push_back(decoded);
      i += 2;
      continue;
    }
    path.push_back(c);
  }
  return path;
}

}  // namespace fm::worker
