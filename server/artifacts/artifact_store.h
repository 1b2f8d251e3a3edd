// flashmorphd's artifact store: the files of every job's attempts and of its promoted artifact, under one root
// directory (flashmorphd --data-dir/artifacts):
//   <root>/jobs/<id>/attempts/<n>/output   what attempt n exported (written in place by a shared-filesystem worker,
//                                          or file by file through BeginUpload)
//   <root>/jobs/<id>/attempts/<n>/uploads  temporary files of uploads in progress (never promoted)
//   <root>/jobs/<id>/work                  stage checkpoints shared by every attempt of the job
//   <root>/jobs/<id>/artifact              the promoted output: only the model's files
//   <root>/jobs/<id>/artifact.manifest     the manifest text ("<sha256>  <path>\n" per file, sha256sum format)
//   <root>/jobs/<id>/artifact.index        the store's record: promoted attempt, size and SHA-256 of every file
// Promotion hashes the attempt output (regular files and directories only: a symbolic link, device, FIFO or
// socket anywhere refuses it), writes manifest and index atomically, then renames the output to `artifact` in one
// rename(2). A crash at any point leaves either no artifact or a complete one, and promoting the same attempt again
// returns the same manifest. Reads open every component with O_NOFOLLOW and check the file against the manifest,
// so nothing outside the artifact is ever served. All methods are thread-safe; none follows a symbolic link below
// the root.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashmorph/v1/artifact.pb.h"
#include "server/artifacts/artifact_manifest.h"
#include "server/artifacts/artifact_reader.h"
#include "server/artifacts/artifact_upload.h"
#include "server/artifacts/fs_util.h"

namespace fm::server {

using ArtifactManifest = ::flashmorph::v1::ArtifactManifest;

// Absolute directories of one attempt.
struct AttemptPaths {
  std::string output_dir;  // <root>/jobs/<id>/attempts/<n>/output, empty and ready
  std::string work_dir;    // <root>/jobs/<id>/work, kept across attempts
};

class ArtifactStore {
 public:
  // Opens (creating if missing) the store at `root`. INVALID_ARGUMENT for an empty root.
  static absl::StatusOr<std::unique_ptr<ArtifactStore>> Open(std::string root);

  // Absolute, symbolic links resolved.
  const std::string& root() const { return root_; }

  // Creates attempt `attempt` (>= 1) of job `job_id`: an empty output folder (whatever an earlier, crashed try of
  // the same attempt left there is removed, uploads included) and the job's work folder (kept if present).
  // INVALID_ARGUMENT for a bad job id or attempt.
  absl::StatusOr<AttemptPaths> PrepareAttempt(std::string_view job_id, int attempt);

  // Promotes the attempt's output to the job's artifact and returns its manifest. FAILED_PRECONDITION (naming the
  // path) when the output is missing or empty, holds anything but regular files and directories, a path that
  // ValidateArtifactPath refuses, or is nested deeper than kMaxTreeDepth; also when the job's artifact was already
  // promoted from another attempt. Promoting the already promoted attempt again returns the stored manifest.
  absl::StatusOr<ArtifactManifest> Promote(std::string_view job_id, int attempt);

  // The manifest of the job's promoted artifact (read from the index, no file is hashed). NOT_FOUND if the job has
  // none; DATA_LOSS if the index is corrupt.
  absl::StatusOr<ArtifactManifest> GetManifest(std::string_view job_id);

  // Opens one file of the promoted artifact for ReadAt. NOT_FOUND if the job has no artifact or `path` is not in
  // its manifest (any "..", absolute or otherwise foreign path); DATA_LOSS if the file on disk is no longer the
  // manifest's (missing, replaced by a symbolic link or another kind of file, different size).
  absl::StatusOr<std::unique_ptr<ArtifactFileReader>> OpenFile(std::string_view job_id, std::string_view path);

  // OpenFile(job_id, path) then ReadAt(offset, max_bytes); argument errors (negative offset or max_bytes) come
  // first as INVALID_ARGUMENT.
  absl::StatusOr<std::string> Read(std::string_view job_id, std::string_view path, int64_t offset, int64_t max_bytes);

  // Starts uploading `path` into the attempt's output. INVALID_ARGUMENT for a bad job id, attempt or path
  // (ValidateArtifactPath); FAILED_PRECONDITION if the attempt was not prepared or its output was promoted already.
  absl::StatusOr<std::unique_ptr<ArtifactUpload>> BeginUpload(std::string_view job_id, int attempt,
                                                              std::string_view path);

  // Removes the attempt's folder (output, uploads). OK if it does not exist. Uploads still open fail at Finish().
  absl::Status DiscardAttempt(std::string_view job_id, int attempt);

  // Removes everything of the job (attempts, work, artifact). OK if it does not exist.
  absl::Status RemoveJob(std::string_view job_id);

 private:
  ArtifactStore(std::string root, UniqueFd jobs_dir, uint64_t nonce)
      : root_(std::move(root)), jobs_dir_(std::move(jobs_dir)), upload_nonce_(nonce) {}

  std::string JobPath(std::string_view job_id) const;
  // The index of a promoted artifact: from the cache, else from disk (then cached). NOT_FOUND if not promoted.
  absl::StatusOr<std::shared_ptr<const ArtifactIndex>> GetIndex(std::string_view job_id);
  // Reads the index from disk; requires mu_.
  absl::StatusOr<std::shared_ptr<const ArtifactIndex>> LoadIndexLocked(std::string_view job_id);
  void CacheIndex(std::string_view job_id, std::shared_ptr<const ArtifactIndex> index);

  const std::string root_;
  const UniqueFd jobs_dir_;      // <root>/jobs
  const uint64_t upload_nonce_;  // random per Open: temporary upload names never collide with a crashed run's
  std::atomic<uint64_t> upload_counter_{0};

  // Serializes changes to the tree (prepare, promote's commit, discard, remove) and cache fills.
  std::mutex mu_;
  std::mutex cache_mu_;  // guards cache_; taken after mu_ when both are held
  std::unordered_map<std::string, std::shared_ptr<const ArtifactIndex>> cache_;
};

}  // namespace fm::server
