#include "worker/engine/tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/tokenizer/byte_level.h"
#include "worker/engine/tokenizer/patterns.h"
#include "worker/engine/tokenizer/unicode_text.h"
#include "worker/engine/common/utf8.h"

namespace fm::tokenizer_internal {
namespace {

// One piece of a split: [start, end) and whether it is a pattern match.
struct Span {
  size_t start;
  size_t end;
  bool is_match;
};

// Covers `text` with alternating non-match / match spans (tokenizers' Pattern::find_matches).
std::vector<Span> RegexSpans(const Regex& regex, std::string_view text, bool invert) {
  std::vector<Span> spans;
  if (text.empty()) {
    spans.push_back({0, 0, invert});
    return spans;
  }
  std::vector<Regex::Match> matches;
  regex.FindAll(text, &matches);
  size_t prev = 0;
  for (const auto& [start, end] : matches) {
    if (prev != start) spans.push_back({prev, start, invert});
    spans.push_back({start, end, !invert});
    prev = end;
  }
  if (prev != text.size()) spans.push_back({prev, text.size(), invert});
  return spans;
}

// Every numeric character is its own match (the Fn(char) -> bool pattern of tokenizers).
std::vector<Span> NumericSpans(std::string_view text) {
  std::vector<Span> spans;
  if (text.empty()) {
    spans.push_back({0, 0, false});
    return spans;
  }
  size_t last_offset = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    char32_t cp;
    size_t n = DecodeUtf8(text, pos, &cp);
    if (n == 0) {  // not reached for valid input
      n = 1;
      cp = 0xFFFD;
    }
    if (IsNumericChar(cp)) {
      if (last_offset < pos) spans.push_back({last_offset, pos, false});
      spans.push_back({pos, pos + n, true});
      last_offset = pos + n;
    }
    pos += n;
  }
  if (pos > last_offset) spans.push_back({last_offset, pos, false});
  return spans;
}

// NormalizedString::split: combines spans by behavior; the result's is_match means "remove".
std::vector<Span> ApplyBehavior(std::vector<Span> spans, SplitBehavior behavior) {
  std::vector<Span> out;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (Span s : spans) out.push_back({s.start, s.end, false});
      return out;
    case SplitBehavior::kRemoved:
      return spans;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (Span s : spans) {
        if (s.is_match == previous_match && !out.empty()) {
          out.back().end = s.end;
        } else {
          out.push_back({s.start, s.end, false});
        }
        previous_match = s.is_match;
      }
      return out;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (Span s : spans) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().end = s.end;
        } else {
          out.push_back({s.start, s.end, false});
        }
        previous_match = s.is_match;
      }
      return out;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().start = it->start;
        } else {
          out.push_back({it->start, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      return out;
    }
  }
  return out;
}

void EmitSpans(std::string_view text, const std::vector<Span>& spans, std::vector<std::string>* out) {
  for (const Span& s : spans) {
    if (s.is_match || s.end <= s.start) continue;  // removed, or empty (dropped by PreTokenizedString::split)
    out->emplace_back(text.substr(s.start, s.end - s.start));
  }
}

absl::StatusOr<SplitBehavior> ParseBehavior(const std::string& name, const JsonPath& path) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return path.Invalid(absl::StrCat("unknown split behavior \"", name,
                                   "\" (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or "
                                   "Contiguous)"));
}

const std::shared_ptr<const Regex>& Gpt2Regex() {
  static const auto* regex = new std::shared_ptr<const Regex>([] {
    auto compiled = Regex::FromOniguruma(kGpt2Pattern);
    return compiled.ok() ? std::shared_ptr<const Regex>(*std::move(compiled)) : nullptr;
  }());
  return *regex;
}

}  // namespace

absl::StatusOr<PreTokenizer::Step> PreTokenizer::ByteLevel(bool add_prefix_space, bool use_regex) {
  Step step;
  step.kind = Step::Kind::kByteLevel;
  step.add_prefix_space = add_prefix_space;
  step.use_regex = use_regex;
  if (use_regex) {
    step.regex = Gpt2Regex();
    if (step.regex == nullptr) return absl::InternalError("the GPT-2 pre-tokenizer pattern does not compile");
    step.behavior = SplitBehavior::kIsolated;
  }
  return step;
}

absl::StatusOr<PreTokenizer::Step> PreTokenizer::SplitRegex(std::string_view onig_pattern, SplitBehavior behavior,
                                                            bool invert) {
  Step step;
  step.kind = Step::Kind::kSplit;
  FM_ASSIGN_OR_RETURN(std::unique_ptr<const Regex> regex, Regex::FromOniguruma(onig_pattern));
  step.regex = std::move(regex);
  step.behavior = behavior;
  step.invert = invert;
  return step;
}

PreTokenizer::Step PreTokenizer::Digits(bool individual_digits) {
  Step step;
  step.kind = Step::Kind::kDigits;
  step.individual_digits = individual_digits;
  return step;
}

