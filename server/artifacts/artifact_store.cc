#include "server/artifacts/artifact_store.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <random>
#include <system_error>
#include <utility>

#include "server/artifacts/artifact_path.h"
#include "server/artifacts/output_tree.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/atomic_file.h"

namespace fm::server {
namespace {

constexpr char kArtifactDir[] = "artifact";
constexpr char kManifestFile[] = "artifact.manifest";
constexpr char kIndexFile[] = "artifact.index";
constexpr int64_t kMaxIndexBytes = int64_t{64} << 20;
constexpr size_t kMaxCachedJobs = 4096;

absl::Status ValidateAttempt(int attempt) {
  if (attempt < 1) return absl::InvalidArgumentError(StrCat("attempt ", attempt, ": must be at least 1"));
  return absl::OkStatus();
}

// `s` with its message prefixed by `context`.
absl::Status WithContext(const absl::Status& s, std::string_view context) {
  return absl::Status(s.code(), StrCat(context, ": ", StatusMessage(s)));
}

// renameat that refuses to replace an existing `to` (RENAME_NOREPLACE where the file system supports it).
int RenameNoReplace(int from_dir, const char* from, int to_dir, const char* to) {
  int rc = ::renameat2(from_dir, from, to_dir, to, RENAME_NOREPLACE);
  if (rc == 0 || (errno != EINVAL && errno != ENOSYS)) return rc;
  struct stat st;
  if (::fstatat(to_dir, to, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    errno = EEXIST;
    return -1;
  }
  return ::renameat(from_dir, from, to_dir, to);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ArtifactStore>> ArtifactStore::Open(std::string root) {
  if (root.empty()) return absl::InvalidArgumentError("artifact store root: empty path");
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  if (ec) return ErrnoStatus(ec.value(), StrCat(root, ": cannot create the artifact store root"));
  char resolved[PATH_MAX];
  if (::realpath(root.c_str(), resolved) == nullptr) return ErrnoStatus(errno, StrCat(root, ": realpath"));
  std::string absolute(resolved);
  FM_ASSIGN_OR_RETURN(UniqueFd root_dir, OpenDirectory(absolute));
  absl::StatusOr<UniqueFd> jobs = OpenDirectoryBeneath(root_dir.get(), "jobs", /*create=*/true);
  if (!jobs.ok()) return WithContext(jobs.status(), absolute);
  uint64_t nonce = static_cast<uint64_t>(::getpid()) ^ static_cast<uint64_t>(::time(nullptr)) << 20;
  try {
    std::random_device random;
    nonce = (uint64_t{random()} << 32) ^ random();
  } catch (...) {  // no entropy source: the pid/time nonce is good enough for temporary file names
  }
  return std::unique_ptr<ArtifactStore>(new ArtifactStore(std::move(absolute), *std::move(jobs), nonce));
}

std::string ArtifactStore::JobPath(std::string_view job_id) const { return StrCat(root_, "/jobs/", job_id); }

absl::StatusOr<AttemptPaths> ArtifactStore::PrepareAttempt(std::string_view job_id, int attempt) {
  FM_RETURN_IF_ERROR(ValidateJobId(job_id));
  FM_RETURN_IF_ERROR(ValidateAttempt(attempt));
  const std::string job_path = JobPath(job_id);
  const std::string n = StrCat(attempt);
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<UniqueFd> job = OpenDirectoryBeneath(jobs_dir_.get(), job_id, /*create=*/true);
  if (!job.ok()) return WithContext(job.status(), StrCat(root_, "/jobs"));
  absl::StatusOr<UniqueFd> attempts = OpenDirectoryBeneath(job->get(), "attempts", /*create=*/true);
  if (!attempts.ok()) return WithContext(attempts.status(), job_path);
  const std::string attempts_path = StrCat(job_path, "/attempts");
  if (absl::Status s = RemoveTreeAt(attempts->get(), n); !s.ok()) return WithContext(s, attempts_path);
  absl::StatusOr<UniqueFd> output = OpenDirectoryBeneath(attempts->get(), StrCat(n, "/output"), /*create=*/true);
  if (!output.ok()) return WithContext(output.status(), attempts_path);
  if (absl::Status s = MakeDirectoryAt(job->get(), "work"); !s.ok()) return WithContext(s, job_path);
  FM_RETURN_IF_ERROR(SyncFd(attempts->get(), attempts_path));
  FM_RETURN_IF_ERROR(SyncFd(job->get(), job_path));
  return AttemptPaths{StrCat(attempts_path, "/", n, "/output"), StrCat(job_path, "/work")};
}

absl::StatusOr<std::shared_ptr<const ArtifactIndex>> ArtifactStore::LoadIndexLocked(std::string_view job_id) {
  const std::string job_path = JobPath(job_id);
  absl::StatusOr<UniqueFd> job = OpenDirectoryBeneath(jobs_dir_.get(), job_id, /*create=*/false);
  if (!job.ok()) {
    if (absl::IsNotFound(job.status())) return absl::NotFoundError(StrCat("jobs/", job_id, ": no artifact"));
    return WithContext(job.status(), StrCat(root_, "/jobs"));
  }
  struct stat st;
  if (::fstatat(job->get(), kArtifactDir, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return absl::NotFoundError(StrCat("jobs/", job_id, ": no artifact"));
    return ErrnoStatus(errno, StrCat(job_path, "/", kArtifactDir, ": stat"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::DataLossError(StrCat(job_path, "/", kArtifactDir, ": not a directory"));
  }
  absl::StatusOr<std::string> text = ReadSmallFileAt(job->get(), kIndexFile, kMaxIndexBytes);
  if (!text.ok()) {
    return absl::DataLossError(StrCat(job_path, ": artifact without a readable index: ", StatusMessage(text.status())));
  }
  FM_ASSIGN_OR_RETURN(ArtifactIndex index, ParseArtifactIndex(*text, job_id, StrCat(job_path, "/", kIndexFile)));
  return std::make_shared<const ArtifactIndex>(std::move(index));
}

void ArtifactStore::CacheIndex(std::string_view job_id, std::shared_ptr<const ArtifactIndex> index) {
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_.size() >= kMaxCachedJobs) cache_.clear();
  cache_[std::string(job_id)] = std::move(index);
}

absl::StatusOr<std::shared_ptr<const ArtifactIndex>> ArtifactStore::GetIndex(std::string_view job_id) {
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(std::string(job_id));
    if (it != cache_.end()) return it->second;
  }
  std::lock_guard<std::mutex> lock(mu_);  // no RemoveJob or Promote commit in between the read and the caching
  FM_ASSIGN_OR_RETURN(std::shared_ptr<const ArtifactIndex> index, LoadIndexLocked(job_id));
  CacheIndex(job_id, index);
  return index;
}

absl::StatusOr<ArtifactManifest> ArtifactStore::Promote(std::string_view job_id, int attempt) {
  FM_RETURN_IF_ERROR(ValidateJobId(job_id));
  FM_RETURN_IF_ERROR(ValidateAttempt(attempt));
  const std::string job_path = JobPath(job_id);
  const std::string n = StrCat(attempt);
  const std::string output_path = StrCat(job_path, "/attempts/", n, "/output");
  // An artifact that exists already: the same attempt again (idempotent) or a conflict.
  auto check_promoted = [&]() -> absl::StatusOr<std::shared_ptr<const ArtifactIndex>> {
    absl::StatusOr<std::shared_ptr<const ArtifactIndex>> existing = LoadIndexLocked(job_id);
    if (!existing.ok()) return existing.status();
    if ((*existing)->attempt != attempt) {
      return absl::FailedPreconditionError(StrCat("jobs/", job_id, ": artifact already promoted from attempt ",
                                                  (*existing)->attempt, ", not ", attempt));
    }
    CacheIndex(job_id, *existing);
    return existing;
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<std::shared_ptr<const ArtifactIndex>> existing = check_promoted();
    if (existing.ok()) return (*existing)->manifest;
    if (!absl::IsNotFound(existing.status())) return existing.status();
  }

  // Hash the output without holding the lock (multi-GB outputs take a while).
  absl::StatusOr<UniqueFd> job = OpenDirectoryBeneath(jobs_dir_.get(), job_id, /*create=*/false);
  absl::StatusOr<UniqueFd> attempt_dir =
      job.ok() ? OpenDirectoryBeneath(job->get(), StrCat("attempts/", n), /*create=*/false) : job.status();
  absl::StatusOr<UniqueFd> output =
      attempt_dir.ok() ? OpenDirectoryBeneath(attempt_dir->get(), "output", /*create=*/false) : attempt_dir.status();
  if (!output.ok()) {
    if (absl::IsNotFound(output.status())) {
      return absl::FailedPreconditionError(StrCat(output_path, ": attempt output does not exist"));
    }
    return WithContext(output.status(), output_path);
  }
  struct stat output_stat;
  if (::fstat(output->get(), &output_stat) != 0) return ErrnoStatus(errno, StrCat(output_path, ": stat"));
  absl::StatusOr<std::vector<flashmorph::v1::ArtifactFile>> files = HashOutputTree(output->get());
  if (!files.ok()) return WithContext(files.status(), output_path);
  if (files->empty()) return absl::FailedPreconditionError(StrCat(output_path, ": no file to promote"));
  ArtifactManifest manifest;
  for (auto& f : *files) *manifest.add_files() = std::move(f);
  FinishArtifactManifest(job_id, &manifest);

  std::lock_guard<std::mutex> lock(mu_);
  {
    absl::StatusOr<std::shared_ptr<const ArtifactIndex>> existing = check_promoted();
    if (existing.ok()) return (*existing)->manifest;
    if (!absl::IsNotFound(existing.status())) return existing.status();
  }
  // Manifest and index first: the rename below is the commit point, and nothing reads them without the artifact.
  FM_RETURN_IF_ERROR(WriteFileAtomically(StrCat(job_path, "/", kManifestFile), ArtifactManifestText(manifest)));
  FM_RETURN_IF_ERROR(WriteFileAtomically(StrCat(job_path, "/", kIndexFile), SerializeArtifactIndex(attempt, manifest)));
  if (RenameNoReplace(attempt_dir->get(), "output", job->get(), kArtifactDir) != 0) {
    return ErrnoStatus(errno, StrCat(output_path, ": rename to ", job_path, "/", kArtifactDir));
  }
  // The output's directory entry might have been swapped between hashing and the rename: check what moved.
  struct stat moved;
  if (::fstatat(job->get(), kArtifactDir, &moved, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(moved.st_mode) ||
      moved.st_ino != output_stat.st_ino || moved.st_dev != output_stat.st_dev) {
    RemoveTreeAt(job->get(), kArtifactDir).IgnoreError();
    return absl::FailedPreconditionError(StrCat(output_path, ": replaced while it was being promoted"));
  }
  FM_RETURN_IF_ERROR(SyncFd(attempt_dir->get(), StrCat(job_path, "/attempts/", n)));
  FM_RETURN_IF_ERROR(SyncFd(job->get(), job_path));
  CacheIndex(job_id, std::make_shared<const ArtifactIndex>(ArtifactIndex{attempt, manifest}));
  return manifest;
}

absl::StatusOr<ArtifactManifest> ArtifactStore::GetManifest(std::string_view job_id) {
  FM_RETURN_IF_ERROR(ValidateJobId(job_id));
  FM_ASSIGN_OR_RETURN(std::shared_ptr<const ArtifactIndex> index, GetIndex(job_id));
  return index->manifest;
}

absl::StatusOr<std::unique_ptr<ArtifactFileReader>> ArtifactStore::OpenFile(std::string_view job_id,
                                                                            std::string_view path) {
  FM_RETURN_IF_ERROR(ValidateJobId(job_id));
  FM_ASSIGN_OR_RETURN(std::shared_ptr<const ArtifactIndex> index, GetIndex(job_id));
  const auto& files = index->manifest.files();
  auto it = std::lower_bound(files.begin(), files.end(), path,
                             [](const flashmorph::v1::ArtifactFile& f, std::string_view p) { return f.path() < p; });
  if (it == files.end() || it->path() != path) {
    return absl::NotFoundError(StrCat("jobs/", job_id, ": the artifact has no file '", EscapeForMessage(path), "'"));
  }
  const std::string shown = StrCat(JobPath(job_id), "/", kArtifactDir, "/", it->path());
  // Anything unexpected on the way is damage to a promoted artifact.
  auto damaged = [&](const absl::Status& s) {
    if (absl::IsNotFound(s) || absl::IsFailedPrecondition(s)) {
      return absl::DataLossError(StrCat(shown, ": ", StatusMessage(s)));
    }
    return WithContext(s, shown);
  };
  size_t slash = it->path().rfind('/');
  std::string dir_rel = StrCat(job_id, "/", kArtifactDir);
  if (slash != std::string::npos) dir_rel += StrCat("/", std::string_view(it->path()).substr(0, slash));
  std::string name = slash == std::string::npos ? it->path() : it->path().substr(slash + 1);
  absl::StatusOr<UniqueFd> dir = OpenDirectoryBeneath(jobs_dir_.get(), dir_rel, /*create=*/false);
  if (!dir.ok()) return damaged(dir.status());
  int fd = ::openat(dir->get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return damaged(ErrnoStatus(errno, "open"));
  UniqueFd file(fd);
  struct stat st;
  if (::fstat(file.get(), &st) != 0) return ErrnoStatus(errno, StrCat(shown, ": stat"));
  if (!S_ISREG(st.st_mode) || st.st_size != it->size_bytes()) {
    return absl::DataLossError(StrCat(shown, ": no longer the file of the manifest (", it->size_bytes(), " bytes)"));
  }
  return std::make_unique<ArtifactFileReader>(it->path(), std::move(file), it->size_bytes());
}

absl::StatusOr<std::string> ArtifactStore::Read(std::string_view job_id, std::string_view path, int64_t offset,
                                                int64_t max_bytes) {
  if (offset < 0) return absl::InvalidArgumentError(StrCat("read offset ", offset, ": negative"));
  if (max_bytes < 0) return absl::InvalidArgumentError(StrCat("read limit ", max_bytes, ": negative"));
  FM_ASSIGN_OR_RETURN(std::unique_ptr<ArtifactFileReader> reader, OpenFile(job_id, path));
  return reader->ReadAt(offset, max_bytes);
}

absl::StatusOr<std::unique_ptr<ArtifactUpload>> ArtifactStore::BeginUpload(std::string_view job_id, int attempt,
                                                                           std::string_view path) {
  FM_RETURN_IF_ERROR(ValidateJobId(job_id));
  FM_RETURN_IF_ERROR(ValidateAttempt(attempt));
  FM_RETURN_IF_ERROR(ValidateArtifactPath(path));
  const std::string attempt_rel = StrCat(job_id, "/attempts/", attempt);
  const std::string attempt_path = StrCat(root_, "/jobs/", attempt_rel);
  absl::StatusOr<UniqueFd> attempt_dir = OpenDirectoryBeneath(jobs_dir_.get(), attempt_rel, /*create=*/false);
  absl::StatusOr<UniqueFd> output =
      attempt_dir.ok() ? OpenDirectoryBeneath(attempt_dir->get(), "output", /*create=*/false) : attempt_dir.status();
  if (!output.ok()) {
    if (absl::IsNotFound(output.status())) {
      return absl::FailedPreconditionError(
          StrCat(attempt_path, "/output: does not exist (attempt not prepared, discarded or already promoted)"));
    }
    return WithContext(output.status(), attempt_path);
  }
  absl::StatusOr<UniqueFd> uploads = OpenDirectoryBeneath(attempt_dir->get(), "uploads", /*create=*/true);
  if (!uploads.ok()) return WithContext(uploads.status(), attempt_path);
  std::string temp_name = StrCat(upload_nonce_, "-", upload_counter_.fetch_add(1), ".part");
  int fd = ::openat(uploads->get(), temp_name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, StrCat(attempt_path, "/uploads/", temp_name, ": create"));
  return std::unique_ptr<ArtifactUpload>(new ArtifactUpload(std::string(path), *std::move(output), *std::move(uploads),
                                                            std::move(temp_name), UniqueFd(fd)));
}

absl::Status ArtifactStore::DiscardAttempt(std::string_view job_id, int attempt) {
  FM_RETURN_IF_ERROR(ValidateJobId(job_id));
  FM_RETURN_IF_ERROR(ValidateAttempt(attempt));
  const std::string attempts_path = StrCat(JobPath(job_id), "/attempts");
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<UniqueFd> attempts =
      OpenDirectoryBeneath(jobs_dir_.get(), StrCat(job_id, "/attempts"), /*create=*/false);
  if (!attempts.ok()) {
    if (absl::IsNotFound(attempts.status())) return absl::OkStatus();
    return WithContext(attempts.status(), attempts_path);
  }
  if (absl::Status s = RemoveTreeAt(attempts->get(), StrCat(attempt)); !s.ok()) return WithContext(s, attempts_path);
  return SyncFd(attempts->get(), attempts_path);
}

absl::Status ArtifactStore::RemoveJob(std::string_view job_id) {
  FM_RETURN_IF_ERROR(ValidateJobId(job_id));
  std::lock_guard<std::mutex> lock(mu_);
  {
    std::lock_guard<std::mutex> cache_lock(cache_mu_);
    cache_.erase(std::string(job_id));
  }
  if (absl::Status s = RemoveTreeAt(jobs_dir_.get(), job_id); !s.ok()) return WithContext(s, StrCat(root_, "/jobs"));
  return SyncFd(jobs_dir_.get(), StrCat(root_, "/jobs"));
}

}  // namespace fm::server
