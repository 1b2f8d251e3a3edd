// gRPC transport credentials from PEM files, for flashmorphd (server side) and the worker / CLI (client side).
// Every file is read here, so a missing or unreadable file, or one that holds no PEM block of the expected kind,
// is an error naming the file (NOT_FOUND, PERMISSION_DENIED or INVALID_ARGUMENT) instead of a failed handshake
// later. No certificate configured means plaintext (insecure) credentials.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace fm::server {

struct TlsFiles {
  std::string cert_chain_path;   // server certificate chain (PEM); empty: insecure
  std::string private_key_path;  // its private key (PEM); required with a certificate
  std::string client_ca_path;    // CA bundle that verifies client certificates (PEM); optional
  // Clients must present a certificate signed by client_ca (mutual TLS); needs client_ca_path. Without it, a
  // client certificate is verified when one is presented.
  bool require_client_cert = false;
};

// Server credentials: SSL with the cert/key pair (and client CA), or insecure when no certificate is given.
// INVALID_ARGUMENT for an inconsistent combination (key without certificate, client CA or require_client_cert
// without certificate, require_client_cert without client CA).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files);

// Channel credentials: insecure when all three paths are empty; otherwise SSL verifying the server against
// `ca_path` (or gRPC's default roots when empty), presenting the client certificate when given (certificate and
// key come together).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const std::string& ca_path,
                                                                                 const std::string& client_cert_path,
                                                                                 const std::string& client_key_path);

// The whole file; NOT_FOUND / PERMISSION_DENIED / INVALID_ARGUMENT (directory, empty, over 1 MiB) naming `path`.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, std::string_view what);

}  // namespace fm::server
