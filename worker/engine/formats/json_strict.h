// Strict JSON parsing for untrusted file headers (safetensors headers, checkpoint index files).
// Beyond RFC 8259 syntax it rejects duplicate object keys, NUL bytes, invalid UTF-8 and nesting deeper than a
// caller-given limit, and it never throws. Error messages give the location as a path of keys and array indices,
// e.g. `at /model.embed/shape/1`, so callers can name the offending entry.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace fm {

// Parses `text` as exactly one JSON value (JSON whitespace around it allowed). INVALID_ARGUMENT on any defect;
// RESOURCE_EXHAUSTED if memory runs out. Objects of the result are key-sorted (nlohmann::json).
absl::StatusOr<nlohmann::json> ParseStrictJson(std::string_view text, int max_depth);

// "'name'" with non-printable and non-ASCII bytes hex-escaped: safe to put any untrusted name into a message.
std::string QuoteForMessage(std::string_view name);

}  // namespace fm
