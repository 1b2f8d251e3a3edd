// How a stored job looks to clients: the ConversionJob resource and its google.longrunning.Operation
// ("operations/{id}", metadata ConversionMetadata, response ConversionJob or the job's error once done).
#pragma once

#include "flashmorph/v1/conversion_job.pb.h"
#include "google/longrunning/operations.pb.h"
#include "server/store/job_store.h"

namespace fm::server {

flashmorph::v1::ConversionMetadata MetadataOf(const JobRecord& record);
google::longrunning::Operation OperationOf(const JobRecord& record);

}  // namespace fm::server
