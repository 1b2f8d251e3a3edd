"""Reference safetensors files and checkpoint directories written by the Python libraries, for the C++ reader,
writer and checkpoint-directory tests.

Writes into --out:
  basic.safetensors         every dtype we support, a zero-size tensor, a scalar, unicode and escaped names,
                            several metadata keys (safetensors.torch.save_file)
  basic_pt.safetensors      the same tensors with metadata {"format": "pt"} (byte-parity target of our writer)
  basic_nometa.safetensors  the same tensors without metadata
  basic.json                per tensor, in file order: name, dtype, shape, data_offsets, sha256 of its bytes
                            (hashed from the torch tensor, not from the file), plus the metadata and header length
  llama_sharded/            a tiny float32 LlamaForCausalLM saved by transformers' save_pretrained with a small
                            max_shard_size (3+ shards and model.safetensors.index.json)
  llama_single/             the same model saved as one model.safetensors
  llama.json                state-dict order, dtype/shape/sha256 per tensor, max_shard_size, shard count
  split_cases.json          huggingface_hub's shard assignment for synthetic tensor-size lists
  sha256_vectors.json       hashlib SHA-256 of deterministic byte patterns of various lengths
Skips all work when a stamp (hash of this script and the library versions) is current.
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import struct
import sys

LIBS = ("torch", "transformers", "safetensors", "huggingface_hub")
LLAMA_SHARD_BYTES = 8000
SHA_LENGTHS = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 1000, 65537]


def stamp_of():
    h = hashlib.sha256(open(__file__, "rb").read())
    for lib in LIBS:
        h.update(f"{lib}={importlib.metadata.version(lib)};".encode())
    return h.hexdigest()


def tensor_bytes(t):
    import torch
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def dtype_name(t):
    import torch
    return {
        torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
        torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
        torch.bool: "BOOL", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
        torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    }[t.dtype]


def basic_tensors():
    import torch
    g = torch.Generator().manual_seed(1234)
    return {
        "model.embed_tokens.weight": torch.randn(6, 5, generator=g).to(torch.bfloat16),
        "half": torch.randn(4, generator=g).to(torch.float16),
        "f32.cube": torch.randn(2, 3, 4, generator=g),
        "f64": torch.randn(3, generator=g, dtype=torch.float64),
        "i64": torch.arange(-3, 4, dtype=torch.int64) * 1_000_000_007,
        "i32": torch.tensor([-7, 0, 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([[-32768, 5], [7, 32767]], dtype=torch.int16),
        "i8": torch.arange(-4, 3, dtype=torch.int8),
        "u8": torch.arange(247, 256, dtype=torch.uint8),
        "mask": torch.tensor([[True, False, True], [False, False, True]]),
        "u16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
        "u32": torch.tensor([3, 2**32 - 1], dtype=torch.uint32),
        "u64": torch.tensor([5, 2**63 + 11], dtype=torch.uint64),
        "f8_e4m3": torch.randn(5, generator=g).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.randn(5, generator=g).to(torch.float8_e5m2),
        "empty": torch.zeros(0, 3),
        "empty_bf16": torch.zeros(2, 0, dtype=torch.bfloat16),
        "scalar": torch.tensor(3.25),
        "unicode.\u00e9\u2026\U0001f600": torch.ones(2, dtype=torch.float16),
        'esc"\\\n\t\x01/': torch.ones(1, dtype=torch.uint8),
    }


def write_basic(out):
    from safetensors.torch import save_file
    tensors = basic_tensors()
    metadata = {"format": "pt", "producer": "make_safetensors_fixtures", "note": "caf\u00e9 \"quoted\"\nline"}
    path = os.path.join(out, "basic.safetensors")
    save_file(tensors, path, metadata=metadata)
    save_file(tensors, os.path.join(out, "basic_pt.safetensors"), metadata={"format": "pt"})
    save_file(tensors, os.path.join(out, "basic_nometa.safetensors"))
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__")
    entries = []
    for name, t in tensors.items():
        entries.append({
            "name": name, "dtype": dtype_name(t), "shape": list(t.shape),
            "data_offsets": header[name]["data_offsets"],
            "sha256": hashlib.sha256(tensor_bytes(t)).hexdigest(),
        })
    entries.sort(key=lambda e: (e["data_offsets"][0], e["data_offsets"][1], e["name"].encode()))
    json.dump({"header_len": n, "metadata": metadata, "tensors": entries},
              open(os.path.join(out, "basic.json"), "w"), indent=1)


def write_llama(out):
    import torch
    import transformers
    from huggingface_hub import split_torch_state_dict_into_shards
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(7)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    sharded = os.path.join(out, "llama_sharded")
    model.save_pretrained(sharded, max_shard_size=LLAMA_SHARD_BYTES)
    model.save_pretrained(os.path.join(out, "llama_single"))
    state = model.state_dict()
    index = json.load(open(os.path.join(sharded, "model.safetensors.index.json")))
    shards = sorted(set(index["weight_map"].values()))
    if len(shards) < 3:
        sys.exit(f"expected 3+ shards, transformers wrote {len(shards)}")
    # The C++ writer is given the state dict in this order; make sure it is the order transformers sharded.
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=LLAMA_SHARD_BYTES)
    if split.tensor_to_filename != index["weight_map"]:
        sys.exit("state_dict order does not reproduce transformers' shard assignment")
    tensors = {name: {"dtype": dtype_name(t), "shape": list(t.shape),
                      "sha256": hashlib.sha256(tensor_bytes(t)).hexdigest()} for name, t in state.items()}
    json.dump({"max_shard_size": LLAMA_SHARD_BYTES, "num_shards": len(shards), "order": list(state.keys()),
               "tensors": tensors}, open(os.path.join(out, "llama.json"), "w"), indent=1)


def write_split_cases(out):
    from huggingface_hub.serialization import split_state_dict_into_shards_factory
    cases = [
        ([10, 20, 30, 40], 50),
        ([60, 10, 10, 70, 5, 5, 50], 50),   # oversize tensors get shards of their own, out of walk order
        ([0, 0, 50, 0, 1], 50),             # zero-size tensors, an exact fit
        ([1, 2, 3], 1000),                  # one shard
        ([7, 7, 7], 0),                     # every non-empty tensor exceeds the limit
    ]
    result = []
    for sizes, limit in cases:
        state = {f"t{i:02d}": size for i, size in enumerate(sizes)}
        split = split_state_dict_into_shards_factory(state, get_storage_size=lambda s: s,
                                                     filename_pattern="model{suffix}.safetensors",
                                                     max_shard_size=limit)
        result.append({"sizes": sizes, "max_shard_size": limit, "weight_map": split.tensor_to_filename})
    json.dump(result, open(os.path.join(out, "split_cases.json"), "w"), indent=1)


def write_sha_vectors(out):
    vectors = []
    for n in SHA_LENGTHS:
        data = bytes((i * 131 + 7) & 0xFF for i in range(n))
        vectors.append({"length": n, "sha256": hashlib.sha256(data).hexdigest()})
    json.dump(vectors, open(os.path.join(out, "sha256_vectors.json"), "w"), indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    stamp_path = os.path.join(args.out, "stamp")
    stamp = stamp_of()
    if os.path.exists(stamp_path) and open(stamp_path).read() == stamp:
        return
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    write_sha_vectors(args.out)
    write_split_cases(args.out)
    write_basic(args.out)
    write_llama(args.out)
    with open(stamp_path, "w") as f:
        f.write(stamp)


if __name__ == "__main__":
    main()
