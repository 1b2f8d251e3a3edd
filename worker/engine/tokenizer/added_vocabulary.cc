#include "worker/engine/tokenizer/added_vocabulary.h"
#include "worker/engine/common/absl_compat.h"

#include <algorithm>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/tokenizer/unicode_text.h"
#include "worker/engine/common/utf8.h"

namespace fm::tokenizer_internal {
namespace {

// What the Rust regex crate calls a word character (\w with Unicode): the class tokenizers' single_word uses.
constexpr std::string_view kWordCharClass = R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])";

bool SameToken(const AddedTokenSpec& a, const AddedTokenSpec& b) {
  return a.content == b.content && a.special == b.special && a.single_word == b.single_word && a.lstrip == b.lstrip &&
         a.rstrip == b.rstrip && a.normalized == b.normalized;
}

// Start of the character that ends at `pos` (pos > 0, at a char boundary).
size_t PrevCharStart(std::string_view text, size_t pos) {
  size_t p = pos - 1;
  while (p > 0 && (static_cast<uint8_t>(text[p]) & 0xC0) == 0x80) --p;
  return p;
}

}  // namespace

void AddedVocabulary::MatchTrie::Insert(std::string_view pattern, int32_t id) {
  if (pattern.empty()) return;
  if (nodes.empty()) nodes.emplace_back();
  int32_t node = 0;
  for (char c : pattern) {
    const auto b = static_cast<uint8_t>(c);
    auto it = nodes[node].children.find(b);
    if (it == nodes[node].children.end()) {
      const auto child = static_cast<int32_t>(nodes.size());
      nodes[node].children.emplace(b, child);
      nodes.emplace_back();
      node = child;
    } else {
      node = it->second;
    }
  }
  nodes[node].token_id = id;
  first_byte[static_cast<uint8_t>(pattern[0])] = true;
}

size_t AddedVocabulary::MatchTrie::LongestAt(std::string_view text, size_t pos, int32_t* id) const {
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = nodes[node].children.find(static_cast<uint8_t>(text[i]));
    if (it == nodes[node].children.end()) break;
    node = it->second;
    if (nodes[node].token_id >= 0) {
      best = i + 1 - pos;
      *id = nodes[node].token_id;
    }
  }
  return best;
}

absl::StatusOr<std::unique_ptr<AddedVocabulary>> AddedVocabulary::Create(const std::vector<AddedTokenSpec>& tokens,
                                                                         const BpeModel& model,
                                                                         const Normalizer& normalizer) {
  std::unique_ptr<AddedVocabulary> vocab(new AddedVocabulary());
  FM_ASSIGN_OR_RETURN(std::unique_ptr<const Regex> word_char, Regex::FromOniguruma(kWordCharClass));
  vocab->word_char_ = std::move(word_char);

  auto next_id = static_cast<int64_t>(model.size());
  for (const AddedTokenSpec& token : tokens) {
    if (token.content.empty()) continue;
    auto known = vocab->content_to_id_.find(token.content);
    if (known != vocab->content_to_id_.end()) {
      auto existing = vocab->id_to_token_.find(known->second);
      if (existing != vocab->id_to_token_.end() && SameToken(existing->second, token)) continue;
    }
    int32_t id;
    if (known != vocab->content_to_id_.end()) {
      id = known->second;
    } else if (auto model_id = model.TokenToId(token.content)) {
      id = *model_id;
    } else {
      if (next_id > INT32_MAX) return absl::InvalidArgumentError("too many added tokens");
      id = static_cast<int32_t>(next_id++);
    }
    if (token.normalized && normalizer.present()) {
      std::string normed = normalizer.Apply(token.content);
      if (normed != token.content) vocab->normalized_form_.insert_or_assign(id, std::move(normed));
    }
    vocab->content_to_id_.insert_or_assign(token.content, id);
    if (token.special) vocab->special_contents_.insert(token.content);
    vocab->id_to_token_.insert_or_assign(id, token);
    vocab->id_limit_ = std::max(vocab->id_limit_, id + 1);
  }

  // Insert in id order so that, should two tokens share a pattern, the choice does not depend on hashing.
  for (const auto& [id, token] : vocab->Sorted()) {
    if (token->normalized) {
      auto form = vocab->normalized_form_.find(id);
      vocab->normalized_trie_.Insert(form != vocab->normalized_form_.end() ? form->second : token->content, id);
    } else {
      vocab->raw_trie_.Insert(token->content, id);
    }
  }
  return vocab;
}

