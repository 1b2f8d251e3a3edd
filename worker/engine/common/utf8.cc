#include "worker/engine/common/utf8.h"

#include <cstdint>

namespace fm {
namespace {

// Scans the sequence at s[pos]. Returns the number of bytes that form a valid prefix of a sequence (the lead byte
// plus following continuation bytes that are allowed there) and whether the sequence is complete.
size_t ScanSequence(std::string_view s, size_t pos, bool* complete, char32_t* cp) {
  const auto b0 = static_cast<uint8_t>(s[pos]);
  *complete = false;
  if (b0 < 0x80) {
    *complete = true;
    *cp = b0;
    return 1;
  }
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  char32_t value;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
    value = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    value = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    value = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;  // continuation byte, C0/C1 or F5..FF: invalid on its own
  }
  size_t got = 1;
  while (got < need) {
    if (pos + got >= s.size()) return got;
    const auto b = static_cast<uint8_t>(s[pos + got]);
    const uint8_t l = got == 1 ? lo : 0x80;
    const uint8_t h = got == 1 ? hi : 0xBF;
    if (b < l || b > h) return got;
    value = (value << 6) | (b & 0x3F);
    ++got;
  }
  *complete = true;
  *cp = value;
  return need;
}

}  // namespace

size_t DecodeUtf8(std::string_view s, size_t pos, char32_t* cp) {
  bool complete;
  size_t n = ScanSequence(s, pos, &complete, cp);
  return complete ? n : 0;
}

size_t InvalidUtf8Length(std::string_view s, size_t pos) {
  bool complete;
  char32_t cp;
  size_t n = ScanSequence(s, pos, &complete, &cp);
  return n == 0 ? 1 : n;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::optional<size_t> FindInvalidUtf8(std::string_view s) {
  char32_t cp;
  for (size_t pos = 0; pos < s.size();) {
    size_t len = DecodeUtf8(s, pos, &cp);
    if (len == 0) return pos;
    pos += len;
  }
  return std::nullopt;
}

bool IsValidUtf8(std::string_view s) {
  size_t pos = 0;
  char32_t cp;
  while (pos < s.size()) {
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t n = DecodeUtf8(s, pos, &cp);
    if (n == 0) return false;
    pos += n;
  }
  return true;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  char32_t cp;
  while (pos < bytes.size()) {
    size_t n = DecodeUtf8(bytes, pos, &cp);
    if (n > 0) {
      out.append(bytes.substr(pos, n));
      pos += n;
    } else {
      out.append("\xEF\xBF\xBD");
      pos += InvalidUtf8Length(bytes, pos);
    }
  }
  return out;
}

size_t CountChars(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<uint8_t>(c) & 0xC0) != 0x80;
  return n;
}

}  // namespace fm
