// Hashing of an attempt's output tree for promotion: every regular file's path, size and SHA-256 (files streamed in
// 1 MiB reads, never loaded whole), without following any symbolic link.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "flashmorph/v1/artifact.pb.h"

namespace fm::server {

// Files below the directory `dir`, sorted by path (byte order). FAILED_PRECONDITION naming the path for a
// symbolic link, device, FIFO or socket, a path ValidateArtifactPath refuses, a tree deeper than kMaxTreeDepth, or
// a file that changes while it is hashed. Empty directories are skipped (an empty result is not an error here).
absl::StatusOr<std::vector<flashmorph::v1::ArtifactFile>> HashOutputTree(int dir);

}  // namespace fm::server
