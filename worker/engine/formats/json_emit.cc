#include "worker/engine/formats/json_emit.h"

#include <cstdint>

namespace fm {
namespace {

constexpr char kHex[] = "0123456789abcdef";

void AppendU4(std::string* out, uint32_t unit) {
  out->append("\\u");
  for (int shift = 12; shift >= 0; shift -= 4) out->push_back(kHex[(unit >> shift) & 0xF]);
}

// Escapes shared by both dialects; returns false for a byte that needs no short escape.
bool AppendShortEscape(std::string* out, uint8_t c) {
  switch (c) {
    case '"': out->append("\\\""); return true;
    case '\\': out->append("\\\\"); return true;
    case '\b': out->append("\\b"); return true;
    case '\f': out->append("\\f"); return true;
    case '\n': out->append("\\n"); return true;
    case '\r': out->append("\\r"); return true;
    case '\t': out->append("\\t"); return true;
    default: return false;
  }
}

}  // namespace

void AppendSerdeJsonString(std::string* out, std::string_view text) {
  out->push_back('"');
  for (char ch : text) {
    const auto c = static_cast<uint8_t>(ch);
    if (AppendShortEscape(out, c)) continue;
    if (c < 0x20) {
      AppendU4(out, c);
    } else {
      out->push_back(ch);
    }
  }
  out->push_back('"');
}

void AppendPythonAsciiJsonString(std::string* out, std::string_view text) {
  out->push_back('"');
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      if (AppendShortEscape(out, c)) continue;
      if (c < 0x20 || c == 0x7F) {
        AppendU4(out, c);
      } else {
        out->push_back(static_cast<char>(c));
      }
      continue;
    }
    // Decode one multi-byte sequence (input is valid UTF-8; be defensive about truncation anyway).
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (len > n - i) len = n - i;
    uint32_t cp = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
    i += len;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      AppendU4(out, 0xD800 | (cp >> 10));
      AppendU4(out, 0xDC00 | (cp & 0x3FF));
    } else {
      AppendU4(out, cp);
    }
  }
  out->push_back('"');
}

}  // namespace fm
