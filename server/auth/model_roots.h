// The directories the server lets jobs read models and data from. Resolve() turns a user-supplied location (an
// absolute path or a file:///abs/path URI) into its canonical path (realpath: every symlink, "." and ".." resolved)
// and admits it only if that path is a root or lies inside one, comparing whole path components ("/models2" is not
// inside "/models"). So neither ".." nor a symlink under a root can reach outside it. The check happens on the
// lexically normalised path first, so a path outside every root is PERMISSION_DENIED whether it exists or not, and
// again on the canonical path. With no roots configured every path is PERMISSION_DENIED.
// The worker opens the path later; swapping a symlink in between is the deployment's concern (make roots
// writable only by trusted users). Thread-safe after construction (read-only).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fm::server {

class ModelRoots {
 public:
  // No roots: every Resolve() is PERMISSION_DENIED.
  ModelRoots() = default;

  // Canonicalises every root (each must be an absolute path to an existing directory): INVALID_ARGUMENT for a
  // relative path, NOT_FOUND / PERMISSION_DENIED / FAILED_PRECONDITION (not a directory) naming the root.
  static absl::StatusOr<ModelRoots> Create(const std::vector<std::string>& roots);

  // The canonical path of `uri` if it exists inside a root. `field` names the request field in messages.
  // INVALID_ARGUMENT: empty, relative, another URI scheme, a file:// URI with a host, NUL bytes.
  // NOT_FOUND: does not exist. PERMISSION_DENIED: outside every root, no roots, or not accessible.
  absl::StatusOr<std::string> Resolve(std::string_view uri, std::string_view field = "uri") const;

  // Canonical roots, in configuration order without duplicates.
  const std::vector<std::string>& roots() const { return canonical_; }
  bool empty() const { return canonical_.empty(); }

 private:
  std::vector<std::string> configured_;  // lexically normalised, as written
  std::vector<std::string> canonical_;
};

// True if `path` equals `root` or lies below it (whole components). Both must be normalised absolute paths.
bool PathIsWithin(std::string_view path, std::string_view root);

// "/a/./b//../c/" -> "/a/c": lexical normalisation of an absolute path (".." at "/" stays at "/").
std::string NormalizeAbsolutePath(std::string_view path);

}  // namespace fm::server
