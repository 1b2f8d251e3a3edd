// `flashmorph download`: the artifact of a SUCCEEDED job, file by file, resumable and checked against the manifest.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>

#include "client/cli/commands.h"
#include "flashmorph/v1/conversion_service.grpc.pb.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/atomic_file.h"
#include "worker/engine/formats/sha256.h"

namespace fm::client {
namespace {

namespace fs = std::filesystem;

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// Feeds the bytes of `path` into `hash`; returns how many there were.
absl::StatusOr<int64_t> HashFile(const std::string& path, Sha256& hash) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(StrCat(path, ": cannot open"));
  std::vector<char> buf(1 << 20);
  int64_t total = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    hash.Update(buf.data(), static_cast<size_t>(n));
    total += n;
  }
  if (in.bad()) return absl::DataLossError(StrCat(path, ": read error"));
  return total;
}

// True if `path` is a regular file of `size` bytes whose SHA-256 is `sha256`.
bool IsComplete(const std::string& path, int64_t size, const std::string& sha256) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec) || static_cast<int64_t>(fs::file_size(path, ec)) != size || ec) return false;
  Sha256 h;
  auto n = HashFile(path, h);
  return n.ok() && *n == size && h.HexDigest() == sha256;
}

class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

absl::Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(StrCat(path, ": write: ", std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Brings <final>.part up to the file's full size from `job`, then checks and renames it.
absl::Status DownloadFile(Connection& conn, const std::string& job, const flashmorph::v1::ArtifactFile& file,
                          const fs::path& final_path, std::ostream& log, DownloadStats& stats) {
  const std::string part = final_path.string() + ".part";
  const std::string& rel = file.path();
  std::error_code ec;
  fs::create_directories(final_path.parent_path(), ec);
  if (ec) return absl::InternalError(StrCat(final_path.parent_path().string(), ": ", ec.message()));

  Sha256 hash;
  int64_t have = 0;
  if (fs::exists(part, ec)) {
    const auto size = static_cast<int64_t>(fs::file_size(part, ec));
    if (ec || size > file.size_bytes()) {
      fs::remove(part, ec);  // longer than the file: it cannot be a prefix
    } else {
      auto n = HashFile(part, hash);
      if (!n.ok()) return n.status();
      have = *n;
    }
  }
  if (have > 0) log << rel << ": resuming at byte " << have << " of " << file.size_bytes() << "\n";

  FdCloser fd(::open(part.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (fd.fd() < 0) return absl::InternalError(StrCat(part, ": open: ", std::strerror(errno)));
  Backoff backoff(conn.retry());
  int failures = 0;
  while (have < file.size_bytes()) {
    flashmorph::v1::ReadArtifactRequest req;
    req.set_job(job);
    req.set_path(rel);
    req.set_read_offset(have);
    auto ctx = conn.NewContext(/*unary=*/false);
    auto reader = conn.stub().ReadArtifact(ctx.get(), req);
    flashmorph::v1::ReadArtifactResponse chunk;
    bool received = false;
    absl::Status bad;
    while (reader->Read(&chunk)) {
      if (chunk.offset() != have) {
        bad = absl::DataLossError(StrCat(rel, ": chunk at offset ", chunk.offset(), ", expected ", have));
        break;
      }
      if (have + static_cast<int64_t>(chunk.data().size()) > file.size_bytes()) {
        bad = absl::DataLossError(StrCat(rel, ": server sent more than the manifest's ", file.size_bytes(), " bytes"));
        break;
      }
      if (absl::Status s = WriteAll(fd.fd(), chunk.data(), part); !s.ok()) {
        bad = s;
        break;
      }
      hash.Update(chunk.data());
      have += static_cast<int64_t>(chunk.data().size());
      stats.bytes_received += static_cast<int64_t>(chunk.data().size());
      received = received || !chunk.data().empty();
    }
    if (!bad.ok()) {
      ctx->TryCancel();
      reader->Finish();
      return bad;
    }
    const grpc::Status s = reader->Finish();
    if (s.ok() && have >= file.size_bytes()) break;
    if (s.ok()) {
      if (!received) {
        return absl::DataLossError(StrCat(rel, ": stream ended at byte ", have, " of ", file.size_bytes()));
      }
    } else if (s.error_code() != grpc::StatusCode::UNAVAILABLE) {
      return absl::Status(FromGrpc(s).code(), StrCat(rel, ": ", s.error_message()));
    }
    if (received) {
      failures = 0;
      backoff.Reset();
    }
    if (++failures >= conn.retry().max_stream_attempts) {
      return absl::UnavailableError(StrCat(rel, ": gave up after ", failures, " attempts: ", s.error_message()));
    }
    log << rel << ": stream broken at byte " << have << " (" << FormatStatus(s) << "); resuming\n";
    std::this_thread::sleep_for(backoff.Next());
  }
  if (::fsync(fd.fd()) != 0) return absl::InternalError(StrCat(part, ": fsync: ", std::strerror(errno)));
  if (::close(fd.Release()) != 0) return absl::InternalError(StrCat(part, ": close: ", std::strerror(errno)));
  const std::string got = hash.HexDigest();
  if (have != file.size_bytes() || got != file.sha256()) {
    fs::remove(part, ec);
    return absl::DataLossError(StrCat(rel, ": sha256 mismatch: manifest ", file.sha256(), " (", file.size_bytes(),
                                      " bytes), downloaded ", got, " (", have, " bytes); removed ", part));
  }
  fs::rename(part, final_path, ec);
  if (ec) return absl::InternalError(StrCat(part, ": rename: ", ec.message()));
  if (absl::Status s = SyncDirectory(final_path.parent_path().string()); !s.ok()) return s;
  ++stats.files_downloaded;
  log << rel << ": " << file.size_bytes() << " bytes, sha256 ok\n";
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckArtifactPath(const std::string& path) {
  auto bad = [&](const char* why) {
    return absl::DataLossError(StrCat("manifest path \"", path, "\" refused: ", why));
  };
  if (path.empty()) return bad("empty");
  if (path.front() == '/') return bad("absolute");
  if (path.find('\0') != std::string::npos) return bad("contains NUL");
  size_t start = 0;
  for (;;) {
    const size_t slash = path.find('/', start);
    const std::string part = path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty()) return bad("empty component");
    if (part == "." || part == "..") return bad("\".\" or \"..\" component");
    if (part.size() > 5 && part.compare(part.size() - 5, 5, ".part") == 0) return bad("ends with .part");
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return absl::OkStatus();
}

absl::Status DownloadArtifact(Connection& conn, const std::string& job_in, const std::string& out_dir,
                              std::ostream& log, DownloadStats* stats_out) {
  const std::string job = JobName(job_in);
  flashmorph::v1::GetArtifactManifestRequest req;
  req.set_job(job);
  flashmorph::v1::ArtifactManifest manifest;
  const grpc::Status s = conn.CallWithRetry(
      [&](grpc::ClientContext& ctx) { return conn.stub().GetArtifactManifest(&ctx, req, &manifest); });
  if (!s.ok()) return FromGrpc(s);

  // Check the whole manifest before writing anything.
  std::string text;
  for (const auto& f : manifest.files()) {
    if (absl::Status c = CheckArtifactPath(f.path()); !c.ok()) return c;
    if (f.size_bytes() < 0) return absl::DataLossError(StrCat("manifest: ", f.path(), ": negative size"));
    text += StrCat(f.sha256(), "  ", f.path(), "\n");
  }
  if (!manifest.manifest_sha256().empty()) {
    const std::string got = Sha256Hex(text.data(), text.size());
    if (got != manifest.manifest_sha256()) {
      return absl::DataLossError(
          StrCat("manifest: manifest_sha256 is ", manifest.manifest_sha256(), " but its files hash to ", got));
    }
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::InternalError(StrCat(out_dir, ": ", ec.message()));

  DownloadStats stats;
  for (const auto& f : manifest.files()) {
    const fs::path final_path = fs::path(out_dir) / f.path();
    if (IsComplete(final_path.string(), f.size_bytes(), f.sha256())) {
      ++stats.files_skipped;
      log << f.path() << ": already complete\n";
      continue;
    }
    if (absl::Status d = DownloadFile(conn, job, f, final_path, log, stats); !d.ok()) {
      if (stats_out) *stats_out = stats;
      return d;
    }
  }
  if (stats_out) *stats_out = stats;
  return absl::OkStatus();
}

int RunDownload(const std::string& job, const std::string& out_dir, Connection& conn, const CliIo& io) {
  DownloadStats stats;
  const absl::Status s = DownloadArtifact(conn, job, out_dir, io.err, &stats);
  if (!s.ok()) return PrintError(io, s);
  io.out << "downloaded " << stats.files_downloaded << " file(s), " << stats.bytes_received << " bytes, into "
         << out_dir;
  if (stats.files_skipped > 0) io.out << " (" << stats.files_skipped << " already complete)";
  io.out << "\n";
  return kExitOk;
}

}  // namespace fm::client
