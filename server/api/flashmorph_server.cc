#include "server/api/flashmorph_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include <filesystem>
#include <mutex>

#include "server/api/artifact_attempt_storage.h"
#include "server/api/conversion_service.h"
#include "server/api/metrics_interceptor.h"
#include "server/api/operations_service.h"
#include "server/api/service_deps.h"
#include "server/api/worker_service.h"
#include "server/artifacts/artifact_store.h"
#include "server/auth/auth_config.h"
#include "server/auth/authenticator.h"
#include "server/auth/model_roots.h"
#include "server/metrics/server_metrics.h"
#include "server/store/sqlite_job_store.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {
struct FlashmorphServer::Parts {
  std::unique_ptr<ServerMetrics> metrics;
  std::unique_ptr<SqliteJobStore> store;
  std::unique_ptr<ArtifactStore> artifacts;
  std::unique_ptr<ArtifactAttemptStorage> storage;
  std::unique_ptr<Authenticator> auth;
  ModelRoots roots;
  WatchHub hub;
  RealClock clock;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<ConversionServiceImpl> conversion;
  std::unique_ptr<OperationsServiceImpl> operations;
  std::unique_ptr<WorkerServiceImpl> workers;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<prometheus::Exposer> exposer;
  std::mutex shutdown_mu;
  bool shut_down = false;
};

absl::StatusOr<std::unique_ptr<FlashmorphServer>> FlashmorphServer::Start(ServerOptions options) {
  if (options.data_dir.empty()) return absl::InvalidArgumentError("--data-dir is required");
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) return absl::PermissionDeniedError(StrCat("cannot create ", options.data_dir, ": ", ec.message()));
  std::unique_ptr<FlashmorphServer> self(new FlashmorphServer());
  self->parts_ = std::make_unique<Parts>();
  Parts& p = *self->parts_;
  p.metrics = std::make_unique<ServerMetrics>();

  const std::string db_path = options.db_path.empty() ? options.data_dir + "/flashmorph.db" : options.db_path;
  SqliteOptions sqlite;
  sqlite.synchronous = options.sqlite_synchronous;
  FM_ASSIGN_OR_RETURN(p.store, SqliteJobStore::Open(db_path, sqlite));
  FM_ASSIGN_OR_RETURN(p.artifacts, ArtifactStore::Open(options.data_dir + "/artifacts"));
  p.storage = std::make_unique<ArtifactAttemptStorage>(p.artifacts.get());

  AuthConfig auth_config = AuthConfig::Open();
  if (!options.auth_config.empty()) {
    FM_ASSIGN_OR_RETURN(auth_config, AuthConfig::Load(options.auth_config));
  }
  std::vector<std::string> roots = auth_config.model_roots();
  roots.insert(roots.end(), options.model_roots.begin(), options.model_roots.end());
  FM_ASSIGN_OR_RETURN(p.roots, ModelRoots::Create(roots));
  p.auth = std::make_unique<Authenticator>(std::move(auth_config));

  SchedulerOptions sched = options.scheduler;
  const Authenticator* auth = p.auth.get();
  sched.quota = [auth](std::string_view tenant) {
    TenantLimits l = auth->LimitsFor(tenant);
    return TenantQuota{static_cast<int>(l.max_queued_jobs), static_cast<int>(l.max_running_jobs),
                       static_cast<int>(l.max_gpus)};
  };
  FM_ASSIGN_OR_RETURN(p.scheduler,
                      Scheduler::Create(p.store.get(), p.storage.get(), &p.clock, &p.hub, p.metrics.get(), sched));

  ServiceDeps deps;
  deps.scheduler = p.scheduler.get();
  deps.store = p.store.get();
  deps.artifacts = p.artifacts.get();
  deps.auth = p.auth.get();
  deps.roots = &p.roots;
  deps.hub = &p.hub;
  deps.metrics = p.metrics.get();
  deps.shutting_down = &self->shutting_down_;
  deps.worker_token = options.worker_token;
  p.conversion = std::make_unique<ConversionServiceImpl>(deps);
  p.operations = std::make_unique<OperationsServiceImpl>(deps);
  p.workers = std::make_unique<WorkerServiceImpl>(deps);

  FM_ASSIGN_OR_RETURN(auto credentials, MakeServerCredentials(options.tls));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &self->port_);
  if (!options.internal_listen.empty()) {
    builder.AddListeningPort(options.internal_listen, grpc::InsecureServerCredentials());
  }
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.RegisterService(p.conversion.get());
  builder.RegisterService(p.operations.get());
  builder.RegisterService(p.workers.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<MetricsInterceptorFactory>(p.metrics.get()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  p.server = builder.BuildAndStart();
  if (p.server == nullptr || self->port_ == 0) {
    return absl::UnavailableError(StrCat("cannot listen on ", options.listen));
  }
  if (!options.metrics_listen.empty()) {
    try {
      p.exposer = std::make_unique<prometheus::Exposer>(options.metrics_listen);
      p.exposer->RegisterCollectable(p.metrics->registry());
      auto ports = p.exposer->GetListeningPorts();
      self->metrics_port_ = ports.empty() ? 0 : ports.front();
    } catch (const std::exception& e) {
      p.server->Shutdown();
      return absl::UnavailableError(StrCat("cannot serve metrics on ", options.metrics_listen, ": ", e.what()));
    }
  }
  return self;
}

void FlashmorphServer::Shutdown(absl::Duration grace) {
  Parts& p = *parts_;
  std::lock_guard<std::mutex> lock(p.shutdown_mu);
  if (p.shut_down) return;
  p.shut_down = true;
  shutting_down_.store(true);
  p.scheduler->Shutdown();  // ends long polls
  p.hub.NotifyAll();        // ends watches and waits
  p.server->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
}

void FlashmorphServer::Wait() { parts_->server->Wait(); }

FlashmorphServer::~FlashmorphServer() {
  if (parts_ == nullptr) return;
  if (parts_->server != nullptr) {
    Shutdown(absl::Seconds(1));
    parts_->server->Wait();
  }
  parts_->exposer.reset();
  parts_->workers.reset();
}

}  // namespace fm::server
