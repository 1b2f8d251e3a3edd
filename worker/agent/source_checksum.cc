#include "worker/agent/source_checksum.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/ascii.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/sha256.h"

namespace fm::worker {
namespace {

namespace fs = std::filesystem;

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

absl::Status OpenError(const std::string& path, int err) {
  const std::string msg = StrCat("cannot read ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

}  // namespace

absl::StatusOr<std::string> SourceChecksum(const std::string& model_path, const std::function<bool()>& cancelled) {
  std::error_code ec;
  if (!fs::exists(model_path, ec)) return absl::NotFoundError(StrCat("model ", model_path, " does not exist"));
  std::vector<std::string> files;
  if (EndsWith(model_path, ".gguf")) {
    files.push_back(model_path);
  } else {
    for (const auto& e : fs::directory_iterator(model_path, ec)) {
      const std::string n = e.path().filename().string();
      if (n.size() > 12 && EndsWith(n, ".safetensors")) files.push_back(e.path().string());
    }
    if (ec) return OpenError(model_path, ec.value());
    std::sort(files.begin(), files.end());
  }
  fm::Sha256 sha;
  std::vector<char> buf(4 << 20);
  for (const std::string& f : files) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> in(std::fopen(f.c_str(), "rb"), &std::fclose);
    if (!in) return OpenError(f, errno);
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), in.get())) > 0) {
      if (cancelled && cancelled()) return absl::CancelledError("source checksum interrupted");
      sha.Update(buf.data(), n);
    }
    if (std::ferror(in.get())) return absl::InternalError(StrCat("error reading ", f));
  }
  return sha.HexDigest();
}

absl::Status VerifySourceChecksum(const std::string& model_path, const std::string& expected,
                                  const std::function<bool()>& cancelled) {
  if (expected.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> actual = SourceChecksum(model_path, cancelled);
  if (!actual.ok()) return actual.status();
  if (*actual != absl::AsciiStrToLower(expected))
    return absl::FailedPreconditionError(
        StrCat("spec.model.source_sha256: the checkpoint ", model_path, " has SHA-256 ", *actual, ", not ", expected));
  return absl::OkStatus();
}

}  // namespace fm::worker
