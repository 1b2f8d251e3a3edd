// Descriptor-based file system helpers of the artifact store. Every walk goes one component at a time with
// openat(O_NOFOLLOW), so a symbolic link planted anywhere below a trusted directory descriptor is never followed;
// removal never follows links either. Errors are absl::Status values naming the path.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fm::server {

// Owns a file descriptor (closed on destruction). Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release();
  void Reset();

 private:
  int fd_ = -1;
};

// Maps an errno value to a canonical status: ENOENT -> NOT_FOUND; ENOTDIR, ELOOP, EISDIR, ENOTEMPTY, EEXIST ->
// FAILED_PRECONDITION; EACCES, EPERM, EROFS -> PERMISSION_DENIED; ENOSPC, EDQUOT, EMFILE, ENFILE ->
// RESOURCE_EXHAUSTED; anything else INTERNAL.
absl::Status ErrnoStatus(int err, std::string_view what);

// Opens the directory `path` (the last component must not be a symbolic link).
absl::StatusOr<UniqueFd> OpenDirectory(const std::string& path);

// Opens the directory `rel` ('/'-separated, relative) below `base`, one component at a time, following no symbolic
// link. With `create`, missing components are created (mode 0755). FAILED_PRECONDITION when a component is a
// symbolic link or not a directory; NOT_FOUND when one is missing and `create` is false.
absl::StatusOr<UniqueFd> OpenDirectoryBeneath(int base, std::string_view rel, bool create);

// Creates the directory `name` in `dir` unless it exists; OK when it already is a directory (not a link to one).
absl::Status MakeDirectoryAt(int dir, std::string_view name);

// Removes `name` in `dir` and, when it is a directory, everything below it, following no symbolic link. OK when
// `name` does not exist. FAILED_PRECONDITION for a tree deeper than kMaxTreeDepth.
absl::Status RemoveTreeAt(int dir, std::string_view name);

// Reads the whole regular file `name` in `dir` (not following a symbolic link), at most `max_bytes`
// (FAILED_PRECONDITION when larger).
absl::StatusOr<std::string> ReadSmallFileAt(int dir, std::string_view name, int64_t max_bytes);

// Names in the directory `dir` (without "." and ".."), in readdir order.
absl::StatusOr<std::vector<std::string>> ListDirectory(int dir, std::string_view what);

// fsyncs a descriptor (a directory after renames in it).
absl::Status SyncFd(int fd, std::string_view what);

// The message of `s` as a std::string_view (Debian's absl::string_view is a distinct type that fm::StrCat rejects).
inline std::string_view StatusMessage(const absl::Status& s) {
  return std::string_view(s.message().data(), s.message().size());
}

// Deepest directory nesting the store walks or removes.
inline constexpr int kMaxTreeDepth = 128;

}  // namespace fm::server
