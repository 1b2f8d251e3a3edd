#include "worker/engine/common/errno_status.h"

#include <cerrno>

namespace fm {

absl::Status PathErrnoStatus(int err, std::string message) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ELOOP:
    case ENAMETOOLONG:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace fm
