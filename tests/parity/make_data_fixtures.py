"""Reference data for the C++ data library (worker/engine/data): a small byte-level BPE tokenizer trained with
`tokenizers` on Brown Corpus text, brown.py's documents, the token streams `tokenizers` gives for them, the random
numbers of an independent Python xoshiro256** and passkey samples from an independent Python implementation of
docs/ENGINE.md §3.

Layout of --out:
  tokenizer.json          byte-level BPE (GPT-2 pre-tokenizer), vocabulary 2000, <|endoftext|> as EOS
  tokenizer_noeos.json    the same without added tokens (no EOS)
  brown_docs.jsonl        {"name", "text"} per document of brown.documents(), in order
  tricky/                 a small hand-made corpus directory exercising brown.py's edge cases
  tricky_docs.jsonl       brown.documents() of tricky/
  brown_train.u32         the training split of Brown as tokenizer.json gives it (EOS between documents)
  brown_heldout.u32       the held-out split (documents i % 10 == 9)
  rng.json                raw outputs and Uniform draws per (seed, stream index)
  passkey.json            passkey samples (options, ids, mask, ...) on the training split of brown_train.u32
  stamp                   hash of this script, brown.py, the library version and the corpus listing
"""
import argparse
import hashlib
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(__file__))
import brown  # noqa: E402

import tokenizers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

VOCAB_SIZE = 2000
TRAIN_BYTES = 600_000
EOS = "<|endoftext|>"
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

# Raw bytes: tabs, CRLF and lone CR, blank lines of whitespace, tokens without tags, several slashes, quotes,
# punctuation and clitics in odd places, non-ASCII letters and spaces, invalid UTF-8.
TRICKY = {
    "ca01": b"\n\n\tThe/at Fulton/np-tl ``/`` jury/nn ''/'' said/vbd ,/, ``/``/`` x/y ./.\r\n"
            b"  \t \r\n\tIt/pps is/bez n't/* true/jj ;/. do/do n't/* (/( see/vb )/) 's/pos 'sx/x 's_/x\r"
            b"\tname/np 's/pos ./. they/ppss 're/ber here/rb 'll/md 'd/hvd 'm/bem 've/hv 'd\xc3\xa9/x 'm\xc3\xa9/x\n",
    "cb02": b"no tags here , just . words ( and ) ? ! : ;\n"
            b"a/b/c /tag tag/ / // ``'' '''' ```` ````` .\n\x0b\x0c\x1c\n"
            b"caf\xc3\xa9/nn na\xc3\xafve\xc2\xa0word/jj \xe2\x80\x83em-space 'lldata/x 's\xe2\x82\xac/x\n"
            b"bad \xff\xfe bytes \xed\xa0\x80 \xf0\x9f\x98 end\n",
    "cr09": b"",
    "cz01": b"not/a corpus/file\n",
    "ca1": b"not/a corpus/file\n",
}


def stamp_value():
    h = hashlib.sha256()
    for path in (__file__, brown.__file__):
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(tokenizers.__version__.encode())
    for name in sorted(os.listdir(brown.CORPUS_DIR)):
        st = os.stat(os.path.join(brown.CORPUS_DIR, name))
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for name, text in docs:
            f.write(json.dumps({"name": name, "text": text}) + "\n")


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(brown.text(TRAIN_BYTES).split("\n\n"), trainer)
    return tok


def streams(tok, texts):
    eos = tok.token_to_id(EOS)
    encoded = tok.encode_batch(texts, add_special_tokens=False)
    out = {0: [], 1: []}
    for i, enc in enumerate(encoded):
        part = out[1 if i % 10 == 9 else 0]
        if part:
            part.append(eos)
        part.extend(enc.ids)
    # Documents are never empty here, so "non-empty part" == "a document came before".
    assert all(texts), "an empty Brown document would need a document counter"
    return out[0], out[1]


# --- An independent implementation of worker/engine/data/rng.h -------------------------------------------------

