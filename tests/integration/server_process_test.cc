// flashmorphd as a process without workers: the Prometheus scrape (checked by promtool), grpc.health.v1,
// tenants with bearer tokens over TLS, model roots and request size bounds.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include <grpcpp/generic/generic_stub.h>

#include <gtest/gtest.h>

#include "flashmorph/v1/conversion_service.grpc.pb.h"
#include "flashmorph/v1/worker_service.grpc.pb.h"
#include "google/longrunning/operations.grpc.pb.h"
#include "tests/integration/service_processes.h"
#include "tests/util/grpc_health_check.h"

namespace fm::testing {
namespace {

namespace v1 = ::flashmorph::v1;

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fd);
  return out;
}

int RunShell(const std::string& command, std::string* output) {
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) output->append(buf, n);
  return pclose(p);
}

v1::ConversionSpec DemoSpec() { return SmallDemoSpec(5); }

// Server reflection's list_services through a generic bidi stream: the raw ServerReflectionResponse bytes.
class ReflectionList final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit ReflectionList(const std::shared_ptr<grpc::Channel>& channel) : stub_(channel) {
    context_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    // ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
    grpc::Slice slice(std::string("\x3a\x00", 2));
    request_ = grpc::ByteBuffer(&slice, 1);
    stub_.PrepareBidiStreamingCall(&context_, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                   grpc::StubOptions(), this);
    StartWrite(&request_);
    StartRead(&response_);
    StartCall();
  }
  void OnWriteDone(bool) override { StartWritesDone(); }
  void OnReadDone(bool ok) override {
    if (ok) {
      std::vector<grpc::Slice> slices;
      if (response_.Dump(&slices).ok()) {
        for (const grpc::Slice& s : slices) bytes_.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
      StartRead(&response_);
    }
  }
  void OnDone(const grpc::Status& status) override { done_.set_value(status); }
  // Waits for the stream to end; returns its status.
  grpc::Status Wait() { return done_.get_future().get(); }
  const std::string& bytes() const { return bytes_; }

 private:
  grpc::GenericStub stub_;
  grpc::ClientContext context_;
  grpc::ByteBuffer request_, response_;
  std::string bytes_;
  std::promise<grpc::Status> done_;
};

bool HealthServing(const std::shared_ptr<grpc::Channel>& channel) {
  bool serving = false;
  return HealthCheck(channel, &serving).ok() && serving;
}
std::string CreateJob(v1::ConversionService::Stub& stub, const v1::ConversionSpec& spec, grpc::Status* status,
                      const std::string& token = "", const std::string& tenant = "") {
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  v1::CreateConversionJobRequest req;
  *req.mutable_spec() = spec;
  req.set_tenant(tenant);
  google::longrunning::Operation op;
  *status = stub.CreateConversionJob(&ctx, req, &op);
  return status->ok() ? "jobs/" + op.name().substr(11) : "";
}

TEST(ServerProcess, HealthReflectionAndAMetricsScrapeThatPassesPromtool) {
  const std::string root = MakeTempDir("fm-metrics");
  auto server = ServerProcess::Start({root + "/data", 0, {"--metrics-listen", "127.0.0.1:0"}}, root + "/server.log");
  ASSERT_GT(server->metrics_port(), 0);
  EXPECT_TRUE(HealthServing(server->Channel()));
  {
    ReflectionList reflection(server->Channel());
    ASSERT_TRUE(reflection.Wait().ok());
    for (const char* service : {"flashmorph.v1.ConversionService", "flashmorph.v1.WorkerService",
                                "google.longrunning.Operations", "grpc.health.v1.Health"}) {
      EXPECT_NE(reflection.bytes().find(service), std::string::npos) << service;
    }
  }
  auto stub = v1::ConversionService::NewStub(server->Channel());
  grpc::Status status;
  const std::string name = CreateJob(*stub, DemoSpec(), &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::ConversionSpec bad = DemoSpec();
  bad.clear_budgets();
  CreateJob(*stub, bad, &status);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // The scheduler refreshes its gauges on its tick.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::string response = HttpGet(server->metrics_port(), "/metrics");
  const size_t body_at = response.find("\r\n\r\n");
  ASSERT_NE(body_at, std::string::npos) << response;
  const std::string body = response.substr(body_at + 4);
  for (const char* expected :
       {"flashmorph_jobs_submitted_total{tenant=\"default\"} 1", "flashmorph_jobs{state=\"pending\"} 1",
        "flashmorph_grpc_requests_total{code=\"INVALID_ARGUMENT\",method=\"flashmorph.v1.ConversionService/"
        "CreateConversionJob\"} 1",
        "flashmorph_job_queue_wait_seconds", "flashmorph_workers{state=\"idle\"}",
        "flashmorph_lease_expirations_total", "flashmorph_grpc_request_duration_seconds_bucket"}) {
    EXPECT_NE(body.find(expected), std::string::npos) << expected << "\n" << body;
  }
  const std::string metrics_file = root + "/metrics.txt";
  std::ofstream(metrics_file) << body;
  std::string promtool;
  ASSERT_EQ(RunShell("promtool check metrics < " + metrics_file, &promtool), 0) << promtool;
  // No job id ever appears in a label.
  EXPECT_EQ(body.find(name.substr(5)), std::string::npos);
  std::filesystem::remove_all(root);
}

// Certificates made with the openssl CLI: a CA, a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
  std::string dir;
  explicit Pki(const std::string& d) : dir(d) {
    std::string out;
    const std::string cmd =
        "cd " + dir +
        " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=fm-test-ca"
        " && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1"
        " && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san.ext"
        " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2"
        " -extfile san.ext"
        " && openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=fm-client"
        " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2";
    if (RunShell(cmd, &out) != 0) throw std::runtime_error(out);
  }
};

