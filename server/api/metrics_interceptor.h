// Counts every finished RPC by method and status code and times it (flashmorph_grpc_requests_total,
// flashmorph_grpc_request_duration_seconds), as a gRPC server interceptor so no handler can forget it.
#pragma once

#include <grpcpp/support/server_interceptor.h>

namespace fm::server {

class ServerMetrics;

class MetricsInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(ServerMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

 private:
  ServerMetrics* const metrics_;
};

}  // namespace fm::server
