// Worker-visible paths from the locations in specs and leases. A location is an absolute path or a `file://` URI
// (empty host or "localhost"; percent-escapes decoded). Other schemes, relative paths and malformed escapes are
// INVALID_ARGUMENT naming the field, so a spec the deployment cannot read fails as a user error.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fm::worker {

absl::StatusOr<std::string> PathFromUri(std::string_view uri, std::string_view field);

}  // namespace fm::worker
