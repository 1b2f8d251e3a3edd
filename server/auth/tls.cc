#include "server/auth/tls.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm::server {
namespace {

constexpr size_t kMaxPemBytes = 1 << 20;

absl::Status ExpectPem(const std::string& text, const std::string& path, std::string_view what, bool key) {
  const bool ok =
      key ? (text.find("-----BEGIN ") != std::string::npos && text.find("PRIVATE KEY-----") != std::string::npos)
          : text.find("-----BEGIN CERTIFICATE-----") != std::string::npos;
  if (!ok)
    return absl::InvalidArgumentError(
        StrCat(what, " ", path, ": no PEM ", key ? "private key" : "certificate", " block found"));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadPem(const std::string& path, std::string_view what, bool key) {
  FM_ASSIGN_OR_RETURN(std::string text, ReadPemFile(path, what));
  FM_RETURN_IF_ERROR(ExpectPem(text, path, what, key));
  return text;
}

}  // namespace

absl::StatusOr<std::string> ReadPemFile(const std::string& path, std::string_view what) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string msg = StrCat(what, " ", path, ": cannot open: ", std::strerror(err));
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
    return absl::NotFoundError(msg);
  }
  std::string out;
  struct stat st;
  absl::Status status;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    status = absl::InvalidArgumentError(StrCat(what, " ", path, ": not a regular file"));
  } else if (static_cast<uint64_t>(st.st_size) > kMaxPemBytes) {
    status = absl::InvalidArgumentError(StrCat(what, " ", path, ": larger than 1 MiB"));
  } else {
    char buf[16384];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = absl::DataLossError(StrCat(what, " ", path, ": read error: ", std::strerror(errno)));
        break;
      }
      if (n == 0) break;
      out.append(buf, static_cast<size_t>(n));
      if (out.size() > kMaxPemBytes) {
        status = absl::InvalidArgumentError(StrCat(what, " ", path, ": larger than 1 MiB"));
        break;
      }
    }
    if (status.ok() && out.empty()) status = absl::InvalidArgumentError(StrCat(what, " ", path, ": empty file"));
  }
  ::close(fd);
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files) {
  if (files.cert_chain_path.empty()) {
    if (!files.private_key_path.empty())
      return absl::InvalidArgumentError("TLS: a private key was given without a certificate chain");
    if (!files.client_ca_path.empty() || files.require_client_cert)
      return absl::InvalidArgumentError("TLS: client certificate verification needs a server certificate and key");
    return grpc::InsecureServerCredentials();
  }
  if (files.private_key_path.empty())
    return absl::InvalidArgumentError(
        StrCat("TLS: certificate chain ", files.cert_chain_path, " was given without its private key"));
  if (files.require_client_cert && files.client_ca_path.empty())
    return absl::InvalidArgumentError("TLS: require_client_cert needs a client CA file");
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  FM_ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(files.cert_chain_path, "TLS certificate chain", false));
  FM_ASSIGN_OR_RETURN(pair.private_key, ReadPem(files.private_key_path, "TLS private key", true));
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!files.client_ca_path.empty()) {
    FM_ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(files.client_ca_path, "TLS client CA", false));
    options.client_certificate_request = files.require_client_cert
                                             ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                             : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  } else {
    options.client_certificate_request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::SslServerCredentials(options);
  if (creds == nullptr) return absl::InternalError("TLS: gRPC could not create server credentials");
  return creds;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const std::string& ca_path,
                                                                                 const std::string& client_cert_path,
                                                                                 const std::string& client_key_path) {
  if (ca_path.empty() && client_cert_path.empty() && client_key_path.empty()) return grpc::InsecureChannelCredentials();
  if (client_cert_path.empty() != client_key_path.empty())
    return absl::InvalidArgumentError("TLS: a client certificate and its private key must be given together");
  grpc::SslCredentialsOptions options;
  if (!ca_path.empty()) {
    FM_ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(ca_path, "TLS CA", false));
  }
  if (!client_cert_path.empty()) {
    FM_ASSIGN_OR_RETURN(options.pem_cert_chain, ReadPem(client_cert_path, "TLS client certificate", false));
    FM_ASSIGN_OR_RETURN(options.pem_private_key, ReadPem(client_key_path, "TLS client private key", true));
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::SslCredentials(options);
  if (creds == nullptr) return absl::InternalError("TLS: gRPC could not create channel credentials");
  return creds;
}

}  // namespace fm::server
