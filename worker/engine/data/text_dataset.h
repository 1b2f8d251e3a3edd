// A token stream of generic text for training and evaluation (docs/ENGINE.md §3 "Generic text"), split into a
// training and a held-out part, with windows of T tokens at seeded random offsets.
//
// Sources: JSONL (one {"text": ...} object per line), a raw little-endian uint16/uint32 token file, or the Brown
// Corpus. Text documents are tokenized with the model's tokenizer without special tokens and joined by its EOS
// token (by nothing when the tokenizer has no EOS); document `i` (0-based, blank JSONL lines not counted) goes to
// the held-out split when i % 10 == 9, else to the training split, each split keeping document order. A token file
// is one stream: its last n / 10 tokens (rounded down) are held out. A TextDataset is immutable and may be read
// from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fm {

class Tokenizer;
class MappedFile;

enum class DataSplit { kTrain, kHeldOut };
const char* DataSplitName(DataSplit split);  // "train", "held-out"

struct TextSourceOptions {
  // A .jsonl file, a token file (.u16, .u32, .bin), or empty for the Brown Corpus at DefaultBrownCorpusDir().
  std::string path;
  // Bytes per token of a token file: 2 or 4. 0 takes it from the extension (.u16: 2, .u32: 4); a .bin file needs
  // it. A width that contradicts a .u16/.u32 extension is INVALID_ARGUMENT.
  int token_bytes = 0;
  // Threads that tokenize documents; 0 means std::thread::hardware_concurrency().
  int num_threads = 0;
};

class TextDataset {
 public:
  // Dispatches on `options.path` (see TextSourceOptions); other extensions are INVALID_ARGUMENT.
  static absl::StatusOr<TextDataset> Open(const TextSourceOptions& options, const Tokenizer& tokenizer);

  // JSONL: every non-blank line must be a JSON object with a string "text"; otherwise INVALID_ARGUMENT naming
  // "path:line". NOT_FOUND if the file is missing.
  static absl::StatusOr<TextDataset> FromJsonl(const std::string& path, const Tokenizer& tokenizer,
                                               int num_threads = 0);
  // The Brown Corpus in `dir` (ReadBrownCorpus).
  static absl::StatusOr<TextDataset> FromBrownCorpus(const std::string& dir, const Tokenizer& tokenizer,
                                                     int num_threads = 0);
  // Documents already in memory; `source_name` names them in messages.
  static TextDataset FromDocuments(const std::vector<std::string>& documents, const Tokenizer& tokenizer,
                                   int num_threads = 0, std::string source_name = "documents");
  // Raw little-endian tokens of `token_bytes` (2 or 4) bytes each. INVALID_ARGUMENT if the file size is not a
  // multiple of the width or an id is >= vocab_size (naming the token index and id); NOT_FOUND if missing. The
  // file is memory-mapped, not copied.
  static absl::StatusOr<TextDataset> FromTokenFile(const std::string& path, int token_bytes, int32_t vocab_size);

  // Number of tokens in a split.
  int64_t size(DataSplit split) const;
  // Token `i` of a split (0 <= i < size(split)).
  int32_t token(DataSplit split, int64_t i) const;
  // Tokens [begin, begin + length) of a split; INVALID_ARGUMENT if out of range.
  absl::StatusOr<std::vector<int32_t>> Slice(DataSplit split, int64_t begin, int64_t length) const;
  // Offset of window `index`: Rng::ForStream(seed, index).Uniform(size(split) - length + 1).
  // INVALID_ARGUMENT if length < 1 or the split is shorter than `length`.
  absl::StatusOr<int64_t> WindowOffset(DataSplit split, int64_t index, int64_t length, uint64_t seed) const;
  // The `length` tokens at WindowOffset(split, index, length, seed).
  absl::StatusOr<std::vector<int32_t>> Window(DataSplit split, int64_t index, int64_t length, uint64_t seed) const;

  // Documents in each split (for token files: 0).
  int64_t num_documents(DataSplit split) const;
  // Names the source in messages (the path, or "Brown Corpus at <dir>").
  const std::string& source_name() const { return source_name_; }

 private:
  struct Part {
    // Either owned 32-bit ids or `count` little-endian tokens of `width` bytes at `bytes`.
    std::vector<int32_t> ids;
    const uint8_t* bytes = nullptr;
    int width = 4;
    int64_t count = 0;
    int64_t documents = 0;
  };
  TextDataset() = default;
  const Part& part(DataSplit split) const { return split == DataSplit::kTrain ? train_ : held_out_; }

  Part train_, held_out_;
  std::shared_ptr<const MappedFile> file_;  // keeps token-file bytes alive
  std::string source_name_;
};

}  // namespace fm
