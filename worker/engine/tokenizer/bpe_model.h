// The BPE model: vocabulary, merge ranks and the merge loop of the `tokenizers` library (lowest rank first, then
// leftmost; unknown characters through byte_fallback or unk_token; ignore_merges; continuing_subword_prefix and
// end_of_word_suffix), with a bounded per-word cache. Immutable apart from the cache, which is guarded by mutexes:
// Tokenize may be called from several threads at once.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace fm::tokenizer_internal {

class BpeModel {
 public:
  struct Options {
    std::optional<std::string> unk_token;
    std::optional<std::string> continuing_subword_prefix;
    std::optional<std::string> end_of_word_suffix;
    bool fuse_unk = false;
    bool byte_fallback = false;
    bool ignore_merges = false;
  };

  // `vocab`: (token, id) pairs, ids >= 0. A token listed twice encodes to its last id (as a JSON object would);
  // every id listed decodes, to the first token listed with it. `merges`: pairs in rank order; both sides and their
  // concatenation must be in the vocabulary, else INVALID_ARGUMENT naming `source` and the merge. A pair listed
  // twice keeps its last rank (as `tokenizers` does).
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(
      std::vector<std::pair<std::string, int32_t>> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, Options options, std::string_view source);

  // Appends the ids of one pre-tokenized word (valid UTF-8; empty words give nothing).
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr if no token has this id.
  const std::string* IdToToken(int32_t id) const;
  // Number of distinct tokens (tokenizers' get_vocab_size of the model).
  size_t size() const { return vocab_.size(); }
  // One past the largest id (0 if empty).
  int32_t id_limit() const { return id_limit_; }

 private:
  struct MergeInfo {
    uint32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  BpeModel() = default;
  // The merge loop on the initial symbols of `word`.
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;
  const MergeInfo* FindMerge(int32_t a, int32_t b) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_map<int32_t, std::string> id_to_token_;
  int32_t id_limit_ = 0;
  absl::flat_hash_map<uint64_t, MergeInfo> merges_;
  Options options_;
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_fallback_ids_{};  // id of "<0xAB>" per byte, -1 if absent

  // Word cache, sharded to keep contention low when several threads encode at once.
  static constexpr int kCacheShards = 16;
  static constexpr size_t kCacheEntriesPerShard = 4096;
  static constexpr size_t kMaxCachedWordBytes = 256;
  struct CacheShard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<std::string, std::vector<int32_t>> words ABSL_GUARDED_BY(mu);
  };
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace fm::tokenizer_internal
