// Real processes for the service integration tests: flashmorphd and flashmorph-worker started from the build tree
// on loopback, each with its own log file, plus small gRPC helpers (stubs, waiting for a job state or stage).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "flashmorph/v1/conversion_service.grpc.pb.h"

namespace fm::testing {

// A child process (killed with SIGKILL when destroyed if still running).
class ChildProcess {
 public:
  ChildProcess(std::vector<std::string> argv, const std::string& log_path,
               std::vector<std::string> extra_env = {});
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool Running();
  void Signal(int sig);
  // Waits for the exit; returns the exit code, 128+signal, or -1 on timeout.
  int Wait(std::chrono::milliseconds timeout = std::chrono::seconds(60));

 private:
  pid_t pid_ = -1;
  int status_ = 0;
  bool reaped_ = false;
};

struct ServerConfig {
  std::string data_dir;
  int port = 0;  // 0: pick one; reuse the port of a previous run to restart "the same" server
  std::vector<std::string> extra_args;
  bool default_model_roots = true;  // <repo>/models and /tmp
};

// flashmorphd with --port-file; Start() waits until it serves.
class ServerProcess {
 public:
  static std::unique_ptr<ServerProcess> Start(const ServerConfig& config, const std::string& log_path);
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  ChildProcess& process() { return *process_; }
  std::shared_ptr<grpc::Channel> Channel() const;

 private:
  std::unique_ptr<ChildProcess> process_;
  int port_ = 0, metrics_port_ = 0;
};

// flashmorph-worker dialing `server_address` with a shared filesystem.
std::unique_ptr<ChildProcess> StartWorker(const std::string& server_address, const std::string& worker_id,
                                          const std::string& work_root, const std::string& log_path,
                                          std::vector<std::string> extra_args = {});

// A spec of the bundled demo model with token budgets small enough for a CPU test (tens of seconds).
flashmorph::v1::ConversionSpec SmallDemoSpec(uint64_t seed);

// Polls GetConversionJob until `done(job)` or the timeout; returns the last job seen.
flashmorph::v1::ConversionJob WaitForJob(flashmorph::v1::ConversionService::Stub& stub, const std::string& name,
                                         const std::function<bool(const flashmorph::v1::ConversionJob&)>& done,
                                         std::chrono::seconds timeout = std::chrono::seconds(300));

// Every event of the job from after_sequence on, until the stream ends; `status` receives the stream's status.
std::vector<flashmorph::v1::JobEvent> ReadEvents(flashmorph::v1::ConversionService::Stub& stub,
                                                 const std::string& name, int64_t after_sequence,
                                                 grpc::Status* status,
                                                 std::chrono::seconds timeout = std::chrono::seconds(300));

std::string ReadFile(const std::string& path);
std::string MakeTempDir(const std::string& prefix);

}  // namespace fm::testing