absl::StatusOr<PreTokenizer> PreTokenizer::FromJson(const Json& value, const JsonPath& path) {
  if (value.is_null()) return PreTokenizer();
  std::vector<Step> steps;
  FM_RETURN_IF_ERROR(Flatten(value, path, 0, &steps));
  return PreTokenizer(std::move(steps));
}

absl::Status PreTokenizer::Flatten(const Json& value, const JsonPath& path, int depth, std::vector<Step>* steps) {
  if (depth > kMaxJsonNesting) return path.Invalid("Sequence nested too deeply");
  FM_ASSIGN_OR_RETURN(std::string type, GetType(value, path));
  if (type == "ByteLevel") {
    FM_ASSIGN_OR_RETURN(bool add_prefix_space, GetBool(value, "add_prefix_space", path));
    FM_ASSIGN_OR_RETURN(bool use_regex, GetBool(value, "use_regex", path, /*default_value=*/true));
    FM_ASSIGN_OR_RETURN(Step step, ByteLevel(add_prefix_space, use_regex));
    steps->push_back(std::move(step));
  } else if (type == "Split") {
    FM_ASSIGN_OR_RETURN(const Json* pattern, RequireField(value, "pattern", path));
    const JsonPath pattern_path = path.Child("pattern");
    FM_ASSIGN_OR_RETURN(std::string behavior_name, GetString(value, "behavior", path));
    FM_ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(behavior_name, path.Child("behavior")));
    FM_ASSIGN_OR_RETURN(bool invert, GetBool(value, "invert", path));
    absl::StatusOr<std::unique_ptr<const Regex>> regex;
    if (const Json* s = FindField(*pattern, "String"); s != nullptr) {
      FM_ASSIGN_OR_RETURN(std::string literal, AsString(*s, pattern_path.Child("String")));
      regex = Regex::FromLiteral(literal);
    } else if (const Json* r = FindField(*pattern, "Regex"); r != nullptr) {
      FM_ASSIGN_OR_RETURN(std::string onig, AsString(*r, pattern_path.Child("Regex")));
      regex = Regex::FromOniguruma(onig);
    } else {
      return pattern_path.Invalid("expected {\"String\": ...} or {\"Regex\": ...}");
    }
    if (!regex.ok()) return pattern_path.Invalid(regex.status().message());
    Step step;
    step.kind = Step::Kind::kSplit;
    step.regex = *std::move(regex);
    step.behavior = behavior;
    step.invert = invert;
    steps->push_back(std::move(step));
  } else if (type == "Digits") {
    FM_ASSIGN_OR_RETURN(bool individual, GetBool(value, "individual_digits", path));
    steps->push_back(Digits(individual));
  } else if (type == "Sequence") {
    FM_ASSIGN_OR_RETURN(const Json* list, RequireField(value, "pretokenizers", path));
    const JsonPath list_path = path.Child("pretokenizers");
    if (!list->is_array()) return list_path.Invalid("expected an array");
    for (size_t i = 0; i < list->size(); ++i) {
      FM_RETURN_IF_ERROR(Flatten((*list)[i], list_path.Index(i), depth + 1, steps));
    }
  } else {
    return path.Unimplemented(absl::StrCat("pre_tokenizer type \"", type,
                                           "\" is not supported (supported: ByteLevel, Split, Digits, Sequence)"));
  }
  return absl::OkStatus();
}

void PreTokenizer::ApplyStep(const Step& step, std::string_view piece, std::vector<std::string>* out) {
  switch (step.kind) {
    case Step::Kind::kByteLevel: {
      std::string text;
      if (step.add_prefix_space && (piece.empty() || piece.front() != ' ')) text.push_back(' ');
      text.append(piece);
      std::vector<std::string> parts;
      if (step.use_regex) {
        EmitSpans(text, ApplyBehavior(RegexSpans(*step.regex, text, false), SplitBehavior::kIsolated), &parts);
      } else if (!text.empty()) {
        parts.push_back(std::move(text));
      }
      for (const std::string& part : parts) {
        std::string mapped;
        mapped.reserve(part.size() * 2);
        AppendByteLevel(part, &mapped);
        out->push_back(std::move(mapped));
      }
      return;
    }
    case Step::Kind::kSplit:
      EmitSpans(piece, ApplyBehavior(RegexSpans(*step.regex, piece, step.invert), step.behavior), out);
      return;
    case Step::Kind::kDigits:
      EmitSpans(piece,
                ApplyBehavior(NumericSpans(piece),
                              step.individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous),
                out);
      return;
  }
}

void PreTokenizer::Apply(std::string_view text, std::vector<std::string>* words) const {
  if (text.empty()) return;
  if (steps_.empty()) {
    words->emplace_back(text);
    return;
  }
  std::vector<std::string> current{std::string(text)};
  std::vector<std::string> next;
  for (const Step& step : steps_) {
    next.clear();
    for (const std::string& piece : current) ApplyStep(step, piece, &next);
    current.swap(next);
  }
  for (std::string& w : current) words->push_back(std::move(w));
}

bool PreTokenizer::has_byte_level() const {
  for (const Step& s : steps_) {
    if (s.kind == Step::Kind::kByteLevel) return true;
  }
  return false;
}

}  // namespace fm::tokenizer_internal
