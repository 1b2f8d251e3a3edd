#include "server/supervisor/worker_supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "worker/engine/common/str_cat.h"

extern char** environ;

namespace fm::server {

WorkerSupervisor::WorkerSupervisor(SupervisorOptions options) : options_(std::move(options)) {}

std::string WorkerSupervisor::FindWorkerBinary(const std::string& server_binary) {
  std::error_code ec;
  auto dir = std::filesystem::path(server_binary).parent_path();
  for (auto candidate : {dir / "flashmorph-worker", dir / ".." / "worker" / "agent" / "flashmorph-worker"}) {
    if (std::filesystem::exists(candidate, ec) && access(candidate.c_str(), X_OK) == 0) {
      return std::filesystem::weakly_canonical(candidate, ec).string();
    }
  }
  return "";
}

absl::StatusOr<std::unique_ptr<WorkerSupervisor>> WorkerSupervisor::Start(SupervisorOptions options) {
  if (options.count < 1) return absl::InvalidArgumentError("--embedded-workers must be >= 1");
  if (options.worker_binary.empty() || access(options.worker_binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(StrCat("flashmorph-worker binary '", options.worker_binary,
                                      "' not found or not executable (set --worker-binary)"));
  }
  if (!options.log_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options.log_dir, ec);
    if (ec) return absl::PermissionDeniedError(StrCat("cannot create ", options.log_dir, ": ", ec.message()));
  }
  std::unique_ptr<WorkerSupervisor> s(new WorkerSupervisor(std::move(options)));
  const int n = s->options_.count;
  s->pids_.assign(n, 0);
  s->started_.assign(n, absl::Now());
  s->restart_at_.assign(n, absl::InfinitePast());
  s->backoff_.assign(n, s->options_.restart_backoff_initial);
  {
    std::lock_guard<std::mutex> lock(s->mu_);
    for (int i = 0; i < n; ++i) s->pids_[i] = s->Spawn(i);
  }
  s->monitor_ = std::thread([p = s.get()] { p->Monitor(); });
  return s;
}

pid_t WorkerSupervisor::Spawn(int slot) {
  const std::string id = StrCat(options_.id_prefix, "-", slot);
  std::vector<std::string> args = {options_.worker_binary, "--server", options_.server_address, "--worker-id", id};
  if (!options_.worker_token_file.empty()) {
    args.push_back("--token-file");
    args.push_back(options_.worker_token_file);
  }
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log_path = options_.log_dir.empty() ? "" : StrCat(options_.log_dir, "/", id, ".log");
  const pid_t parent = getpid();

  pid_t pid = fork();
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);  // flashmorphd blocks signals in its threads
    if (!log_path.empty()) {
      int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
      if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
      }
    }
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    execve(argv[0], argv.data(), environ);
    _exit(127);
  }
  if (pid > 0) {
    started_[slot] = absl::Now();
    std::fprintf(stderr, "flashmorphd: started worker %s (pid %d)\n", id.c_str(), pid);
  } else {
    std::fprintf(stderr, "flashmorphd: cannot start worker %s: fork failed\n", id.c_str());
  }
  return pid > 0 ? pid : 0;
}

void WorkerSupervisor::Monitor() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(200));
    if (stopping_) break;
    const absl::Time now = absl::Now();
    for (size_t i = 0; i < pids_.size(); ++i) {
      if (pids_[i] > 0) {
        int status = 0;
        pid_t r = waitpid(pids_[i], &status, WNOHANG);
        if (r != pids_[i]) continue;
        const std::string how = WIFSIGNALED(status) ? StrCat("signal ", WTERMSIG(status))
                                                    : StrCat("exit code ", WEXITSTATUS(status));
        if (now - started_[i] > absl::Minutes(1)) backoff_[i] = options_.restart_backoff_initial;
        restart_at_[i] = now + backoff_[i];
        std::fprintf(stderr, "flashmorphd: worker %s-%zu (pid %d) ended with %s; restarting in %s\n",
                     options_.id_prefix.c_str(), i, pids_[i], how.c_str(),
                     absl::FormatDuration(backoff_[i]).c_str());
        backoff_[i] = std::min(backoff_[i] * 2, options_.restart_backoff_max);
        pids_[i] = 0;
      } else if (now >= restart_at_[i]) {
        pids_[i] = Spawn(static_cast<int>(i));
        if (pids_[i] > 0) restarts_.fetch_add(1);
        else restart_at_[i] = now + backoff_[i];
      }
    }
  }
}

std::vector<pid_t> WorkerSupervisor::pids() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pids_;
}

void WorkerSupervisor::Stop(absl::Duration grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  std::vector<pid_t> alive;
  for (pid_t pid : pids_) {
    if (pid > 0 && kill(pid, SIGTERM) == 0) alive.push_back(pid);
  }
  const absl::Time give_up = absl::Now() + grace;
  while (!alive.empty() && absl::Now() < give_up) {
    for (auto it = alive.begin(); it != alive.end();) {
      int status;
      if (waitpid(*it, &status, WNOHANG) == *it) it = alive.erase(it);
      else ++it;
    }
    if (!alive.empty()) usleep(50'000);
  }
  for (pid_t pid : alive) {
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
  }
}

WorkerSupervisor::~WorkerSupervisor() { Stop(); }

}  // namespace fm::server
