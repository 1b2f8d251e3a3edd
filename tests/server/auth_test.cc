// fm_server_auth: auth config parsing (every error names the file and the JSON path), bearer tokens, tenant
// resolution and visibility, and model roots (traversal, symlink escape, prefix confusion, file:// URIs).
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/auth/auth_config.h"
#include "server/auth/authenticator.h"
#include "server/auth/model_roots.h"
#include "worker/engine/formats/sha256.h"

namespace fm::server {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string MakeTempDir() {
  std::string templ = (fs::path(testing::TempDir()) / "fm_auth_XXXXXX").string();
  char* dir = ::mkdtemp(templ.data());
  EXPECT_NE(dir, nullptr);
  char resolved[PATH_MAX];
  EXPECT_NE(::realpath(templ.c_str(), resolved), nullptr);
  return resolved;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

std::string TokenHash(const std::string& token) { return Sha256Hex(token.data(), token.size()); }

class AuthConfigTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  void TearDown() override { fs::remove_all(dir_); }

  absl::StatusOr<AuthConfig> LoadText(const std::string& text) {
    std::string path = dir_ + "/auth.json";
    WriteFile(path, text);
    return AuthConfig::Load(path);
  }

  std::string ValidText() {
    return R"({
      "tenants": [
        {"name": "team-a", "max_queued_jobs": 100, "max_running_jobs": 4, "max_gpus": 8, "max_priority": 50},
        {"name": "team-b"},
        {"name": "ops"}
      ],
      "principals": [
        {"name": "ci-bot", "token": "tok-ci", "tenants": ["team-a", "team-b"], "default_tenant": "team-b"},
        {"name": "alice", "token_sha256": ")" +
           TokenHash("alice-secret") + R"(", "tenants": ["team-a"]},
        {"name": "root", "token": "tok-root", "admin": true}
      ],
      "model_roots": ["/models", "/data"]
    })";
  }

  std::string dir_;
};

TEST_F(AuthConfigTest, ParsesTenantsPrincipalsAndRoots) {
  auto config = LoadText(ValidText());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->anonymous());
  ASSERT_EQ(config->tenants().size(), 3u);
  TenantLimits a = config->LimitsFor("team-a");
  EXPECT_EQ(a.max_queued_jobs, 100);
  EXPECT_EQ(a.max_running_jobs, 4);
  EXPECT_EQ(a.max_gpus, 8);
  EXPECT_EQ(a.max_priority, 50);
  TenantLimits b = config->LimitsFor("team-b");  // every limit absent: unlimited, priority cap 100
  EXPECT_EQ(b.max_queued_jobs, 0);
  EXPECT_EQ(b.max_running_jobs, 0);
  EXPECT_EQ(b.max_gpus, 0);
  EXPECT_EQ(b.max_priority, 100);
  ASSERT_EQ(config->principals().size(), 3u);
  EXPECT_EQ(config->principals()[0].default_tenant, "team-b");
  EXPECT_EQ(config->principals()[1].default_tenant, "team-a");  // absent: the first tenant
  EXPECT_TRUE(config->principals()[2].admin);
  EXPECT_EQ(config->principals()[2].default_tenant, "");
  EXPECT_EQ(config->model_roots(), (std::vector<std::string>{"/models", "/data"}));
}

TEST_F(AuthConfigTest, MissingFileIsNotFoundNamingIt) {
  auto config = AuthConfig::Load(dir_ + "/nope.json");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(dir_ + "/nope.json"));
}

struct BadConfigCase {
  std::string name;
  std::string json;
  std::string path;  // the JSON path the message must name
};

