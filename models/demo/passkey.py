"""Passkey-retrieval samples exactly as docs/ENGINE.md §3 defines them (the Python reference generator).

A sample is a pure function of (seed, index, options, tokenizer, background token stream). Its segments, each
tokenized on its own (no BOS/EOS) and concatenated:

  1. HEADER
  2. background tokens, with, before the j-th insertion point (text order, j = 1..N), the segments
     scaffold(j) = " The passkey number {j} is:", the word segment " w1 w2 … wn" and "."
  3. QUESTION
  4. for j = 1..N: scaffold(j), the word segment (the ANSWER tokens, marked in `answer_mask`), "."

Randomness (mirrors worker/engine/data/rng.h so that a C++ generator drawing in the same order gives the same
samples): xoshiro256** seeded through SplitMix64, stream seed StreamSeed(seed, index) =
SplitMix64Mix(SplitMix64Mix(seed + 0x9E3779B97F4A7C15) ^ index), unbiased Uniform(n) (draws below 2^64 mod n are
rejected, then reduced mod n). Draw order for one sample:

  a. the words: for j = 1..N, for w = 1..n: NATO_WORDS[Uniform(26)] (uniform, with repetition);
  b. the total length: UniformInRange(min_length, max_length);
     background length B = total - (tokens of every fixed segment: 1, 3, and each scaffold/words/"." twice);
     B < 0 is an error, and so is a background stream shorter than B;
  c. the background offset: Uniform(len(stream) - B + 1); the background is stream[offset : offset + B];
  d. the depths: Uniform(num_depths) repeatedly until N distinct values are drawn; they are then sorted ascending.

Depth k inserts before background token p = round(k / num_depths · B), rounded half up (integer arithmetic:
(2·k·B + num_depths) // (2·num_depths)); p then moves forward to the first token q in [p, min(p + 32, B − 1)] whose
bytes start with ASCII whitespace (space, \\t, \\n, \\v, \\f, \\r); if there is none it stays at p. Insertion points
are non-decreasing in k, so the j-th smallest depth gets passkey number j.

The mask marks the answer tokens; the positions that *predict* them are t − 1 for every masked t.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Sequence, Tuple

NATO_WORDS = ("alfa bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa "
              "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
HEADER = "There is important information hidden in the following text. Find and remember the passkeys.\n"
QUESTION = "\nQuestion: What are the passkeys?\nAnswer:"
PERIOD = "."
MOVE_LIMIT = 32  # tokens an insertion point may move forward to reach a whitespace-initial token
WHITESPACE_BYTES = b" \t\n\x0b\x0c\r"

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def scaffold(j: int) -> str:
    return f" The passkey number {j} is:"


def word_segment(words: Sequence[str]) -> str:
    return "".join(" " + w for w in words)


# ---------------------------------------------------------------------------------------------------------------
# Random numbers (the same as fm::Rng in worker/engine/data/rng.cc).

def splitmix64_mix(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_seed(seed: int, index: int) -> int:
    return splitmix64_mix(splitmix64_mix((seed + _GOLDEN) & _MASK) ^ (index & _MASK))


class Rng:
    """xoshiro256** whose four state words are the first four outputs of SplitMix64 started at `seed`."""

    def __init__(self, seed: int):
        x = seed & _MASK
        s = []
        for _ in range(4):
            x = (x + _GOLDEN) & _MASK
            s.append(splitmix64_mix(x))
        self._s = s

    @classmethod
    def for_stream(cls, seed: int, index: int) -> "Rng":
        return cls(stream_seed(seed, index))

    def next(self) -> int:
        s = self._s
        r = (s[1] * 5) & _MASK
        result = ((((r << 7) | (r >> 57)) & _MASK) * 9) & _MASK
        t = (s[1] << 17) & _MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = ((s[3] << 45) | (s[3] >> 19)) & _MASK
        return result

    def uniform(self, n: int) -> int:
        """Uniform on [0, n); 0 when n == 0."""
        if n <= 0:
            return 0
        threshold = (1 << 64) % n
        while True:
            r = self.next()
            if r >= threshold:
                return r % n

    def uniform_in_range(self, lo: int, hi: int) -> int:
        """Uniform on [lo, hi]; lo when hi <= lo."""
        if hi <= lo:
            return lo
        return lo + self.uniform(hi - lo + 1)

    def uniform_real(self) -> float:
        return (self.next() >> 11) * (2.0 ** -53)


# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PasskeyOptions:
    num_passkeys: int = 10
    words_per_passkey: int = 32
    num_depths: int = 1000
    min_length: int = 1024
    max_length: int = 1024
    seed: int = 0


@dataclasses.dataclass
class PasskeySample:
    input_ids: List[int]
    answer_mask: List[bool]          # True at the answer tokens (segment 4's word segments)
    background_mask: List[bool]      # True at the background tokens (segment 2 less the inserted passkeys)
    passkeys: List[Tuple[str, ...]]  # passkey j = passkeys[j - 1]
    answer_spans: List[Tuple[int, int]]  # [start, end) of passkey j's answer tokens in input_ids
    answer_section_start: int        # index of the first token of segment 4 (= the prompt's length)
    depths: List[int]                # sorted
    insert_positions: List[int]      # background token index each passkey is inserted before
    background_offset: int
    background_length: int


def whitespace_start_table(token_bytes: Sequence[bytes]) -> List[bool]:
    """Per token id: whether the token's bytes begin with an ASCII whitespace byte."""
    return [len(b) > 0 and b[0] in WHITESPACE_BYTES for b in token_bytes]


