// fm::StrCat: concatenates strings, string views and numbers into a std::string.
// (Debian's abseil is built with its own absl::string_view, so absl::StrCat rejects std::string_view.)
#pragma once

#include <charconv>
#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/string_view.h"

namespace fm {
namespace str_cat_internal {

inline void Append(std::string& out, std::string_view s) { out.append(s.data(), s.size()); }
#if !ABSL_USES_STD_STRING_VIEW
// Debian's Abseil has its own string_view (absl::Status::message() returns it).
inline void Append(std::string& out, absl::string_view s) { out.append(s.data(), s.size()); }
inline void Append(std::string& out, const std::string& s) { out.append(s); }
#endif
inline void Append(std::string& out, const char* s) { out.append(s ? s : "(null)"); }
inline void Append(std::string& out, char c) { out.push_back(c); }
inline void Append(std::string& out, bool b) { out.append(b ? "true" : "false"); }
template <typename T>
  requires(std::integral<T> && !std::same_as<T, bool> && !std::same_as<T, char>)
void Append(std::string& out, T v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, r.ptr);
}
template <std::floating_point T>
void Append(std::string& out, T v) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);  // shortest round-trip form
  out.append(buf, r.ptr);
}

}  // namespace str_cat_internal

template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  (str_cat_internal::Append(out, args), ...);
  return out;
}

}  // namespace fm
