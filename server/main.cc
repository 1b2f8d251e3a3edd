// flashmorphd: the FlashMorph scheduler. Serves ConversionService, google.longrunning.Operations, WorkerService,
// grpc.health.v1 and reflection; keeps jobs in SQLite and artifacts in a local directory; serves Prometheus
// metrics; with --embedded-workers N it also starts and supervises N flashmorph-worker processes (the embedded
// default). SIGTERM / SIGINT stop it gracefully: workers first (their jobs go back to the queue with a
// checkpoint), then the server.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <string>

#include "server/api/flashmorph_server.h"
#include "server/scheduler/scheduler.h"
#include "server/supervisor/worker_supervisor.h"
#include "worker/engine/formats/atomic_file.h"
#include "worker/engine/common/str_cat.h"

namespace {

absl::Duration Seconds(double s) { return absl::Milliseconds(static_cast<int64_t>(s * 1000)); }

std::string SelfPath() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "" : p.string();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"flashmorphd: the FlashMorph conversion service (scheduler, job store, artifacts, metrics)"};
  fm::server::ServerOptions options;
  options.data_dir = "flashmorph-data";
  int embedded_workers = 0;
  std::string worker_binary, port_file, worker_device = "auto";
  std::vector<std::string> worker_args;
  double lease_seconds = 30, heartbeat_seconds = 5, max_wait_seconds = 30, backoff_seconds = 2;
  int max_attempts = 3;
  app.add_option("--listen", options.listen, "gRPC address (host:port; port 0 picks one)")->capture_default_str();
  app.add_option("--data-dir", options.data_dir, "Directory of the job database and the artifacts")
      ->capture_default_str();
  app.add_option("--db", options.db_path, "SQLite database file (default <data-dir>/flashmorph.db)");
  app.add_option("--sqlite-synchronous", options.sqlite_synchronous,
                 "NORMAL survives a process kill; FULL also a power loss")
      ->check(CLI::IsMember({"NORMAL", "FULL"}))
      ->capture_default_str();
  app.add_option("--metrics-listen", options.metrics_listen, "Prometheus /metrics address (host:port); empty: off");
  app.add_option("--auth-config", options.auth_config, "Tenants, tokens and model roots (JSON); empty: anonymous");
  app.add_option("--model-root", options.model_roots, "Directory models and data may be read from (repeatable)");
  app.add_option("--tls-cert", options.tls.cert_chain_path, "Server certificate chain (PEM)");
  app.add_option("--tls-key", options.tls.private_key_path, "Server private key (PEM)");
  app.add_option("--tls-client-ca", options.tls.client_ca_path, "CA that verifies client certificates (PEM)");
  app.add_flag("--require-client-cert", options.tls.require_client_cert, "Mutual TLS: clients must present a cert");
  app.add_option("--embedded-workers", embedded_workers, "Start and supervise N local flashmorph-worker processes")
      ->capture_default_str();
  app.add_option("--worker-binary", worker_binary, "flashmorph-worker for --embedded-workers (default: beside us)");
  app.add_option("--worker-device", worker_device, "--device of the embedded workers (cpu, cuda, auto)")
      ->capture_default_str();
  app.add_option("--worker-arg", worker_args, "Extra argument for the embedded workers (repeatable)");
  app.add_option("--lease-seconds", lease_seconds, "Lease duration without heartbeat")->capture_default_str();
  app.add_option("--heartbeat-seconds", heartbeat_seconds, "Heartbeat interval asked of workers")
      ->capture_default_str();
  app.add_option("--max-lease-wait-seconds", max_wait_seconds, "Longest LeaseJob long poll")->capture_default_str();
  app.add_option("--max-attempts", max_attempts, "Attempts per job (infrastructure failures)")->capture_default_str();
  app.add_option("--retry-backoff-seconds", backoff_seconds, "First retry delay (doubles per failure)")
      ->capture_default_str();
  app.add_option("--port-file", port_file, "Write {\"port\",\"metrics_port\",\"pid\"} as JSON here once serving");
  CLI11_PARSE(app, argc, argv);

  options.scheduler.lease_duration = Seconds(lease_seconds);
  options.scheduler.heartbeat_interval = Seconds(heartbeat_seconds);
  options.scheduler.max_lease_wait = Seconds(max_wait_seconds);
  options.scheduler.max_attempts = max_attempts;
  options.scheduler.retry_backoff_initial = Seconds(backoff_seconds);
  options.scheduler.worker_lost_after = options.scheduler.lease_duration * 3;

  // Signals go to the sigwait below, never to a gRPC thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  chmod(options.data_dir.c_str(), 0700);
  options.data_dir = std::filesystem::absolute(options.data_dir, ec).string();
  if (embedded_workers > 0) {
    options.worker_token = fm::server::NewRandomId(40);
    const std::string socket = options.data_dir + "/worker.sock";
    std::filesystem::remove(socket, ec);
    options.internal_listen = "unix:" + socket;
  }
  auto server = fm::server::FlashmorphServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "flashmorphd: %s\n", std::string(server.status().ToString()).c_str());
    return 1;
  }
  std::fprintf(stderr, "flashmorphd: serving on port %d (data in %s)%s\n", (*server)->port(),
               options.data_dir.c_str(),
               (*server)->metrics_port() > 0 ? fm::StrCat("; metrics on port ", (*server)->metrics_port()).c_str()
                                             : "");

  std::unique_ptr<fm::server::WorkerSupervisor> supervisor;
  if (embedded_workers > 0) {
    fm::server::SupervisorOptions sup;
    sup.worker_binary = worker_binary.empty() ? fm::server::WorkerSupervisor::FindWorkerBinary(SelfPath())
                                              : worker_binary;
    sup.count = embedded_workers;
    sup.server_address = options.internal_listen;
    sup.worker_token_file = options.data_dir + "/worker.token";
    {
      int fd = open(sup.worker_token_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (fd < 0 || write(fd, options.worker_token.data(), options.worker_token.size()) !=
                        static_cast<ssize_t>(options.worker_token.size())) {
        std::fprintf(stderr, "flashmorphd: cannot write %s\n", sup.worker_token_file.c_str());
        return 1;
      }
      fchmod(fd, 0600);
      close(fd);
    }
    sup.log_dir = options.data_dir + "/logs";
    sup.extra_args = {"--device", worker_device, "--work-root", options.data_dir + "/worker-local"};
    sup.extra_args.insert(sup.extra_args.end(), worker_args.begin(), worker_args.end());
    auto started = fm::server::WorkerSupervisor::Start(sup);
    if (!started.ok()) {
      std::fprintf(stderr, "flashmorphd: %s\n", std::string(started.status().ToString()).c_str());
      (*server)->Shutdown(absl::Seconds(1));
      return 1;
    }
    supervisor = *std::move(started);
  }
  if (!port_file.empty()) {
    auto written = fm::WriteFileAtomically(
        port_file, fm::StrCat("{\"port\": ", (*server)->port(), ", \"metrics_port\": ", (*server)->metrics_port(),
                              ", \"pid\": ", getpid(), "}\n"));
    if (!written.ok()) {
      std::fprintf(stderr, "flashmorphd: %s\n", std::string(written.ToString()).c_str());
      return 1;
    }
  }

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "flashmorphd: signal %d, shutting down\n", sig);
  if (supervisor) supervisor->Stop(absl::Seconds(20));
  (*server)->Shutdown(absl::Seconds(5));
  (*server)->Wait();
  return 0;
}
