#include "worker/engine/formats/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace fm {
namespace {

absl::Status ErrnoStatus(int err, const std::string& what) {
  std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

std::string DirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

absl::Status SyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat(dir, ": cannot open directory"));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoStatus(err, absl::StrCat(dir, ": fsync"));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(const std::string& path) {
  if (path.empty() || path.back() == '/') {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': not a file path"));
  }
  std::string temp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat(path, ": cannot create ", temp));
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, std::move(temp), fd));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (!done_) Abandon();
}

void AtomicFileWriter::Abandon() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(temp_path_.c_str());
  done_ = true;
}

absl::Status AtomicFileWriter::Append(const void* data, size_t size) {
  if (done_) return absl::FailedPreconditionError(absl::StrCat(path_, ": write after commit or failure"));
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux write() moves at most ~2 GiB per call.
    ssize_t n = ::write(fd_, p, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status s = ErrnoStatus(errno, absl::StrCat(path_, ": write to ", temp_path_));
      Abandon();
      return s;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (done_) return absl::FailedPreconditionError(absl::StrCat(path_, ": commit after commit or failure"));
  if (::fsync(fd_) != 0) {
    absl::Status s = ErrnoStatus(errno, absl::StrCat(path_, ": fsync of ", temp_path_));
    Abandon();
    return s;
  }
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    absl::Status s = ErrnoStatus(errno, absl::StrCat(path_, ": close of ", temp_path_));
    Abandon();
    return s;
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    absl::Status s = ErrnoStatus(errno, absl::StrCat(path_, ": rename from ", temp_path_));
    Abandon();
    return s;
  }
  done_ = true;
  return SyncDirectory(DirOf(path_));
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  auto writer = AtomicFileWriter::Create(path);
  if (!writer.ok()) return writer.status();
  absl::Status s = (*writer)->Append(contents);
  if (!s.ok()) return s;
  return (*writer)->Commit();
}

}  // namespace fm
