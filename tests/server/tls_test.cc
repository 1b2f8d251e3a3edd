// fm_server_auth TLS helpers against a real gRPC server on loopback: certificates made with the openssl CLI at test
// time (a CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a second CA's client
// certificate); the default health service answers grpc.health.v1.Health/Check through a generic stub.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>

#include <gmock/gmock.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/byte_buffer.h>
#include <gtest/gtest.h>

#include "server/auth/tls.h"
#include "tests/util/grpc_health_check.h"

namespace fm::server {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr char kOpensslConfig[] = R"([req]
distinguished_name = dn
prompt = no
[dn]
CN = flashmorph-test
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
)";

// The certificates, made once for the whole test program.
class Certs {
 public:
  static const Certs& Get() {
    if (instance_ == nullptr) instance_ = new Certs();
    return *instance_;
  }
  // Removes the certificates at the end of the program (if any test made them).
  static void Cleanup() {
    if (instance_ != nullptr && !instance_->dir.empty()) fs::remove_all(instance_->dir);
  }
  std::string dir;
  bool ok = false;
  std::string Path(const std::string& name) const { return dir + "/" + name; }

 private:
  static inline Certs* instance_ = nullptr;
  Certs() {
    std::string templ = (fs::path(::testing::TempDir()) / "fm_tls_XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) return;
    dir = templ;
    std::ofstream(Path("openssl.cnf")) << kOpensslConfig;
    const std::string cnf = Path("openssl.cnf");
    const std::string newkey = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ";
    auto run = [&](const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; };
    auto make_ca = [&](const std::string& name) {
      return run("openssl req -x509 -config " + cnf + " -extensions ca_ext" + newkey + "-keyout " +
                 Path(name + ".key") + " -out " + Path(name + ".crt") + " -days 2 -subj /CN=" + name);
    };
    auto make_leaf = [&](const std::string& name, const std::string& ca, const std::string& ext) {
      return run("openssl req -new -config " + cnf + newkey + "-keyout " + Path(name + ".key") + " -out " +
                 Path(name + ".csr") + " -subj /CN=" + name) &&
             run("openssl x509 -req -in " + Path(name + ".csr") + " -CA " + Path(ca + ".crt") + " -CAkey " +
                 Path(ca + ".key") + " -CAcreateserial -out " + Path(name + ".crt") + " -days 2 -extfile " + cnf +
                 " -extensions " + ext);
    };
    ok = make_ca("ca") && make_ca("other-ca") && make_leaf("server", "ca", "server_ext") &&
         make_leaf("client", "ca", "client_ext") && make_leaf("stranger", "other-ca", "client_ext");
    std::ofstream(Path("not-pem.txt")) << "hello\n";
  }
};

class CertsCleanup : public ::testing::Environment {
 public:
  void TearDown() override { Certs::Cleanup(); }
};
[[maybe_unused]] ::testing::Environment* const kCertsCleanup = ::testing::AddGlobalTestEnvironment(new CertsCleanup());

// A real server with only the default health service, on 127.0.0.1 with an OS-picked port.
class HealthServer {
 public:
  explicit HealthServer(std::shared_ptr<grpc::ServerCredentials> creds) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", std::move(creds), &port_);
    // A server needs at least one service of its own; the generic one answers other methods UNIMPLEMENTED.
    builder.RegisterCallbackGenericService(&unimplemented_);
    server_ = builder.BuildAndStart();
  }
  ~HealthServer() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  bool started() const { return server_ != nullptr && port_ > 0; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  grpc::CallbackGenericService unimplemented_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// grpc.health.v1.Health/Check over a channel with `creds`.
grpc::Status Check(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> creds, bool* serving) {
  return fm::testing::HealthCheck(grpc::CreateChannel(address, std::move(creds)), serving);
}

std::shared_ptr<grpc::ChannelCredentials> ClientCreds(const std::string& ca, const std::string& cert,
                                                      const std::string& key) {
  auto creds = MakeChannelCredentials(ca, cert, key);
  EXPECT_TRUE(creds.ok()) << creds.status();
  return creds.ok() ? *creds : nullptr;
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(certs_.ok) << "openssl could not make the test certificates in " << certs_.dir; }
  std::string P(const std::string& name) const { return certs_.Path(name); }
  const Certs& certs_ = Certs::Get();
};

TEST_F(TlsTest, ServerTlsClientWithCaGetsServing) {
  auto creds = MakeServerCredentials({P("server.crt"), P("server.key"), "", false});
  ASSERT_TRUE(creds.ok()) << creds.status();
  HealthServer server(*creds);
  ASSERT_TRUE(server.started());
  bool serving = false;
  grpc::Status s = Check(server.address(), ClientCreds(P("ca.crt"), "", ""), &serving);
  ASSERT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  EXPECT_TRUE(serving);

  // A client presenting a certificate is fine when the server does not ask for one.
  s = Check(server.address(), ClientCreds(P("ca.crt"), P("client.crt"), P("client.key")), &serving);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(serving);
}

TEST_F(TlsTest, InsecureClientFailsAgainstTlsServer) {
  auto creds = MakeServerCredentials({P("server.crt"), P("server.key"), "", false});
  ASSERT_TRUE(creds.ok()) << creds.status();
  HealthServer server(*creds);
  ASSERT_TRUE(server.started());
  bool serving = true;
  grpc::Status s = Check(server.address(), ClientCreds("", "", ""), &serving);  // all empty: insecure
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(serving);
}

TEST_F(TlsTest, ClientTrustingAnotherCaFails) {
  auto creds = MakeServerCredentials({P("server.crt"), P("server.key"), "", false});
  ASSERT_TRUE(creds.ok()) << creds.status();
  HealthServer server(*creds);
  ASSERT_TRUE(server.started());
  bool serving = true;
  grpc::Status s = Check(server.address(), ClientCreds(P("other-ca.crt"), "", ""), &serving);
  EXPECT_FALSE(s.ok());
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  auto creds = MakeServerCredentials({P("server.crt"), P("server.key"), P("ca.crt"), true});
  ASSERT_TRUE(creds.ok()) << creds.status();
  HealthServer server(*creds);
  ASSERT_TRUE(server.started());
  bool serving = false;
  grpc::Status s = Check(server.address(), ClientCreds(P("ca.crt"), P("client.crt"), P("client.key")), &serving);
  ASSERT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  EXPECT_TRUE(serving);

  s = Check(server.address(), ClientCreds(P("ca.crt"), "", ""), &serving);
  EXPECT_FALSE(s.ok()) << "a client without a certificate got through";
  s = Check(server.address(), ClientCreds(P("ca.crt"), P("stranger.crt"), P("stranger.key")), &serving);
  EXPECT_FALSE(s.ok()) << "a client certificate from another CA got through";
  s = Check(server.address(), ClientCreds("", "", ""), &serving);
  EXPECT_FALSE(s.ok());
}

TEST_F(TlsTest, NoCertificateMeansInsecure) {
  auto creds = MakeServerCredentials({});
  ASSERT_TRUE(creds.ok()) << creds.status();
  HealthServer server(*creds);
  ASSERT_TRUE(server.started());
  bool serving = false;
  grpc::Status s = Check(server.address(), ClientCreds("", "", ""), &serving);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(serving);
}

TEST_F(TlsTest, BadFilesAreErrorsNamingTheFile) {
  auto missing = MakeServerCredentials({P("nope.crt"), P("server.key"), "", false});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(P("nope.crt")));

