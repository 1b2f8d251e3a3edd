// The tokenizer a GGUF file embeds (tokenizer.ggml.*: model "gpt2" byte-level BPE with tokens, merges, token types,
// pre-tokenizer family, bos/eos and add-bos/eos flags), as an fm::Tokenizer.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "worker/engine/gguf/gguf_file.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace fm {

// UNIMPLEMENTED for tokenizer models other than "gpt2" (e.g. SentencePiece "llama"); INVALID_ARGUMENT for
// inconsistent data. Errors name the file.
absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromGguf(const GgufFile& file);

}  // namespace fm
