#include "server/auth/auth_config.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "nlohmann/json.hpp"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/json_strict.h"
#include "worker/engine/formats/sha256.h"

namespace fm::server {
namespace {

using nlohmann::json;

constexpr size_t kMaxConfigBytes = 16 << 20;

// Error helpers that name the file and the JSON path of the offending value.
class Ctx {
 public:
  explicit Ctx(std::string_view source) : source_(source) {}
  absl::Status Bad(std::string_view path, std::string_view what) const {
    return absl::InvalidArgumentError(StrCat(source_, ": ", path, ": ", what));
  }

 private:
  std::string source_;
};

// Rejects keys outside `allowed`.
absl::Status CheckKeys(const Ctx& ctx, const json& obj, std::string_view path,
                       std::initializer_list<std::string_view> allowed) {
  for (const auto& [key, value] : obj.items()) {
    bool ok = false;
    for (std::string_view a : allowed) ok = ok || key == a;
    if (!ok) {
      std::string allowed_list;
      for (std::string_view a : allowed) allowed_list += StrCat(allowed_list.empty() ? "" : ", ", a);
      return ctx.Bad(StrCat(path, ".", key), StrCat("unknown key (allowed: ", allowed_list, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> GetString(const Ctx& ctx, const json& v, std::string_view path) {
  if (!v.is_string()) return ctx.Bad(path, "must be a string");
  return v.get<std::string>();
}

absl::StatusOr<int64_t> GetLimit(const Ctx& ctx, const json& obj, std::string_view path, const char* key,
                                 int64_t fallback, int64_t lo, int64_t hi) {
  auto it = obj.find(key);
  if (it == obj.end()) return fallback;
  std::string p = StrCat(path, ".", key);
  if (!it->is_number_integer()) return ctx.Bad(p, "must be an integer");
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return ctx.Bad(p, StrCat("must be in [", lo, ", ", hi, "]"));
  int64_t v = it->get<int64_t>();
  if (v < lo || v > hi) return ctx.Bad(p, StrCat("must be in [", lo, ", ", hi, "], got ", v));
  return v;
}

absl::StatusOr<std::string> GetTenantName(const Ctx& ctx, const json& v, std::string_view path) {
  FM_ASSIGN_OR_RETURN(std::string name, GetString(ctx, v, path));
  if (!IsValidTenantName(name))
    return ctx.Bad(path, StrCat("tenant name ", QuoteForMessage(name), " must match [a-z][a-z0-9-]{0,62}"));
  return name;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::Status ParseTenants(const Ctx& ctx, const json& root, std::vector<TenantConfig>& out) {
  auto it = root.find("tenants");
  if (it == root.end()) return absl::OkStatus();
  if (!it->is_array()) return ctx.Bad("tenants", "must be an array");
  std::set<std::string> seen;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& t = (*it)[i];
    std::string path = StrCat("tenants[", i, "]");
    if (!t.is_object()) return ctx.Bad(path, "must be an object");
    FM_RETURN_IF_ERROR(
        CheckKeys(ctx, t, path, {"name", "max_queued_jobs", "max_running_jobs", "max_gpus", "max_priority"}));
    auto name_it = t.find("name");
    if (name_it == t.end()) return ctx.Bad(StrCat(path, ".name"), "required");
    TenantConfig tc;
    FM_ASSIGN_OR_RETURN(tc.name, GetTenantName(ctx, *name_it, StrCat(path, ".name")));
    if (!seen.insert(tc.name).second)
      return ctx.Bad(StrCat(path, ".name"), StrCat("duplicate tenant ", QuoteForMessage(tc.name)));
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    FM_ASSIGN_OR_RETURN(tc.limits.max_queued_jobs, GetLimit(ctx, t, path, "max_queued_jobs", 0, 0, kMax));
    FM_ASSIGN_OR_RETURN(tc.limits.max_running_jobs, GetLimit(ctx, t, path, "max_running_jobs", 0, 0, kMax));
    FM_ASSIGN_OR_RETURN(tc.limits.max_gpus, GetLimit(ctx, t, path, "max_gpus", 0, 0, kMax));
    FM_ASSIGN_OR_RETURN(int64_t max_priority, GetLimit(ctx, t, path, "max_priority", 100, -100, 100));
    tc.limits.max_priority = static_cast<int32_t>(max_priority);
    out.push_back(std::move(tc));
  }
  return absl::OkStatus();
}

absl::Status ParseToken(const Ctx& ctx, const json& p, std::string_view path, std::array<uint8_t, 32>& digest) {
  auto hash_it = p.find("token_sha256");
  auto plain_it = p.find("token");
  if ((hash_it == p.end()) == (plain_it == p.end()))
    return ctx.Bad(path, "exactly one of token_sha256 and token is required");
  if (hash_it != p.end()) {
    std::string hp = StrCat(path, ".token_sha256");
    FM_ASSIGN_OR_RETURN(std::string hex, GetString(ctx, *hash_it, hp));
    if (hex.size() != 64) return ctx.Bad(hp, StrCat("must be 64 hex digits, got ", hex.size(), " characters"));
    for (size_t i = 0; i < 32; ++i) {
      int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
      if (hi < 0 || lo < 0) return ctx.Bad(hp, "must be 64 hex digits");
      digest[i] = static_cast<uint8_t>(hi * 16 + lo);
    }
    return absl::OkStatus();
  }
  std::string tp = StrCat(path, ".token");
  FM_ASSIGN_OR_RETURN(std::string token, GetString(ctx, *plain_it, tp));
  if (token.empty()) return ctx.Bad(tp, "must not be empty");
  for (unsigned char c : token) {
    if (c <= 0x20 || c >= 0x7f) return ctx.Bad(tp, "must be printable ASCII without spaces");
  }
  Sha256 h;
  h.Update(token);
  digest = h.Digest();
  return absl::OkStatus();
}

absl::Status ParsePrincipals(const Ctx& ctx, const json& root, const std::set<std::string>& tenants,
                             std::vector<PrincipalConfig>& out) {
  auto it = root.find("principals");
  if (it == root.end() || !it->is_array() || it->empty())
    return ctx.Bad("principals", "must be a non-empty array (omit the configuration file for anonymous mode)");
  std::set<std::string> names;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& p = (*it)[i];
    std::string path = StrCat("principals[", i, "]");
    if (!p.is_object()) return ctx.Bad(path, "must be an object");
    FM_RETURN_IF_ERROR(
        CheckKeys(ctx, p, path, {"name", "token_sha256", "token", "tenants", "default_tenant", "admin"}));
    PrincipalConfig pc;
    auto name_it = p.find("name");
    if (name_it == p.end()) return ctx.Bad(StrCat(path, ".name"), "required");
    FM_ASSIGN_OR_RETURN(pc.name, GetString(ctx, *name_it, StrCat(path, ".name")));
    if (pc.name.empty() || pc.name.size() > 128) return ctx.Bad(StrCat(path, ".name"), "must be 1-128 bytes");
    if (pc.name == "anonymous") return ctx.Bad(StrCat(path, ".name"), "'anonymous' is reserved");
    if (!names.insert(pc.name).second)
      return ctx.Bad(StrCat(path, ".name"), StrCat("duplicate principal ", QuoteForMessage(pc.name)));
    FM_RETURN_IF_ERROR(ParseToken(ctx, p, path, pc.token_sha256));
    for (size_t j = 0; j < i; ++j) {
      if (out[j].token_sha256 == pc.token_sha256) return ctx.Bad(path, StrCat("same token as principals[", j, "]"));
    }
    if (auto a = p.find("admin"); a != p.end()) {
      if (!a->is_boolean()) return ctx.Bad(StrCat(path, ".admin"), "must be true or false");
      pc.admin = a->get<bool>();
    }
    if (auto t = p.find("tenants"); t != p.end()) {
      if (!t->is_array()) return ctx.Bad(StrCat(path, ".tenants"), "must be an array");
      for (size_t j = 0; j < t->size(); ++j) {
        std::string tp = StrCat(path, ".tenants[", j, "]");
        FM_ASSIGN_OR_RETURN(std::string name, GetTenantName(ctx, (*t)[j], tp));
        if (!tenants.contains(name))
          return ctx.Bad(tp, StrCat("tenant ", QuoteForMessage(name), " is not declared in tenants"));
        for (const std::string& prev : pc.tenants) {
          if (prev == name) return ctx.Bad(tp, StrCat("duplicate tenant ", QuoteForMessage(name)));
        }
        pc.tenants.push_back(std::move(name));
      }
    }
    if (pc.tenants.empty() && !pc.admin)
      return ctx.Bad(StrCat(path, ".tenants"), "a non-admin principal needs at least one tenant");
    if (auto d = p.find("default_tenant"); d != p.end()) {
      std::string dp = StrCat(path, ".default_tenant");
      FM_ASSIGN_OR_RETURN(pc.default_tenant, GetTenantName(ctx, *d, dp));
      bool listed = false;
      for (const std::string& t : pc.tenants) listed = listed || t == pc.default_tenant;
      if (!listed)
        return ctx.Bad(dp, StrCat(QuoteForMessage(pc.default_tenant), " is not in this principal's tenants"));
    } else if (!pc.tenants.empty()) {
      pc.default_tenant = pc.tenants.front();
    }
    out.push_back(std::move(pc));
  }
  return absl::OkStatus();
}

absl::Status ParseModelRoots(const Ctx& ctx, const json& root, std::vector<std::string>& out) {
  auto it = root.find("model_roots");
  if (it == root.end()) return absl::OkStatus();
  if (!it->is_array()) return ctx.Bad("model_roots", "must be an array");
  for (size_t i = 0; i < it->size(); ++i) {
    std::string path = StrCat("model_roots[", i, "]");
    FM_ASSIGN_OR_RETURN(std::string dir, GetString(ctx, (*it)[i], path));
    if (dir.empty() || dir[0] != '/')
      return ctx.Bad(path, StrCat("must be an absolute path, got ", QuoteForMessage(dir)));
    out.push_back(std::move(dir));
  }
  return absl::OkStatus();
}

}  // namespace

bool IsValidTenantName(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  if (name[0] < 'a' || name[0] > 'z') return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return true;
}

absl::StatusOr<AuthConfig> AuthConfig::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    int err = errno;
    std::string what = StrCat(path, ": cannot open auth config: ", std::strerror(err));
    if (err == EACCES) return absl::PermissionDeniedError(what);
    return absl::NotFoundError(what);
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(StrCat(path, ": read error"));
  std::string text = ss.str();
  if (text.size() > kMaxConfigBytes) return absl::InvalidArgumentError(StrCat(path, ": larger than 16 MiB"));
  return Parse(text, path);
}

absl::StatusOr<AuthConfig> AuthConfig::Parse(std::string_view text, std::string_view source) {
  Ctx ctx(source);
  auto parsed = ParseStrictJson(text, 16);
  if (!parsed.ok()) {
    return absl::Status(parsed.status().code(), StrCat(source, ": ", std::string(parsed.status().message())));
  }
  const json& root = *parsed;
  if (!root.is_object()) return ctx.Bad("(root)", "must be a JSON object");
  FM_RETURN_IF_ERROR(CheckKeys(ctx, root, "(root)", {"tenants", "principals", "model_roots"}));
  AuthConfig config;
  FM_RETURN_IF_ERROR(ParseTenants(ctx, root, config.tenants_));
  std::set<std::string> tenant_names;
  for (const TenantConfig& t : config.tenants_) tenant_names.insert(t.name);
  FM_RETURN_IF_ERROR(ParsePrincipals(ctx, root, tenant_names, config.principals_));
  FM_RETURN_IF_ERROR(ParseModelRoots(ctx, root, config.model_roots_));
  return config;
}

AuthConfig AuthConfig::Open() {
  AuthConfig config;
  config.anonymous_ = true;
  config.tenants_.push_back(TenantConfig{"default", TenantLimits{}});
  return config;
}

TenantLimits AuthConfig::LimitsFor(std::string_view tenant) const {
  for (const TenantConfig& t : tenants_) {
    if (t.name == tenant) return t.limits;
  }
  return TenantLimits{};
}

bool AuthConfig::HasTenant(std::string_view tenant) const {
  for (const TenantConfig& t : tenants_) {
    if (t.name == tenant) return true;
  }
  return false;
}

}  // namespace fm::server
