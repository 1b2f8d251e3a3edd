// The server's access configuration: tenants and their limits, principals (callers identified by a bearer token's
// SHA-256) and the directories models and data may be read from. Load() parses a JSON file strictly: unknown keys,
// duplicate keys, wrong types, bad names, duplicate tenants/principals/tokens and references to undeclared tenants
// are INVALID_ARGUMENT, each message naming the file and the JSON path ("auth.json: principals[1].tenants[0]: ...").
// Open() is anonymous mode: no file, every caller is the admin principal "anonymous" using tenant "default", with no
// limits. The file format:
//   {"tenants": [{"name": "team-a", "max_queued_jobs": 100, "max_running_jobs": 4, "max_gpus": 8,
//                 "max_priority": 50}],
//    "principals": [{"name": "ci-bot", "token_sha256": "<64 hex>" | "token": "<plain, tests/dev only>",
//                    "tenants": ["team-a"], "default_tenant": "team-a", "admin": false}],
//    "model_roots": ["/models", "/data"]}
// Limits 0 or absent mean unlimited; an absent max_priority means 100 (the API's maximum).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fm::server {

// Per-tenant limits; 0 means unlimited.
struct TenantLimits {
  int64_t max_queued_jobs = 0;   // PENDING jobs
  int64_t max_running_jobs = 0;  // RUNNING + CANCELLING jobs
  int64_t max_gpus = 0;          // GPUs held by the tenant's running jobs
  int32_t max_priority = 100;    // highest ConversionSpec.priority the tenant may ask for, in [-100, 100]
};

struct TenantConfig {
  std::string name;
  TenantLimits limits;
};

struct PrincipalConfig {
  std::string name;
  std::array<uint8_t, 32> token_sha256{};  // SHA-256 of the bearer token
  std::vector<std::string> tenants;        // tenants this principal may use
  std::string default_tenant;              // empty only for an admin without tenants
  bool admin = false;                      // sees (and may use) every tenant
};

// True for [a-z][a-z0-9-]{0,62}.
bool IsValidTenantName(std::string_view name);

class AuthConfig {
 public:
  // Reads and parses the JSON file at `path`. NOT_FOUND / PERMISSION_DENIED if it cannot be read.
  static absl::StatusOr<AuthConfig> Load(const std::string& path);
  // Parses JSON text; `source` names it in errors.
  static absl::StatusOr<AuthConfig> Parse(std::string_view text, std::string_view source);
  // Anonymous mode (no configuration file).
  static AuthConfig Open();

  bool anonymous() const { return anonymous_; }
  const std::vector<TenantConfig>& tenants() const { return tenants_; }
  const std::vector<PrincipalConfig>& principals() const { return principals_; }
  // As written in the file (absolute paths, not yet canonicalised; ModelRoots does that).
  const std::vector<std::string>& model_roots() const { return model_roots_; }

  // The declared tenant's limits; unlimited (max_priority 100) for a tenant not declared.
  TenantLimits LimitsFor(std::string_view tenant) const;
  // True if `tenant` is declared (in anonymous mode: only "default").
  bool HasTenant(std::string_view tenant) const;

 private:
  bool anonymous_ = false;
  std::vector<TenantConfig> tenants_;
  std::vector<PrincipalConfig> principals_;
  std::vector<std::string> model_roots_;
};

}  // namespace fm::server
