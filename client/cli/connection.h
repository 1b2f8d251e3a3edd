// The CLI's connection to flashmorphd: one gRPC channel (plaintext, or TLS with optional client certificate), the
// bearer token sent as "authorization: Bearer <token>" metadata on every call, a per-call deadline for unary calls,
// and retries of UNAVAILABLE with exponential backoff and jitter.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashmorph/v1/conversion_service.grpc.pb.h"

namespace fm::client {

struct RetryPolicy {
  // Attempts of one unary call before giving up (about 4 s of backoff with the defaults).
  int max_attempts = 5;
  // Consecutive attempts of one stream that receive nothing before giving up (about 45 s with the defaults).
  int max_stream_attempts = 10;
  std::chrono::milliseconds initial_backoff{250};
  std::chrono::milliseconds max_backoff{10000};
};

// Exponential backoff: Next() returns initial, 2x, 4x ... up to max, each scaled by a random factor in [0.5, 1];
// Reset() starts over.
class Backoff {
 public:
  explicit Backoff(const RetryPolicy& policy) : policy_(policy) {}
  std::chrono::milliseconds Next();
  void Reset() { attempt_ = 0; }

 private:
  RetryPolicy policy_;
  int attempt_ = 0;
};

struct ConnectionOptions {
  std::string server = "127.0.0.1:50051";  // host:port, or any gRPC target
  std::string token;                       // bearer token; empty: none
  std::string token_file;                  // file holding the token (surrounding whitespace ignored)
  bool tls = false;                        // TLS with the system roots (implied by the three files below)
  std::string tls_ca, tls_cert, tls_key;   // PEM files: roots; client certificate chain and key
  double timeout_seconds = 30;             // deadline of each unary call; 0 = none (streams never have one)
  RetryPolicy retry;
};

class Connection {
 public:
  // Reads the token and TLS files (NOT_FOUND / INVALID_ARGUMENT naming the file) and creates the channel; does not
  // connect (the first call does).
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const ConnectionOptions& options);

  flashmorph::v1::ConversionService::StubInterface& stub() { return *stub_; }
  const RetryPolicy& retry() const { return options_.retry; }

  // A context carrying the token; with `unary`, also the deadline.
  std::unique_ptr<grpc::ClientContext> NewContext(bool unary) const;

  // Calls `call` with a fresh unary context until it returns anything but UNAVAILABLE or the attempts are used up.
  grpc::Status CallWithRetry(const std::function<grpc::Status(grpc::ClientContext&)>& call) const;

 private:
  Connection(ConnectionOptions options, std::string token,
             std::unique_ptr<flashmorph::v1::ConversionService::StubInterface> stub)
      : options_(std::move(options)), token_(std::move(token)), stub_(std::move(stub)) {}

  ConnectionOptions options_;
  std::string token_;
  std::unique_ptr<flashmorph::v1::ConversionService::StubInterface> stub_;
};

// "INVALID_ARGUMENT" etc.
std::string StatusCodeName(grpc::StatusCode code);
// "<CODE>: <message>".
std::string FormatStatus(const grpc::Status& status);
std::string FormatStatus(const absl::Status& status);

// Normalises "abc", "jobs/abc" and "operations/abc" to "jobs/abc".
std::string JobName(const std::string& name_or_id);

}  // namespace fm::client