def byte_level_token_bytes(vocab: dict, added_tokens: Sequence[str] = ()) -> List[bytes]:
    """Token id -> bytes for a byte-level BPE vocab (token string -> id); added (special) tokens are their text."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    unicode_to_byte = {chr(c): b for b, c in zip(bs, cs)}
    out: List[bytes] = [b""] * (max(vocab.values()) + 1)
    added = set(added_tokens)
    for tok, i in vocab.items():
        if tok in added:
            out[i] = tok.encode("utf-8")
        else:
            out[i] = bytes(unicode_to_byte[c] for c in tok)
    return out


class PasskeyGenerator:
    """Makes passkey samples from a background token stream.

    encode: text -> token ids, with no special tokens added (e.g. lambda s: tok.encode(s, add_special_tokens=False)
            .ids for a `tokenizers.Tokenizer`).
    background: the tokenized corpus (documents joined by EOS), any int sequence (list, numpy array).
    starts_with_whitespace: per token id, as whitespace_start_table() computes it.
    """

    def __init__(self, encode: Callable[[str], Sequence[int]], background: Sequence[int],
                 starts_with_whitespace: Sequence[bool]):
        self._encode = encode
        self._background = background
        self._ws = starts_with_whitespace
        self._cache = {}

    def encode_cached(self, text: str) -> List[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = [int(t) for t in self._encode(text)]
            self._cache[text] = ids
        return ids

    def fixed_tokens_upper_bound(self, num_passkeys: int, words_per_passkey: int) -> int:
        """An upper bound on the fixed (non-background) tokens of a sample with these options."""
        word_max = max(len(self.encode_cached(" " + w)) for w in NATO_WORDS)
        per = max(len(self.encode_cached(scaffold(j))) for j in range(1, num_passkeys + 1))
        per += words_per_passkey * word_max + len(self.encode_cached(PERIOD))
        return len(self.encode_cached(HEADER)) + len(self.encode_cached(QUESTION)) + 2 * num_passkeys * per

    def sample(self, index: int, options: PasskeyOptions) -> PasskeySample:
        n_keys, n_words = options.num_passkeys, options.words_per_passkey
        if n_keys < 1 or n_words < 1:
            raise ValueError("num_passkeys and words_per_passkey must be at least 1")
        if options.num_depths < n_keys:
            raise ValueError(f"num_depths ({options.num_depths}) < num_passkeys ({n_keys})")
        if options.min_length > options.max_length:
            raise ValueError("min_length > max_length")
        rng = Rng.for_stream(options.seed, index)

        # a. words
        passkeys = [tuple(NATO_WORDS[rng.uniform(len(NATO_WORDS))] for _ in range(n_words)) for _ in range(n_keys)]
        header = self.encode_cached(HEADER)
        question = self.encode_cached(QUESTION)
        period = self.encode_cached(PERIOD)
        scaffolds = [self.encode_cached(scaffold(j)) for j in range(1, n_keys + 1)]
        words = [[int(t) for t in self._encode(word_segment(p))] for p in passkeys]
        fixed = len(header) + len(question) + 2 * sum(len(s) + len(w) + len(period) for s, w in zip(scaffolds, words))

        # b. length
        total = rng.uniform_in_range(options.min_length, options.max_length)
        b_len = total - fixed
        if b_len < 0:
            raise ValueError(f"length {total} is shorter than the {fixed} tokens of the fixed segments")
        if b_len > len(self._background):
            raise ValueError(f"background stream ({len(self._background)} tokens) shorter than {b_len}")

        # c. background window
        offset = rng.uniform(len(self._background) - b_len + 1)
        bg = [int(t) for t in self._background[offset:offset + b_len]]

        # d. depths
        chosen: List[int] = []
        seen = set()
        while len(chosen) < n_keys:
            d = rng.uniform(options.num_depths)
            if d not in seen:
                seen.add(d)
                chosen.append(d)
        depths = sorted(chosen)
        positions = []
        for k in depths:
            p = (2 * k * b_len + options.num_depths) // (2 * options.num_depths)
            q = p
            for c in range(p, min(p + MOVE_LIMIT, b_len - 1) + 1):
                if self._ws[bg[c]]:
                    q = c
                    break
            positions.append(q)

        ids: List[int] = list(header)
        background = [False] * len(ids)
        prev = 0
        for j in range(n_keys):
            ids += bg[prev:positions[j]]
            background += [True] * (positions[j] - prev)
            ids += scaffolds[j] + words[j] + period
            background += [False] * (len(ids) - len(background))
            prev = positions[j]
        ids += bg[prev:]
        background += [True] * (b_len - prev)
        ids += question
        section_start = len(ids)
        mask = [False] * len(ids)
        spans = []
        for j in range(n_keys):
            ids += scaffolds[j]
            start = len(ids)
            ids += words[j]
            spans.append((start, len(ids)))
            ids += period
        mask += [False] * (len(ids) - len(mask))
        background += [False] * (len(ids) - len(background))
        for s, e in spans:
            for t in range(s, e):
                mask[t] = True
        assert len(ids) == total, (len(ids), total)
        return PasskeySample(input_ids=ids, answer_mask=mask, background_mask=background, passkeys=passkeys, answer_spans=spans,
                             answer_section_start=section_start, depths=depths, insert_positions=positions,
                             background_offset=offset, background_length=b_len)
