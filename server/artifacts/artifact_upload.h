// One file being uploaded into an attempt's output (the UploadArtifact RPC). Bytes go to a temporary file outside
// the output folder; Finish() checks the declared SHA-256 and only then renames the file to its path inside the
// output, so a promoted output never holds a partial or corrupt upload. An upload destroyed before a successful
// Finish() (a broken stream) leaves nothing behind. Not thread-safe: one upload belongs to one stream.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "server/artifacts/fs_util.h"
#include "worker/engine/formats/sha256.h"

namespace fm::server {

class ArtifactUpload {
 public:
  ~ArtifactUpload();
  ArtifactUpload(const ArtifactUpload&) = delete;
  ArtifactUpload& operator=(const ArtifactUpload&) = delete;

  // Appends `data`; `write_offset` must equal bytes_written() (INVALID_ARGUMENT otherwise, the upload stays
  // usable). FAILED_PRECONDITION after Finish() or after a write error.
  absl::Status Append(int64_t write_offset, std::string_view data);

  // Ends the upload: `sha256_hex` must be the lowercase hex SHA-256 of all bytes (INVALID_ARGUMENT if malformed,
  // DATA_LOSS if different; either way the partial file is removed). On success the file is at its path in the
  // attempt output (replacing an earlier upload of the same path) and durable. FAILED_PRECONDITION when the path
  // collides with a directory, or a parent component with a file. The upload is over after any Finish().
  absl::Status Finish(std::string_view sha256_hex);

  int64_t bytes_written() const { return written_; }
  const std::string& path() const { return path_; }

 private:
  friend class ArtifactStore;
  ArtifactUpload(std::string path, UniqueFd output_dir, UniqueFd temp_dir, std::string temp_name, UniqueFd file)
      : path_(std::move(path)),
        output_dir_(std::move(output_dir)),
        temp_dir_(std::move(temp_dir)),
        temp_name_(std::move(temp_name)),
        file_(std::move(file)) {}
  void Abandon();

  std::string path_;       // relative to the attempt output
  UniqueFd output_dir_;    // <attempt>/output
  UniqueFd temp_dir_;      // <attempt>/uploads
  std::string temp_name_;  // name of the temporary file in temp_dir_
  UniqueFd file_;
  Sha256 hash_;
  int64_t written_ = 0;
  bool done_ = false;
};

}  // namespace fm::server
