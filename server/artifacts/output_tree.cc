#include "server/artifacts/output_tree.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include "server/artifacts/artifact_path.h"
#include "server/artifacts/fs_util.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/sha256.h"

namespace fm::server {
namespace {

using ::flashmorph::v1::ArtifactFile;

absl::StatusOr<ArtifactFile> HashFileAt(int dir, const std::string& name, const std::string& rel,
                                        const struct stat& expected, std::vector<char>* buffer) {
  int fd = ::openat(dir, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, StrCat(rel, ": open"));
  UniqueFd file(fd);
  struct stat st;
  if (::fstat(file.get(), &st) != 0) return ErrnoStatus(errno, StrCat(rel, ": stat"));
  if (!S_ISREG(st.st_mode) || st.st_ino != expected.st_ino || st.st_dev != expected.st_dev) {
    return absl::FailedPreconditionError(StrCat(rel, ": replaced while the output was being promoted"));
  }
  ::posix_fadvise(file.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  Sha256 hash;
  int64_t size = 0;
  while (true) {
    ssize_t r = ::read(file.get(), buffer->data(), buffer->size());
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, StrCat(rel, ": read"));
    }
    if (r == 0) break;
    hash.Update(buffer->data(), static_cast<size_t>(r));
    size += r;
  }
  struct stat after;
  if (::fstat(file.get(), &after) != 0) return ErrnoStatus(errno, StrCat(rel, ": stat"));
  if (size != st.st_size || after.st_size != st.st_size) {
    return absl::FailedPreconditionError(StrCat(rel, ": changed size while it was being hashed"));
  }
  ArtifactFile f;
  f.set_path(rel);
  f.set_size_bytes(size);
  f.set_sha256(hash.HexDigest());
  return f;
}

absl::Status Walk(int dir, const std::string& prefix, int depth, std::vector<char>* buffer,
                  std::vector<ArtifactFile>* files) {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(dir, prefix.empty() ? "." : prefix);
  if (!names.ok()) return names.status();
  for (const std::string& name : *names) {
    std::string rel = prefix.empty() ? name : StrCat(prefix, "/", name);
    if (absl::Status s = ValidateArtifactPath(rel); !s.ok()) return absl::FailedPreconditionError(s.message());
    struct stat st;
    if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      return ErrnoStatus(errno, StrCat(EscapeForMessage(rel), ": stat"));
    }
    if (S_ISLNK(st.st_mode)) {
      return absl::FailedPreconditionError(
          StrCat(EscapeForMessage(rel), ": is a symbolic link; an artifact holds only regular files"));
    }
    if (S_ISDIR(st.st_mode)) {
      if (depth + 1 >= kMaxTreeDepth) {
        return absl::FailedPreconditionError(
            StrCat(EscapeForMessage(rel), ": nested deeper than ", kMaxTreeDepth, " directories"));
      }
      int fd = ::openat(dir, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) return ErrnoStatus(errno, StrCat(EscapeForMessage(rel), ": open directory"));
      UniqueFd sub(fd);
      FM_RETURN_IF_ERROR(Walk(sub.get(), rel, depth + 1, buffer, files));
      continue;
    }
    if (!S_ISREG(st.st_mode)) {
      return absl::FailedPreconditionError(
          StrCat(EscapeForMessage(rel), ": not a regular file (device, FIFO or socket)"));
    }
    absl::StatusOr<ArtifactFile> f = HashFileAt(dir, name, rel, st, buffer);
    if (!f.ok()) return f.status();
    files->push_back(*std::move(f));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<ArtifactFile>> HashOutputTree(int dir) {
  std::vector<char> buffer(size_t{1} << 20);
  std::vector<ArtifactFile> files;
  FM_RETURN_IF_ERROR(Walk(dir, "", 0, &buffer, &files));
  std::sort(files.begin(), files.end(),
            [](const ArtifactFile& a, const ArtifactFile& b) { return a.path() < b.path(); });
  return files;
}

}  // namespace fm::server
