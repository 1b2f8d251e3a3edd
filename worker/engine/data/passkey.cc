#include "worker/engine/data/passkey.h"

#include <algorithm>
#include <set>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/data/rng.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace fm {
namespace {

constexpr std::string_view kHeader =
    "There is important information hidden in the following text. Find and remember the passkeys.\n";
constexpr std::string_view kQuestion = "\nQuestion: What are the passkeys?\nAnswer:";
constexpr std::string_view kPeriod = ".";
constexpr int64_t kMaxSnap = 32;
constexpr int32_t kMaxCount = 100000;  // bound on num_passkeys and words_per_passkey (keeps Create fast, no overflow)

std::string NumberText(int j) { return StrCat(" The passkey number ", j, " is:"); }

std::string WordsText(const std::vector<std::string>& words) {
  std::string s;
  for (const std::string& w : words) s += StrCat(" ", w);
  return s;
}

bool IsAsciiSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

void Append(std::vector<int32_t>* ids, std::vector<uint8_t>* mask, absl::Span<const int32_t> part, uint8_t m) {
  ids->insert(ids->end(), part.begin(), part.end());
  mask->insert(mask->end(), part.size(), m);
}

// For each word of `words` (joined as " w1 w2 ..."), the range of `tokens` (offset by `base`) spelling it.
std::vector<std::pair<int64_t, int64_t>> WordTokenRanges(const Tokenizer& tok, const std::vector<std::string>& words,
                                                         const std::vector<int32_t>& tokens, int64_t base) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<int64_t> tok_begin(n), tok_end(n);
  std::string joined;
  for (int64_t t = 0; t < n; ++t) {
    tok_begin[t] = static_cast<int64_t>(joined.size());
    joined += tok.DecodeBytes(absl::MakeConstSpan(&tokens[t], 1));
    tok_end[t] = static_cast<int64_t>(joined.size());
  }
  std::vector<std::pair<int64_t, int64_t>> out;
  if (joined != WordsText(words)) {
    out.assign(words.size(), {base, base + n});
    return out;
  }
  int64_t pos = 0;
  for (const std::string& w : words) {
    const int64_t wb = pos, we = pos + 1 + static_cast<int64_t>(w.size());  // " w", with its space
    pos = we;
    int64_t first = -1, last = -1;
    for (int64_t t = 0; t < n; ++t) {
      if (tok_begin[t] < we && tok_end[t] > wb) {
        if (first < 0) first = t;
        last = t;
      }
    }
    out.push_back(first < 0 ? std::pair<int64_t, int64_t>{base, base + n}
                            : std::pair<int64_t, int64_t>{base + first, base + last + 1});
  }
  return out;
}

}  // namespace

const std::array<std::string_view, 26>& PasskeyWords() {
  static constexpr std::array<std::string_view, 26> kWords = {
      "alfa",    "bravo", "charlie", "delta",  "echo",     "foxtrot", "golf",   "hotel",  "india",
      "juliett", "kilo",  "lima",    "mike",   "november", "oscar",   "papa",   "quebec", "romeo",
      "sierra",  "tango", "uniform", "victor", "whiskey",  "xray",    "yankee", "zulu"};
  return kWords;
}

