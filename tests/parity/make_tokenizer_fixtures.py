"""Reference data for the C++ tokenizer (worker/engine/tokenizer): byte-level BPE tokenizers trained here with the
`tokenizers` library on Brown Corpus text, in configurations that mirror the GPT-2, SmolLM2, Llama-3 and Qwen2
families (plus variants that exercise the other tokenizer.json features the C++ reader supports), and the ids and
decodes `tokenizers` gives for held-out Brown text and a list of tricky strings.

Layout of --out:
  index.json                   {"configs": [name, ...]}
  <name>/tokenizer.json        the tokenizer exactly as `tokenizers` loaded it for the reference
  <name>/cases.json            expectations (see `write_config`)
  <name>/spec.json             (some configs) the same vocabulary as GGUF would carry it, for Tokenizer::FromBpeSpec
  stamp                        hash of this script, brown.py and the library version; a matching stamp skips work
"""
import argparse
import hashlib
import itertools
import json
import os
import sys
import unicodedata

sys.path.insert(0, os.path.dirname(__file__))
import brown  # noqa: E402

import tokenizers  # noqa: E402
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,  # noqa: E402
                        pre_tokenizers, processors, trainers)

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

VOCAB_SIZE = 3000
HELD_OUT_BYTES = 200_000
SMALL_HELD_OUT_BYTES = 20_000

TRICKY = [
    "",
    " ",
    "\n",
    "Hello, world! It's a test.",
    "  leading spaces",
    "trailing spaces   ",
    "\t\ttabs\tand\nnewlines\n\n\n",
    "\r\nwindows\r\nline endings\r\n\r\n",
    "multiple     spaces    here",
    " " * 40 + "x" + "\n" * 30 + "y" + "\t \n " * 10,
    "I ❤️ emoji 👍🏽 🇫🇷 👨‍👩‍👧‍👦 !",
    "日本語のテキストと中文文本，还有한국어.",
    "café naïve résumé Ångström",
    "cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030angstro\u0308m",
    "a\u0300\u0301\u0302\u0303 Z\u0351\u0352\u0353 \u0301lone mark",
    "1234567890 3.14159 1,000,000 ٣٤٥ ²³ Ⅻ ½ ①",
    "9" * 50 + " " + "12" * 20,
    "I'M YOU'RE we've They'LL it's x'ſ don't",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "word<|endoftext|>word <|endoftext|><|endoftext|> <|im_sta <|im_end",
    "<|begin_of_text|>The <|eot_id|>end<|end_of_text|>",
    "before   [NOTE]   after, [NOTE][NOTE], x[NOTE]y,\t[NOTE]\n",
    "Grace Lee, Grace Lees, xGrace Lee, Grace Lee_x, Grace Lee2, (Grace Lee)",
    "HELLO WORLD and hello world and Hello World!",
    "<think>reasoning</think> answer <think>",
    "\ufffd replacement \ufeffBOM \uffff\U0010ffff noncharacters",
    "\x00nul\x01ctrl\x7f del \x85nel\u2028ls\u2029ps",
    "\u180e mongolian \u200b zero width \u200d joiner \u00a0nbsp\u3000ideographic",
    "\ue000\U000f0000 private \ud7ff \U0001d11e",
    "Ελληνικά Русский עברית العربية हिन्दी ไทย",
    "İstanbul ΣΑΣ ǅ ß ﬁ ligature ﬀ Ⅸ ㊿ ＡＢＣ１２３",
    "def f(x):\n    return x**2  # comment\n\n\nclass A:\n\tpass\n",
    "https://example.com/path?q=1&r=2#frag e-mail: a.b@c.org",
    "$100.00 -- 50% off!!! ... ?!? (parens) [brackets] {braces}",
]

