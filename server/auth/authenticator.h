// Who is calling and which tenants they may use. Authenticate() maps an HTTP/gRPC `authorization` header
// ("Bearer <token>") to a configured principal by the token's SHA-256, compared in constant time against every
// principal (no early exit); a missing, malformed or unknown token is UNAUTHENTICATED without saying which. In
// anonymous mode (AuthConfig::Open()) every caller, whatever the header, is the admin principal "anonymous" with
// tenant "default". Thread-safe after construction (read-only).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/auth/auth_config.h"

namespace fm::server {

struct Principal {
  std::string name;
  std::vector<std::string> tenants;  // tenants it may use
  std::string default_tenant;        // used when a request names none; may be empty for an admin
  bool admin = false;                // sees every tenant and may use every declared tenant
};

class Authenticator {
 public:
  explicit Authenticator(AuthConfig config);

  // UNAUTHENTICATED unless the header is "Bearer <token>" (scheme case-insensitive) with a configured token.
  absl::StatusOr<Principal> Authenticate(std::string_view authorization_header) const;

  // The tenant a request acts for: `requested`, or the principal's default when empty. INVALID_ARGUMENT for a
  // malformed tenant name or an empty request without default; PERMISSION_DENIED for a tenant the principal may not
  // use (admins may use every declared tenant).
  absl::StatusOr<std::string> ResolveTenant(const Principal& principal, std::string_view requested) const;

  // True if the principal may see `tenant`'s jobs (its own tenants; admins see all).
  static bool CanSee(const Principal& principal, std::string_view tenant);

  TenantLimits LimitsFor(std::string_view tenant) const { return config_.LimitsFor(tenant); }
  const AuthConfig& config() const { return config_; }

 private:
  AuthConfig config_;
};

}  // namespace fm::server
