// Pre-tokenizer split patterns of well-known byte-level BPE tokenizers, as their tokenizer.json files write them
// (Oniguruma syntax). These are data: copies of the published specifications.
#pragma once

#include <string_view>

namespace fm::tokenizer_internal {

// The GPT-2 pattern that the ByteLevel pre-tokenizer uses when use_regex is true.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Llama-3's Split pattern (meta-llama/Meta-Llama-3-8B tokenizer.json).
inline constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Qwen2's (and Qwen2.5's, Qwen3's) Split pattern: as Llama-3's, but numbers split into single digits.
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace fm::tokenizer_internal
