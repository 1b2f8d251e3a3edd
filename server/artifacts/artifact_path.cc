#include "server/artifacts/artifact_path.h"

#include "worker/engine/common/str_cat.h"
#include "worker/engine/common/utf8.h"

namespace fm::server {

std::string EscapeForMessage(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < s.size() && out.size() < 600; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c >= 0x7f || c == '\\' || c == '\'') {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (out.size() >= 600) out += "...";
  return out;
}

absl::Status ValidateJobId(std::string_view job_id) {
  bool ok = !job_id.empty() && job_id.size() <= 64;
  for (char c : job_id) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) ok = false;
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        StrCat("job id '", EscapeForMessage(job_id), "': expected 1-64 characters of [a-z0-9-]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateArtifactPath(std::string_view path) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(StrCat("artifact path '", EscapeForMessage(path), "': ", why));
  };
  if (path.empty()) return bad("empty");
  if (path.size() > kMaxArtifactPathBytes) return bad(StrCat("longer than ", kMaxArtifactPathBytes, " bytes"));
  if (path.front() == '/') return bad("absolute");
  for (char ch : path) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c == 0) return bad("contains NUL");
    if (c < 0x20 || c == 0x7f) return bad("contains a control character");
    if (c == '\\') return bad("contains a backslash");
  }
  if (!IsValidUtf8(path)) return bad("not valid UTF-8");
  size_t pos = 0;
  while (true) {
    size_t slash = path.find('/', pos);
    std::string_view comp = path.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
    if (comp.empty()) return bad("empty component");
    if (comp == "." || comp == "..") return bad("'.' or '..' component");
    if (slash == std::string_view::npos) break;
    pos = slash + 1;
  }
  return absl::OkStatus();
}

}  // namespace fm::server
