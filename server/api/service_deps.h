// What every flashmorphd RPC handler needs, owned by FlashmorphServer and shared read-only by the handlers.
#pragma once

#include <atomic>
#include <string>

namespace fm::server {

class Scheduler;
class JobStore;
class ArtifactStore;
class Authenticator;
class ModelRoots;
class WatchHub;
class ServerMetrics;

struct ServiceDeps {
  Scheduler* scheduler = nullptr;
  JobStore* store = nullptr;
  ArtifactStore* artifacts = nullptr;
  const Authenticator* auth = nullptr;
  const ModelRoots* roots = nullptr;
  WatchHub* hub = nullptr;
  ServerMetrics* metrics = nullptr;        // may be null
  std::atomic<bool>* shutting_down = nullptr;
  std::string worker_token;  // bearer token of the embedded workers (empty: none); acts as an admin principal
};

}  // namespace fm::server
