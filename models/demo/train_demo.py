#!/usr/bin/env python3
"""Trains FlashMorph's demo model: a ~3.6M-parameter Qwen3 on the Brown Corpus plus passkey-retrieval samples.

One run does everything: trains a byte-level BPE tokenizer (vocab 2048), tokenizes the corpus (documents with
index % 10 == 9 held out), trains Qwen3ForCausalLM for a wall-clock budget, saves it in bf16 with save_pretrained,
reloads the saved files and evaluates them (held-out perplexity, passkey retrieval), and writes eval.json and
train_log.json next to the model.

Training mix (per batch of --batch x --seq-len tokens): --brown-rows plain Brown windows (loss on every token) and
passkey samples (docs/ENGINE.md §3, models/demo/passkey.py) for the rest, loss on their non-background tokens with
answer-predicting positions weighted --answer-weight. Brown is small (1.8M tokens): a 50/50 mix at this budget is
~65 epochs and the model memorises it (measured: held-out ppl > 10^4), so Brown gets one row in 32 (~4 epochs).
Retrieval does not emerge from 1024-token samples within the budget (answer accuracy stayed at chance for 7000
steps); a row-length curriculum (--phases: 128-token rows first, then 256, 512, 1024, same tokens per step) makes
it emerge within ~500 steps and then carries it to the full length.

  python models/demo/train_demo.py --out models/demo/qwen3-demo            # GPU, --minutes 6 of training
  python models/demo/train_demo.py --out /tmp/demo-smoke --smoke            # CPU, every phase, tiny

Deterministic for a given --seed and step count (as far as CUDA kernels allow). With a wall-clock budget the step
count is fixed after 70 timed steps and logged (train_log.json "train.total_steps"); --steps N reruns that schedule.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "parity"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import brown  # noqa: E402
import passkey as pk  # noqa: E402

EOS = "<|endoftext|>"
# GPT-2's pre-tokenizer pattern (the one ByteLevel uses with use_regex=true), written out as a Split step.
SPLIT_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# Passkey evaluation: (num_passkeys, words_per_passkey) × lengths; lengths above --seq-len are extrapolation.
EVAL_CONFIGS = [(2, 8), (4, 8), (8, 16)]
EVAL_LENGTHS = [256, 512, 1024, 2048]
EVAL_SEED_OFFSET = 1_000_003  # eval samples use seed + this, on the held-out stream


def log(msg: str) -> None:
    print(msg, flush=True)


# -------------------------------------------------------------------------------------------------- data / tokenizer

def load_brown(smoke: bool):
    docs = list(brown.documents())
    train = [t for i, (_, t) in enumerate(docs) if i % 10 != 9]
    held = [t for i, (_, t) in enumerate(docs) if i % 10 == 9]
    if smoke:
        train, held = train[:60], held[:6]
    return train, held


def passkey_text_lines(seed: int, n_lines: int):
    """Text in the passkey format for tokenizer training, so that its fixed phrases and the NATO words merge."""
    rng = pk.Rng.for_stream(seed, 0x70CE)
    lines = []
    for i in range(n_lines):
        j = 1 + rng.uniform(10)
        words = [pk.NATO_WORDS[rng.uniform(26)] for _ in range(4 + rng.uniform(13))]
        lines.append(pk.scaffold(j) + pk.word_segment(words) + pk.PERIOD)
        if i % 8 == 0:
            lines.append(pk.HEADER + pk.QUESTION)
    return lines


def train_tokenizer(train_docs, seed: int, vocab_size: int, n_passkey_lines: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    data = list(train_docs) + passkey_text_lines(seed, n_passkey_lines)
    tok.train_from_iterator(data, trainer=trainer, length=len(data))
    return tok


def tokenizer_checks(tok):
    """Token counts of the passkey vocabulary; fails if a NATO word or a passkey number is not compact."""
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    words = {w: len(enc(" " + w)) for w in pk.NATO_WORDS}
    numbers = {j: len(enc(pk.scaffold(j))) for j in range(1, 11)}
    fixed = {"header": len(enc(pk.HEADER)), "question": len(enc(pk.QUESTION)), "period": len(enc(pk.PERIOD))}
    log(f"tokenizer: vocab {tok.get_vocab_size()}; NATO word tokens max {max(words.values())} "
        f"(sum {sum(words.values())} for 26); scaffold tokens {sorted(set(numbers.values()))}; {fixed}")
    bad = [w for w, n in words.items() if n > 2]
    if bad:
        raise SystemExit(f"tokenizer: NATO words split into more than 2 tokens: {bad}")
    if max(numbers.values()) > 8:
        raise SystemExit(f"tokenizer: passkey scaffolds too long: {numbers}")
    # The word segment must tokenize as its words do one by one (passkey.py relies on nothing else, but the
    # answer tokens of passkey j are then exactly the words' tokens).
    sample = pk.word_segment(pk.NATO_WORDS)
    assert enc(sample) == [t for w in pk.NATO_WORDS for t in enc(" " + w)]
    return {"nato_word_tokens": words, "scaffold_tokens": numbers, "fixed_tokens": fixed}


def save_tokenizer(tok, out_dir: str, model_max_length: int):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   unk_token=None, model_max_length=model_max_length, clean_up_tokenization_spaces=False)
    fast.save_pretrained(out_dir)
    # The engine reads tokenizer.json itself; keep tokenizer_config.json to the fields it and transformers need.
    reloaded = PreTrainedTokenizerFast.from_pretrained(out_dir)
    probe = "The passkey number 7 is: alfa zulu.\nQuestion: What are the passkeys?\n 1961, 'tis  odd"
    assert reloaded(probe)["input_ids"] == tok.encode(probe, add_special_tokens=False).ids, "tokenizer reload differs"
    assert reloaded.decode(reloaded(probe)["input_ids"]) == probe
    assert reloaded.bos_token == EOS and reloaded.eos_token == EOS
    return reloaded


def tokenize_stream(tok, docs, eos_id: int) -> np.ndarray:
    """Documents tokenized and joined by EOS (one between consecutive documents)."""
    out = []
    for i, enc in enumerate(tok.encode_batch(docs, add_special_tokens=False)):
        if i:
            out.append(eos_id)
        out.extend(enc.ids)
    return np.asarray(out, dtype=np.int32)


# -------------------------------------------------------------------------------------------------- training batches

class BatchMaker:
    """Batch `step` is a pure function of (seed, step). Rows [0, brown_rows) are plain Brown windows of the train
    stream (loss weight 1). The other rows are passkey samples, each followed by EOS and a Brown window to fill
    the row; their weights: answer-predicting positions `answer_weight`, background and fill `background_weight`,
    the rest (header, inserted passkeys, question, scaffolds) 1.
    Row length curriculum: `phases` [(row_len, until_step), ...] makes early batches of short rows (same tokens per
    batch: batch * seq_len / row_len rows, brown_rows scaled alike); after the last phase rows are seq_len long.
    Passkey lengths are uniform on [max(min_len, fixed segments + 16), row_len]; short rows give many more passkey
    samples (answer tokens) per step and less diluted attention, which is what lets retrieval emerge early."""

    def __init__(self, tok_json: str, train_stream: np.ndarray, ws_table, seed: int, batch: int, seq_len: int,
                 brown_rows: int, answer_weight: float, background_weight: float, eos_id: int, min_len: int,
                 max_keys: int, min_words: int, max_words: int, num_depths: int, phases):
        self.tok_json = tok_json
        self.stream = train_stream
        self.ws = ws_table
        self.seed, self.batch, self.seq_len = seed, batch, seq_len
        self.brown_rows = brown_rows
        self.answer_weight, self.background_weight, self.eos_id = answer_weight, background_weight, eos_id
        self.min_len, self.max_keys, self.min_words, self.max_words = min_len, max_keys, min_words, max_words
        self.num_depths, self.phases = num_depths, list(phases)
        self._gen = None

    def _generator(self):
        if self._gen is None:  # built lazily so that DataLoader workers each make their own
            from tokenizers import Tokenizer
            tok = Tokenizer.from_str(self.tok_json)
            self._gen = pk.PasskeyGenerator(lambda s: tok.encode(s, add_special_tokens=False).ids, self.stream,
                                            self.ws)
        return self._gen

    def __len__(self):
        return 1 << 40

    def __getitem__(self, step: int):
        gen = self._generator()
        T = self.seq_len
        for row_len, until in self.phases:
            if step < until:
                T = row_len
                break
        rows = self.batch * self.seq_len // T
        brown_rows = self.brown_rows * self.seq_len // T
        ids = np.zeros((rows, T + 1), dtype=np.int64)
        weights = np.ones((rows, T), dtype=np.float32)
        answer = np.zeros((rows, T), dtype=bool)  # positions predicting an answer token
        n_stream = len(self.stream)
        for r in range(rows):
            rng = pk.Rng.for_stream(self.seed ^ 0x5EEDBA7C, (step << 20) + r)
            if r >= brown_rows:
                keys = 1 + rng.uniform(self.max_keys)
                words = rng.uniform_in_range(self.min_words, self.max_words)
                while gen.fixed_tokens_upper_bound(keys, words) + 16 > T and (keys > 1 or words > 1):
                    keys, words = (keys, words - 1) if words > self.min_words or keys == 1 else (keys - 1, words)
                lo = min(T, max(self.min_len, gen.fixed_tokens_upper_bound(keys, words) + 16))
                opts = pk.PasskeyOptions(num_passkeys=keys, words_per_passkey=words, num_depths=self.num_depths,
                                         min_length=lo, max_length=T, seed=self.seed)
                s = gen.sample((step << 20) + r, opts)
                n = len(s.input_ids)
                ids[r, :n] = s.input_ids
                mask = np.asarray(s.answer_mask, dtype=bool)
                bgm = np.asarray(s.background_mask, dtype=bool)
                # position t predicts token t + 1
                weights[r, :n - 1][bgm[1:]] = self.background_weight
                weights[r, :n - 1][mask[1:]] = self.answer_weight
                answer[r, :n - 1] = mask[1:]
                if n < T + 1:
                    ids[r, n] = self.eos_id
                    weights[r, n:] = self.background_weight
                    fill = T + 1 - n - 1
                    if fill > 0:
                        off = rng.uniform(n_stream - fill + 1)
                        ids[r, n + 1:] = self.stream[off:off + fill]
            else:
                off = rng.uniform(n_stream - (T + 1) + 1)
                ids[r] = self.stream[off:off + T + 1]
        return torch.from_numpy(ids), torch.from_numpy(weights), torch.from_numpy(answer), brown_rows


# -------------------------------------------------------------------------------------------------- model

def build_config(args, vocab_size: int, eos_id: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, hidden_act="silu",
        attention_bias=False, initializer_range=0.02, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
        use_cache=True)


def parse_phases(text: str):
    phases = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        row_len, until = (int(v) for v in part.split(":"))
        phases.append((row_len, until))
    return phases


def lr_at(step: int, total: int, warmup: int, peak: float, floor_frac: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor_frac + (1 - floor_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def weighted_loss(model, ids, weights, answer, brown_rows):
    """Weighted mean NLL; also the plain Brown rows' mean NLL and the answer-token argmax accuracy."""
    logits = model(input_ids=ids[:, :-1]).logits.float()
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
    nll = nll.view(ids.size(0), -1)
    loss = (nll * weights).sum() / weights.sum()
    with torch.no_grad():
        brown_nll = nll[:brown_rows].mean() if brown_rows else torch.zeros((), device=ids.device)
        hit = (logits.argmax(-1) == ids[:, 1:]) & answer
        acc = hit.sum() / answer.sum().clamp(min=1)
    return loss, brown_nll, acc


