#include "tests/integration/service_processes.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>

extern char** environ;

namespace fm::testing {
namespace v1 = ::flashmorph::v1;

ChildProcess::ChildProcess(std::vector<std::string> argv, const std::string& log_path,
                           std::vector<std::string> extra_env) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  if (pid_ < 0) throw std::runtime_error("fork failed");
}

ChildProcess::~ChildProcess() {
  if (Running()) {
    kill(pid_, SIGKILL);
    Wait(std::chrono::seconds(10));
  }
}

bool ChildProcess::Running() {
  if (reaped_) return false;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    status_ = status;
    return false;
  }
  return true;
}

void ChildProcess::Signal(int sig) {
  if (!reaped_) kill(pid_, sig);
}

int ChildProcess::Wait(std::chrono::milliseconds timeout) {
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  while (Running()) {
    if (std::chrono::steady_clock::now() > give_up) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
  return WEXITSTATUS(status_);
}

std::unique_ptr<ServerProcess> ServerProcess::Start(const ServerConfig& config, const std::string& log_path) {
  auto server = std::unique_ptr<ServerProcess>(new ServerProcess());
  const std::string port_file = config.data_dir + ".port.json";
  unlink(port_file.c_str());
  std::vector<std::string> argv = {FM_FLASHMORPHD_BIN, "--listen", "127.0.0.1:" + std::to_string(config.port),
                                   "--data-dir", config.data_dir, "--port-file", port_file};
  if (config.default_model_roots) {
    for (std::string root : {std::string(FM_SOURCE_DIR) + "/models", std::string("/tmp")}) {
      argv.push_back("--model-root");
      argv.push_back(root);
    }
  }
  argv.insert(argv.end(), config.extra_args.begin(), config.extra_args.end());
  server->process_ = std::make_unique<ChildProcess>(argv, log_path);
  for (int i = 0; i < 600; ++i) {
    std::ifstream in(port_file);
    if (in) {
      auto j = nlohmann::json::parse(in, nullptr, false);
      if (!j.is_discarded()) {
        server->port_ = j.value("port", 0);
        server->metrics_port_ = j.value("metrics_port", 0);
        return server;
      }
    }
    if (!server->process_->Running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw std::runtime_error("flashmorphd did not start; see " + log_path + ":\n" + ReadFile(log_path));
}

std::shared_ptr<grpc::Channel> ServerProcess::Channel() const {
  return grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
}

std::unique_ptr<ChildProcess> StartWorker(const std::string& server_address, const std::string& worker_id,
                                          const std::string& work_root, const std::string& log_path,
                                          std::vector<std::string> extra_args) {
  std::vector<std::string> argv = {FM_WORKER_BIN,     "--server",  server_address, "--worker-id", worker_id,
                                   "--work-root", work_root,  "--device",    "cpu",
                                   "--threads",        "1"};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  return std::make_unique<ChildProcess>(argv, log_path);
}

v1::ConversionSpec SmallDemoSpec(uint64_t seed) {
  v1::ConversionSpec spec;
  spec.mutable_model()->set_uri(std::string(FM_SOURCE_DIR) + "/models/demo/qwen3-demo");
  spec.add_budgets()->set_full_attention_ratio(0.25);
  spec.add_budgets()->set_full_attention_layers(4);
  spec.set_seed(seed);
  spec.mutable_calibration()->set_train_tokens(3072);
  auto* gates = spec.mutable_gates();
  gates->set_train_tokens(2400);
  gates->set_min_context_tokens(112);
  gates->set_max_context_tokens(128);
  gates->set_passkeys_per_sample(1);
  spec.mutable_post_training()->set_distill_tokens(1024);
  spec.mutable_post_training()->set_long_context_tokens(256);
  spec.mutable_evaluation()->add_needle_context_tokens(128);
  spec.mutable_evaluation()->set_needle_samples_per_length(2);
  spec.mutable_evaluation()->set_held_out_tokens(512);
  return spec;
}

v1::ConversionJob WaitForJob(v1::ConversionService::Stub& stub, const std::string& name,
                             const std::function<bool(const v1::ConversionJob&)>& done,
                             std::chrono::seconds timeout) {
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  v1::ConversionJob job;
  while (std::chrono::steady_clock::now() < give_up) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetConversionJobRequest req;
    req.set_name(name);
    v1::ConversionJob got;
    if (stub.GetConversionJob(&ctx, req, &got).ok()) {
      job = got;
      if (done(job)) return job;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return job;
}

std::vector<v1::JobEvent> ReadEvents(v1::ConversionService::Stub& stub, const std::string& name,
                                     int64_t after_sequence, grpc::Status* status, std::chrono::seconds timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  v1::WatchConversionJobRequest req;
  req.set_name(name);
  req.set_after_sequence(after_sequence);
  auto reader = stub.WatchConversionJob(&ctx, req);
  std::vector<v1::JobEvent> events;
  v1::JobEvent e;
  while (reader->Read(&e)) events.push_back(e);
  *status = reader->Finish();
  return events;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string MakeTempDir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
  char* dir = mkdtemp(tmpl.data());
  if (dir == nullptr) throw std::runtime_error("mkdtemp failed");
  return dir;
}

}  // namespace fm::testing
