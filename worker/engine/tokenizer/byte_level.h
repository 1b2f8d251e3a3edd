// The GPT-2 byte-level alphabet: each of the 256 byte values is shown as one printable Unicode character
// (printable Latin-1 bytes as themselves, the rest as U+0100.. in byte order). Encoding maps bytes to those
// characters; decoding maps them back.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace fm::tokenizer_internal {

// The alphabet character (code point) that stands for `byte`.
char32_t ByteToChar(uint8_t byte);

// The UTF-8 spelling of ByteToChar(byte).
std::string_view ByteToCharUtf8(uint8_t byte);

// Appends the byte-level spelling of every byte of `bytes` (any bytes, not only valid UTF-8).
void AppendByteLevel(std::string_view bytes, std::string* out);

// If every character of `token` (valid UTF-8) belongs to the alphabet, appends the bytes they stand for and
// returns true; otherwise appends nothing and returns false.
bool DecodeByteLevel(std::string_view token, std::string* out);

}  // namespace fm::tokenizer_internal
