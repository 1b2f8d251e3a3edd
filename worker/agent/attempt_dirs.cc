#include "worker/agent/attempt_dirs.h"

#include <filesystem>

#include "worker/agent/file_uri.h"
#include "worker/engine/common/str_cat.h"

namespace fm::worker {
namespace {

namespace fs = std::filesystem;

bool PlainId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) return false;
  return true;
}

}  // namespace

absl::StatusOr<AttemptDirs> ChooseAttemptDirs(const flashmorph::v1::Lease& lease, bool shared_filesystem,
                                              const std::string& work_root) {
  AttemptDirs d;
  const std::string& name = lease.job().name();
  constexpr std::string_view kPrefix = "jobs/";
  if (name.compare(0, kPrefix.size(), kPrefix) != 0 || !PlainId(name.substr(kPrefix.size())))
    return absl::InvalidArgumentError(StrCat("lease.job.name '", name, "' is not jobs/<id>"));
  d.job_id = name.substr(kPrefix.size());
  const fs::path local = fs::path(work_root.empty() ? "." : work_root) / d.job_id;
  std::error_code ec;
  if (shared_filesystem && !lease.output_uri().empty()) {
    absl::StatusOr<std::string> out = PathFromUri(lease.output_uri(), "lease.output_uri");
    if (!out.ok()) return out.status();
    d.output_dir = fs::path(*out).lexically_normal().string();
    if (!d.output_dir.empty() && d.output_dir.back() == '/') d.output_dir.pop_back();
    if (lease.has_resume_from() && !lease.resume_from().uri().empty()) {
      absl::StatusOr<std::string> resume = PathFromUri(lease.resume_from().uri(), "lease.resume_from.uri");
      if (resume.ok() && fs::is_directory(*resume, ec)) d.work_dir = *resume;
    }
    if (d.work_dir.empty()) {
      // <root>/jobs/<id>/attempts/<n>/output -> <root>/jobs/<id>/work
      const fs::path p(d.output_dir);
      const fs::path attempts = p.parent_path().parent_path();
      if (p.filename() == "output" && attempts.filename() == "attempts" &&
          attempts.parent_path().filename() == d.job_id) {
        d.work_dir = (attempts.parent_path() / "work").string();
      } else {
        d.work_dir = (local / "work").string();
      }
    }
    return d;
  }
  d.upload = true;
  d.output_dir = (local / StrCat("attempt-", lease.attempt()) / "output").string();
  d.work_dir = (local / "work").string();
  return d;
}

}  // namespace fm::worker