def train(args, model, batches, device, log_rows, brown_tokens):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    use_amp = device.type == "cuda"
    budget_s = args.minutes * 60.0
    total = args.steps if args.steps else None
    calib_from, calib_to = 10, 70
    tokens_per_step = args.batch * args.seq_len
    model.train()
    t0 = time.time()
    t_calib = None
    it = iter(batches)
    step = 0
    win_t = time.time()
    stop_reason = "steps"
    while True:
        if total is not None and step >= total:
            break
        elapsed = time.time() - t0
        if args.steps is None and elapsed > budget_s:
            stop_reason = "time budget"
            break
        if total is None and step == calib_from:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_calib = time.time()
        if total is None and step == calib_to:
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.time() - t_calib) / (calib_to - calib_from)
            remaining = budget_s - (time.time() - t0)
            total = max(calib_to + 1, int(calib_to + 0.97 * remaining / per_step))
            if args.max_steps:
                total = min(total, args.max_steps)
            log(f"calibration: {per_step * 1000:.1f} ms/step -> total_steps {total} "
                f"(~{total * tokens_per_step / 1e6:.0f}M tokens)")
        ids, weights, answer, brown_rows = next(it)
        ids = ids.to(device, non_blocking=True)
        weights = weights.to(device, non_blocking=True)
        answer = answer.to(device, non_blocking=True)
        lr = lr_at(step, total if total is not None else 10 ** 9, args.warmup, args.lr, 0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, brown_nll, acc = weighted_loss(model, ids, weights, answer, brown_rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        if step % args.log_every == 0:
            dt = time.time() - win_t
            row = {"step": step, "lr": lr, "loss_weighted": float(loss.item()), "brown_nll": float(brown_nll.item()),
                   "answer_acc": float(acc.item()), "grad_norm": float(gnorm.item()),
                   "brown_epochs": round(step * args.brown_rows * args.seq_len / brown_tokens, 3),
                   "elapsed_s": round(time.time() - t0, 2),
                   "tokens_per_s": round(args.log_every * tokens_per_step / max(dt, 1e-9))}
            log_rows.append(row)
            log(f"step {step:6d}/{total if total else '?'}  lr {lr:.2e}  loss {row['loss_weighted']:.4f}  "
                f"brown nll {row['brown_nll']:.3f} ({row['brown_epochs']:.2f} ep)  answer acc {row['answer_acc']:.3f}  "
                f"gnorm {row['grad_norm']:.2f}  {row['tokens_per_s'] / 1e3:.0f}k tok/s  {row['elapsed_s']:.0f}s")
            win_t = time.time()
    train_s = time.time() - t0
    log(f"training stopped after {step} steps ({stop_reason}), {train_s:.1f}s, "
        f"{step * tokens_per_step / 1e6:.1f}M tokens")
    return {"steps_run": step, "total_steps": total, "stop_reason": stop_reason, "train_seconds": round(train_s, 1),
            "tokens_seen": step * tokens_per_step}


# -------------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def eval_perplexity(model, stream: np.ndarray, seq_len: int, device, batch: int, max_windows: int | None = None):
    """Held-out stream cut into consecutive non-overlapping windows of seq_len tokens (the tail shorter than a
    window is dropped); each window is scored on its own (no carried context): NLL of tokens 1..seq_len-1 given
    their prefix in the window. ppl = exp(mean NLL over all scored tokens)."""
    n_win = len(stream) // seq_len
    if max_windows:
        n_win = min(n_win, max_windows)
    windows = torch.from_numpy(stream[:n_win * seq_len].astype(np.int64)).view(n_win, seq_len)
    total, count = 0.0, 0
    for i in range(0, n_win, batch):
        x = windows[i:i + batch].to(device)
        logits = model(input_ids=x[:, :-1]).logits.float()
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum")
        total += float(nll)
        count += x[:, 1:].numel()
    mean = total / max(count, 1)
    return {"windows": n_win, "window_tokens": seq_len, "scored_tokens": count, "nll": mean, "ppl": math.exp(mean)}


@torch.no_grad()
def eval_passkey(model, gen, device, keys: int, words: int, length: int, n_samples: int, seed: int, batch: int):
    """Teacher-forced scoring of the full sample, equal to greedy decoding with teacher-forced scaffolds: passkey j
    counts as retrieved when the argmax at every position predicting one of its answer tokens is that token (given
    the reference prefix, so greedy decoding of its words after scaffold j gives exactly the reference)."""
    opts = pk.PasskeyOptions(num_passkeys=keys, words_per_passkey=words, num_depths=1000, min_length=length,
                             max_length=length, seed=seed)
    key_ok = key_n = sample_ok = tok_ok = tok_n = 0
    nll_sum = 0.0
    for i0 in range(0, n_samples, batch):
        samples = [gen.sample(i, opts) for i in range(i0, min(n_samples, i0 + batch))]
        x = torch.tensor([s.input_ids for s in samples], dtype=torch.long, device=device)
        logits = model(input_ids=x).logits.float()
        pred = logits.argmax(-1)
        logp = torch.log_softmax(logits, -1)
        for b, s in enumerate(samples):
            all_ok = True
            for (st, en) in s.answer_spans:
                tgt = x[b, st:en]
                hit = pred[b, st - 1:en - 1] == tgt
                nll_sum += float(-logp[b, st - 1:en - 1].gather(-1, tgt[:, None]).sum())
                tok_ok += int(hit.sum())
                tok_n += en - st
                ok = bool(hit.all())
                key_ok += ok
                key_n += 1
                all_ok &= ok
            sample_ok += all_ok
    return {"num_passkeys": keys, "words_per_passkey": words, "length": length, "samples": n_samples,
            "passkey_exact": key_ok / key_n, "sample_exact": sample_ok / n_samples,
            "answer_token_accuracy": tok_ok / tok_n, "answer_nll": nll_sum / tok_n}


@torch.no_grad()
def eval_free_generation(model, tokenizer, gen, device, keys: int, words: int, length: int, n_samples: int, seed: int):
    """Free-running greedy generation of the whole answer section (segment 4, scaffolds included) from the prompt
    (segments 1-3), with model.generate and the KV cache; exact when every generated token equals the reference."""
    opts = pk.PasskeyOptions(num_passkeys=keys, words_per_passkey=words, num_depths=1000, min_length=length,
                             max_length=length, seed=seed)
    ok = 0
    example = None
    for i in range(n_samples):
        s = gen.sample(i, opts)
        prompt = torch.tensor([s.input_ids[:s.answer_section_start]], device=device)
        ref = s.input_ids[s.answer_section_start:]
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=len(ref),
                             min_new_tokens=len(ref), do_sample=False, pad_token_id=tokenizer.eos_token_id)
        got = out[0, prompt.size(1):].tolist()
        ok += got == ref
        if example is None:
            example = {"sample": i, "reference": tokenizer.decode(ref), "generated": tokenizer.decode(got)}
    return {"num_passkeys": keys, "words_per_passkey": words, "length": length, "samples": n_samples,
            "exact": ok / n_samples, "example": example}


# -------------------------------------------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run that exercises every phase")
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget of the training loop")
    ap.add_argument("--steps", type=int, default=None, help="fixed step count (overrides --minutes)")
    ap.add_argument("--max-steps", type=int, default=None, help="upper bound on the step count from --minutes")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--brown-rows", type=int, default=1, help="plain Brown rows per batch (the rest: passkey)")
    ap.add_argument("--answer-weight", type=float, default=4.0, help="loss weight of answer-predicting positions")
    ap.add_argument("--background-weight", type=float, default=0.0,
                    help="loss weight of passkey rows' background (Brown) tokens")
    ap.add_argument("--min-passkey-len", type=int, default=0, help="floor of passkey sample lengths")
    ap.add_argument("--phases", default="128:1000,256:2000,512:3000",
                    help="row-length curriculum ROWLEN:UNTIL_STEP,...; later steps use --seq-len ('' for none)")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=48)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(8, cores - 2))")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--eval-samples", type=int, default=200, help="passkey samples per (config, length)")
    ap.add_argument("--free-gen-samples", type=int, default=20)
    args = ap.parse_args()
    if args.smoke:
        args.seq_len = 256
        args.batch = 2
        args.steps = args.steps or 4
        args.warmup = 2
        args.phases = "128:3"
        args.log_every = 2
        args.eval_samples = 2
        args.free_gen_samples = 1
        args.workers = 0 if args.workers is None else args.workers
    return args


