// Where one attempt writes. The engine needs an output directory (the exported model) and a work directory (stage
// checkpoints) that every attempt of the job shares, so that a later attempt resumes where an earlier one stopped.
//
// Shared filesystem (the lease has an output_uri and the worker has the server's storage):
//   output = the lease's output_uri, the attempt folder <root>/jobs/<id>/attempts/<n>/output;
//   work   = Lease.resume_from.uri when it names an existing directory (the work dir an earlier attempt reported in
//            StageCheckpoint.uri), else <root>/jobs/<id>/work derived from output_uri's layout (docs: issue 4's
//            artifact store), else <work_root>/<id>/work when output_uri does not have that layout.
// Otherwise (outputs are uploaded):
//   output = <work_root>/<id>/attempt-<n>/output (local, deleted after the attempt);
//   work   = <work_root>/<id>/work (local: only an attempt of the same job on this worker resumes from it).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "flashmorph/v1/worker_service.pb.h"

namespace fm::worker {

struct AttemptDirs {
  std::string job_id;      // {job} of "jobs/{job}"
  std::string output_dir;  // where the engine exports
  std::string work_dir;    // stage checkpoints shared by attempts
  bool upload = false;     // outputs are local and go to the server with UploadArtifact
};

// INVALID_ARGUMENT for a lease whose job name is not "jobs/<id>" with a plain id, or whose output_uri is unusable.
absl::StatusOr<AttemptDirs> ChooseAttemptDirs(const flashmorph::v1::Lease& lease, bool shared_filesystem,
                                              const std::string& work_root);

}  // namespace fm::worker
