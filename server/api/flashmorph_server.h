// flashmorphd assembled: job store (SQLite), artifact store, scheduler, the gRPC services (ConversionService,
// Operations, WorkerService, grpc.health.v1, reflection) on the callback API, and the Prometheus exposer. Used by
// flashmorphd's main and by in-process tests. Shutdown ends watches and long polls with UNAVAILABLE / empty
// responses, then stops the server within a grace period.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/auth/tls.h"
#include "server/scheduler/scheduler.h"

namespace fm::server {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // host:port; port 0 picks a free one (see port())
  std::string data_dir;                    // required: holds flashmorph.db and artifacts/
  std::string db_path;                     // default <data_dir>/flashmorph.db
  std::string sqlite_synchronous = "NORMAL";
  std::string metrics_listen;  // host:port of /metrics; empty: no exposer; port 0 picks one
  std::string auth_config;     // JSON file (server/auth/auth_config.h); empty: anonymous mode
  std::vector<std::string> model_roots;  // in addition to the auth config's
  TlsFiles tls;
  SchedulerOptions scheduler;
  int max_receive_message_bytes = 2 << 20;  // every request (upload chunks are <= 1 MiB)
  std::string worker_token;                 // internal token of the embedded workers (empty: none)
  std::string internal_listen;  // extra plaintext port for the embedded workers, e.g. unix:<data_dir>/worker.sock
};

class FlashmorphServer {
 public:
  static absl::StatusOr<std::unique_ptr<FlashmorphServer>> Start(ServerOptions options);
  ~FlashmorphServer();

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  // Graceful stop: watches and polls end at once, in-flight unary calls get `grace` to finish.
  void Shutdown(absl::Duration grace = absl::Seconds(5));
  // Blocks until Shutdown() has completed.
  void Wait();

 private:
  FlashmorphServer() = default;
  struct Parts;
  std::unique_ptr<Parts> parts_;
  int port_ = 0;
  int metrics_port_ = 0;
  std::atomic<bool> shutting_down_{false};
};

}  // namespace fm::server
