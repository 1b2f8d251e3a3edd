#include "worker/agent/failure.h"

#include <string>

#include "worker/engine/common/utf8.h"

namespace fm::worker {

bool IsRetryable(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kAlreadyExists:
    // The engine reports corrupt input files (a truncated safetensors, a damaged GGUF) as DATA_LOSS: the user's
    // checkpoint, not the machine, so another attempt would fail the same way.
    case absl::StatusCode::kDataLoss:
      return false;
    default:
      return true;
  }
}

flashmorph::v1::CompleteJobRequest::Failure FailureFromStatus(const absl::Status& status) {
  flashmorph::v1::CompleteJobRequest::Failure f;
  absl::Status s = status.ok() ? absl::InternalError("attempt failed without an error") : status;
  f.mutable_error()->set_code(static_cast<int>(s.code()));
  f.mutable_error()->set_message(
      fm::Utf8Lossy(std::string_view(s.message().data(), s.message().size())));  // proto strings are UTF-8
  f.set_retryable(IsRetryable(s.code()));
  return f;
}

}  // namespace fm::worker
