// Added tokens (tokenizer.json "added_tokens"; GGUF control and user-defined tokens): ids assigned as `tokenizers`
// assigns them, and their extraction from raw text before normalisation (tokens with normalized=false) and from
// normalized text (normalized=true), leftmost-longest, honouring single_word, lstrip and rstrip exactly as
// `tokenizers` does. Immutable after construction; safe to use from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "worker/engine/common/absl_compat.h"
#include "worker/engine/tokenizer/bpe_model.h"
#include "worker/engine/tokenizer/normalizer.h"
#include "worker/engine/tokenizer/regex.h"

namespace fm::tokenizer_internal {

struct AddedTokenSpec {
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
};

class AddedVocabulary {
 public:
  // A piece of text: either plain text still to be tokenized, or an extracted added token.
  struct Piece {
    std::string text;
    int32_t token_id = -1;  // >= 0 for an added token
  };

  // Adds `tokens` in order the way tokenizers' add_tokens does: an empty content is skipped; a content already
  // known (added earlier or in the model vocabulary) keeps that id; others get ids from model.size() upwards.
  // Tokens with normalized=true match their normalized form.
  static absl::StatusOr<std::unique_ptr<AddedVocabulary>> Create(const std::vector<AddedTokenSpec>& tokens,
                                                                 const BpeModel& model, const Normalizer& normalizer);

  // Splits `text` into pieces: added tokens of the requested kind and the text around them (empty text between
  // matches is dropped).
  void Extract(std::string_view text, bool normalized_kind, std::vector<Piece>* out) const;

  // Whether any added token of the kind exists (lets callers skip extraction).
  bool has_tokens(bool normalized_kind) const { return !Trie(normalized_kind).nodes.empty(); }

  std::optional<int32_t> TokenToId(std::string_view content) const;
  // The content of an added token (nullptr if `id` is not one).
  const AddedTokenSpec* Find(int32_t id) const;
  // The string decoding uses for an added token: its normalized form when it is matched normalized and the
  // normalizer changes it, else its content. nullptr if `id` is not an added token.
  const std::string* DecodeForm(int32_t id) const;
  bool IsSpecialContent(std::string_view content) const { return special_contents_.contains(Sv(content)); }

  // Added tokens by ascending id.
  std::vector<std::pair<int32_t, const AddedTokenSpec*>> Sorted() const;
  int32_t id_limit() const { return id_limit_; }

 private:
  // A byte trie over token patterns; node 0 is the root (absent when there are no patterns).
  struct TrieNode {
    absl::flat_hash_map<uint8_t, int32_t> children;
    int32_t token_id = -1;  // a pattern ends here
  };
  struct MatchTrie {
    std::vector<TrieNode> nodes;
    std::array<bool, 256> first_byte{};
    void Insert(std::string_view pattern, int32_t id);
    // Longest pattern starting at pos: its length and id, or length 0.
    size_t LongestAt(std::string_view text, size_t pos, int32_t* id) const;
  };

  AddedVocabulary() = default;
  const MatchTrie& Trie(bool normalized_kind) const { return normalized_kind ? normalized_trie_ : raw_trie_; }
  size_t LeadingSpaceEnd(std::string_view text, size_t from) const;
  size_t TrailingSpaceStart(std::string_view text, size_t to) const;
  bool WordCharBefore(std::string_view text, size_t pos) const;
  bool WordCharAt(std::string_view text, size_t pos) const;

  absl::flat_hash_map<std::string, int32_t> content_to_id_;
  absl::flat_hash_map<int32_t, AddedTokenSpec> id_to_token_;
  absl::flat_hash_map<int32_t, std::string> normalized_form_;
  absl::flat_hash_set<std::string> special_contents_;
  MatchTrie raw_trie_;
  MatchTrie normalized_trie_;
  int32_t id_limit_ = 0;
  std::shared_ptr<const Regex> word_char_;  // Rust regex's \w
};

}  // namespace fm::tokenizer_internal
