// Test helper: grpc.health.v1.Health/Check (service "") through a generic stub, so tests need no health stubs.
#pragma once

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

namespace fm::testing {

// Returns the RPC status; on OK, `serving` says whether the response is {status: SERVING} (field 1, varint 1).
inline grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, bool* serving) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::Slice empty_message(std::string{});
  grpc::ByteBuffer request(&empty_message, 1);  // HealthCheckRequest{} serialises to no bytes
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status status = done.get_future().get();
  *serving = false;
  if (status.ok()) {
    std::string bytes;
    std::vector<grpc::Slice> slices;
    if (response.Length() > 0 && response.Dump(&slices).ok()) {
      for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    *serving = bytes == std::string("\x08\x01", 2);
  }
  return status;
}

}  // namespace fm::testing
