#include "client/cli/connection.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "worker/engine/common/str_cat.h"

namespace fm::client {
namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(StrCat(what, " ", path, ": cannot open"));
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) return absl::DataLossError(StrCat(what, " ", path, ": read error"));
  return s.str();
}

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

}  // namespace

std::chrono::milliseconds Backoff::Next() {
  const double base = static_cast<double>(policy_.initial_backoff.count()) * std::pow(2.0, std::min(attempt_, 30));
  const double capped = std::min(base, static_cast<double>(policy_.max_backoff.count()));
  ++attempt_;
  thread_local std::mt19937_64 rng{std::random_device{}()};
  const double jitter = std::uniform_real_distribution<double>(0.5, 1.0)(rng);
  return std::chrono::milliseconds(static_cast<int64_t>(capped * jitter));
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const ConnectionOptions& options) {
  std::string token = options.token;
  if (!options.token_file.empty()) {
    auto text = ReadWholeFile(options.token_file, "--token-file");
    if (!text.ok()) return text.status();
    token = Trim(*text);
    if (token.empty()) return absl::InvalidArgumentError(StrCat("--token-file ", options.token_file, ": empty"));
  }
  if (token.find_first_of("\r\n") != std::string::npos) {
    return absl::InvalidArgumentError("the token must be one line");
  }
  if (options.server.empty()) return absl::InvalidArgumentError("--server is empty");
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options.tls || !options.tls_ca.empty() || !options.tls_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca.empty()) {
      auto ca = ReadWholeFile(options.tls_ca, "--tls-ca");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (!options.tls_cert.empty()) {
      auto cert = ReadWholeFile(options.tls_cert, "--tls-cert");
      if (!cert.ok()) return cert.status();
      auto key = ReadWholeFile(options.tls_key, "--tls-key");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  auto channel = grpc::CreateCustomChannel(options.server, creds, args);
  return std::unique_ptr<Connection>(
      new Connection(options, std::move(token), flashmorph::v1::ConversionService::NewStub(channel)));
}

std::unique_ptr<grpc::ClientContext> Connection::NewContext(bool unary) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token_.empty()) ctx->AddMetadata("authorization", StrCat("Bearer ", token_));
  if (unary && options_.timeout_seconds > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::microseconds(static_cast<int64_t>(options_.timeout_seconds * 1e6)));
  }
  return ctx;
}

grpc::Status Connection::CallWithRetry(const std::function<grpc::Status(grpc::ClientContext&)>& call) const {
  Backoff backoff(options_.retry);
  for (int attempt = 1;; ++attempt) {
    auto ctx = NewContext(/*unary=*/true);
    grpc::Status s = call(*ctx);
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE || attempt >= options_.retry.max_attempts) return s;
    std::this_thread::sleep_for(backoff.Next());
  }
}

std::string StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    default:
      return StrCat("CODE_", static_cast<int>(code));
  }
}

std::string FormatStatus(const grpc::Status& status) {
  return StrCat(StatusCodeName(status.error_code()), ": ", status.error_message());
}

std::string FormatStatus(const absl::Status& status) {
  return StrCat(StatusCodeName(static_cast<grpc::StatusCode>(status.code())), ": ", std::string(status.message()));
}

std::string JobName(const std::string& name) {
  constexpr std::string_view kJobs = "jobs/", kOps = "operations/";
  if (name.rfind(kJobs, 0) == 0) return name;
  if (name.rfind(kOps, 0) == 0) return StrCat(kJobs, name.substr(kOps.size()));
  return StrCat(kJobs, name);
}

}  // namespace fm::client
