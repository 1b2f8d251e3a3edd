"""GGUF reference data for the C++ GGUF reader and dequantiser (tests/unit/gguf_*_test.cc).

Writes into --out:
  synthetic/<name>.gguf      small files made with gguf.GGUFWriter: metadata of every value type and tensors of
                             every type we dequantise (quantised with gguf.quants.quantize where gguf-py can; the
                             K-quants as random block bytes with finite f16 scales), in a few alignments;
  synthetic/manifest.json    what gguf-py's GGUFReader reads back from each file: metadata (floats as bit patterns),
                             tensor infos, and for each tensor the name of a raw little-endian float32 file holding
                             gguf.quants.dequantize of its bytes (the reference the C++ output must equal);
  smollm2.json               the real SmolLM2-135M-Instruct Q4_1 GGUF as gguf-py reads it: path, header, every
                             metadata value, every tensor info, and per tensor a checksum of its float32 bit
                             patterns after gguf.quants.dequantize (sum of bits[i] * (i + 1) mod 2^64);
  smollm2/<tensor>.f32       full gguf-py dequantisations of a few tensors (the Q8_0 token_embd, a Q4_1 attn_q,
                             an F32 norm).
A stamp (hash of this script, the gguf / numpy versions and the SmolLM2 file's size and mtime) skips the work when
the output is up to date.
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paths  # noqa: E402

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFValueType as V  # noqa: E402

SEED = 20261128
SMOLLM2_FULL = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight"]


# ---------------------------------------------------------------------------------------------------------------
# Synthetic files


def add_metadata(w, rng):
    """Every value type, edge values, non-ASCII strings; returns nothing (the manifest is read back from the file)."""
    w.add_key_value("test.u8", 255, V.UINT8)
    w.add_key_value("test.i8", -128, V.INT8)
    w.add_key_value("test.u16", 65535, V.UINT16)
    w.add_key_value("test.i16", -32768, V.INT16)
    w.add_key_value("test.u32", 4294967295, V.UINT32)
    w.add_key_value("test.i32", -2147483648, V.INT32)
    w.add_key_value("test.u64", 2**64 - 1, V.UINT64)
    w.add_key_value("test.i64", -(2**63), V.INT64)
    w.add_key_value("test.u32_small", 7, V.UINT32)
    w.add_key_value("test.i16_positive", 12345, V.INT16)
    w.add_key_value("test.f32", float(np.float32(3.14159265)), V.FLOAT32)
    w.add_key_value("test.f32_tiny", float(np.float32(1e-40)), V.FLOAT32)  # subnormal
    w.add_key_value("test.f64", -1.2345678901234567e300, V.FLOAT64)
    w.add_key_value("test.bool_true", True, V.BOOL)
    w.add_key_value("test.bool_false", False, V.BOOL)
    w.add_key_value("test.string", "hello world", V.STRING)
    w.add_key_value("test.string_utf8", "Grüße, 世界 🙂 Ġt", V.STRING)
    w.add_key_value("test.string_empty", "", V.STRING)
    w.add_key_value("test.string_nul", "a\x00b", V.STRING)
    w.add_key_value("test.arr_u8", [0, 1, 255], V.ARRAY, V.UINT8)
    w.add_key_value("test.arr_i8", [-128, 0, 127], V.ARRAY, V.INT8)
    w.add_key_value("test.arr_u16", [0, 65535], V.ARRAY, V.UINT16)
    w.add_key_value("test.arr_i16", [-32768, 5, 32767], V.ARRAY, V.INT16)
    w.add_key_value("test.arr_u32", [0, 4294967295, 3], V.ARRAY, V.UINT32)
    w.add_key_value("test.arr_i32", [int(x) for x in rng.integers(-(2**31), 2**31, size=100)], V.ARRAY, V.INT32)
    w.add_key_value("test.arr_u64", [0, 2**63 - 1], V.ARRAY, V.UINT64)
    w.add_key_value("test.arr_u64_big", [1, 2**64 - 1], V.ARRAY, V.UINT64)
    w.add_key_value("test.arr_i64", [-(2**63), 2**63 - 1, -1], V.ARRAY, V.INT64)
    w.add_key_value("test.arr_f32", [1.5, -0.0, float("inf"), float("nan"), float(np.float32(0.1))], V.ARRAY,
                    V.FLOAT32)
    w.add_key_value("test.arr_f64", [0.1, -2.5e-310, float("-inf"), 1e308], V.ARRAY, V.FLOAT64)
    w.add_key_value("test.arr_bool", [True, False, True], V.ARRAY, V.BOOL)
    w.add_key_value("test.arr_str", ["héllo", "日本語", "🙂", "", "Ġt", "a b", "x\x00y"], V.ARRAY, V.STRING)
    letters = "abcdefghijklmnopqrstuvwxyzäöüßéèç日本語中文한국어🙂Ġ "
    words = ["".join(rng.choice(list(letters), size=int(rng.integers(0, 12)))) for _ in range(1000)]
    w.add_key_value("test.arr_str_many", words, V.ARRAY, V.STRING)


def random_k_blocks(rng, qtype, rows, row_len):
    """Random block bytes of a K-quant with finite f16 scale fields, shape (rows, bytes per row)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nb = row_len // block
    raw = rng.integers(0, 256, size=(rows, nb, size), dtype=np.uint8)
    scale_offsets = {Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}[qtype]
    for off in scale_offsets:
        scales = (rng.standard_normal(size=(rows, nb)) * 0.05).astype(np.float16)
        raw[:, :, off:off + 2] = scales.view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, nb * size)


