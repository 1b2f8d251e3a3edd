// The scheduler's view of the artifact store: attempt folders, promotion, discard, and where an artifact lives.
#pragma once

#include <string>
#include <string_view>

#include "server/artifacts/artifact_store.h"
#include "server/scheduler/scheduler.h"
#include "worker/engine/common/status_macros.h"

namespace fm::server {

class ArtifactAttemptStorage final : public AttemptStorage {
 public:
  explicit ArtifactAttemptStorage(ArtifactStore* store) : store_(store) {}
  absl::StatusOr<Paths> PrepareAttempt(std::string_view job_id, int attempt) override {
    FM_ASSIGN_OR_RETURN(AttemptPaths p, store_->PrepareAttempt(job_id, attempt));
    return Paths{p.output_dir, p.work_dir};
  }
  absl::StatusOr<flashmorph::v1::ArtifactManifest> Promote(std::string_view job_id, int attempt) override {
    return store_->Promote(job_id, attempt);
  }
  absl::Status DiscardAttempt(std::string_view job_id, int attempt) override {
    return store_->DiscardAttempt(job_id, attempt);
  }
  std::string ArtifactDir(std::string_view job_id) override {
    return store_->root() + "/jobs/" + std::string(job_id) + "/artifact";
  }

 private:
  ArtifactStore* const store_;
};

}  // namespace fm::server