  auto missing_key = MakeServerCredentials({P("server.crt"), P("nope.key"), "", false});
  EXPECT_EQ(missing_key.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing_key.status().message()), HasSubstr(P("nope.key")));

  auto missing_ca = MakeServerCredentials({P("server.crt"), P("server.key"), P("nope-ca.crt"), true});
  EXPECT_EQ(missing_ca.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing_ca.status().message()), HasSubstr(P("nope-ca.crt")));

  auto not_pem = MakeServerCredentials({P("not-pem.txt"), P("server.key"), "", false});
  EXPECT_EQ(not_pem.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(not_pem.status().message()), HasSubstr(P("not-pem.txt")));

  auto cert_as_key = MakeServerCredentials({P("server.crt"), P("server.crt"), "", false});
  EXPECT_EQ(cert_as_key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(cert_as_key.status().message()), HasSubstr(P("server.crt")));

  auto dir = MakeServerCredentials({certs_.dir, P("server.key"), "", false});
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);

  if (::geteuid() != 0) {  // root reads any file
    std::string unreadable = P("unreadable.key");
    std::ofstream(unreadable) << "x";
    ::chmod(unreadable.c_str(), 0);
    auto denied = MakeServerCredentials({P("server.crt"), unreadable, "", false});
    EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(std::string(denied.status().message()), HasSubstr(unreadable));
  }

  auto channel_missing = MakeChannelCredentials(P("nope-ca.crt"), "", "");
  EXPECT_EQ(channel_missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(channel_missing.status().message()), HasSubstr(P("nope-ca.crt")));
  auto channel_key_missing = MakeChannelCredentials(P("ca.crt"), P("client.crt"), P("nope.key"));
  EXPECT_EQ(channel_key_missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(channel_key_missing.status().message()), HasSubstr(P("nope.key")));
}

TEST_F(TlsTest, InconsistentSettingsAreInvalid) {
  EXPECT_EQ(MakeServerCredentials({"", P("server.key"), "", false}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeServerCredentials({P("server.crt"), "", "", false}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeServerCredentials({"", "", P("ca.crt"), false}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeServerCredentials({"", "", "", true}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeServerCredentials({P("server.crt"), P("server.key"), "", true}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeChannelCredentials(P("ca.crt"), P("client.crt"), "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeChannelCredentials(P("ca.crt"), "", P("client.key")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fm::server
