// Byte-level BPE tokenizers (GPT-2, Llama-3, Qwen2/Qwen3, SmolLM2 families) read from a Hugging Face
// tokenizer.json or from the plain vocabulary data a GGUF file carries. Encode and Decode give exactly the ids and
// text of the `tokenizers` library (Tokenizer.encode(text, add_special_tokens).ids and
// Tokenizer.decode(ids, skip_special_tokens)) for the supported components; unsupported components are refused
// at load time with UNIMPLEMENTED, malformed input with INVALID_ARGUMENT naming the file and field. Loading never
// crashes on any input bytes. A loaded Tokenizer is immutable (its word cache is internally synchronised): Encode
// and Decode may be called from several threads at once.
//
// Text that is not valid UTF-8 (which Python's `tokenizers` can never receive) is encoded as follows: the input
// is cut into maximal valid runs and maximal invalid byte runs. Valid runs are encoded normally, each as if the
// invalid runs around it were the ends of the text. For byte-level tokenizers each invalid run is encoded as one
// word of byte-level symbols (so DecodeBytes(Encode(x)) == x still holds, and Decode gives x with each invalid
// subpart replaced by U+FFFD); for others each invalid subpart becomes U+FFFD before encoding, as Python's
// bytes.decode(errors="replace") would give.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fm {

namespace tokenizer_internal {
struct TokenizerParts;
}  // namespace tokenizer_internal

// A BPE vocabulary as GGUF files store it (keys tokenizer.ggml.*), as plain data.
struct BpeSpec {
  // Token strings by id, in the byte-level alphabet as stored (tokenizer.ggml.tokens).
  std::vector<std::string> tokens;
  // Merges in rank order, each "left right" (tokenizer.ggml.merges).
  std::vector<std::string> merges;
  // Per token (tokenizer.ggml.token_type), llama.cpp's meanings: 1 normal, 2 unknown, 3 control,
  // 4 user-defined, 5 unused, 6 byte (0, undefined, counts as normal). Empty means all normal. Control and
  // user-defined tokens are matched in the raw text before pre-tokenisation; control tokens are special.
  std::vector<int32_t> token_types;
  // Pre-tokenizer family (tokenizer.ggml.pre): "default" or "gpt2", "smollm", "llama-bpe" or "llama3", "qwen2".
  std::string pre = "default";
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;
  bool add_bos = false;  // Encode(..., add_special_tokens=true) prepends bos
  bool add_eos = false;  // ... and appends eos
  // Names the origin (e.g. the GGUF path) in error messages.
  std::string source_name = "BpeSpec";
};

// One added token (tokenizer.json "added_tokens", or a GGUF control/user-defined token).
struct AddedTokenInfo {
  int32_t id;
  std::string content;
  bool special;
};

class Tokenizer {
 public:
  // NOT_FOUND if the file does not exist; otherwise as FromJsonString, naming `path` in messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJsonFile(const std::string& path);
  // `source_name` names the JSON in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJsonString(std::string_view json, std::string_view source_name);
  // The tokenizer the original tokenizer.json of that family would give. Unknown `pre` names are UNIMPLEMENTED;
  // inconsistent data (merges naming unknown tokens, types of the wrong length, ids out of range) is
  // INVALID_ARGUMENT.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromBpeSpec(const BpeSpec& spec);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text`; with add_special_tokens the post-processor's tokens (e.g. bos) are added. Never fails
  // (see the file comment for invalid UTF-8).
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = true) const;

  // Text of `ids`. Unknown ids are skipped; with skip_special_tokens, special added tokens are left out.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The bytes `ids` stand for, without Decode's final lossy UTF-8 conversion (byte-level decoders map tokens to
  // bytes; the text of other decoders is returned as is). For byte-level tokenizers whose normalizer leaves the
  // text unchanged, DecodeBytes(Encode(x, false)) == x for any bytes x (unless lstrip/rstrip added tokens absorb
  // whitespace).
  std::string DecodeBytes(absl::Span<const int32_t> ids, bool skip_special_tokens = false) const;

  // One more than the largest id of the model vocabulary and added tokens (the embedding rows needed).
  int32_t vocab_size() const;

  // Added tokens take precedence over the model vocabulary, as in `tokenizers`.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token string as `tokenizers`' id_to_token gives it (an added token's content, or its normalized form if
  // it is matched normalized; else the model's byte-level spelling); nullopt for unknown ids.
  // The view lives as long as the Tokenizer.
  std::optional<std::string_view> IdToToken(int32_t id) const;

  // Beginning/end-of-sequence ids when known: from the GGUF data, else the special tokens the post-processor
  // template puts before/after the text, else an added special token with a conventional name
  // (<|begin_of_text|>, <s>, <bos>, <|startoftext|>; <|end_of_text|>, </s>, <eos>, <|endoftext|>). The last is a
  // guess: tokenizer_config.json is authoritative where it exists.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;

  // Whether `id` is a special added token (the ones Decode(..., skip_special_tokens=true) drops).
  bool IsSpecial(int32_t id) const;
  // All added tokens, by ascending id.
  std::vector<AddedTokenInfo> added_tokens() const;

 private:
  explicit Tokenizer(std::unique_ptr<tokenizer_internal::TokenizerParts> parts);
  void EncodeValidText(std::string_view text, std::vector<int32_t>* ids) const;
  std::string DecodeImpl(absl::Span<const int32_t> ids, bool skip_special_tokens, bool lossy) const;

  std::unique_ptr<tokenizer_internal::TokenizerParts> parts_;
};

}  // namespace fm
