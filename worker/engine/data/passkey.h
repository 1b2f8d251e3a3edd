// Synthetic passkey-retrieval samples (docs/ENGINE.md §3 "Passkey samples"): background prose with N passkeys of
// NATO-alphabet words hidden at random depths, a question, and the answer, with a mask on the answer tokens.
// Sample(i) is a pure function of (options.seed, i, options, tokenizer, background stream), identical on every
// platform. ScoreAnswer grades a model's predicted answer tokens against a sample.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/engine/data/text_dataset.h"

namespace fm {

class Tokenizer;

// The passkey vocabulary: alfa bravo ... zulu.
const std::array<std::string_view, 26>& PasskeyWords();

struct PasskeyOptions {
  int32_t num_passkeys = 10;
  int32_t words_per_passkey = 32;
  int32_t num_depths = 1000;
  int64_t min_length = 1024;   // total tokens, inclusive
  int64_t max_length = 16384;  // total tokens, inclusive
  uint64_t seed = 0;
};

// Token positions are indices into PasskeySample::ids; passkey j (1-based in the text) is entry j - 1.
struct PasskeySample {
  std::vector<int32_t> ids;                        // the whole sample, exactly `length` tokens
  std::vector<uint8_t> answer_mask;                // 1 at answer tokens (the word segments after "Answer:"), else 0
  std::vector<std::vector<std::string>> passkeys;  // the words of each passkey
  std::vector<int32_t> depths;                     // chosen depths, ascending (passkey j has the j-th smallest)
  std::vector<int64_t> background_positions;       // background token before which passkey j went (non-decreasing)
  std::vector<int64_t> insert_positions;  // where passkey j's " The passkey number {j} is:" begins (increasing)
  int64_t length = 0;                     // the drawn total length (== ids.size())
  int64_t background_offset = 0;          // offset of the background window in the split's stream
  int64_t background_length = 0;          // background tokens in the sample
  int64_t answer_start = 0;               // first token after "Answer:"; ids[0, answer_start) is the prompt
  std::vector<std::pair<int64_t, int64_t>> answer_spans;  // per passkey, [begin, end) of its answer word segment
  // Per passkey and word, the [begin, end) range of answer tokens that spell (part of) " word", its leading space
  // included. Words that share a token share it in their ranges; if single-token texts do not concatenate to the
  // segment's text, every word gets the whole segment.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> answer_word_tokens;
};

struct PasskeyAnswerScore {
  std::vector<uint8_t> passkey_exact;         // per passkey: every answer token right
  std::vector<double> passkey_word_accuracy;  // per passkey: fraction of words whose tokens are all right
  int64_t tokens_correct = 0;
  int64_t tokens_total = 0;
  double exact_match = 0;     // fraction of passkeys entirely right
  double word_accuracy = 0;   // fraction of all passkey words right
  double token_accuracy = 0;  // tokens_correct / tokens_total
};

// Grades predicted answer tokens: `predicted[k]` is the model's token for position sample.answer_start + k (e.g.
// greedy decoding after the prompt, or argmax of the logits at position answer_start + k - 1 under teacher forcing).
// Only masked positions are compared; positions past the end of `predicted` count as wrong, extra tokens are ignored.
PasskeyAnswerScore ScoreAnswer(const PasskeySample& sample, absl::Span<const int32_t> predicted);

class PasskeyGenerator {
 public:
  // The tokenizer and background dataset must outlive the generator; the background comes from `split`.
  // INVALID_ARGUMENT for: num_passkeys, words_per_passkey or num_depths below 1 (or the first two above 100000);
  // more passkeys than depths; min_length below 1 or above max_length; a min_length below what the non-background
  // segments may need (the message says how many tokens); a background split shorter than the longest background
  // a sample may need.
  static absl::StatusOr<PasskeyGenerator> Create(const Tokenizer& tokenizer, const TextDataset& background,
                                                 DataSplit split, const PasskeyOptions& options);

  // Sample `index`. Draws, in this order, from Rng::ForStream(seed, index): the total length (min_length +
  // Uniform(max_length - min_length + 1)); the passkey words (passkey 1's words first, each Uniform(26) over
  // PasskeyWords()); the background offset (uniform on [0, split size - background length]); the N distinct depths
  // (Floyd's algorithm: for j = num_depths - N .. num_depths - 1, t = Uniform(j + 1), take t or, if taken, j), sorted.
  // Depth k inserts at background token round(k * len / num_depths) (halves round up), moved forward to the first token
  // at or after it, at most 32 tokens on, whose text starts with ASCII whitespace, else left in place. Fails only if a
  // sample's segments exceed its length (which Create's check rules out for tokenizers that encode " w1 w2 ..." word by
  // word).
  absl::StatusOr<PasskeySample> Sample(int64_t index) const;

  const PasskeyOptions& options() const { return options_; }
  // Bounds on the tokens of everything but the background (the word segments vary with the words).
  int64_t min_fixed_tokens() const { return min_fixed_; }
  int64_t max_fixed_tokens() const { return max_fixed_; }

 private:
  PasskeyGenerator() = default;
  bool IsSpaceToken(int32_t id) const;

  const Tokenizer* tokenizer_ = nullptr;
  const TextDataset* background_ = nullptr;
  DataSplit split_ = DataSplit::kTrain;
  PasskeyOptions options_;
  std::vector<int32_t> header_, question_, period_;
  std::vector<std::vector<int32_t>> number_;  // " The passkey number {j} is:" for j = 1..N
  std::vector<uint8_t> starts_with_space_;    // per token id
  int64_t min_fixed_ = 0, max_fixed_ = 0;
};

}  // namespace fm