def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class Rng:
    def __init__(self, seed):
        self.s = []
        x = seed
        for _ in range(4):
            x = (x + GOLDEN) & MASK64
            self.s.append(mix(x))

    @staticmethod
    def stream(seed, index):
        return Rng(mix(mix((seed + GOLDEN) & MASK64) ^ index))

    def next(self):
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & MASK64  # noqa: E731
        result = (rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def uniform(self, n):
        threshold = (1 << 64) % n
        while True:
            r = self.next()
            if r >= threshold:
                return r % n


def rng_cases():
    cases = []
    for seed, index in [(0, 0), (1, 0), (0, 1), (12345, 678), (MASK64, MASK64), (2**63, 7)]:
        r = Rng.stream(seed, index)
        raw = [r.next() for _ in range(8)]
        bounds = [1, 2, 3, 7, 10, 26, 1000, 2**32 + 1, 2**63 + 12345, MASK64]
        uni = [[n, r.uniform(n)] for n in bounds for _ in range(3)]
        real = [(r.next() >> 11) * 2.0**-53 for _ in range(4)]
        cases.append({"seed": str(seed), "index": str(index), "raw": [str(x) for x in raw],
                      "uniform": [[str(n), str(v)] for n, v in uni], "real": real})
    return cases


# --- An independent implementation of docs/ENGINE.md §3 "Passkey samples" --------------------------------------

WORDS = ("alfa bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec "
         "romeo sierra tango uniform victor whiskey xray yankee zulu").split()
HEADER = "There is important information hidden in the following text. Find and remember the passkeys.\n"
QUESTION = "\nQuestion: What are the passkeys?\nAnswer:"


def byte_decoder():
    table, n = {}, 0
    for b in range(256):
        printable = ord("!") <= b <= ord("~") or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF
        table[chr(b) if printable else chr(256 + n)] = b
        n += 0 if printable else 1
    return table


def token_bytes(tok, i, table):
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    s = tok.id_to_token(i)
    if s in added:
        return s.encode()
    return bytes(table[c] for c in s)


def passkey_sample(tok, bg_stream, opts, index, space_start):
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    n = opts["num_passkeys"]
    r = Rng.stream(opts["seed"], index)
    length = opts["min_length"] + r.uniform(opts["max_length"] - opts["min_length"] + 1)
    passkeys = [[WORDS[r.uniform(26)] for _ in range(opts["words_per_passkey"])] for _ in range(n)]
    number = [enc(f" The passkey number {j} is:") for j in range(1, n + 1)]
    words = [enc("".join(" " + w for w in pk)) for pk in passkeys]
    period = enc(".")
    fixed = len(enc(HEADER)) + len(enc(QUESTION)) + 2 * sum(len(a) + len(b) + len(period)
                                                           for a, b in zip(number, words))
    bg_len = length - fixed
    assert bg_len >= 0
    offset = r.uniform(len(bg_stream) - bg_len + 1)
    bg = bg_stream[offset:offset + bg_len]
    D = opts["num_depths"]
    chosen = set()
    for j in range(D - n, D):
        t = r.uniform(j + 1)
        chosen.add(j if t in chosen else t)
    depths = sorted(chosen)
    positions = []
    for k in depths:
        p = (2 * k * bg_len + D) // (2 * D)
        q = next((q for q in range(p, min(p + 33, bg_len)) if space_start[bg[q]]), p)
        positions.append(q)
    ids, mask, prev, inserts = enc(HEADER), None, 0, []
    for j in range(n):
        ids += bg[prev:positions[j]]
        prev = positions[j]
        inserts.append(len(ids))
        ids += number[j] + words[j] + period
    ids += bg[prev:] + enc(QUESTION)
    mask = [0] * len(ids)
    answer_start = len(ids)
    for j in range(n):
        ids += number[j]
        ids += words[j]
        ids += period
        mask += [0] * len(number[j]) + [1] * len(words[j]) + [0] * len(period)
    assert len(ids) == length
    return {"index": index, "ids": ids, "mask": mask, "passkeys": passkeys, "depths": depths,
            "background_positions": positions, "insert_positions": inserts, "background_offset": offset,
            "answer_start": answer_start}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = parser.parse_args().out
    stamp_path = os.path.join(out, "stamp")
    stamp = stamp_value()
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if f.read().strip() == stamp:
                return 0
    os.makedirs(out, exist_ok=True)

    docs = list(brown.documents())
    write_jsonl(os.path.join(out, "brown_docs.jsonl"), docs)

    tricky_dir = os.path.join(out, "tricky")
    os.makedirs(tricky_dir, exist_ok=True)
    for name, data in TRICKY.items():
        with open(os.path.join(tricky_dir, name), "wb") as f:
            f.write(data)
    saved = brown.CORPUS_DIR
    brown.CORPUS_DIR = tricky_dir
    try:
        write_jsonl(os.path.join(out, "tricky_docs.jsonl"), list(brown.documents()))
    finally:
        brown.CORPUS_DIR = saved

    tok = train_tokenizer()
    tj = json.loads(tok.to_str())
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(tj))
    noeos = json.loads(json.dumps(tj))
    noeos["added_tokens"] = []
    with open(os.path.join(out, "tokenizer_noeos.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(noeos))
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))

    train, held = streams(tok, [text for _, text in docs])
    for name, ids in (("brown_train.u32", train), ("brown_heldout.u32", held)):
        with open(os.path.join(out, name), "wb") as f:
            f.write(struct.pack(f"<{len(ids)}I", *ids))

    with open(os.path.join(out, "rng.json"), "w") as f:
        json.dump({"cases": rng_cases()}, f)

    table = byte_decoder()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    space_start = [token_bytes(tok, i, table)[:1] in (b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c")
                   for i in range(vocab)]
    option_sets = [
        {"num_passkeys": 10, "words_per_passkey": 32, "num_depths": 1000, "min_length": 3500, "max_length": 6000,
         "seed": 7},
        {"num_passkeys": 3, "words_per_passkey": 4, "num_depths": 5, "min_length": 250, "max_length": 500,
         "seed": 2**64 - 3},
        {"num_passkeys": 4, "words_per_passkey": 2, "num_depths": 4, "min_length": 300, "max_length": 300,
         "seed": 0},
    ]
    sets = []
    for opts in option_sets:
        # The background: the training split of brown_train.u32 read as a token file (its first 90 %).
        background = train[:len(train) - len(train) // 10]
        samples = [passkey_sample(tok, background, opts, i, space_start) for i in (0, 1, 2, 99, 123456789)]
        sets.append({"options": {k: str(v) for k, v in opts.items()}, "samples": samples})
    with open(os.path.join(out, "passkey.json"), "w") as f:
        json.dump({"sets": sets}, f)

    with open(stamp_path, "w") as f:
        f.write(stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
