#include "server/artifacts/fs_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "worker/engine/common/str_cat.h"

namespace fm::server {
namespace {

constexpr int kDirFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;

absl::Status RemoveTreeImpl(int dir, const std::string& name, int depth) {
  struct stat st;
  if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(errno, StrCat(name, ": stat"));
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlinkat(dir, name.c_str(), 0) != 0 && errno != ENOENT) {
      return ErrnoStatus(errno, StrCat(name, ": unlink"));
    }
    return absl::OkStatus();
  }
  if (depth >= kMaxTreeDepth) {
    return absl::FailedPreconditionError(StrCat(name, ": directory tree deeper than ", kMaxTreeDepth, " levels"));
  }
  int fd = ::openat(dir, name.c_str(), kDirFlags);
  if (fd < 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(errno, StrCat(name, ": open directory"));
  }
  UniqueFd sub(fd);
  absl::StatusOr<std::vector<std::string>> children = ListDirectory(sub.get(), name);
  if (!children.ok()) return children.status();
  for (const std::string& child : *children) {
    absl::Status s = RemoveTreeImpl(sub.get(), child, depth + 1);
    if (!s.ok()) return absl::Status(s.code(), StrCat(name, "/", StatusMessage(s)));
  }
  if (::unlinkat(dir, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, StrCat(name, ": rmdir"));
  }
  return absl::OkStatus();
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    Reset();
    fd_ = other.Release();
  }
  return *this;
}

int UniqueFd::Release() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

absl::Status ErrnoStatus(int err, std::string_view what) {
  std::string msg = StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case ENOTDIR:
    case ELOOP:
    case EISDIR:
    case ENOTEMPTY:
    case EEXIST:
      return absl::FailedPreconditionError(msg);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<UniqueFd> OpenDirectory(const std::string& path) {
  int fd = ::open(path.c_str(), kDirFlags);
  if (fd < 0) return ErrnoStatus(errno, StrCat(path, ": open directory"));
  return UniqueFd(fd);
}

absl::Status MakeDirectoryAt(int dir, std::string_view name) {
  std::string n(name);
  if (::mkdirat(dir, n.c_str(), 0755) == 0) return absl::OkStatus();
  if (errno != EEXIST) return ErrnoStatus(errno, StrCat(n, ": mkdir"));
  struct stat st;
  if (::fstatat(dir, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return ErrnoStatus(errno, StrCat(n, ": stat"));
  if (!S_ISDIR(st.st_mode)) return absl::FailedPreconditionError(StrCat(n, ": exists and is not a directory"));
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> OpenDirectoryBeneath(int base, std::string_view rel, bool create) {
  int first = ::fcntl(base, F_DUPFD_CLOEXEC, 0);
  if (first < 0) return ErrnoStatus(errno, "dup");
  UniqueFd cur(first);
  size_t pos = 0;
  while (pos < rel.size()) {
    size_t slash = rel.find('/', pos);
    if (slash == std::string_view::npos) slash = rel.size();
    std::string comp(rel.substr(pos, slash - pos));
    std::string shown(rel.substr(0, slash));
    if (comp.empty() || comp == "." || comp == "..") {
      return absl::InvalidArgumentError(StrCat("'", rel, "': bad path component"));
    }
    if (create) {
      absl::Status s = MakeDirectoryAt(cur.get(), comp);
      if (!s.ok()) return absl::Status(s.code(), StrCat(shown, ": ", StatusMessage(s)));
    }
    int fd = ::openat(cur.get(), comp.c_str(), kDirFlags);
    if (fd < 0) {
      if (errno == ELOOP || errno == ENOTDIR) {
        return absl::FailedPreconditionError(StrCat(shown, ": not a directory (or a symbolic link)"));
      }
      return ErrnoStatus(errno, StrCat(shown, ": open directory"));
    }
    cur = UniqueFd(fd);
    pos = slash + 1;
  }
  return cur;
}

absl::StatusOr<std::vector<std::string>> ListDirectory(int dir, std::string_view what) {
  int fd = ::fcntl(dir, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, StrCat(what, ": dup"));
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, StrCat(what, ": fdopendir"));
  }
  ::rewinddir(d);  // the duplicate shares its offset with `dir`
  std::vector<std::string> names;
  while (true) {
    errno = 0;
    struct dirent* e = ::readdir(d);
    if (e == nullptr) {
      int err = errno;
      ::closedir(d);
      if (err != 0) return ErrnoStatus(err, StrCat(what, ": readdir"));
      return names;
    }
    std::string_view n(e->d_name);
    if (n == "." || n == "..") continue;
    names.emplace_back(n);
  }
}

absl::Status RemoveTreeAt(int dir, std::string_view name) { return RemoveTreeImpl(dir, std::string(name), 0); }

absl::StatusOr<std::string> ReadSmallFileAt(int dir, std::string_view name, int64_t max_bytes) {
  std::string n(name);
  int fd = ::openat(dir, n.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, StrCat(n, ": open"));
  UniqueFd file(fd);
  struct stat st;
  if (::fstat(file.get(), &st) != 0) return ErrnoStatus(errno, StrCat(n, ": stat"));
  if (!S_ISREG(st.st_mode)) return absl::FailedPreconditionError(StrCat(n, ": not a regular file"));
  if (st.st_size > max_bytes) {
    return absl::FailedPreconditionError(StrCat(n, ": ", st.st_size, " bytes, more than ", max_bytes));
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < out.size()) {
    ssize_t r = ::pread(file.get(), out.data() + got, out.size() - got, static_cast<off_t>(got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, StrCat(n, ": read"));
    }
    if (r == 0) return absl::DataLossError(StrCat(n, ": shorter than its size"));
    got += static_cast<size_t>(r);
  }
  return out;
}

absl::Status SyncFd(int fd, std::string_view what) {
  if (::fsync(fd) != 0) return ErrnoStatus(errno, StrCat(what, ": fsync"));
  return absl::OkStatus();
}

}  // namespace fm::server
