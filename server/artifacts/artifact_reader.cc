#include "server/artifacts/artifact_reader.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "worker/engine/common/str_cat.h"

namespace fm::server {

absl::StatusOr<std::string> ArtifactFileReader::ReadAt(int64_t offset, int64_t max_bytes) const {
  if (offset < 0) return absl::InvalidArgumentError(StrCat(path_, ": negative read offset ", offset));
  if (max_bytes < 0) return absl::InvalidArgumentError(StrCat(path_, ": negative read limit ", max_bytes));
  if (offset > size_) {
    return absl::OutOfRangeError(StrCat(path_, ": read offset ", offset, " is past the end (", size_, " bytes)"));
  }
  const int64_t n = std::min({max_bytes, size_ - offset, kMaxReadBytes});
  std::string out(static_cast<size_t>(n), '\0');
  size_t got = 0;
  while (got < out.size()) {
    ssize_t r = ::pread(file_.get(), out.data() + got, out.size() - got, static_cast<off_t>(offset + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, StrCat(path_, ": read"));
    }
    if (r == 0) return absl::DataLossError(StrCat(path_, ": file is shorter than in the manifest"));
    got += static_cast<size_t>(r);
  }
  return out;
}

}  // namespace fm::server
