"""Checks that the Python reference libraries read a safetensors file or checkpoint directory written by FlashMorph.

usage: check_safetensors_written.py <file.safetensors | checkpoint dir> <expected.json>

expected.json (written by the C++ test): {"metadata": {...} or null,
                                          "tensors": {name: {"dtype": "F32", "shape": [...], "sha256": "..."}}}
A file is read by the Python safetensors library: safe_open for names and metadata, deserialize for each
tensor's dtype, shape and raw bytes (no torch needed, so BF16/F8 come back byte-exact). A directory is read through
transformers' own index handling (transformers.utils.hub.get_checkpoint_shard_files), then every shard it returns.
Every tensor must come back with the expected dtype, shape and bytes (sha256), no tensor may be missing or extra,
each file's metadata must match, and for an index its weight_map must name the shard that holds each tensor and
"total_size" must be the sum of the tensors' bytes. Exit status 0 on success, 1 with a message on the first mismatch.
"""
import hashlib
import json
import os
import sys

from safetensors import deserialize, safe_open


def fail(msg):
    print(f"check_safetensors_written: {msg}", file=sys.stderr)
    sys.exit(1)


def read_file(path, expected_metadata):
    """Returns {name: (dtype, shape, sha256, nbytes)} for one safetensors file."""
    with safe_open(path, framework="numpy") as f:
        if f.metadata() != expected_metadata:
            fail(f"{path}: metadata {f.metadata()!r} != expected {expected_metadata!r}")
        names = set(f.keys())
    with open(path, "rb") as fh:
        tensors = deserialize(fh.read())
    found = {}
    for name, t in tensors:
        raw = bytes(t["data"])
        found[name] = (t["dtype"], list(t["shape"]), hashlib.sha256(raw).hexdigest(), len(raw))
    if set(found) != names:
        fail(f"{path}: safe_open and deserialize disagree on the tensor names")
    return found


def read_dir(path, expected_metadata):
    from transformers.utils.hub import get_checkpoint_shard_files
    index = os.path.join(path, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_file(os.path.join(path, "model.safetensors"), expected_metadata)
    shard_files, sharded_metadata = get_checkpoint_shard_files(path, index)
    weight_map = sharded_metadata["weight_map"]
    found = {}
    for shard in shard_files:
        for name, info in read_file(shard, expected_metadata).items():
            if name in found:
                fail(f"{name} is in two shards")
            if weight_map.get(name) != os.path.basename(shard):
                fail(f"{name} is in {shard} but the weight_map says {weight_map.get(name)!r}")
            found[name] = info
    if set(weight_map) != set(found):
        fail(f"weight_map names {sorted(set(weight_map) ^ set(found))} that the shards do not hold (or vice versa)")
    total = sum(info[3] for info in found.values())
    if sharded_metadata.get("total_size") != total:
        fail(f"index total_size {sharded_metadata.get('total_size')} != {total}")
    return found


def main():
    if len(sys.argv) != 3:
        fail("usage: check_safetensors_written.py <file-or-dir> <expected.json>")
    target, expected_path = sys.argv[1], sys.argv[2]
    expected = json.load(open(expected_path, encoding="utf-8"))
    found = (read_dir if os.path.isdir(target) else read_file)(target, expected["metadata"])
    want = expected["tensors"]
    if set(found) != set(want):
        fail(f"tensor names differ: missing {sorted(set(want) - set(found))}, extra {sorted(set(found) - set(want))}")
    for name, (dtype, shape, sha, _) in found.items():
        w = want[name]
        if (dtype, shape, sha) != (w["dtype"], w["shape"], w["sha256"]):
            fail(f"{name}: got {dtype} {shape} {sha}, expected {w['dtype']} {w['shape']} {w['sha256']}")
    print(f"check_safetensors_written: {len(found)} tensors OK in {target}")


if __name__ == "__main__":
    main()
