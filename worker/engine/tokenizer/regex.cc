#include "worker/engine/tokenizer/regex.h"
#include "worker/engine/common/absl_compat.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "worker/engine/common/utf8.h"

namespace fm::tokenizer_internal {
namespace {

// Oniguruma's Unicode definitions, spelled for PCRE2.
constexpr std::string_view kSpaceSet = "\\p{White_Space}";  // \t-\r, U+0085, Zs, Zl, Zp
constexpr std::string_view kNotSpaceSet = "\\P{White_Space}";
constexpr std::string_view kWordMembers = "\\p{L}\\p{M}\\p{N}\\p{Pc}";
constexpr std::string_view kHexMembers = "0-9a-fA-F";

// Per-thread matching state: match data for one ovector pair and a JIT stack larger than PCRE2's default.
struct MatchScratch {
  MatchScratch() {
    match_data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context != nullptr && jit_stack != nullptr) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(match_data);
  }
  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
};

MatchScratch& Scratch() {
  thread_local MatchScratch scratch;
  return scratch;
}

}  // namespace

std::string OnigurumaToPcre2(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  bool in_class = false;
  size_t class_start = 0;  // index in p just after '[' or '[^'
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      ++i;
      switch (e) {
        case 's':
          out += kSpaceSet;
          continue;
        case 'S':
          out += kNotSpaceSet;
          continue;
        case 'w':
          out += in_class ? std::string(kWordMembers) : absl::StrCat("[", Sv(kWordMembers), "]");
          continue;
        case 'W':
          if (!in_class) {
            out += absl::StrCat("[^", Sv(kWordMembers), "]");
            continue;
          }
          break;  // cannot be spelled inside a class without set operations; PCRE2's \W is close
        case 'h':
          out += in_class ? std::string(kHexMembers) : absl::StrCat("[", Sv(kHexMembers), "]");
          continue;
        case 'H':
          if (!in_class) {
            out += absl::StrCat("[^", Sv(kHexMembers), "]");
            continue;
          }
          break;
        default:
          break;
      }
      out.push_back('\\');
      out.push_back(e);
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      if (i + 1 < p.size() && p[i + 1] == '^') {
        out.push_back('^');
        ++i;
      }
      class_start = i + 1;
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:name:]
      size_t close = p.find(":]", i + 2);
      if (close != std::string_view::npos) {
        out.append(p.substr(i, close + 2 - i));
        i = close + 1;
        continue;
      }
    }
    if (in_class && c == ']' && i != class_start) in_class = false;
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<const Regex>> Regex::FromOniguruma(std::string_view pattern) {
  std::unique_ptr<Regex> re(new Regex());
  re->pcre2_pattern_ = OnigurumaToPcre2(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(re->pcre2_pattern_.data()), re->pcre2_pattern_.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("regex \"", Sv(pattern), "\" does not compile (as PCRE2 \"",
                                                   re->pcre2_pattern_, "\"): ", reinterpret_cast<const char*>(message),
                                                   " at offset ", offset));
  }
  re->code_ = code;
  re->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return std::unique_ptr<const Regex>(std::move(re));
}

absl::StatusOr<std::unique_ptr<const Regex>> Regex::FromLiteral(std::string_view literal) {
  std::string escaped;
  for (char c : literal) {
    const auto b = static_cast<unsigned char>(c);
    const bool alnum = (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z');
    if (b < 0x80 && !alnum) {
      if (b < 0x20 || b == 0x7F) {  // control characters as \x{..}: PCRE2 reads them literally either way
        escaped += absl::StrCat("\\x{", absl::Hex(b), "}");
        continue;
      }
      escaped.push_back('\\');
    }
    escaped.push_back(c);
  }
  // The escaped literal contains no Oniguruma-specific escapes, so the rewrite leaves it unchanged.
  return FromOniguruma(escaped);
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

int Regex::MatchFrom(std::string_view text, size_t offset, bool anchored, size_t* start, size_t* end) const {
  MatchScratch& scratch = Scratch();
  if (scratch.match_data == nullptr) return -1;
  auto* code = static_cast<const pcre2_code*>(code_);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  uint32_t options = PCRE2_NO_UTF_CHECK | (anchored ? PCRE2_ANCHORED : 0);
  int rc = pcre2_match(code, subject, text.size(), offset, options, scratch.match_data, scratch.context);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {  // retry with the interpreter, which keeps its frames on the heap
    rc = pcre2_match(code, subject, text.size(), offset, options | PCRE2_NO_JIT, scratch.match_data, scratch.context);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return 0;
  if (rc < 0) return -1;
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.match_data);
  *start = ovector[0];
  *end = ovector[1];
  if (*start > *end || *end > text.size()) return -1;  // \K tricks can report such matches; treat as an error
  return 1;
}

void Regex::FindAll(std::string_view text, std::vector<Match>* out) const {
  if (!IsValidUtf8(text)) return;
  size_t search_from = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (search_from <= text.size()) {
    size_t start, end;
    if (MatchFrom(text, search_from, /*anchored=*/false, &start, &end) != 1) return;
    if (start == end && have_last && last_match_end == end) {
      // No empty match right after the previous match: step over one character and search again.
      if (search_from >= text.size()) return;
      char32_t cp;
      size_t n = DecodeUtf8(text, search_from, &cp);
      search_from += n == 0 ? 1 : n;
      continue;
    }
    out->emplace_back(start, end);
    search_from = end;
    have_last = true;
    last_match_end = end;
  }
}

bool Regex::MatchesAt(std::string_view text, size_t pos) const {
  if (pos > text.size()) return false;
  size_t start, end;
  return MatchFrom(text, pos, /*anchored=*/true, &start, &end) == 1;
}

}  // namespace fm::tokenizer_internal
