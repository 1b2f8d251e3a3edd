// The identity of a CreateConversionJob request for idempotency (request_id reuse): equal tenant and equal
// submitted spec give the same fingerprint in this build; any change of either changes it.
#pragma once

#include <string>
#include <string_view>

#include "flashmorph/v1/conversion_spec.pb.h"

namespace fm::server {

// Lowercase hex SHA-256 over the tenant (length-prefixed) and the spec's deterministic serialization, as submitted
// (before defaults are resolved). Deterministic serialization is stable within one protobuf version, not across
// versions with different unknown-field handling; request ids are remembered for about a day, so that suffices.
std::string RequestFingerprint(std::string_view tenant, const flashmorph::v1::ConversionSpec& submitted);

}  // namespace fm::server