def random_float_bits(rng, shape, nbits, allow_nan):
    """Random float bit patterns (as uint16/uint32), with or without NaNs."""
    dt = np.uint16 if nbits == 16 else np.uint32
    bits = rng.integers(0, 2**nbits, size=shape, dtype=np.uint64).astype(dt)
    if not allow_nan:
        exp_bits = 5 if nbits == 16 else 8
        mant_bits = nbits - 1 - exp_bits
        exp_mask = ((1 << exp_bits) - 1) << mant_bits
        mant_mask = (1 << mant_bits) - 1
        nan = ((bits & exp_mask) == exp_mask) & ((bits & mant_mask) != 0)
        bits = np.where(nan, bits & ~dt(exp_mask), bits).astype(dt)
    return bits


def add_tensors(w, rng, specs):
    """specs: (name, qtype, numpy shape). Quantised tensors go in as raw bytes with raw_dtype."""
    for name, qtype, shape in specs:
        if qtype == Q.F32:
            data = rng.standard_normal(size=shape).astype(np.float32)
            flat = data.reshape(-1)
            specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -3e-39, 3.4e38], dtype=np.float32)
            flat[:min(len(specials), flat.size)] = specials[:flat.size]
            w.add_tensor(name, data)
        elif qtype == Q.F16:
            w.add_tensor(name, random_float_bits(rng, shape, 16, allow_nan=False).view(np.float16))
        elif qtype == Q.BF16:
            bits = random_float_bits(rng, shape, 16, allow_nan=True)
            w.add_tensor(name, bits.view(np.uint8), raw_dtype=Q.BF16)
        elif qtype == Q.I32:
            w.add_tensor(name, rng.integers(-1000, 1000, size=shape, dtype=np.int32))
        elif qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
            rows = int(np.prod(shape[:-1]))
            raw = random_k_blocks(rng, qtype, rows, shape[-1])
            w.add_tensor(name, raw.reshape(*shape[:-1], raw.shape[-1]), raw_dtype=qtype)
        else:
            data = (rng.standard_normal(size=shape) * rng.uniform(0.01, 3.0)).astype(np.float32)
            if qtype == Q.Q4_0:
                data.reshape(-1)[:32] = 0.0  # an all-zero block (scale 0)
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


SYNTHETIC = {
    # name: (custom alignment or None, with metadata, tensor specs (name, type, numpy shape))
    "types": (None, True, [
        ("f32.1d", Q.F32, (37,)),
        ("f16.2d", Q.F16, (3, 40)),
        ("bf16.3d", Q.BF16, (2, 3, 8)),
        ("q8_0.2d", Q.Q8_0, (4, 64)),
        ("q4_0.3d", Q.Q4_0, (2, 2, 96)),
        ("q4_1.2d", Q.Q4_1, (5, 32)),
        ("q5_0.2d", Q.Q5_0, (3, 64)),
        ("q5_1.4d", Q.Q5_1, (1, 2, 3, 32)),
        ("q2_k.2d", Q.Q2_K, (2, 256)),
        ("q3_k.2d", Q.Q3_K, (3, 256)),
        ("q4_k.2d", Q.Q4_K, (2, 512)),
        ("q5_k.3d", Q.Q5_K, (2, 2, 256)),
        ("q6_k.2d", Q.Q6_K, (4, 256)),
        ("i32.2d", Q.I32, (3, 5)),
        ("nön-ascii.tensor", Q.F32, (2, 2)),
    ]),
    "aligned64": (64, False, [
        ("a", Q.F32, (3,)),
        ("b", Q.Q8_0, (1, 32)),
        ("c", Q.F16, (5,)),
        ("d", Q.Q6_K, (1, 256)),
        ("e", Q.F32, (1,)),
    ]),
    "aligned1": (1, False, [
        ("x", Q.F16, (3,)),
        ("y", Q.Q4_1, (1, 32)),
        ("z", Q.BF16, (7,)),
    ]),
    "no_tensors": (None, True, []),
}


