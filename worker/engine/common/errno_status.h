// The canonical status of a failed open/realpath-style call: ENOENT/ENOTDIR NOT_FOUND, EACCES/EPERM
// PERMISSION_DENIED, ELOOP/ENAMETOOLONG INVALID_ARGUMENT, anything else INTERNAL. `message` should name the path.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace fm {

absl::Status PathErrnoStatus(int err, std::string message);

}  // namespace fm