TEST(ServerProcess, TenantsTokensTlsModelRootsAndRequestBounds) {
  const std::string root = MakeTempDir("fm-sec");
  Pki pki(root);
  const std::string models = root + "/models";
  std::filesystem::create_directories(models);
  std::filesystem::create_directory_symlink(std::string(FM_SOURCE_DIR) + "/models/demo/qwen3-demo",
                                            models + "/escape");  // a symlink out of the root
  std::filesystem::copy(std::string(FM_SOURCE_DIR) + "/models/demo/qwen3-demo", models + "/demo",
                        std::filesystem::copy_options::recursive);
  std::ofstream(root + "/auth.json") << R"({
    "tenants": [{"name": "team-a", "max_queued_jobs": 2}, {"name": "team-b"}],
    "principals": [
      {"name": "alice", "token": "alice-token", "tenants": ["team-a"], "default_tenant": "team-a"},
      {"name": "bob", "token": "bob-token", "tenants": ["team-b"], "default_tenant": "team-b"}],
    "model_roots": [")" + models + R"("]})";
  auto server = ServerProcess::Start(
      {root + "/data",
       0,
       {"--auth-config", root + "/auth.json", "--tls-cert", root + "/server.pem", "--tls-key", root + "/server.key",
        "--tls-client-ca", root + "/ca.pem"},
       /*default_model_roots=*/false},
      root + "/server.log");
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(root + "/ca.pem");
  auto channel = grpc::CreateChannel(server->address(), grpc::SslCredentials(ssl));
  auto stub = v1::ConversionService::NewStub(channel);
  v1::ConversionSpec spec = DemoSpec();
  spec.mutable_model()->set_uri(models + "/demo");

  grpc::Status status;
  // No token, a wrong token: UNAUTHENTICATED.
  CreateJob(*stub, spec, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  CreateJob(*stub, spec, &status, "nope");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // A tenant the principal may not use.
  CreateJob(*stub, spec, &status, "alice-token", "team-b");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Alice's job is invisible to Bob.
  const std::string alice_job = CreateJob(*stub, spec, &status, "alice-token");
  ASSERT_TRUE(status.ok()) << status.error_message();
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer bob-token");
    v1::GetConversionJobRequest req;
    req.set_name(alice_job);
    v1::ConversionJob job;
    EXPECT_EQ(stub->GetConversionJob(&ctx, req, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer bob-token");
    v1::CancelConversionJobRequest req;
    req.set_name(alice_job);
    v1::ConversionJob job;
    EXPECT_EQ(stub->CancelConversionJob(&ctx, req, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer bob-token");
    v1::ListConversionJobsRequest req;
    v1::ListConversionJobsResponse resp;
    ASSERT_TRUE(stub->ListConversionJobs(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.jobs_size(), 0);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer alice-token");
    v1::ListConversionJobsRequest req;
    v1::ListConversionJobsResponse resp;
    ASSERT_TRUE(stub->ListConversionJobs(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.jobs_size(), 1);
    EXPECT_EQ(resp.jobs(0).tenant(), "team-a");
  }
  // Workers' API is closed to plain principals.
  {
    auto workers = v1::WorkerService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer alice-token");
    v1::RegisterWorkerRequest req;
    req.set_worker_id("rogue");
    v1::RegisterWorkerResponse resp;
    EXPECT_EQ(workers->RegisterWorker(&ctx, req, &resp).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  // Model references: traversal and a symlink escaping the root are refused.
  for (const std::string& uri : {models + "/../models/../../etc", models + "/escape", std::string("/etc/passwd"),
                                 std::string("relative/path")}) {
    v1::ConversionSpec s = spec;
    s.mutable_model()->set_uri(uri);
    CreateJob(*stub, s, &status, "alice-token");
    EXPECT_TRUE(status.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
                status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                status.error_code() == grpc::StatusCode::NOT_FOUND)
        << uri << ": " << status.error_message();
    EXPECT_NE(status.error_code(), grpc::StatusCode::OK) << uri;
  }
  // The tenant's queue limit.
  CreateJob(*stub, spec, &status, "alice-token");
  ASSERT_TRUE(status.ok());
  CreateJob(*stub, spec, &status, "alice-token");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(status.error_message().find("team-a"), std::string::npos) << status.error_message();
  // An oversized request is refused by the transport, and the server keeps serving.
  {
    v1::ConversionSpec big = spec;
    (*big.mutable_labels())["blob"] = std::string(3 << 20, 'x');
    CreateJob(*stub, big, &status, "bob-token");
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    CreateJob(*stub, spec, &status, "bob-token");
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  // A plaintext client cannot talk to the TLS port.
  {
    auto plain = v1::ConversionService::NewStub(
        grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    ctx.AddMetadata("authorization", "Bearer alice-token");
    v1::ListConversionJobsRequest req;
    v1::ListConversionJobsResponse resp;
    EXPECT_FALSE(plain->ListConversionJobs(&ctx, req, &resp).ok());
  }
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace fm::testing
