#include "worker/engine/tokenizer/bpe_model.h"
#include "worker/engine/common/absl_compat.h"

#include <queue>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/engine/common/utf8.h"

namespace fm::tokenizer_internal {
namespace {

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  size_t len;  // bytes of the word this symbol covers; 0 once merged into its left neighbour
};

struct QueuedMerge {
  uint32_t rank;
  int32_t pos;
  int32_t new_id;
};

// Orders the priority queue as a min-heap on (rank, pos).
struct LaterMerge {
  bool operator()(const QueuedMerge& a, const QueuedMerge& b) const {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.pos > b.pos;
  }
};

void AddSymbol(int32_t id, size_t len, std::vector<Symbol>* symbols) {
  const auto n = static_cast<int32_t>(symbols->size());
  if (n > 0) (*symbols)[n - 1].next = n;
  symbols->push_back({id, n - 1, -1, len});
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    std::vector<std::pair<std::string, int32_t>> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
    Options options, std::string_view source) {
  std::unique_ptr<BpeModel> model(new BpeModel());
  model->vocab_.reserve(vocab.size());
  for (auto& [token, id] : vocab) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat(Sv(source), ": token id ", id, " is negative"));
    model->vocab_.insert_or_assign(token, id);
  }
  model->id_to_token_.reserve(model->vocab_.size());
  for (const auto& [token, id] : vocab) {
    model->id_to_token_.try_emplace(id, token);
    model->id_limit_ = std::max(model->id_limit_, id + 1);
  }

  const size_t prefix_len = options.continuing_subword_prefix ? options.continuing_subword_prefix->size() : 0;
  model->merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = model->vocab_.find(a);
    auto ib = model->vocab_.find(b);
    const std::string* missing = ia == model->vocab_.end() ? &a : ib == model->vocab_.end() ? &b : nullptr;
    if (missing != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(Sv(source), ": field \"model.merges[", rank, "]\": merge \"", a,
                                                     " ", b, "\" names token \"", *missing,
                                                     "\" which is not in the vocabulary"));
    }
    if (b.size() < prefix_len) {
      return absl::InvalidArgumentError(absl::StrCat(Sv(source), ": field \"model.merges[", rank, "]\": token \"", b,
                                                     "\" is shorter than the continuing_subword_prefix"));
    }
    std::string merged = absl::StrCat(a, absl::string_view(b).substr(prefix_len));
    auto im = model->vocab_.find(merged);
    if (im == model->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(Sv(source), ": field \"model.merges[", rank, "]\": merge \"", a,
                                                     " ", b, "\" makes \"", merged,
                                                     "\" which is not in the vocabulary"));
    }
    model->merges_.insert_or_assign(PairKey(ia->second, ib->second),
                                    MergeInfo{static_cast<uint32_t>(rank), im->second});
  }

  if (options.unk_token) {
    auto it = model->vocab_.find(*options.unk_token);
    if (it != model->vocab_.end()) model->unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = model->vocab_.find(absl::StrFormat("<0x%02X>", b));
    model->byte_fallback_ids_[b] = it == model->vocab_.end() ? -1 : it->second;
  }
  model->options_ = std::move(options);
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(Sv(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  auto it = id_to_token_.find(id);
  return it == id_to_token_.end() ? nullptr : &it->second;
}

const BpeModel::MergeInfo* BpeModel::FindMerge(int32_t a, int32_t b) const {
  auto it = merges_.find(PairKey(a, b));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* ids) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  // A pending unknown symbol (id, byte length), flushed before the next known character as tokenizers does.
  bool unk_pending = false;
  int32_t unk_token = -1;
  size_t unk_len = 0;
  std::string piece;
  size_t pos = 0;
  while (pos < word.size()) {
    char32_t cp;
    size_t n = DecodeUtf8(word, pos, &cp);
    if (n == 0) n = 1;  // not reached for valid input
    const bool is_first = pos == 0;
    const bool is_last = pos + n >= word.size();
    const std::string_view ch = word.substr(pos, n);
    pos += n;

    std::string_view lookup = ch;
    if ((!is_first && options_.continuing_subword_prefix) || (is_last && options_.end_of_word_suffix)) {
      piece.clear();
      if (!is_first && options_.continuing_subword_prefix) piece += *options_.continuing_subword_prefix;
      piece += ch;
      if (is_last && options_.end_of_word_suffix) piece += *options_.end_of_word_suffix;
      lookup = piece;
    }
    auto it = vocab_.find(Sv(lookup));
    if (it != vocab_.end()) {
      if (unk_pending) {
        AddSymbol(unk_token, unk_len, &symbols);
        unk_pending = false;
      }
      AddSymbol(it->second, n, &symbols);
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (char c : lookup) all = all && byte_fallback_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        for (char c : lookup) AddSymbol(byte_fallback_ids_[static_cast<uint8_t>(c)], 1, &symbols);
        continue;
      }
    }
    if (unk_id_) {
      if (unk_pending && options_.fuse_unk) {
        unk_len += n;
      } else {
        if (unk_pending) AddSymbol(unk_token, unk_len, &symbols);
        unk_pending = true;
        unk_token = *unk_id_;
        unk_len = n;
      }
    }
  }
  if (unk_pending) AddSymbol(unk_token, unk_len, &symbols);

  std::vector<QueuedMerge> heap_storage;
  heap_storage.reserve(symbols.size());
  std::priority_queue<QueuedMerge, std::vector<QueuedMerge>, LaterMerge> queue(LaterMerge(), std::move(heap_storage));
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeInfo* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const QueuedMerge top = queue.top();
    queue.pop();
    Symbol& cur = symbols[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const int32_t next_pos = cur.next;
    const Symbol right = symbols[next_pos];
    const MergeInfo* still = FindMerge(cur.id, right.id);
    if (still == nullptr || still->new_id != top.new_id) continue;  // stale entry

    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next > -1 && static_cast<size_t>(right.next) < symbols.size()) symbols[right.next].prev = top.pos;

    if (cur.prev >= 0) {
      if (const MergeInfo* m = FindMerge(symbols[cur.prev].id, cur.id)) {
        queue.push({m->rank, cur.prev, m->new_id});
      }
    }
    if (cur.next > -1 && static_cast<size_t>(cur.next) < symbols.size()) {
      if (const MergeInfo* m = FindMerge(cur.id, symbols[cur.next].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids->push_back(s.id);
  }
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    auto it = vocab_.find(Sv(word));
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  if (word.size() >= kMaxCachedWordBytes) {
    MergeWord(word, ids);
    return;
  }
  CacheShard& shard = cache_[absl::Hash<absl::string_view>()(Sv(word)) % kCacheShards];
  {
    absl::ReaderMutexLock lock(&shard.mu);
    auto it = shard.words.find(Sv(word));
    if (it != shard.words.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids->size();
  MergeWord(word, ids);
  std::vector<int32_t> merged(ids->begin() + static_cast<std::ptrdiff_t>(first), ids->end());
  absl::MutexLock lock(&shard.mu);
  if (shard.words.size() >= kCacheEntriesPerShard) shard.words.clear();  // bounded: start afresh when full
  shard.words.try_emplace(std::string(word), std::move(merged));
}

}  // namespace fm::tokenizer_internal
