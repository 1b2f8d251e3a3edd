// Validation of the names the artifact store accepts from callers: job ids and artifact file paths. A path that
// passes ValidateArtifactPath cannot leave the directory it is resolved in ("..", absolute paths and empty
// components are refused) and prints unambiguously in a `sha256sum` manifest line.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace fm::server {

// Longest artifact file path, in bytes.
inline constexpr size_t kMaxArtifactPathBytes = 512;

// OK for 1..64 bytes of [a-z0-9-]; INVALID_ARGUMENT otherwise.
absl::Status ValidateJobId(std::string_view job_id);

// OK for a relative '/'-separated path of at most kMaxArtifactPathBytes bytes of valid UTF-8 whose components are
// non-empty and not "." or "..", with no NUL, no other ASCII control character and no backslash (GNU sha256sum
// would escape those). INVALID_ARGUMENT naming the path otherwise.
absl::Status ValidateArtifactPath(std::string_view path);

// `s` with control characters, backslashes, quotes and non-ASCII bytes escaped as \xNN, for error messages.
std::string EscapeForMessage(std::string_view s);

}  // namespace fm::server