# Byte strings that are not valid UTF-8 (see tokenizer.h for the behaviour they check).
INVALID = [
    b"abc\xffdef",
    b"\xc3\x28 truncated \xe2\x82",
    b"\xed\xa0\x80 surrogate \xf4\x90\x80\x80 too big \xc0\xaf overlong",
    b"\x80\x80\x80 lone continuation bytes",
    b"tail \xf0\x9f\x98",
    b"<|endoftext|>\xfe<|endoftext|>",
]


def byte_level_chars(data):
    table = {}
    n = 0
    for b in range(256):
        printable = ord("!") <= b <= ord("~") or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF
        table[b] = chr(b) if printable else chr(256 + n)
        n += 0 if printable else 1
    return "".join(table[b] for b in data)


def utf8_segments(data):
    """Splits bytes into (is_valid, bytes) runs: maximal valid runs and maximal runs of invalid subparts."""
    out = []
    pos = 0
    while pos < len(data):
        try:
            data[pos:].decode("utf-8")
            out.append((True, data[pos:]))
            break
        except UnicodeDecodeError as e:
            if e.start > 0:
                out.append((True, data[pos:pos + e.start]))
            bad_start = pos + e.start
            bad_end = pos + e.end
            # extend over following invalid subparts
            while bad_end < len(data):
                try:
                    data[bad_end:bad_end + 4].decode("utf-8")
                    break
                except UnicodeDecodeError as e2:
                    if e2.start != 0:
                        break
                    bad_end += e2.end
            out.append((False, data[bad_start:bad_end]))
            pos = bad_end
    return out


def encode_invalid(tok, data, byte_level):
    """Our documented rule for invalid UTF-8, computed with `tokenizers` itself."""
    ids = []
    for valid, seg in utf8_segments(data):
        if valid:
            ids += tok.encode(seg.decode("utf-8"), add_special_tokens=False).ids
        elif byte_level:
            ids += [t.id for t in tok.model.tokenize(byte_level_chars(seg))]
        else:
            ids += tok.encode(seg.decode("utf-8", errors="replace"), add_special_tokens=False).ids
    return ids


def load_docs():
    docs = [d for _, d in itertools.islice(brown.documents(), 120)]
    train = [d for i, d in enumerate(docs) if i % 4 != 0][:36]
    held = "\n\n".join(d for i, d in enumerate(docs) if i % 4 == 0)
    return train, held


def train(train_texts, pre_tokenizer, normalizer=None, specials=(), model_kwargs=None, initial_alphabet=None,
          limit_alphabet=None, decoder=decoders.ByteLevel()):
    tok = Tokenizer(models.BPE(**(model_kwargs or {})))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    if decoder is not None:
        tok.decoder = decoder
    kwargs = dict(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=list(specials), show_progress=False)
    if initial_alphabet is not None:
        kwargs["initial_alphabet"] = initial_alphabet
    if limit_alphabet is not None:
        kwargs["limit_alphabet"] = limit_alphabet
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if (model_kwargs or {}).get(key):
            kwargs[key] = model_kwargs[key]
    tok.train_from_iterator(train_texts, trainers.BpeTrainer(**kwargs))
    return json.loads(tok.to_str())


def with_added(tj, tokens):
    """Adds AddedTokens after training (ids after the model vocabulary), returning the new JSON."""
    tok = Tokenizer.from_str(json.dumps(tj))
    tok.add_tokens(tokens)
    return json.loads(tok.to_str())


def post_sequence(*items):
    return {"type": "Sequence", "processors": list(items)}


def byte_level_post():
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}


def template_json(tok_json, special):
    tok = Tokenizer.from_str(json.dumps(tok_json))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{special} $A", pair=f"{special} $A {special} $B:1",
                                      special_tokens=[(special, tok.token_to_id(special))]),
    ])
    return json.loads(tok.to_str())["post_processor"]


