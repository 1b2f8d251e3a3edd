#include "server/api/caller.h"

#include <string>

#include "worker/engine/formats/sha256.h"

namespace fm::server {
namespace {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Compare digests so the time depends on neither length nor content.
  std::string da = Sha256Hex(a.data(), a.size()), db = Sha256Hex(b.data(), b.size());
  unsigned char diff = 0;
  for (size_t i = 0; i < da.size(); ++i) diff |= static_cast<unsigned char>(da[i] ^ db[i]);
  return diff == 0;
}

}  // namespace

absl::StatusOr<Principal> AuthenticateCall(const grpc::CallbackServerContext* ctx, const ServiceDeps& deps) {
  std::string header;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it != md.end()) header.assign(it->second.data(), it->second.size());
  if (!deps.worker_token.empty() && ConstantTimeEquals(header, "Bearer " + deps.worker_token)) {
    Principal p;
    p.name = "embedded-worker";
    p.admin = true;
    return p;
  }
  return deps.auth->Authenticate(header);
}

absl::StatusOr<Principal> AuthenticateWorker(const grpc::CallbackServerContext* ctx, const ServiceDeps& deps) {
  auto p = AuthenticateCall(ctx, deps);
  if (!p.ok()) return p.status();
  if (!p->admin) {
    return absl::PermissionDeniedError("WorkerService is for workers: the caller's principal is not an admin");
  }
  return p;
}

}  // namespace fm::server
