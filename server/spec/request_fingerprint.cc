#include "server/spec/request_fingerprint.h"

#include <cstdint>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "worker/engine/formats/sha256.h"

namespace fm::server {

std::string RequestFingerprint(std::string_view tenant, const flashmorph::v1::ConversionSpec& submitted) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream raw(&bytes);
    google::protobuf::io::CodedOutputStream out(&raw);
    out.SetSerializationDeterministic(true);
    submitted.SerializeToCodedStream(&out);
  }
  Sha256 h;
  uint8_t len[8];
  uint64_t n = tenant.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  h.Update(len, sizeof(len));
  h.Update(tenant);
  h.Update(bytes);
  return h.HexDigest();
}

}  // namespace fm::server
