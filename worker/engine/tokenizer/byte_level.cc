#include "worker/engine/tokenizer/byte_level.h"

#include <array>

#include "worker/engine/common/utf8.h"

namespace fm::tokenizer_internal {
namespace {

struct Tables {
  Tables() {
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
      to_char[b] = cp;
      AppendUtf8(cp, &to_utf8[b]);
    }
    to_byte.fill(-1);
    for (int b = 0; b < 256; ++b) to_byte[to_char[b]] = static_cast<int16_t>(b);
  }
  std::array<char32_t, 256> to_char;
  std::array<std::string, 256> to_utf8;
  std::array<int16_t, 324> to_byte;  // indexed by code point; the alphabet lies below U+0144
};

const Tables& GetTables() {
  static const Tables* tables = new Tables();
  return *tables;
}

}  // namespace

char32_t ByteToChar(uint8_t byte) { return GetTables().to_char[byte]; }

std::string_view ByteToCharUtf8(uint8_t byte) { return GetTables().to_utf8[byte]; }

void AppendByteLevel(std::string_view bytes, std::string* out) {
  const Tables& t = GetTables();
  for (char c : bytes) out->append(t.to_utf8[static_cast<uint8_t>(c)]);
}

bool DecodeByteLevel(std::string_view token, std::string* out) {
  const Tables& t = GetTables();
  const size_t mark = out->size();
  size_t pos = 0;
  while (pos < token.size()) {
    char32_t cp;
    size_t n = DecodeUtf8(token, pos, &cp);
    if (n == 0 || cp >= t.to_byte.size() || t.to_byte[cp] < 0) {
      out->resize(mark);
      return false;
    }
    out->push_back(static_cast<char>(t.to_byte[cp]));
    pos += n;
  }
  return true;
}

}  // namespace fm::tokenizer_internal
