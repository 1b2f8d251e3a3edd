// Regular expressions of tokenizer.json (written for Oniguruma, which `tokenizers` uses), run with PCRE2 (UTF, UCP,
// JIT when available). The few escapes whose Unicode meaning differs between the two engines (\s, \S, \w, \W, \h,
// \H) are rewritten to Oniguruma's definitions; other syntax is shared by both for the patterns tokenizers use.
// A compiled Regex is immutable and safe to use from several threads at once.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace fm::tokenizer_internal {

class Regex {
 public:
  // [start, end) byte offsets of one match.
  using Match = std::pair<size_t, size_t>;

  // INVALID_ARGUMENT (with PCRE2's message and offset) if the pattern does not compile.
  static absl::StatusOr<std::unique_ptr<const Regex>> FromOniguruma(std::string_view pattern);
  // A pattern that matches `literal` exactly.
  static absl::StatusOr<std::unique_ptr<const Regex>> FromLiteral(std::string_view literal);

  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the successive non-overlapping matches in `text`, in order, with the rules of the onig crate's
  // find_iter (an empty match right where the previous match ended is skipped). `text` should be valid UTF-8;
  // invalid text yields no matches. Should PCRE2 hit a resource limit, matching stops there.
  void FindAll(std::string_view text, std::vector<Match>* out) const;

  // Whether the pattern matches starting exactly at byte `pos` of `text` (valid UTF-8, pos at a char boundary).
  bool MatchesAt(std::string_view text, size_t pos) const;

  // The PCRE2 pattern actually compiled (after the rewrite), for messages and tests.
  const std::string& pcre2_pattern() const { return pcre2_pattern_; }

 private:
  Regex() = default;
  // Returns 1 and sets *start/*end on a match at or after `offset`, 0 on no match, -1 on an error.
  int MatchFrom(std::string_view text, size_t offset, bool anchored, size_t* start, size_t* end) const;

  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
  std::string pcre2_pattern_;
};

// Rewrites an Oniguruma pattern into the PCRE2 pattern with the same meaning (see the file comment).
std::string OnigurumaToPcre2(std::string_view pattern);

}  // namespace fm::tokenizer_internal
