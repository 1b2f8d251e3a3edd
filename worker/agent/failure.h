// How an attempt's error is reported: user errors (the spec, the model or the data is wrong: retrying cannot help)
// end the job FAILED; everything else is infrastructure (memory, devices, storage, interruption) and is retried.
#pragma once

#include "absl/status/status.h"
#include "flashmorph/v1/worker_service.pb.h"

namespace fm::worker {

// False for INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED and
// ALREADY_EXISTS; true for every other code (RESOURCE_EXHAUSTED, UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS,
// ABORTED, DEADLINE_EXCEEDED, CANCELLED, ...).
bool IsRetryable(absl::StatusCode code);

// CompleteJobRequest.Failure for a non-OK status: its code and message, and IsRetryable(code). An OK status (which
// is not a failure) is reported as INTERNAL.
flashmorph::v1::CompleteJobRequest::Failure FailureFromStatus(const absl::Status& status);

}  // namespace fm::worker