TEST_F(AuthConfigTest, MalformedFilesNameFileAndPath) {
  const std::string h = TokenHash("x");
  const std::string p0 = R"({"name": "p", "token": "t", "tenants": ["team-a"]})";
  const std::string t0 = R"({"name": "team-a"})";
  const std::vector<BadConfigCase> cases = {
      {"not json", "{", ""},
      {"duplicate key", R"({"tenants": [], "tenants": []})", "tenants"},
      {"root not object", "[]", "(root)"},
      {"unknown root key", R"({"tenant": [], "principals": [)" + p0 + "]}", "(root).tenant"},
      {"tenants not array", R"({"tenants": {}, "principals": [)" + p0 + "]}", "tenants"},
      {"tenant name upper", R"({"tenants": [{"name": "Team-A"}], "principals": [)" + p0 + "]}", "tenants[0].name"},
      {"tenant name digit first", R"({"tenants": [{"name": "1a"}], "principals": [)" + p0 + "]}", "tenants[0].name"},
      {"tenant name 64 chars",
       R"({"tenants": [{"name": ")" + std::string(64, 'a') + R"("}], "principals": [)" + p0 + "]}", "tenants[0].name"},
      {"tenant without name", R"({"tenants": [{"max_gpus": 1}], "principals": [)" + p0 + "]}", "tenants[0].name"},
      {"duplicate tenant", R"({"tenants": [)" + t0 + "," + t0 + R"(], "principals": [)" + p0 + "]}", "tenants[1].name"},
      {"negative limit", R"({"tenants": [{"name": "team-a", "max_gpus": -1}], "principals": [)" + p0 + "]}",
       "tenants[0].max_gpus"},
      {"float limit", R"({"tenants": [{"name": "team-a", "max_queued_jobs": 1.5}], "principals": [)" + p0 + "]}",
       "tenants[0].max_queued_jobs"},
      {"priority above 100", R"({"tenants": [{"name": "team-a", "max_priority": 101}], "principals": [)" + p0 + "]}",
       "tenants[0].max_priority"},
      {"unknown tenant key", R"({"tenants": [{"name": "team-a", "gpus": 1}], "principals": [)" + p0 + "]}",
       "tenants[0].gpus"},
      {"no principals", R"({"tenants": [)" + t0 + "]}", "principals"},
      {"empty principals", R"({"tenants": [)" + t0 + R"(], "principals": []})", "principals"},
      {"principal not object", R"({"tenants": [)" + t0 + R"(], "principals": ["p"]})", "principals[0]"},
      {"principal without token",
       R"({"tenants": [)" + t0 + R"(], "principals": [{"name": "p", "tenants": ["team-a"]}]})", "principals[0]"},
      {"both tokens",
       R"({"tenants": [)" + t0 + R"(], "principals": [{"name": "p", "token": "t", "token_sha256": ")" + h +
           R"(", "tenants": ["team-a"]}]})",
       "principals[0]"},
      {"short hash",
       R"({"tenants": [)" + t0 + R"(], "principals": [{"name": "p", "token_sha256": "abc", "tenants": ["team-a"]}]})",
       "principals[0].token_sha256"},
      {"non-hex hash",
       R"({"tenants": [)" + t0 + R"(], "principals": [{"name": "p", "token_sha256": ")" + std::string(64, 'g') +
           R"(", "tenants": ["team-a"]}]})",
       "principals[0].token_sha256"},
      {"empty token",
       R"({"tenants": [)" + t0 + R"(], "principals": [{"name": "p", "token": "", "tenants": ["team-a"]}]})",
       "principals[0].token"},
      {"undeclared tenant",
       R"({"tenants": [)" + t0 + R"(], "principals": [{"name": "p", "token": "t", "tenants": ["team-a", "team-z"]}]})",
       "principals[0].tenants[1]"},
      {"default not listed",
       R"({"tenants": [)" + t0 + R"(, {"name": "b"}], "principals": [{"name": "p", "token": "t", )" +
           R"("tenants": ["team-a"], "default_tenant": "b"}]})",
       "principals[0].default_tenant"},
      {"non-admin without tenants", R"({"tenants": [)" + t0 + R"(], "principals": [{"name": "p", "token": "t"}]})",
       "principals[0].tenants"},
      {"admin not bool", R"({"tenants": [)" + t0 + R"(], "principals": [{"name": "p", "token": "t", "admin": "yes"}]})",
       "principals[0].admin"},
      {"duplicate principal",
       R"({"tenants": [)" + t0 + R"(], "principals": [)" + p0 +
           R"(, {"name": "p", "token": "u", "tenants": ["team-a"]}]})",
       "principals[1].name"},
      {"duplicate token",
       R"({"tenants": [)" + t0 + R"(], "principals": [)" + p0 + R"(, {"name": "q", "token_sha256": ")" +
           TokenHash("t") + R"(", "tenants": ["team-a"]}]})",
       "principals[1]"},
      {"unknown principal key",
       R"({"tenants": [)" + t0 + R"(], "principals": [{"name": "p", "token": "t", "tenants": ["team-a"], "role": 1}]})",
       "principals[0].role"},
      {"reserved name",
       R"({"tenants": [)" + t0 + R"(], "principals": [{"name": "anonymous", "token": "t", "tenants": ["team-a"]}]})",
       "principals[0].name"},
      {"relative model root",
       R"({"tenants": [)" + t0 + R"(], "principals": [)" + p0 + R"(], "model_roots": ["models"]})", "model_roots[0]"},
      {"model root not string",
       R"({"tenants": [)" + t0 + R"(], "principals": [)" + p0 + R"(], "model_roots": ["/m", 3]})", "model_roots[1]"},
  };
  for (const BadConfigCase& c : cases) {
    auto config = LoadText(c.json);
    ASSERT_FALSE(config.ok()) << c.name;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << config.status();
    EXPECT_THAT(std::string(config.status().message()), HasSubstr(dir_ + "/auth.json: ")) << c.name;
    EXPECT_THAT(std::string(config.status().message()), HasSubstr(c.path)) << c.name << ": " << config.status();
  }
}

