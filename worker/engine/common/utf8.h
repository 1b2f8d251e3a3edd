// UTF-8 helpers: strict decoding (the rules of Rust's str, which the `tokenizers` library uses),
// encoding, and Rust's String::from_utf8_lossy (one U+FFFD per maximal invalid subpart). Pure functions on bytes;
// they never read outside the given view.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace fm {

// Decodes the code point that starts at s[pos]. Returns its length in bytes (1..4) and sets *cp, or returns 0 when
// the bytes at pos do not start a valid UTF-8 sequence (overlong forms, surrogates and values above U+10FFFF are
// invalid). Requires pos < s.size().
size_t DecodeUtf8(std::string_view s, size_t pos, char32_t* cp);

// Length of the maximal invalid subpart that starts at s[pos] (the bytes Rust's lossy conversion replaces by one
// U+FFFD). Requires pos < s.size() and DecodeUtf8(s, pos, ...) == 0. Always >= 1.
size_t InvalidUtf8Length(std::string_view s, size_t pos);

// Appends the UTF-8 encoding of cp (which must be a Unicode scalar value).
void AppendUtf8(char32_t cp, std::string* out);

bool IsValidUtf8(std::string_view s);
// Offset of the first byte that does not start a valid UTF-8 sequence; nullopt if `s` is valid.
std::optional<size_t> FindInvalidUtf8(std::string_view s);

// Rust's String::from_utf8_lossy.
std::string Utf8Lossy(std::string_view bytes);

// Number of code points in valid UTF-8 text.
size_t CountChars(std::string_view s);

}  // namespace fm
