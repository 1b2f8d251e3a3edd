// Debian's Abseil is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0), which does not
// convert from std::string_view. Sv() bridges the two for StrCat arguments and heterogeneous hash lookups.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace fm {

inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace fm