TEST_F(AuthConfigTest, AuthenticatesBearerTokens) {
  auto config = LoadText(ValidText());
  ASSERT_TRUE(config.ok()) << config.status();
  Authenticator auth(*config);
  auto ci = auth.Authenticate("Bearer tok-ci");
  ASSERT_TRUE(ci.ok()) << ci.status();
  EXPECT_EQ(ci->name, "ci-bot");
  EXPECT_EQ(ci->tenants, (std::vector<std::string>{"team-a", "team-b"}));
  EXPECT_EQ(ci->default_tenant, "team-b");
  EXPECT_FALSE(ci->admin);
  auto alice = auth.Authenticate("bearer alice-secret");  // token_sha256; scheme is case-insensitive
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ(alice->name, "alice");
  auto root = auth.Authenticate("Bearer tok-root");
  ASSERT_TRUE(root.ok());
  EXPECT_TRUE(root->admin);

  for (const char* bad : {"", "Bearer", "Bearer ", "Bearer tok-cix", "Bearer tok-c", "Basic tok-ci", "Bearertok-ci",
                          "tok-ci", "Bearer alice-secret2", "Bearer   ", "Bearer\ttok-ci"}) {
    auto p = auth.Authenticate(bad);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated) << "'" << bad << "'";
  }
  // The hash itself is not a token.
  EXPECT_EQ(auth.Authenticate("Bearer " + TokenHash("alice-secret")).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthConfigTest, ResolvesTenants) {
  auto config = LoadText(ValidText());
  ASSERT_TRUE(config.ok()) << config.status();
  Authenticator auth(*config);
  Principal ci = *auth.Authenticate("Bearer tok-ci");
  EXPECT_EQ(*auth.ResolveTenant(ci, ""), "team-b");
  EXPECT_EQ(*auth.ResolveTenant(ci, "team-a"), "team-a");
  EXPECT_EQ(auth.ResolveTenant(ci, "ops").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(auth.ResolveTenant(ci, "nowhere").status().code(), absl::StatusCode::kPermissionDenied);
  auto bad = auth.ResolveTenant(ci, "Team A");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("tenant"));

  Principal root = *auth.Authenticate("Bearer tok-root");
  EXPECT_EQ(*auth.ResolveTenant(root, "ops"), "ops");  // admins may use every declared tenant
  EXPECT_EQ(auth.ResolveTenant(root, "undeclared").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(auth.ResolveTenant(root, "").status().code(), absl::StatusCode::kInvalidArgument);  // no default

  EXPECT_TRUE(Authenticator::CanSee(ci, "team-a"));
  EXPECT_TRUE(Authenticator::CanSee(ci, "team-b"));
  EXPECT_FALSE(Authenticator::CanSee(ci, "ops"));
  EXPECT_TRUE(Authenticator::CanSee(root, "ops"));
  EXPECT_TRUE(Authenticator::CanSee(root, "anything"));
  EXPECT_EQ(auth.LimitsFor("team-a").max_priority, 50);
}

TEST(AnonymousModeTest, EveryCallerIsAnonymousInDefaultTenant) {
  Authenticator auth(AuthConfig::Open());
  EXPECT_TRUE(auth.config().anonymous());
  for (const char* header : {"", "Bearer whatever", "garbage"}) {
    auto p = auth.Authenticate(header);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->name, "anonymous");
    EXPECT_EQ(p->default_tenant, "default");
    EXPECT_EQ(*auth.ResolveTenant(*p, ""), "default");
    EXPECT_EQ(*auth.ResolveTenant(*p, "default"), "default");
    EXPECT_EQ(auth.ResolveTenant(*p, "team-a").status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_TRUE(Authenticator::CanSee(*p, "default"));
  }
  TenantLimits l = auth.LimitsFor("default");
  EXPECT_EQ(l.max_queued_jobs, 0);
  EXPECT_EQ(l.max_running_jobs, 0);
  EXPECT_EQ(l.max_gpus, 0);
  EXPECT_EQ(l.max_priority, 100);
}

TEST(TenantNameTest, Pattern) {
  EXPECT_TRUE(IsValidTenantName("a"));
  EXPECT_TRUE(IsValidTenantName("team-a1"));
  EXPECT_TRUE(IsValidTenantName(std::string(63, 'a')));
  EXPECT_FALSE(IsValidTenantName(std::string(64, 'a')));
  EXPECT_FALSE(IsValidTenantName(""));
  EXPECT_FALSE(IsValidTenantName("-a"));
  EXPECT_FALSE(IsValidTenantName("9a"));
  EXPECT_FALSE(IsValidTenantName("a_b"));
  EXPECT_FALSE(IsValidTenantName("aB"));
}

// ---- Model roots ----

TEST(PathTest, WithinComparesWholeComponents) {
  EXPECT_TRUE(PathIsWithin("/models", "/models"));
  EXPECT_TRUE(PathIsWithin("/models/a", "/models"));
  EXPECT_FALSE(PathIsWithin("/models2", "/models"));
  EXPECT_FALSE(PathIsWithin("/models2/a", "/models"));
  EXPECT_FALSE(PathIsWithin("/", "/models"));
  EXPECT_TRUE(PathIsWithin("/anything", "/"));
  EXPECT_EQ(NormalizeAbsolutePath("/a/./b//../c/"), "/a/c");
  EXPECT_EQ(NormalizeAbsolutePath("/models/../etc"), "/etc");
  EXPECT_EQ(NormalizeAbsolutePath("/../../x"), "/x");
  EXPECT_EQ(NormalizeAbsolutePath("/"), "/");
}

class ModelRootsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = MakeTempDir();
    fs::create_directories(base_ + "/models/m1");
    fs::create_directories(base_ + "/models2/m");
    fs::create_directories(base_ + "/outside");
    WriteFile(base_ + "/models/m1/config.json", "{}");
    WriteFile(base_ + "/outside/secret", "s");
    fs::create_directory_symlink(base_ + "/outside", base_ + "/models/escape");
    fs::create_directory_symlink("m1", base_ + "/models/inner");
    fs::create_symlink(base_ + "/outside/secret", base_ + "/models/secret-link");
    fs::create_directory_symlink(base_ + "/models", base_ + "/rootlink");
    auto roots = ModelRoots::Create({base_ + "/models"});
    ASSERT_TRUE(roots.ok()) << roots.status();
    roots_ = *roots;
  }
  void TearDown() override { fs::remove_all(base_); }

  void ExpectCode(std::string_view uri, absl::StatusCode code) {
    auto r = roots_.Resolve(uri, "spec.model.uri");
    EXPECT_EQ(r.status().code(), code) << uri << " -> " << (r.ok() ? *r : r.status().ToString());
    if (!r.ok()) {
      EXPECT_THAT(std::string(r.status().message()), HasSubstr("spec.model.uri")) << uri;
    }
  }

  std::string base_;
  ModelRoots roots_;
};