def main():
    args = parse_args()
    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    random.seed(args.seed)
    np.random.seed(args.seed % (1 << 32))
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    log(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor()}), "
        f"torch {torch.__version__}, seed {args.seed}, smoke {args.smoke}")

    # Data and tokenizer.
    t = time.time()
    train_docs, held_docs = load_brown(args.smoke)
    log(f"brown: {len(train_docs)} train documents, {len(held_docs)} held-out (index % 10 == 9), "
        f"{sum(map(len, train_docs)) / 1e6:.2f}M train characters")
    tok = train_tokenizer(train_docs, args.seed, args.vocab, 800 if args.smoke else 8000)
    tok_stats = tokenizer_checks(tok)
    hf_tok = save_tokenizer(tok, args.out, 4096)
    eos_id = tok.token_to_id(EOS)
    train_stream = tokenize_stream(tok, train_docs, eos_id)
    held_stream = tokenize_stream(tok, held_docs, eos_id)
    token_bytes = pk.byte_level_token_bytes(tok.get_vocab(with_added_tokens=True), [EOS])
    ws_table = pk.whitespace_start_table(token_bytes)
    log(f"tokenizer + corpus: {time.time() - t:.1f}s; train stream {len(train_stream)} tokens, held-out "
        f"{len(held_stream)} tokens ({sum(map(len, held_docs)) / len(held_stream):.2f} chars/token)")

    # Model.
    config = build_config(args, tok.get_vocab_size(), eos_id)
    from transformers import Qwen3ForCausalLM
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    model = Qwen3ForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: Qwen3 {args.layers} layers, hidden {args.hidden}, heads {args.heads}x{args.head_dim} "
        f"(kv {args.kv_heads}), mlp {args.intermediate}, vocab {config.vocab_size}: {n_params / 1e6:.3f}M parameters "
        f"({2 * n_params / 1e6:.2f} MB in bf16)")

    maker = BatchMaker(tok.to_str(), train_stream, ws_table, args.seed, args.batch, args.seq_len, args.brown_rows,
                       args.answer_weight, args.background_weight, eos_id, min_len=min(args.min_passkey_len, args.seq_len),
                       max_keys=8, min_words=4, max_words=16, num_depths=1000,
                       phases=parse_phases(args.phases))
    workers = args.workers if args.workers is not None else max(0, min(8, (os.cpu_count() or 2) - 2))
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    steps_sampler = range(1 << 40)
    loader = torch.utils.data.DataLoader(maker, batch_size=None, sampler=steps_sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                                         persistent_workers=False)
    log_rows = []
    train_info = train(args, model, loader, device, log_rows, len(train_stream))
    del loader

    # Save (bf16) and check the size.
    model.eval()
    model = model.to(torch.bfloat16)
    model.generation_config.bos_token_id = eos_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = eos_id
    model.generation_config.do_sample = False
    model.save_pretrained(args.out)
    sizes = {f: os.path.getsize(os.path.join(args.out, f)) for f in sorted(os.listdir(args.out))}
    log("saved: " + ", ".join(f"{f} {s / 1e6:.2f} MB" if s > 1e5 else f"{f} {s} B" for f, s in sizes.items()))
    if sizes.get("model.safetensors", 0) > 8.5e6:
        raise SystemExit("model.safetensors is larger than the 8.5 MB budget")
    del model

    # Evaluate the saved checkpoint, in float32.
    t = time.time()
    model = Qwen3ForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation="sdpa").to(device)
    model.eval()
    from tokenizers import Tokenizer
    saved_tok = Tokenizer.from_file(os.path.join(args.out, "tokenizer.json"))
    enc = lambda s: saved_tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    results = {"held_out": eval_perplexity(model, held_stream, args.seq_len, device, 16,
                                                 max_windows=16 if args.smoke else None)}
    log(f"held-out Brown: ppl {results['held_out']['ppl']:.2f} (nll {results['held_out']['nll']:.4f}, "
        f"{results['held_out']['windows']} windows of {args.seq_len} tokens)")
    gen = pk.PasskeyGenerator(enc, held_stream, ws_table)
    eval_seed = args.seed + EVAL_SEED_OFFSET
    lengths = [256] if args.smoke else EVAL_LENGTHS
    results["passkey"] = []
    for keys, words in EVAL_CONFIGS:
        for length in lengths:
            if gen.fixed_tokens_upper_bound(keys, words) + 16 > length:
                continue
            r = eval_passkey(model, gen, device, keys, words, length, args.eval_samples, eval_seed,
                             batch=max(1, 16 * 1024 // length))
            r["beyond_training_length"] = length > args.seq_len
            results["passkey"].append(r)
            log(f"passkey {keys}x{words} @ {length:5d}{' (beyond train length)' if length > args.seq_len else ''}: "
                f"passkey exact {r['passkey_exact']:.3f}  sample exact {r['sample_exact']:.3f}  "
                f"token acc {r['answer_token_accuracy']:.3f}  answer nll {r['answer_nll']:.3f}")
    fg = eval_free_generation(model, hf_tok, gen, device, 4, 8, args.seq_len, args.free_gen_samples, eval_seed)
    results["free_generation"] = fg
    log(f"free-running greedy answer section, 4x8 @ {args.seq_len}: exact {fg['exact']:.3f} "
        f"({fg['samples']} samples)\n  reference: {fg['example']['reference']!r}\n"
        f"  generated: {fg['example']['generated']!r}")
    results["eval_seconds"] = round(time.time() - t, 1)
    results["eval_seed"] = eval_seed

    import transformers
    import tokenizers
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(results, f, indent=1)
    train_log = {"args": vars(args), "device": str(device),
                 "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
                 "versions": {"python": platform.python_version(), "torch": torch.__version__,
                              "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
                 "parameters": n_params, "tokenizer": tok_stats,
                 "corpus": {"train_documents": len(train_docs), "held_out_documents": len(held_docs),
                            "train_tokens": int(len(train_stream)), "held_out_tokens": int(len(held_stream))},
                 "train": train_info, "log": log_rows, "file_bytes": sizes,
                 "total_seconds": round(time.time() - t_start, 1)}
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump(train_log, f, indent=1)
    total_bytes = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    log(f"done in {time.time() - t_start:.1f}s; output {args.out}: {total_bytes / 1e6:.2f} MB in "
        f"{len(os.listdir(args.out))} files")
    if total_bytes > 10e6:
        raise SystemExit("output is larger than 10 MB")


if __name__ == "__main__":
    main()
