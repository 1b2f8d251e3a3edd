// flashmorph-worker: registers with flashmorphd, pulls conversion jobs and runs them with the engine in this
// process. SIGTERM / SIGINT stop polling and cancel a running job (its stage checkpoints are kept and the attempt is
// reported as a retryable failure, so a later attempt resumes); a second signal kills the process.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>

#include <grpcpp/security/credentials.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "worker/agent/agent.h"
#include "worker/agent/local_engine_runner.h"
#include "worker/engine/pipeline/devices.h"

#ifndef FM_ENGINE_VERSION
#define FM_ENGINE_VERSION "flashmorph-engine"
#endif

namespace {

std::atomic<bool> g_stop{false};

extern "C" void OnSignal(int) { g_stop.store(true); }

void InstallSignalHandlers() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;  // a second signal takes the default action
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

std::string Hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "worker";
  return buf;
}

// hostname-pid, lowercased, other characters as '-', at most 63 bytes.
std::string DefaultWorkerId(const std::string& host) {
  const std::string suffix = "-" + std::to_string(getpid());
  std::string id;
  for (char c : host) {
    const char l = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    id.push_back((l >= 'a' && l <= 'z') || (l >= '0' && l <= '9') ? l : '-');
  }
  if (id.empty()) id = "worker";
  if (id.size() + suffix.size() > 63) id.resize(63 - suffix.size());
  return id + suffix;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

std::string Trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::string NowIso8601() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"flashmorph-worker: runs FlashMorph conversion jobs leased from flashmorphd"};
  std::string server, worker_id, token, token_file, tls_ca, tls_cert, tls_key, work_root = "/tmp/flashmorph-worker";
  std::string device = "auto";
  bool shared_fs = true, log_json = false;
  int64_t threads = 0;
  int max_jobs = 0;
  double lease_wait_seconds = 30;
  app.add_option("--server", server, "flashmorphd address, host:port")->required();
  app.add_option("--worker-id", worker_id, "Worker id, 1-63 characters of [a-z0-9-] (default: <hostname>-<pid>)");
  app.add_option("--token", token, "Bearer token sent with every call");
  app.add_option("--token-file", token_file, "File holding the bearer token")->excludes("--token");
  app.add_option("--tls-ca", tls_ca, "PEM root certificates: use TLS and verify the server with them");
  app.add_option("--tls-cert", tls_cert, "PEM client certificate chain (mutual TLS; with --tls-key)");
  app.add_option("--tls-key", tls_key, "PEM client private key (mutual TLS; with --tls-cert)");
  app.add_option("--shared-filesystem", shared_fs,
                 "true: read and write the server's artifact store directly; false: upload outputs")
      ->capture_default_str();
  app.add_option("--work-root", work_root, "Local directory for outputs and checkpoints of non-shared attempts")
      ->capture_default_str();
  app.add_option("--device", device, "cpu | cuda | cuda:N | auto (cuda when a GPU is visible)")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads of the engine (0 = torch's default)")->capture_default_str();
  app.add_option("--max-jobs", max_jobs, "Exit after this many jobs (0 = run until stopped)")->capture_default_str();
  app.add_option("--lease-wait", lease_wait_seconds, "Seconds each LeaseJob long poll waits")->capture_default_str();
  app.add_flag("--log-json", log_json, "Log one JSON object per line");
  CLI11_PARSE(app, argc, argv);

  auto fail = [](const std::string& message) {
    std::fprintf(stderr, "flashmorph-worker: %s\n", message.c_str());
    return 2;
  };
  fm::worker::AgentOptions o;
  o.server_address = server;
  o.hostname = Hostname();
  o.worker_id = worker_id.empty() ? DefaultWorkerId(o.hostname) : worker_id;
  if (!fm::worker::IsValidWorkerId(o.worker_id))
    return fail("--worker-id '" + o.worker_id + "': use 1-63 characters of [a-z0-9-]");
  if (!token_file.empty()) {
    if (!ReadFile(token_file, &token)) return fail("--token-file: cannot read " + token_file);
    token = Trim(token);
    if (token.empty()) return fail("--token-file: " + token_file + " is empty");
  }
  o.bearer_token = token;
  if (!tls_ca.empty() || !tls_cert.empty() || !tls_key.empty()) {
    if (tls_cert.empty() != tls_key.empty()) return fail("--tls-cert and --tls-key go together");
    grpc::SslCredentialsOptions ssl;
    if (!tls_ca.empty() && !ReadFile(tls_ca, &ssl.pem_root_certs)) return fail("--tls-ca: cannot read " + tls_ca);
    if (!tls_cert.empty() && !ReadFile(tls_cert, &ssl.pem_cert_chain))
      return fail("--tls-cert: cannot read " + tls_cert);
    if (!tls_key.empty() && !ReadFile(tls_key, &ssl.pem_private_key)) return fail("--tls-key: cannot read " + tls_key);
    o.credentials = grpc::SslCredentials(ssl);
  }
  if (threads < 0) return fail("--threads: must be ≥ 0");
  if (max_jobs < 0) return fail("--max-jobs: must be ≥ 0");
  if (!(lease_wait_seconds >= 0)) return fail("--lease-wait: must be ≥ 0");

  o.devices = fm::QueryDevices();
  if (device == "auto") device = o.devices.gpus.empty() ? "cpu" : "cuda";
  if (device == "cpu") {
    o.devices.gpus.clear();  // a CPU worker announces no GPUs, so GPU jobs go elsewhere
  } else if (device.rfind("cuda", 0) == 0) {
    if (o.devices.gpus.empty()) return fail("--device " + device + ": no CUDA device is visible to this build");
  } else {
    return fail("--device '" + device + "': use cpu, cuda, cuda:N or auto");
  }
  o.device.device = device;
  o.device.threads = threads;
  o.shared_filesystem = shared_fs;
  o.work_root = work_root;
  o.max_jobs = max_jobs;
  o.lease_wait = std::chrono::milliseconds(static_cast<int64_t>(lease_wait_seconds * 1000));
  o.engine_version = FM_ENGINE_VERSION;
  const std::string id = o.worker_id;
  if (log_json) {
    o.log = [id](fm::worker::LogLevel level, const std::string& message) {
      nlohmann::json j = {{"time", NowIso8601()},
                          {"level", level == fm::worker::LogLevel::kError     ? "error"
                                    : level == fm::worker::LogLevel::kWarning ? "warning"
                                                                              : "info"},
                          {"worker", id},
                          {"message", message}};
      std::fprintf(stderr, "%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    };
  }

  InstallSignalHandlers();
  std::unique_ptr<fm::worker::EngineRunner> engine = fm::worker::NewLocalEngineRunner();
  fm::worker::WorkerAgent agent(std::move(o), engine.get());
  const absl::Status status = agent.Run(&g_stop);
  if (!status.ok()) {
    std::fprintf(stderr, "flashmorph-worker: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