absl::StatusOr<PasskeyGenerator> PasskeyGenerator::Create(const Tokenizer& tokenizer, const TextDataset& background,
                                                          DataSplit split, const PasskeyOptions& options) {
  const PasskeyOptions& o = options;
  if (o.num_passkeys < 1) return absl::InvalidArgumentError(StrCat("passkey num_passkeys ", o.num_passkeys, " < 1"));
  if (o.words_per_passkey < 1) {
    return absl::InvalidArgumentError(StrCat("passkey words_per_passkey ", o.words_per_passkey, " < 1"));
  }
  if (o.num_depths < 1) return absl::InvalidArgumentError(StrCat("passkey num_depths ", o.num_depths, " < 1"));
  if (o.num_passkeys > o.num_depths) {
    return absl::InvalidArgumentError(StrCat("passkey num_passkeys ", o.num_passkeys, " exceeds num_depths ",
                                             o.num_depths, " (depths are distinct)"));
  }
  if (o.num_passkeys > kMaxCount || o.words_per_passkey > kMaxCount) {
    return absl::InvalidArgumentError(StrCat("passkey num_passkeys ", o.num_passkeys, " and words_per_passkey ",
                                             o.words_per_passkey, " must be at most ", kMaxCount));
  }
  if (o.min_length < 1) return absl::InvalidArgumentError(StrCat("passkey min_length ", o.min_length, " < 1"));
  if (o.min_length > o.max_length) {
    return absl::InvalidArgumentError(
        StrCat("passkey min_length ", o.min_length, " exceeds max_length ", o.max_length));
  }

  PasskeyGenerator g;
  g.tokenizer_ = &tokenizer;
  g.background_ = &background;
  g.split_ = split;
  g.options_ = options;
  g.header_ = tokenizer.Encode(kHeader, false);
  g.question_ = tokenizer.Encode(kQuestion, false);
  g.period_ = tokenizer.Encode(kPeriod, false);
  int64_t fixed = static_cast<int64_t>(g.header_.size() + g.question_.size());
  for (int j = 1; j <= o.num_passkeys; ++j) {
    g.number_.push_back(tokenizer.Encode(NumberText(j), false));
    fixed += 2 * static_cast<int64_t>(g.number_.back().size() + g.period_.size());
  }
  size_t min_word = SIZE_MAX, max_word = 0;
  for (std::string_view w : PasskeyWords()) {
    const size_t n = tokenizer.Encode(StrCat(" ", w), false).size();
    min_word = std::min(min_word, n);
    max_word = std::max(max_word, n);
  }
  const int64_t words = 2 * int64_t{o.num_passkeys} * o.words_per_passkey;
  g.min_fixed_ = fixed + words * static_cast<int64_t>(min_word);
  g.max_fixed_ = fixed + words * static_cast<int64_t>(max_word);
  if (o.min_length < g.max_fixed_) {
    return absl::InvalidArgumentError(
        StrCat("passkey min_length ", o.min_length, " is too short: the prompt, question and answer segments of ",
               o.num_passkeys, " passkeys of ", o.words_per_passkey, " words need up to ", g.max_fixed_, " tokens"));
  }
  const int64_t max_background = o.max_length - g.min_fixed_;
  if (background.size(split) < max_background) {
    return absl::InvalidArgumentError(StrCat("passkey background ", background.source_name(), ": the ",
                                             DataSplitName(split), " split has ", background.size(split),
                                             " tokens, fewer than the ", max_background, " a sample of max_length ",
                                             o.max_length, " may need"));
  }
  const int32_t vocab = tokenizer.vocab_size();
  g.starts_with_space_.assign(std::max(vocab, 0), 0);
  for (int32_t id = 0; id < vocab; ++id) {
    const std::string text = tokenizer.DecodeBytes(absl::MakeConstSpan(&id, 1));
    g.starts_with_space_[id] = !text.empty() && IsAsciiSpace(text[0]);
  }
  return g;
}

