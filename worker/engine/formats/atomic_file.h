// Atomic file replacement: bytes go to `<path>.tmp.<pid>`, which is fsynced, renamed over `path`, and then the
// directory is fsynced. Readers see the old file or the complete new one, never a partial file; a writer that is
// destroyed without Commit() (an error on the way) removes its temporary file.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fm {

class AtomicFileWriter {
 public:
  // Creates the temporary file. NOT_FOUND if the directory of `path` does not exist.
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Create(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  absl::Status Append(const void* data, size_t size);
  absl::Status Append(std::string_view bytes) { return Append(bytes.data(), bytes.size()); }
  // fsync, close, rename to the final path, fsync the directory. After an error the temporary file is gone.
  absl::Status Commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  AtomicFileWriter(std::string path, std::string temp_path, int fd)
      : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}
  void Abandon();

  std::string path_;
  std::string temp_path_;
  int fd_;
  bool done_ = false;
};

// Writes `contents` to `path` through an AtomicFileWriter.
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

// fsyncs the directory `dir` so that renames and unlinks in it are durable.
absl::Status SyncDirectory(const std::string& dir);

}  // namespace fm
