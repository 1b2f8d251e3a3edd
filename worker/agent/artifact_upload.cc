#include "worker/agent/artifact_upload.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <thread>

#include "worker/agent/rpc_util.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/sha256.h"

namespace fm::worker {
namespace {

namespace fs = std::filesystem;
namespace pb = ::flashmorph::v1;

absl::Status UploadOnce(pb::WorkerService::StubInterface* stub, const std::string& local_path,
                        const std::string& artifact_path, const UploadOptions& options,
                        const std::function<bool()>& abandon) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(local_path, ec);
  if (ec) return absl::InternalError(StrCat("cannot stat ", local_path, ": ", ec.message()));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> in(std::fopen(local_path.c_str(), "rb"), &std::fclose);
  if (!in) return absl::InternalError(StrCat("cannot open ", local_path, ": ", std::strerror(errno)));

  const auto timeout = options.base_timeout + std::chrono::milliseconds(static_cast<int64_t>(size >> 20) * 1000);
  std::unique_ptr<grpc::ClientContext> ctx = NewClientContext(options.bearer_token, timeout);
  pb::UploadArtifactResponse response;
  std::unique_ptr<grpc::ClientWriterInterface<pb::UploadArtifactRequest>> writer =
      stub->UploadArtifact(ctx.get(), &response);
  fm::Sha256 sha;
  std::string chunk(std::max<size_t>(1, options.chunk_bytes), '\0');
  uint64_t offset = 0;
  bool first = true, broken = false;
  while (true) {
    if (abandon && abandon()) {
      ctx->TryCancel();
      writer->Finish();
      return absl::CancelledError(StrCat("upload of ", artifact_path, " abandoned"));
    }
    const size_t want = static_cast<size_t>(std::min<uint64_t>(chunk.size(), size - offset));
    const size_t got = want == 0 ? 0 : std::fread(chunk.data(), 1, want, in.get());
    if (got != want) {
      ctx->TryCancel();
      writer->Finish();
      return absl::InternalError(StrCat("short read of ", local_path, " (did it change during the upload?)"));
    }
    sha.Update(chunk.data(), got);
    pb::UploadArtifactRequest req;
    if (first) {
      req.set_lease_id(options.lease_id);
      req.set_path(artifact_path);
    }
    req.set_write_offset(static_cast<int64_t>(offset));
    req.set_data(chunk.data(), got);
    offset += got;
    const bool last = offset == size;
    if (last) {
      req.set_finish_write(true);
      req.set_sha256(sha.HexDigest());
    }
    first = false;
    if (!writer->Write(req)) {
      broken = true;
      break;
    }
    if (last) break;
  }
  if (!broken) writer->WritesDone();
  absl::Status status = FromGrpc(writer->Finish());
  if (status.ok() && response.committed_size_bytes() != static_cast<int64_t>(size))
    return absl::DataLossError(StrCat("upload of ", artifact_path, ": the server stored ",
                                      response.committed_size_bytes(), " of ", size, " bytes"));
  if (status.ok() && broken) return absl::UnavailableError(StrCat("upload of ", artifact_path, " broke off"));
  return status;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ListFiles(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, ec), end;
  if (ec) return absl::InternalError(StrCat("cannot list ", dir, ": ", ec.message()));
  for (; it != end; it.increment(ec)) {
    if (ec) return absl::InternalError(StrCat("cannot list ", dir, ": ", ec.message()));
    if (it->is_regular_file(ec)) files.push_back(fs::relative(it->path(), dir, ec).generic_string());
  }
  if (ec) return absl::InternalError(StrCat("cannot list ", dir, ": ", ec.message()));
  std::sort(files.begin(), files.end());
  return files;
}

absl::Status UploadFile(pb::WorkerService::StubInterface* stub, const std::string& local_path,
                        const std::string& artifact_path, const UploadOptions& options,
                        const std::function<bool()>& abandon) {
  absl::Status status;
  for (int attempt = 1; attempt <= std::max(1, options.max_attempts); ++attempt) {
    status = UploadOnce(stub, local_path, artifact_path, options, abandon);
    if (status.ok() || status.code() == absl::StatusCode::kAborted || status.code() == absl::StatusCode::kCancelled)
      return status;
    if (!IsTransient(status.code()) && status.code() != absl::StatusCode::kDataLoss) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(100 * attempt));
  }
  return status;
}

absl::Status UploadDirectory(pb::WorkerService::StubInterface* stub, const std::string& dir,
                             const UploadOptions& options, const std::function<bool()>& abandon) {
  absl::StatusOr<std::vector<std::string>> files = ListFiles(dir);
  if (!files.ok()) return files.status();
  for (const std::string& rel : *files) {
    absl::Status s = UploadFile(stub, (fs::path(dir) / rel).string(), rel, options, abandon);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace fm::worker
