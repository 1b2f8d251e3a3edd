#include "server/artifacts/artifact_upload.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "worker/engine/common/str_cat.h"

namespace fm::server {

ArtifactUpload::~ArtifactUpload() {
  if (!done_) Abandon();
}

void ArtifactUpload::Abandon() {
  file_.Reset();
  ::unlinkat(temp_dir_.get(), temp_name_.c_str(), 0);
  done_ = true;
}

absl::Status ArtifactUpload::Append(int64_t write_offset, std::string_view data) {
  if (done_) return absl::FailedPreconditionError(StrCat("upload of '", path_, "': already finished or failed"));
  if (write_offset != written_) {
    return absl::InvalidArgumentError(
        StrCat("upload of '", path_, "': write_offset ", write_offset, ", expected ", written_));
  }
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(file_.get(), p, std::min<size_t>(left, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status s = ErrnoStatus(errno, StrCat("upload of '", path_, "': write"));
      Abandon();
      return s;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  hash_.Update(data);
  written_ += static_cast<int64_t>(data.size());
  return absl::OkStatus();
}

absl::Status ArtifactUpload::Finish(std::string_view sha256_hex) {
  if (done_) return absl::FailedPreconditionError(StrCat("upload of '", path_, "': already finished or failed"));
  const std::string what = StrCat("upload of '", path_, "'");
  bool well_formed = sha256_hex.size() == 64 && std::all_of(sha256_hex.begin(), sha256_hex.end(), [](char c) {
                       return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                     });
  if (!well_formed) {
    Abandon();
    return absl::InvalidArgumentError(StrCat(what, ": sha256 must be 64 lowercase hex digits"));
  }
  std::string actual = hash_.HexDigest();
  if (actual != sha256_hex) {
    Abandon();
    return absl::DataLossError(
        StrCat(what, ": received ", written_, " bytes with SHA-256 ", actual, ", declared ", sha256_hex));
  }
  if (::fsync(file_.get()) != 0) {
    absl::Status s = ErrnoStatus(errno, StrCat(what, ": fsync"));
    Abandon();
    return s;
  }
  if (::close(file_.Release()) != 0) {
    absl::Status s = ErrnoStatus(errno, StrCat(what, ": close"));
    Abandon();
    return s;
  }
  size_t slash = path_.rfind('/');
  std::string parent = slash == std::string::npos ? std::string() : path_.substr(0, slash);
  std::string name = slash == std::string::npos ? path_ : path_.substr(slash + 1);
  absl::StatusOr<UniqueFd> dir = OpenDirectoryBeneath(output_dir_.get(), parent, /*create=*/true);
  if (!dir.ok()) {
    Abandon();
    return absl::Status(dir.status().code(), StrCat(what, ": ", StatusMessage(dir.status())));
  }
  if (::renameat(temp_dir_.get(), temp_name_.c_str(), dir->get(), name.c_str()) != 0) {
    absl::Status s = ErrnoStatus(errno, StrCat(what, ": rename into the attempt output"));
    Abandon();
    return s;
  }
  done_ = true;
  return SyncFd(dir->get(), what);
}

}  // namespace fm::server