TEST_F(ModelRootsTest, ResolvesPathsInsideRoots) {
  const std::string m1 = base_ + "/models/m1";
  EXPECT_EQ(*roots_.Resolve(m1), m1);
  EXPECT_EQ(*roots_.Resolve(m1 + "/"), m1);
  EXPECT_EQ(*roots_.Resolve(m1 + "/config.json"), m1 + "/config.json");
  EXPECT_EQ(*roots_.Resolve("file://" + m1), m1);
  EXPECT_EQ(*roots_.Resolve(base_ + "/models/./m1/../m1"), m1);
  EXPECT_EQ(*roots_.Resolve(base_ + "/models/inner"), m1);  // a symlink that stays inside
  EXPECT_EQ(*roots_.Resolve(base_ + "/models"), base_ + "/models");
  EXPECT_EQ(roots_.roots(), (std::vector<std::string>{base_ + "/models"}));
}

TEST_F(ModelRootsTest, RejectsTraversalSymlinkEscapeAndPrefixConfusion) {
  ExpectCode(base_ + "/models/../outside/secret", absl::StatusCode::kPermissionDenied);
  ExpectCode(base_ + "/models/../outside", absl::StatusCode::kPermissionDenied);
  ExpectCode(base_ + "/models/m1/../../outside/missing", absl::StatusCode::kPermissionDenied);
  ExpectCode(base_ + "/models/escape", absl::StatusCode::kPermissionDenied);
  ExpectCode(base_ + "/models/escape/secret", absl::StatusCode::kPermissionDenied);
  ExpectCode("file://" + base_ + "/models/escape/secret", absl::StatusCode::kPermissionDenied);
  ExpectCode(base_ + "/models/secret-link", absl::StatusCode::kPermissionDenied);
  ExpectCode(base_ + "/models/inner/../../outside", absl::StatusCode::kPermissionDenied);
  ExpectCode(base_ + "/models2/m", absl::StatusCode::kPermissionDenied);
  ExpectCode(base_ + "/models2", absl::StatusCode::kPermissionDenied);
  ExpectCode("/etc/passwd", absl::StatusCode::kPermissionDenied);
  ExpectCode("/", absl::StatusCode::kPermissionDenied);
  // Missing inside a root: NOT_FOUND; missing outside: still PERMISSION_DENIED (existence is not revealed).
  ExpectCode(base_ + "/models/missing", absl::StatusCode::kNotFound);
  ExpectCode(base_ + "/outside/missing", absl::StatusCode::kPermissionDenied);
}

