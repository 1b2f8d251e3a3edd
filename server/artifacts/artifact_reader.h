// Reads one file of a promoted artifact. The file was opened without following any symbolic link and checked
// against the manifest (a regular file of the manifest's size), so every read returns bytes of that file even if
// its directory entry is replaced later. Thread-safe (pread).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "server/artifacts/fs_util.h"

namespace fm::server {

class ArtifactFileReader {
 public:
  // Most bytes one ReadAt returns.
  static constexpr int64_t kMaxReadBytes = int64_t{16} << 20;

  ArtifactFileReader(std::string path, UniqueFd file, int64_t size)
      : path_(std::move(path)), file_(std::move(file)), size_(size) {}

  // Up to min(max_bytes, kMaxReadBytes) bytes from `offset`; fewer only at the end of the file, empty when
  // offset == size() or max_bytes == 0. INVALID_ARGUMENT for a negative offset or max_bytes, OUT_OF_RANGE for an
  // offset past the end, DATA_LOSS if the file shrank.
  absl::StatusOr<std::string> ReadAt(int64_t offset, int64_t max_bytes) const;

  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;  // as in the manifest
  UniqueFd file_;
  int64_t size_;
};

}  // namespace fm::server
