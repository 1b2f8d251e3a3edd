// The embedded default's worker processes: starts N flashmorph-worker children on this machine, restarts any that
// exits (exponential backoff per slot, reset once a child has run a minute), and stops them all on Stop()
// (SIGTERM, then SIGKILL after the grace period). Children get PR_SET_PDEATHSIG, so they die with flashmorphd
// even after a kill -9 of the server. The engine runs only in those children: flashmorphd never loads LibTorch.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace fm::server {

struct SupervisorOptions {
  std::string worker_binary;          // path of flashmorph-worker
  int count = 1;                      // children
  std::string server_address;         // what the children dial (e.g. unix:/data/worker.sock)
  std::string worker_token_file;      // file with the workers' bearer token (mode 0600), passed as --token-file
  std::string id_prefix = "embedded"; // worker ids are <prefix>-<i>
  std::string log_dir;                // each child's stdout+stderr go to <log_dir>/<id>.log (appended)
  std::vector<std::string> extra_args;
  absl::Duration restart_backoff_initial = absl::Seconds(1);
  absl::Duration restart_backoff_max = absl::Seconds(30);
};

class WorkerSupervisor {
 public:
  // NOT_FOUND if the binary does not exist or is not executable.
  static absl::StatusOr<std::unique_ptr<WorkerSupervisor>> Start(SupervisorOptions options);
  ~WorkerSupervisor();  // Stop(5 s)

  void Stop(absl::Duration grace = absl::Seconds(5));
  int restarts() const { return restarts_.load(); }
  std::vector<pid_t> pids() const;  // current children (0 for a slot waiting to restart)

  // Where flashmorph-worker is expected next to a flashmorphd binary: the same directory, or the build tree's
  // ../worker/agent/. Empty if neither exists.
  static std::string FindWorkerBinary(const std::string& server_binary);

 private:
  explicit WorkerSupervisor(SupervisorOptions options);
  pid_t Spawn(int slot);
  void Monitor();

  const SupervisorOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::vector<pid_t> pids_;
  std::vector<absl::Time> started_, restart_at_;
  std::vector<absl::Duration> backoff_;
  std::atomic<int> restarts_{0};
  std::thread monitor_;
};

}  // namespace fm::server