TEST_F(ModelRootsTest, RejectsOtherSchemesAndRelativePaths) {
  for (std::string uri :
       {std::string(""), std::string("models/m1"), std::string("./m1"), std::string("hf://org/m"),
        std::string("s3://bucket/m"), std::string("https://x/m"), std::string("file:relative"),
        std::string("file://host") + base_ + "/models/m1", std::string("file://"), std::string("C:\\models")}) {
    ExpectCode(uri, absl::StatusCode::kInvalidArgument);
  }
  ExpectCode(base_ + "/models/m1" + std::string("\0x", 2), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelRootsTest, RootGivenThroughSymlink) {
  auto roots = ModelRoots::Create({base_ + "/rootlink", base_ + "/models"});
  ASSERT_TRUE(roots.ok()) << roots.status();
  EXPECT_EQ(roots->roots(), (std::vector<std::string>{base_ + "/models"}));  // canonicalised, deduplicated
  EXPECT_EQ(*roots->Resolve(base_ + "/rootlink/m1"), base_ + "/models/m1");
  EXPECT_EQ(roots->Resolve(base_ + "/rootlink/escape/secret").status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(ModelRootsTest, NoRootsDeniesEverything) {
  ModelRoots none;
  auto r = none.Resolve(base_ + "/models/m1", "spec.model.uri");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("model_roots"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("--model-root"));
  auto empty = ModelRoots::Create({});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->Resolve(base_ + "/models/m1").status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(ModelRootsTest, BadRootsAreErrorsNamingThem) {
  auto missing = ModelRoots::Create({base_ + "/nope"});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(base_ + "/nope"));
  auto relative = ModelRoots::Create({"models"});
  EXPECT_EQ(relative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(relative.status().message()), HasSubstr("models"));
  auto file = ModelRoots::Create({base_ + "/outside/secret"});
  EXPECT_EQ(file.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("secret"));
}

}  // namespace
}  // namespace fm::server
