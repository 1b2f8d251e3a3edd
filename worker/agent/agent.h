// WorkerAgent: the loop of flashmorph-worker. It registers with flashmorphd (retrying while the server is away),
// long-polls LeaseJob, and runs each lease: the spec becomes engine options, the engine runs on the calling thread
// while a heartbeat thread renews the lease and carries stage, progress, gate vectors, log lines, the selected
// layouts and stage checkpoints; then the outputs are in the shared attempt folder or uploaded, and CompleteJob
// reports the result, a failure (retryable = infrastructure, not = user error) or the cancellation the server asked
// for. A stale lease (ABORTED) stops the engine and discards the attempt's outputs without completing.
// Every RPC carries the bearer token (when given) and a deadline. Torch-free: the engine comes in as an EngineRunner.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <grpcpp/security/credentials.h>

#include "absl/status/status.h"
#include "flashmorph/v1/worker_service.grpc.pb.h"
#include "worker/agent/engine_runner.h"
#include "worker/agent/spec_options.h"
#include "worker/engine/pipeline/devices.h"

namespace fm::worker {

enum class LogLevel { kInfo, kWarning, kError };

struct AgentOptions {
  std::string server_address;                             // flashmorphd's address, e.g. "127.0.0.1:50051"
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // null: insecure
  std::string bearer_token;                               // "authorization: Bearer <token>" on every call; empty: none
  std::string worker_id;                                  // 1-63 bytes of [a-z0-9-]
  std::string hostname;
  fm::DeviceInventory devices;                       // what registration announces
  DeviceChoice device;                               // where the engine runs
  bool shared_filesystem = true;                     // the worker reads and writes the server's artifact store directly
  std::string work_root = "/tmp/flashmorph-worker";  // local outputs and checkpoints (see attempt_dirs.h)
  int max_jobs = 0;                                  // leases to run before Run() returns; 0 = until stopped
  std::chrono::milliseconds lease_wait{30000};       // LeaseJob long-poll (capped by the server's max_lease_wait)
  std::chrono::milliseconds rpc_timeout{30000};      // deadline of every other call (uploads: plus 1 s per MiB)
  std::chrono::milliseconds min_heartbeat_gap{200};  // at most ~5 early heartbeats a second
  std::chrono::milliseconds initial_backoff{100};    // retries while the server is unavailable ...
  std::chrono::milliseconds max_backoff{5000};       // ... doubling up to this
  std::string engine_version;
  std::function<void(LogLevel, const std::string&)> log;  // default: one line on stderr
};

class WorkerAgent {
 public:
  // `engine` must outlive the agent.
  WorkerAgent(AgentOptions options, EngineRunner* engine);
  ~WorkerAgent();

  // Runs until *stop turns true (a running job is cancelled: its checkpoints are kept and it is reported as a
  // retryable failure so another attempt resumes), or max_jobs leases were run. Errors: INVALID_ARGUMENT for bad
  // options; a registration refused for a reason other than unavailability (e.g. UNAUTHENTICATED).
  absl::Status Run(std::atomic<bool>* stop);

  int jobs_run() const { return jobs_run_; }

 private:
  absl::Status Register(const std::atomic<bool>* stop);
  absl::Status LeaseOnce(flashmorph::v1::LeaseJobResponse* response, const std::atomic<bool>* stop);
  // Returns true when the worker must register again.
  bool RunLease(const flashmorph::v1::Lease& lease, const std::atomic<bool>* stop);
  absl::Status Complete(const flashmorph::v1::CompleteJobRequest& request);
  void Log(LogLevel level, const std::string& message) const;
  bool Sleep(std::chrono::milliseconds d, const std::atomic<bool>* stop) const;

  AgentOptions options_;
  EngineRunner* const engine_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<flashmorph::v1::WorkerService::Stub> stub_;
  std::chrono::milliseconds heartbeat_interval_{10000};
  std::chrono::milliseconds lease_duration_{60000};
  std::chrono::milliseconds max_lease_wait_{0};
  int jobs_run_ = 0;
};

// "[a-z0-9-]{1,63}".
bool IsValidWorkerId(const std::string& id);

}  // namespace fm::worker