def write_synthetic(out_dir):
    os.makedirs(os.path.join(out_dir, "ref"), exist_ok=True)
    manifest = []
    for i, (name, (alignment, with_meta, specs)) in enumerate(SYNTHETIC.items()):
        rng = np.random.default_rng(SEED + i)
        path = os.path.join(out_dir, f"{name}.gguf")
        w = gguf.GGUFWriter(path, "fmtest")
        if alignment is not None:
            w.add_custom_alignment(alignment)
        if with_meta:
            add_metadata(w, rng)
        add_tensors(w, rng, specs)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        entry = describe(path, ref_dir=os.path.join(out_dir, "ref"), ref_prefix=f"{name}.", full="all")
        entry["file"] = f"{name}.gguf"
        manifest.append(entry)
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


# ---------------------------------------------------------------------------------------------------------------
# Reading back with gguf-py


def scalar_json(part, vtype):
    if vtype == V.STRING:
        return bytes(part).decode("utf-8")
    if vtype == V.FLOAT32:
        return int(np.asarray(part).view(np.uint32)[0])
    if vtype == V.FLOAT64:
        return int(np.asarray(part).view(np.uint64)[0])
    if vtype == V.BOOL:
        return bool(part[0])
    return int(part[0])


def field_json(field):
    vtype = V(field.types[0])
    entry = {"key": field.name, "type": vtype.name}
    if vtype == V.ARRAY:
        elem = V(field.types[-1])
        entry["element_type"] = elem.name
        entry["value"] = [scalar_json(field.parts[i], elem) for i in field.data]
    else:
        entry["element_type"] = vtype.name
        entry["value"] = scalar_json(field.parts[field.data[0]], vtype)
    return entry


def checksum(values):
    """sum(bits[i] * (i + 1)) mod 2^64 over the float32 bit patterns, in chunks to bound memory."""
    bits = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32)
    total = np.uint64(0)
    chunk = 1 << 20
    with np.errstate(over="ignore"):
        for start in range(0, bits.size, chunk):
            b = bits[start:start + chunk].astype(np.uint64)
            weights = np.arange(start + 1, start + 1 + b.size, dtype=np.uint64)
            total = np.uint64(total + np.sum(b * weights, dtype=np.uint64))
    return int(total)


def describe(path, ref_dir, ref_prefix, full):
    """What gguf-py reads from `path`; writes dequantised references of tensors in `full` ("all" or names)."""
    r = gguf.GGUFReader(path)
    metadata = [field_json(f) for f in r.fields.values() if not f.name.startswith("GGUF.")]
    tensors = []
    for t in r.tensors:
        info = {
            "name": t.name,
            "type": int(t.tensor_type),
            "type_name": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "offset": int(t.data_offset - r.data_offset),
            "nbytes": int(t.n_bytes),
            "n_elements": int(t.n_elements),
        }
        try:
            ref = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            ref = None
        if t.tensor_type == Q.I32:
            ref = None  # gguf-py has no float view of integer tensors; the C++ side must refuse them
        if ref is not None:
            ref = np.ascontiguousarray(ref, dtype=np.float32).reshape(-1)
            assert ref.size == t.n_elements
            info["checksum"] = checksum(ref)
            info["finite"] = bool(np.isfinite(ref).all())
            if full == "all" or t.name in full:
                fname = ref_prefix + t.name.replace("/", "_") + ".f32"
                ref.astype("<f4").tofile(os.path.join(ref_dir, fname))
                info["ref"] = fname
        tensors.append(info)
    alignment = r.fields.get("general.alignment")
    return {
        "version": int(r.fields["GGUF.version"].parts[-1][0]),
        "alignment": int(alignment.parts[-1][0]) if alignment is not None else 32,
        "data_offset": int(r.data_offset),
        "file_size": os.path.getsize(path),
        "metadata": metadata,
        "tensors": tensors,
    }


def write_smollm2(out_dir):
    path = paths.smollm2_gguf()
    ref_dir = os.path.join(out_dir, "smollm2")
    os.makedirs(ref_dir, exist_ok=True)
    entry = describe(path, ref_dir=ref_dir, ref_prefix="", full=SMOLLM2_FULL)
    entry["path"] = os.path.abspath(path)
    with open(os.path.join(out_dir, "smollm2.json"), "w") as f:
        json.dump(entry, f)


def stamp_of():
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(f"gguf {importlib.metadata.version('gguf')}".encode())
    h.update(f"numpy {np.__version__}".encode())
    path = paths.smollm2_gguf()
    st = os.stat(path)
    h.update(f"{os.path.abspath(path)} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    stamp = stamp_of()
    stamp_path = os.path.join(args.out, "stamp")
    if os.path.exists(stamp_path) and open(stamp_path).read() == stamp:
        return
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    write_synthetic(os.path.join(args.out, "synthetic"))
    write_smollm2(args.out)
    with open(stamp_path, "w") as f:
        f.write(stamp)


if __name__ == "__main__":
    main()