std::vector<std::pair<int32_t, const AddedTokenSpec*>> AddedVocabulary::Sorted() const {
  std::vector<std::pair<int32_t, const AddedTokenSpec*>> out;
  out.reserve(id_to_token_.size());
  for (const auto& [id, token] : id_to_token_) out.emplace_back(id, &token);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

std::optional<int32_t> AddedVocabulary::TokenToId(std::string_view content) const {
  auto it = content_to_id_.find(Sv(content));
  if (it == content_to_id_.end()) return std::nullopt;
  return it->second;
}

const AddedTokenSpec* AddedVocabulary::Find(int32_t id) const {
  auto it = id_to_token_.find(id);
  return it == id_to_token_.end() ? nullptr : &it->second;
}

const std::string* AddedVocabulary::DecodeForm(int32_t id) const {
  auto it = id_to_token_.find(id);
  if (it == id_to_token_.end()) return nullptr;
  auto form = normalized_form_.find(id);
  return form != normalized_form_.end() ? &form->second : &it->second.content;
}

bool AddedVocabulary::WordCharBefore(std::string_view text, size_t pos) const {
  return pos > 0 && word_char_->MatchesAt(text, PrevCharStart(text, pos));
}

bool AddedVocabulary::WordCharAt(std::string_view text, size_t pos) const {
  return pos < text.size() && word_char_->MatchesAt(text, pos);
}

size_t AddedVocabulary::TrailingSpaceStart(std::string_view text, size_t to) const {
  size_t p = to;
  while (p > 0) {
    const size_t s = PrevCharStart(text, p);
    char32_t cp;
    if (DecodeUtf8(text, s, &cp) == 0 || !IsWhiteSpaceChar(cp)) break;
    p = s;
  }
  return p;
}

size_t AddedVocabulary::LeadingSpaceEnd(std::string_view text, size_t from) const {
  size_t p = from;
  while (p < text.size()) {
    char32_t cp;
    const size_t n = DecodeUtf8(text, p, &cp);
    if (n == 0 || !IsWhiteSpaceChar(cp)) break;
    p += n;
  }
  return p;
}

void AddedVocabulary::Extract(std::string_view text, bool normalized_kind, std::vector<Piece>* out) const {
  if (text.empty()) return;
  const MatchTrie& trie = Trie(normalized_kind);
  if (trie.nodes.empty()) {
    out->push_back({std::string(text), -1});
    return;
  }
  size_t start_offset = 0;
  size_t search = 0;
  while (search < text.size()) {
    // Leftmost-longest match at or after `search`.
    size_t start = search;
    size_t length = 0;
    int32_t id = -1;
    for (; start < text.size(); ++start) {
      if (!trie.first_byte[static_cast<uint8_t>(text[start])]) continue;
      length = trie.LongestAt(text, start, &id);
      if (length > 0) break;
    }
    if (length == 0) break;
    size_t stop = start + length;
    search = stop;
    const AddedTokenSpec& token = id_to_token_.at(id);
    if (token.single_word) {
      const bool start_space = start == 0 || !WordCharBefore(text, start);
      const bool stop_space = stop == text.size() || !WordCharAt(text, stop);
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) start = std::max(TrailingSpaceStart(text, start), start_offset);
    if (token.rstrip) stop = LeadingSpaceEnd(text, stop);
    if (start_offset < start) out->push_back({std::string(text.substr(start_offset, start - start_offset)), -1});
    out->push_back({std::string(), id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out->push_back({std::string(text.substr(start_offset)), -1});
}

}  // namespace fm::tokenizer_internal
