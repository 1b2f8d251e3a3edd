// google.longrunning.Operations over the jobs: "operations/{id}" is job "jobs/{id}". Get/List/Cancel/Wait;
// DeleteOperation is UNIMPLEMENTED (jobs are kept). WaitOperation returns when the job ends or the timeout
// (default and maximum 60 s) passes, whichever is first, with the operation as it is then.
#pragma once

#include "google/longrunning/operations.grpc.pb.h"
#include "server/api/service_deps.h"
#include "server/api/timer_notifier.h"

namespace fm::server {

class OperationsServiceImpl final : public google::longrunning::Operations::CallbackService {
 public:
  explicit OperationsServiceImpl(const ServiceDeps& deps) : deps_(deps), timer_(deps.hub) {}

  grpc::ServerUnaryReactor* ListOperations(grpc::CallbackServerContext* ctx,
                                           const google::longrunning::ListOperationsRequest* request,
                                           google::longrunning::ListOperationsResponse* response) override;
  grpc::ServerUnaryReactor* GetOperation(grpc::CallbackServerContext* ctx,
                                         const google::longrunning::GetOperationRequest* request,
                                         google::longrunning::Operation* response) override;
  grpc::ServerUnaryReactor* DeleteOperation(grpc::CallbackServerContext* ctx,
                                            const google::longrunning::DeleteOperationRequest* request,
                                            google::protobuf::Empty* response) override;
  grpc::ServerUnaryReactor* CancelOperation(grpc::CallbackServerContext* ctx,
                                            const google::longrunning::CancelOperationRequest* request,
                                            google::protobuf::Empty* response) override;
  grpc::ServerUnaryReactor* WaitOperation(grpc::CallbackServerContext* ctx,
                                          const google::longrunning::WaitOperationRequest* request,
                                          google::longrunning::Operation* response) override;

 private:
  const ServiceDeps deps_;
  TimerNotifier timer_;
};

}  // namespace fm::server
