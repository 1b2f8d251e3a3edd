// flashmorph.v1.ConversionService on gRPC's callback API: authentication and tenant visibility, spec validation,
// then the scheduler (create / cancel), the job store (get / list / events) and the artifact store (manifest /
// chunked reads). Watch streams are resumable with after_sequence; at shutdown they end with UNAVAILABLE.
#pragma once

#include "flashmorph/v1/conversion_service.grpc.pb.h"
#include "server/api/service_deps.h"

namespace fm::server {

class ConversionServiceImpl final : public flashmorph::v1::ConversionService::CallbackService {
 public:
  explicit ConversionServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::ServerUnaryReactor* CreateConversionJob(grpc::CallbackServerContext* ctx,
                                                const flashmorph::v1::CreateConversionJobRequest* request,
                                                google::longrunning::Operation* response) override;
  grpc::ServerUnaryReactor* GetConversionJob(grpc::CallbackServerContext* ctx,
                                             const flashmorph::v1::GetConversionJobRequest* request,
                                             flashmorph::v1::ConversionJob* response) override;
  grpc::ServerUnaryReactor* ListConversionJobs(grpc::CallbackServerContext* ctx,
                                               const flashmorph::v1::ListConversionJobsRequest* request,
                                               flashmorph::v1::ListConversionJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelConversionJob(grpc::CallbackServerContext* ctx,
                                                const flashmorph::v1::CancelConversionJobRequest* request,
                                                flashmorph::v1::ConversionJob* response) override;
  grpc::ServerWriteReactor<flashmorph::v1::JobEvent>* WatchConversionJob(
      grpc::CallbackServerContext* ctx, const flashmorph::v1::WatchConversionJobRequest* request) override;
  grpc::ServerWriteReactor<flashmorph::v1::ReadArtifactResponse>* ReadArtifact(
      grpc::CallbackServerContext* ctx, const flashmorph::v1::ReadArtifactRequest* request) override;
  grpc::ServerUnaryReactor* GetArtifactManifest(grpc::CallbackServerContext* ctx,
                                                const flashmorph::v1::GetArtifactManifestRequest* request,
                                                flashmorph::v1::ArtifactManifest* response) override;

 private:
  const ServiceDeps deps_;
};

}  // namespace fm::server
