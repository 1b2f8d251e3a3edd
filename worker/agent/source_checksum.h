// The source checksum of ModelReference.source_sha256, computed before the engine loads the model so a mismatch
// fails the job in stage LOAD without converting anything. Same definition as the engine's
// ConversionResult.source_sha256 (worker/engine/pipeline/conversion.cc): SHA-256 over the bytes of the GGUF file, or
// of the directory's *.safetensors files concatenated in name order.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fm::worker {

// NOT_FOUND / PERMISSION_DENIED for a missing or unreadable model; CANCELLED when `cancelled` turns true.
absl::StatusOr<std::string> SourceChecksum(const std::string& model_path, const std::function<bool()>& cancelled);

// OK when `expected` is empty or equals the checksum; FAILED_PRECONDITION on a mismatch.
absl::Status VerifySourceChecksum(const std::string& model_path, const std::string& expected,
                                  const std::function<bool()>& cancelled);

}  // namespace fm::worker
