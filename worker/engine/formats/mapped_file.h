// A read-only memory mapping of a whole file. Shared ownership lets tensors borrow its bytes without copying:
// the mapping lives as long as any holder of the shared_ptr (see TensorFromView in model/).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace fm {

class MappedFile {
 public:
  // NOT_FOUND if the file (or a directory on its path) is missing, PERMISSION_DENIED if it may not be read,
  // INVALID_ARGUMENT if it is not a regular file (directories, FIFOs, devices), INTERNAL on other open/mmap failures.
  // An empty file maps to size() == 0 and data() == nullptr.
  static absl::StatusOr<std::shared_ptr<const MappedFile>> Open(const std::string& path);
  // Wraps bytes already in memory (tests, fuzzing); the buffer is copied.
  static std::shared_ptr<const MappedFile> FromBytes(std::string bytes, std::string name);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::string path_;
  std::string owned_;  // backing store for FromBytes
};

}  // namespace fm