absl::StatusOr<PasskeySample> PasskeyGenerator::Sample(int64_t index) const {
  const PasskeyOptions& o = options_;
  const int n_keys = o.num_passkeys;
  const Tokenizer& tok = *tokenizer_;
  Rng rng = Rng::ForStream(o.seed, static_cast<uint64_t>(index));
  PasskeySample s;

  // 1. Length.
  s.length = rng.UniformInRange(o.min_length, o.max_length);

  // 2. Words.
  const auto& vocab = PasskeyWords();
  std::vector<std::vector<int32_t>> word_ids(n_keys);
  int64_t fixed = static_cast<int64_t>(header_.size() + question_.size());
  s.passkeys.resize(n_keys);
  for (int j = 0; j < n_keys; ++j) {
    for (int w = 0; w < o.words_per_passkey; ++w) {
      s.passkeys[j].emplace_back(vocab[rng.Uniform(vocab.size())]);
    }
    word_ids[j] = tok.Encode(WordsText(s.passkeys[j]), false);
    fixed += 2 * static_cast<int64_t>(number_[j].size() + word_ids[j].size() + period_.size());
  }
  s.background_length = s.length - fixed;
  if (s.background_length < 0) {
    return absl::InvalidArgumentError(
        StrCat("passkey sample ", index, ": its segments take ", fixed, " tokens, more than its length ", s.length));
  }

  // 3. Background window.
  const int64_t stream = background_->size(split_);
  if (stream < s.background_length) {
    return absl::InvalidArgumentError(StrCat("passkey sample ", index, ": the ", DataSplitName(split_), " split of ",
                                             background_->source_name(), " has ", stream, " tokens, fewer than the ",
                                             s.background_length, " needed"));
  }
  s.background_offset = static_cast<int64_t>(rng.Uniform(static_cast<uint64_t>(stream - s.background_length + 1)));
  FM_ASSIGN_OR_RETURN(std::vector<int32_t> bg, background_->Slice(split_, s.background_offset, s.background_length));
  const int64_t len = s.background_length;

  // 4. Depths (Floyd's algorithm: N distinct values), ascending, and where they insert.
  std::set<int32_t> chosen;
  for (int32_t j = o.num_depths - n_keys; j < o.num_depths; ++j) {
    const auto t = static_cast<int32_t>(rng.Uniform(static_cast<uint64_t>(j) + 1));
    chosen.insert(chosen.count(t) ? j : t);
  }
  s.depths.assign(chosen.begin(), chosen.end());
  for (int32_t k : s.depths) {
    const int64_t p = (2 * int64_t{k} * len + o.num_depths) / (2 * int64_t{o.num_depths});
    int64_t q = p;
    while (q < len && q - p <= kMaxSnap && !IsSpaceToken(bg[q])) ++q;
    if (q >= len || q - p > kMaxSnap) q = p;
    s.background_positions.push_back(q);
  }

  // Assembly.
  s.ids.reserve(s.length);
  s.answer_mask.reserve(s.length);
  Append(&s.ids, &s.answer_mask, header_, 0);
  int64_t prev = 0;
  for (int j = 0; j < n_keys; ++j) {
    const int64_t at = s.background_positions[j];
    Append(&s.ids, &s.answer_mask, absl::MakeConstSpan(bg).subspan(prev, at - prev), 0);
    prev = at;
    s.insert_positions.push_back(static_cast<int64_t>(s.ids.size()));
    Append(&s.ids, &s.answer_mask, number_[j], 0);
    Append(&s.ids, &s.answer_mask, word_ids[j], 0);
    Append(&s.ids, &s.answer_mask, period_, 0);
  }
  Append(&s.ids, &s.answer_mask, absl::MakeConstSpan(bg).subspan(prev), 0);
  Append(&s.ids, &s.answer_mask, question_, 0);
  s.answer_start = static_cast<int64_t>(s.ids.size());
  for (int j = 0; j < n_keys; ++j) {
    Append(&s.ids, &s.answer_mask, number_[j], 0);
    const int64_t begin = static_cast<int64_t>(s.ids.size());
    Append(&s.ids, &s.answer_mask, word_ids[j], 1);
    s.answer_spans.emplace_back(begin, static_cast<int64_t>(s.ids.size()));
    s.answer_word_tokens.push_back(WordTokenRanges(tok, s.passkeys[j], word_ids[j], begin));
    Append(&s.ids, &s.answer_mask, period_, 0);
  }
  if (static_cast<int64_t>(s.ids.size()) != s.length) {
    return absl::InternalError(StrCat("passkey sample ", index, " has ", s.ids.size(), " tokens, not ", s.length));
  }
  return s;
}

bool PasskeyGenerator::IsSpaceToken(int32_t id) const {
  return id >= 0 && id < static_cast<int32_t>(starts_with_space_.size()) && starts_with_space_[id] != 0;
}

PasskeyAnswerScore ScoreAnswer(const PasskeySample& sample, absl::Span<const int32_t> predicted) {
  PasskeyAnswerScore score;
  auto right = [&](int64_t pos) {
    const int64_t k = pos - sample.answer_start;
    return k >= 0 && k < static_cast<int64_t>(predicted.size()) && predicted[k] == sample.ids[pos];
  };
  int64_t words_right = 0, words_total = 0, exact = 0;
  for (size_t j = 0; j < sample.answer_spans.size(); ++j) {
    const auto [begin, end] = sample.answer_spans[j];
    bool all = true;
    for (int64_t t = begin; t < end; ++t) {
      const bool r = right(t);
      score.tokens_correct += r;
      ++score.tokens_total;
      all = all && r;
    }
    score.passkey_exact.push_back(all);
    exact += all;
    int64_t ok = 0;
    const auto& ranges = sample.answer_word_tokens[j];
    for (const auto& [wb, we] : ranges) {
      bool w_all = true;
      for (int64_t t = wb; t < we; ++t) w_all = w_all && right(t);
      ok += w_all;
    }
    words_right += ok;
    words_total += static_cast<int64_t>(ranges.size());
    score.passkey_word_accuracy.push_back(ranges.empty() ? 0.0 : static_cast<double>(ok) / ranges.size());
  }
  const size_t keys = sample.answer_spans.size();
  score.exact_match = keys == 0 ? 0.0 : static_cast<double>(exact) / keys;
  score.word_accuracy = words_total == 0 ? 0.0 : static_cast<double>(words_right) / words_total;
  score.token_accuracy = score.tokens_total == 0 ? 0.0 : static_cast<double>(score.tokens_correct) / score.tokens_total;
  return score;
}

}  // namespace fm
