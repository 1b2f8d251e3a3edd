// Sends an attempt's output directory to the server with WorkerService.UploadArtifact, for workers without the
// server's filesystem: one stream per file, chunks of at most 1 MiB at increasing write_offset, the file's SHA-256
// on the last message. A broken stream (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, DATA_LOSS) restarts the
// file at offset 0, a few times; ABORTED (stale lease) is returned at once and never retried.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashmorph/v1/worker_service.grpc.pb.h"

namespace fm::worker {

struct UploadOptions {
  std::string lease_id;
  std::string bearer_token;
  size_t chunk_bytes = 1 << 20;
  int max_attempts = 3;                           // per file
  std::chrono::milliseconds base_timeout{30000};  // per file, plus one second per MiB
};

// Regular files under `dir`, as '/'-separated paths relative to it, sorted.
absl::StatusOr<std::vector<std::string>> ListFiles(const std::string& dir);

// Uploads one file as `artifact_path`.
absl::Status UploadFile(flashmorph::v1::WorkerService::StubInterface* stub, const std::string& local_path,
                        const std::string& artifact_path, const UploadOptions& options,
                        const std::function<bool()>& abandon);

// Uploads every file of ListFiles(dir). `abandon` is polled between chunks; when it turns true the upload stops
// with CANCELLED.
absl::Status UploadDirectory(flashmorph::v1::WorkerService::StubInterface* stub, const std::string& dir,
                             const UploadOptions& options, const std::function<bool()>& abandon);

}  // namespace fm::worker
