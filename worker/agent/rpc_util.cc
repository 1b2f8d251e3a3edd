#include "worker/agent/rpc_util.h"

namespace fm::worker {

std::unique_ptr<grpc::ClientContext> NewClientContext(const std::string& bearer_token,
                                                      std::chrono::milliseconds timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!bearer_token.empty()) ctx->AddMetadata("authorization", "Bearer " + bearer_token);
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  return ctx;
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

bool IsTransient(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded ||
         code == absl::StatusCode::kResourceExhausted;
}

}  // namespace fm::worker
