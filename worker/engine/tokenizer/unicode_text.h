// Unicode operations the tokenizer pipeline needs, on valid UTF-8: normal forms (utf8proc), per-character
// lowercasing as Rust's char::to_lowercase does it, and the character predicates of the pre-tokenizers.
#pragma once

#include <string>
#include <string_view>

namespace fm::tokenizer_internal {

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };

// Returns `text` in the given normal form. Pure ASCII text is returned unchanged without calling utf8proc.
// `text` must be valid UTF-8 (the tokenizer validates input first); should utf8proc still fail, the text is
// returned unchanged.
std::string ToNormalForm(std::string_view text, NormalForm form);

// Lowercases each character with its full Unicode lowercase mapping, character by character (no context-sensitive
// rules such as the final sigma), as the `tokenizers` Lowercase normalizer does.
std::string LowercaseChars(std::string_view text);

// Rust's char::is_numeric: general category Nd, Nl or No.
bool IsNumericChar(char32_t cp);

// Unicode White_Space property (Rust's char::is_whitespace).
bool IsWhiteSpaceChar(char32_t cp);

}  // namespace fm::tokenizer_internal
