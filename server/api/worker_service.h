// flashmorph.v1.WorkerService: registration, long-poll leases (abandoned when the worker hangs up), heartbeats,
// completion (promotion runs off the gRPC threads) and artifact uploads into the attempt folder. Callers must be
// admin principals or the embedded workers. A stale lease is ABORTED everywhere.
#pragma once

#include <condition_variable>
#include <mutex>

#include "flashmorph/v1/worker_service.grpc.pb.h"
#include "server/api/service_deps.h"

namespace fm::server {

class WorkerServiceImpl final : public flashmorph::v1::WorkerService::CallbackService {
 public:
  explicit WorkerServiceImpl(const ServiceDeps& deps) : deps_(deps) {}
  ~WorkerServiceImpl() override;  // waits for completions still running

  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* ctx,
                                           const flashmorph::v1::RegisterWorkerRequest* request,
                                           flashmorph::v1::RegisterWorkerResponse* response) override;
  grpc::ServerUnaryReactor* LeaseJob(grpc::CallbackServerContext* ctx, const flashmorph::v1::LeaseJobRequest* request,
                                     flashmorph::v1::LeaseJobResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const flashmorph::v1::HeartbeatRequest* request,
                                      flashmorph::v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* CompleteJob(grpc::CallbackServerContext* ctx,
                                        const flashmorph::v1::CompleteJobRequest* request,
                                        flashmorph::v1::CompleteJobResponse* response) override;
  grpc::ServerReadReactor<flashmorph::v1::UploadArtifactRequest>* UploadArtifact(
      grpc::CallbackServerContext* ctx, flashmorph::v1::UploadArtifactResponse* response) override;

 private:
  const ServiceDeps deps_;
  std::mutex mu_;
  std::condition_variable idle_;
  int completions_in_flight_ = 0;
};

}  // namespace fm::server
