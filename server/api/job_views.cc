#include "server/api/job_views.h"

#include "server/scheduler/scheduler.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {

flashmorph::v1::ConversionMetadata MetadataOf(const JobRecord& record) {
  const auto& job = record.job();
  flashmorph::v1::ConversionMetadata m;
  m.set_job(job.name());
  m.set_state(job.state());
  m.set_stage(job.stage());
  *m.mutable_progress() = job.progress();
  if (record.has_latest_gates()) *m.mutable_gates() = record.latest_gates();
  m.set_worker(job.worker());
  m.set_attempt(job.attempt());
  *m.mutable_create_time() = job.create_time();
  *m.mutable_update_time() = job.update_time();
  return m;
}

google::longrunning::Operation OperationOf(const JobRecord& record) {
  google::longrunning::Operation op;
  op.set_name(StrCat("operations/", JobIdFromName(record.job().name())));
  op.mutable_metadata()->PackFrom(MetadataOf(record));
  const int state = record.job().state();
  if (IsTerminal(state)) {
    op.set_done(true);
    if (state == flashmorph::v1::ConversionJob::SUCCEEDED) {
      op.mutable_response()->PackFrom(record.job());
    } else {
      *op.mutable_error() = record.job().error();
    }
  }
  return op;
}

}  // namespace fm::server