def legacy_merges(tj):
    tj = json.loads(json.dumps(tj))
    tj["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    return tj


def gguf_view(tj, keep_post):
    """The tokenizer a GGUF conversion of `tj` describes: added tokens lose lstrip/rstrip/single_word and are
    matched unnormalized."""
    tj = json.loads(json.dumps(tj))
    for t in tj["added_tokens"]:
        t.update(single_word=False, lstrip=False, rstrip=False, normalized=False)
    if not keep_post:
        tj["post_processor"] = None
    return tj


def cases_for(tok, texts, roundtrip_form):
    cases = []
    for k, text in enumerate(texts):
        with_special = tok.encode(text, add_special_tokens=True).ids
        # The held-out text (first) is long: its add_special_tokens=False ids are not recomputed.
        plain = tok.encode(text, add_special_tokens=False).ids if k > 0 else None
        dec = tok.decode(with_special, skip_special_tokens=False)
        dec_skip = tok.decode(with_special, skip_special_tokens=True)
        rt = None
        if roundtrip_form is not None and plain is not None:
            want = roundtrip_form(text)
            if tok.decode(plain, skip_special_tokens=False) == want:
                rt = want
        case = {"text": text, "ids": with_special, "ids_plain": plain, "decode": dec, "decode_skip": dec_skip,
                "roundtrip": rt}
        if dec == text:
            case["decode"] = None  # saves space: null means "equals text"
        if rt == text:
            case["roundtrip"] = True
        cases.append(case)
    return cases


def write_config(out, name, tj, texts, *, byte_level, roundtrip_form=None, spec_pre=None, spec_keep_post=False,
                 bos_token=None):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    text = json.dumps(tj, ensure_ascii=False)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(text)
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    max_id = max(vocab.values())
    probe_ids = sorted({0, 1, 2, 100, 257, max_id, max_id + 1, max_id + 1000} | {t["id"] for t in tj["added_tokens"]})
    probe_tokens = sorted({t["content"] for t in tj["added_tokens"]} |
                          {tok.id_to_token(i) for i in (0, 5, 300, max_id) if tok.id_to_token(i) is not None} |
                          {"not-a-token", "Ġthe", "the"})
    data = {
        "name": name,
        "byte_level": byte_level,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "id_to_token": [[i, tok.id_to_token(i)] for i in probe_ids],
        "token_to_id": [[t, tok.token_to_id(t)] for t in probe_tokens],
        "bos_id": tok.token_to_id(bos_token) if bos_token else None,
        "special_ids": sorted(t["id"] for t in tj["added_tokens"] if t["special"]),
        "cases": cases_for(tok, texts, roundtrip_form),
        # Invalid UTF-8 input; "lossy" is what Decode(Encode(x)) must give where round trips hold ("roundtrips").
        "roundtrips": roundtrip_form is not None,
        # (Truncation and padding apply once to the whole input, not per segment: no expectation there.)
        "invalid": [{"hex": b.hex(),
                     "ids_plain": None if tj.get("truncation") or tj.get("padding")
                     else encode_invalid(tok, b, byte_level),
                     "lossy": b.decode("utf-8", errors="replace")} for b in INVALID],
    }
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(data))

    if spec_pre is not None:
        view = gguf_view(tj, spec_keep_post)
        vtok = Tokenizer.from_str(json.dumps(view))
        n = vtok.get_vocab_size(with_added_tokens=True)
        added = {t["id"]: t for t in tj["added_tokens"]}
        merges = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
        bos_id = vtok.token_to_id(bos_token) if bos_token else None
        spec = {
            "tokens": [vtok.id_to_token(i) for i in range(n)],
            "merges": merges,
            "token_types": [(3 if added[i]["special"] else 4) if i in added else 1 for i in range(n)],
            "pre": spec_pre,
            "bos_id": bos_id,
            "eos_id": None,
            "add_bos": bool(spec_keep_post and bos_id is not None),
            "add_eos": False,
            "cases": [{"ids": c["ids"], "ids_plain": c["ids_plain"], "decode": c["decode"]}
                      for c in cases_for(vtok, texts, None)],
        }
        with open(os.path.join(d, "spec.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(spec))


def stamp_value():
    h = hashlib.sha256()
    for path in (__file__, brown.__file__):
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(tokenizers.__version__.encode())
    for name in sorted(os.listdir(brown.CORPUS_DIR))[:200]:  # the corpus files the fixtures can read
        st = os.stat(os.path.join(brown.CORPUS_DIR, name))
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = args.out
    stamp_path = os.path.join(out, "stamp")
    stamp = stamp_value()
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if f.read().strip() == stamp:
                return 0
    os.makedirs(out, exist_ok=True)

    train_texts, held = load_docs()
    big = held[:HELD_OUT_BYTES]
    small = held[HELD_OUT_BYTES:HELD_OUT_BYTES + SMALL_HELD_OUT_BYTES]
    main_texts = [big] + TRICKY
    small_texts = [small] + TRICKY
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    extra = [
        AddedToken("[NOTE]", special=False, lstrip=True, rstrip=True, normalized=False),
        AddedToken("Grace Lee", special=False, single_word=True, normalized=True),
    ]
    configs = []

    # GPT-2: ByteLevel with its own regex; merges written the legacy way ("a b"), as GPT-2's file has them.
    gpt2 = train(train_texts, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                 specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], initial_alphabet=alphabet)
    gpt2["post_processor"] = byte_level_post()
    gpt2 = legacy_merges(with_added(gpt2, extra))
    write_config(out, "gpt2", gpt2, main_texts, byte_level=True, roundtrip_form=lambda t: t, spec_pre="gpt2")
    configs.append("gpt2")

    # SmolLM2: individual digits, then ByteLevel with the GPT-2 regex.
    smol = train(train_texts, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)]),
                 specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], initial_alphabet=alphabet)
    smol = with_added(smol, extra)
    write_config(out, "smollm", smol, main_texts, byte_level=True, roundtrip_form=lambda t: t, spec_pre="smollm")
    configs.append("smollm")

    # Llama-3: Split(pattern) + ByteLevel without regex, ignore_merges, a template that adds the bos token.
    llama = train(train_texts, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], initial_alphabet=alphabet)
    llama["model"]["ignore_merges"] = True
    llama = with_added(llama, extra)
    llama["post_processor"] = template_json(llama, "<|begin_of_text|>")
    write_config(out, "llama3", llama, main_texts, byte_level=True, roundtrip_form=lambda t: t,
                 spec_pre="llama-bpe", spec_keep_post=True, bos_token="<|begin_of_text|>")
    configs.append("llama3")

    # Qwen2: NFC, Split(pattern) + ByteLevel without regex; a non-special <think> like Qwen3's.
    qwen = train(train_texts, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        normalizer=normalizers.NFC(), specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=alphabet)
    qwen = with_added(qwen, extra + [AddedToken("<think>", special=False, normalized=False),
                                     AddedToken("</think>", special=False, normalized=False)])
    qwen["post_processor"] = byte_level_post()
    write_config(out, "qwen2", qwen, main_texts, byte_level=True,
                 roundtrip_form=lambda t: unicodedata.normalize("NFC", t), spec_pre="qwen2")
    configs.append("qwen2")

    # Variants made by editing the JSON of a trained tokenizer.
    prefix = json.loads(json.dumps(gpt2))
    prefix["pre_tokenizer"]["add_prefix_space"] = True
    write_config(out, "gpt2_prefix_space", prefix, small_texts, byte_level=True)
    configs.append("gpt2_prefix_space")

    # ignore_merges only matters for vocabulary words the merges do not build: add some (frequent held-out
    # words that the merges split), with ids after the model's, and renumber the added tokens after them.
    whole = json.loads(json.dumps(llama))
    ltok = Tokenizer.from_str(json.dumps(llama))
    counts = {}
    for word, _ in ltok.pre_tokenizer.pre_tokenize_str(small):
        if word not in whole["model"]["vocab"] and len(ltok.model.tokenize(word)) > 1:
            counts[word] = counts.get(word, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))[:40]
    next_id = len(whole["model"]["vocab"])
    for w in words:
        whole["model"]["vocab"][w] = next_id
        next_id += 1
    for t in whole["added_tokens"]:
        if t["content"] not in whole["model"]["vocab"]:
            t["id"] = next_id
            next_id += 1
    whole["post_processor"] = template_json(whole, "<|begin_of_text|>")
    write_config(out, "llama3_whole_words", whole, small_texts + words, byte_level=True,
                 roundtrip_form=lambda t: t, bos_token="<|begin_of_text|>")
    configs.append("llama3_whole_words")

    trunc = json.loads(json.dumps(llama))
    trunc["truncation"] = {"direction": "Left", "max_length": 12, "strategy": "LongestFirst", "stride": 0}
    trunc["padding"] = {"strategy": {"Fixed": 16}, "direction": "Left", "pad_to_multiple_of": None,
                        "pad_id": 7, "pad_type_id": 0, "pad_token": "<pad>"}
    write_config(out, "llama3_trunc_pad", trunc, small_texts, byte_level=True)
    configs.append("llama3_trunc_pad")

    trunc2 = json.loads(json.dumps(gpt2))
    trunc2["truncation"] = {"direction": "Right", "max_length": 9, "strategy": "OnlyFirst", "stride": 0}
    trunc2["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": 4,
                         "pad_id": 3, "pad_type_id": 0, "pad_token": "<pad>"}
    write_config(out, "gpt2_trunc_pad", trunc2, small_texts, byte_level=True)
    configs.append("gpt2_trunc_pad")

    # Other components: NFD + Lowercase, Split with String/Regex patterns and every behavior, Digits grouped,
    # ByteLevel with a prefix space, subword prefix and word suffix, normalized added tokens.
    misc = train(train_texts, pre_tokenizers.Sequence([
        pre_tokenizers.Split("-", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"[.,;:]"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"\w+"), behavior="isolated", invert=True),
        pre_tokenizers.Split(Regex(r"[!?]"), behavior="contiguous"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)]),
        normalizer=normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()]),
        specials=["<|endoftext|>"], initial_alphabet=alphabet,
        model_kwargs=dict(continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    misc = with_added(misc, extra + [AddedToken("Hello World", special=False, normalized=True),
                                     AddedToken("<SEP>", special=True, normalized=True)])
    write_config(out, "misc", misc, small_texts, byte_level=True)
    configs.append("misc")

    nfkc = json.loads(json.dumps(misc))
    nfkc["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]}
    nfkc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    nfkc["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
    write_config(out, "misc_nfkc", nfkc, small_texts, byte_level=True)
    configs.append("misc_nfkc")

    # Not byte-level: an alphabet limited to 60 characters, unk_token, byte_fallback tokens, no decoder.
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    unk = train(train_texts, pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="isolated"),
                normalizer=normalizers.NFKD(), specials=["<unk>"] + byte_tokens, limit_alphabet=60,
                model_kwargs=dict(unk_token="<unk>"), decoder=None)
    write_config(out, "unk", unk, small_texts, byte_level=False)
    configs.append("unk")
    fused = json.loads(json.dumps(unk))
    fused["model"]["fuse_unk"] = True
    write_config(out, "unk_fused", fused, small_texts, byte_level=False)
    configs.append("unk_fused")
    fallback = json.loads(json.dumps(unk))
    fallback["model"]["byte_fallback"] = True
    fallback["model"]["fuse_unk"] = True
    write_config(out, "byte_fallback", fallback, small_texts, byte_level=False)
    configs.append("byte_fallback")

    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"configs": configs}, f)
    with open(stamp_path, "w") as f:
        f.write(stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
