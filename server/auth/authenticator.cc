#include "server/auth/authenticator.h"

#include <array>
#include <cstdint>
#include <utility>

#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/json_strict.h"
#include "worker/engine/formats/sha256.h"

namespace fm::server {
namespace {

constexpr size_t kMaxTokenBytes = 4096;

Principal AnonymousPrincipal() { return Principal{"anonymous", {"default"}, "default", true}; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// 0 iff equal; touches every byte whatever the contents.
uint8_t DigestDiff(const std::array<uint8_t, 32>& a, const std::array<uint8_t, 32>& b) {
  volatile uint8_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = diff | (a[i] ^ b[i]);
  return diff;
}

}  // namespace

Authenticator::Authenticator(AuthConfig config) : config_(std::move(config)) {}

absl::StatusOr<Principal> Authenticator::Authenticate(std::string_view header) const {
  if (config_.anonymous()) return AnonymousPrincipal();
  const absl::Status denied =
      absl::UnauthenticatedError("missing or invalid credentials: send the metadata 'authorization: Bearer <token>'");
  size_t space = header.find(' ');
  if (space == std::string_view::npos || !EqualsIgnoreCase(header.substr(0, space), "bearer")) return denied;
  std::string_view token = header.substr(space + 1);
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  if (token.empty() || token.size() > kMaxTokenBytes) return denied;
  Sha256 h;
  h.Update(token);
  const std::array<uint8_t, 32> digest = h.Digest();
  // Compare against every principal so the time taken does not depend on which one (if any) matches.
  const PrincipalConfig* match = nullptr;
  for (const PrincipalConfig& p : config_.principals()) {
    if (DigestDiff(p.token_sha256, digest) == 0) match = &p;
  }
  if (match == nullptr) return denied;
  return Principal{match->name, match->tenants, match->default_tenant, match->admin};
}

absl::StatusOr<std::string> Authenticator::ResolveTenant(const Principal& principal, std::string_view requested) const {
  if (requested.empty()) {
    if (principal.default_tenant.empty())
      return absl::InvalidArgumentError(
          StrCat("tenant: required (principal ", QuoteForMessage(principal.name), " has no default tenant)"));
    return principal.default_tenant;
  }
  if (!IsValidTenantName(requested))
    return absl::InvalidArgumentError(
        StrCat("tenant: ", QuoteForMessage(requested), " is not a tenant name ([a-z][a-z0-9-]{0,62})"));
  for (const std::string& t : principal.tenants) {
    if (t == requested) return std::string(requested);
  }
  if (principal.admin && config_.HasTenant(requested)) return std::string(requested);
  return absl::PermissionDeniedError(StrCat("tenant: principal ", QuoteForMessage(principal.name),
                                            " may not use tenant ", QuoteForMessage(requested)));
}

bool Authenticator::CanSee(const Principal& principal, std::string_view tenant) {
  if (principal.admin) return true;
  for (const std::string& t : principal.tenants) {
    if (t == tenant) return true;
  }
  return false;
}

}  // namespace fm::server
