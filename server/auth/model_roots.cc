#include "server/auth/model_roots.h"

#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "worker/engine/common/errno_status.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/json_strict.h"

namespace fm::server {
namespace {

// realpath() with errno mapped to a status; `what` names the path in messages.
absl::StatusOr<std::string> RealPath(const std::string& path, std::string_view what) {
  std::unique_ptr<char, decltype(&std::free)> resolved(::realpath(path.c_str(), nullptr), &std::free);
  if (resolved != nullptr) return std::string(resolved.get());
  int err = errno;
  return PathErrnoStatus(err, StrCat(what, ": ", std::strerror(err)));
}

constexpr std::string_view kNoRoots =
    "no model roots are configured: set model_roots in the auth config or pass --model-root";

}  // namespace

std::string NormalizeAbsolutePath(std::string_view path) {
  std::vector<std::string_view> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view part = path.substr(i, j - i);
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    i = j + 1;
  }
  std::string out;
  for (std::string_view p : parts) out += StrCat("/", p);
  return out.empty() ? "/" : out;
}

bool PathIsWithin(std::string_view path, std::string_view root) {
  if (root == "/") return !path.empty() && path[0] == '/';
  if (!path.starts_with(root)) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

absl::StatusOr<ModelRoots> ModelRoots::Create(const std::vector<std::string>& roots) {
  ModelRoots out;
  for (const std::string& root : roots) {
    std::string what = StrCat("model root ", QuoteForMessage(root));
    if (root.empty() || root[0] != '/' || root.find('\0') != std::string::npos)
      return absl::InvalidArgumentError(StrCat(what, ": must be an absolute path"));
    auto canonical = RealPath(root, what);
    if (!canonical.ok()) return canonical.status();
    struct stat st;
    if (::stat(canonical->c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      return absl::FailedPreconditionError(StrCat(what, ": not a directory"));
    bool dup = false;
    for (const std::string& c : out.canonical_) dup = dup || c == *canonical;
    if (!dup) out.canonical_.push_back(*canonical);
    out.configured_.push_back(NormalizeAbsolutePath(root));
  }
  return out;
}

absl::StatusOr<std::string> ModelRoots::Resolve(std::string_view uri, std::string_view field) const {
  auto invalid = [&](std::string_view what) { return absl::InvalidArgumentError(StrCat(field, ": ", what)); };
  if (uri.empty()) return invalid("required");
  if (uri.find('\0') != std::string_view::npos) return invalid("contains a NUL byte");
  std::string_view path = uri;
  if (path.starts_with("file://")) {
    path.remove_prefix(7);
    if (path.empty() || path[0] != '/')
      return invalid(StrCat("file URI ", QuoteForMessage(uri), " must be file:///absolute/path (no host)"));
  } else if (size_t colon = path.find(':'); colon != std::string_view::npos && path[0] != '/') {
    return invalid(StrCat("unsupported URI scheme ", QuoteForMessage(path.substr(0, colon)),
                          " (use an absolute path or a file:// URI)"));
  }
  if (path.empty() || path[0] != '/')
    return invalid(StrCat(QuoteForMessage(uri), " is not an absolute path or a file:// URI"));
  if (canonical_.empty()) return absl::PermissionDeniedError(StrCat(field, ": ", kNoRoots));

  const std::string outside = StrCat(field, ": ", QuoteForMessage(uri), " is outside every model root (allowed: ");
  auto denied = [&]() {
    std::string list;
    for (const std::string& r : canonical_) list += StrCat(list.empty() ? "" : ", ", r);
    return absl::PermissionDeniedError(StrCat(outside, list, ")"));
  };
  // Lexical pre-check (configured or canonical spelling of a root): keeps existence outside the roots secret.
  const std::string lexical = NormalizeAbsolutePath(path);
  bool lexically_inside = false;
  for (const std::string& r : configured_) lexically_inside = lexically_inside || PathIsWithin(lexical, r);
  for (const std::string& r : canonical_) lexically_inside = lexically_inside || PathIsWithin(lexical, r);
  if (!lexically_inside) return denied();

  auto canonical = RealPath(std::string(path), StrCat(field, ": ", QuoteForMessage(uri)));
  if (!canonical.ok()) return canonical.status();
  for (const std::string& r : canonical_) {
    if (PathIsWithin(*canonical, r)) return *canonical;
  }
  return denied();
}

}  // namespace fm::server
