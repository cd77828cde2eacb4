"""A peft LoRA adapter of a llama- or qwen2-architecture model -> a llama.cpp GGUF LoRA adapter (what the embedded
backend and Ollama load next to the base GGUF).

What llama.cpp expects (src/llama-adapter.cpp): general.type = "adapter", adapter.type = "lora",
general.architecture equal to the base model's, adapter.lora.alpha (scale = alpha / rank, rank read from the
tensors), and for each adapted weight `blk.N.attn_q.weight` a pair `blk.N.attn_q.weight.lora_a` with ggml shape
[in, r] and `.lora_b` with [r, out], i.e. peft's lora_A [r, in] and lora_B [out, r] as they are (numpy's shape
is ggml's reversed).

The q/k permutation: llama.cpp's HF converter reorders the rows of q_proj and k_proj of llama models (per head,
the two rotary halves become interleaved pairs), and transformers' GGUF reader undoes it, so a LoRA trained on
the HF layout must get the same row order in its lora_B (lora_A acts on the input side and stays as it is).
Only llama gets it: the converter's Qwen2Model writes q/k as they are, llama.cpp's qwen2 graph uses NEOX-style
rotary on the HF row order, and transformers' reader permutes back only for llama (LlamaTensorProcessor), so a
qwen2 LoRA goes over unpermuted.

Scales that don't fit llama.cpp's one alpha / rank (rsLoRA, alpha_pattern) are folded into lora_B.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from ..atomic import writing

# peft module path inside a decoder layer -> llama.cpp tensor name inside blk.N
HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# architecture -> whether llama.cpp's converter permuted the q/k rows (see the module docstring)
ARCHS = {"llama": True, "qwen2": False}
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(.+?)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


class ExportError(ValueError):
    """The adapter can't be expressed as a llama.cpp LoRA (or doesn't fit the base)."""


def permute_for_llama_cpp(rows, heads: int):
    """The row order llama.cpp's converter gives q_proj / k_proj: within each of `heads` heads, the rows of the
    first and second rotary half are interleaved (r0, r_half, r1, r_half+1, ...). Works on any [out, ...] array."""
    out = rows.shape[0]
    if out % (2 * heads):
        raise ExportError(f"can't split {out} rows into {heads} heads of rotary pairs (wrong base?)")
    half = out // heads // 2
    return rows.reshape(heads, 2, half, -1).swapaxes(1, 2).reshape(rows.shape)


# GGUF value types (gguf.GGUFValueType) -> struct format; 8 is a string, 9 an array.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _gguf_header(path: Path) -> tuple[dict, dict]:
    """(scalar and string metadata, {tensor name: ggml shape}) of a GGUF file, arrays skipped.

    gguf.GGUFReader parses every array too (a tokenizer's vocabulary and merges: 8 s for SmolLM2's file);
    the export needs a few numbers and the tensor shapes."""
    import struct
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != b"GGUF":
            raise ExportError(f"{path} is not a GGUF file")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", head, 4)
        if not 1 <= version <= 3:
            raise ExportError(f"{path}: unsupported GGUF version {version} (a big-endian file?)")
        f.seek(0)
        buf = f.read(max(1 << 20, min(path.stat().st_size, 64 << 20)))   # the header is in the first MBs
    pos = 24

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def string() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return buf[pos - n:pos].decode("utf-8", "replace")

    def skip(vtype: int) -> None:
        nonlocal pos
        if vtype == 8:
            pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
        elif vtype == 9:
            etype, count = take("I"), take("Q")
            if etype in _SCALAR:
                pos += struct.calcsize("<" + _SCALAR[etype]) * count
            else:
                for _ in range(count):
                    skip(etype)
        else:
            pos += struct.calcsize("<" + _SCALAR[vtype])

    meta: dict = {}
    try:
        for _ in range(n_kv):
            key, vtype = string(), take("I")
            if vtype == 8:
                meta[key] = string()
            elif vtype in _SCALAR:
                meta[key] = take(_SCALAR[vtype])
            else:
                skip(vtype)
        shapes = {}
        for _ in range(n_tensors):
            name = string()
            dims = [take("Q") for _ in range(take("I"))]
            take("IQ")                                  # ggml type, data offset
            shapes[name] = tuple(dims)
    except (struct.error, KeyError) as e:
        raise ExportError(f"{path}: can't read the GGUF header ({e})") from None
    return meta, shapes


def _gguf_info(path: Path) -> dict:
    """Architecture, head counts and weight shapes (torch order: [out, in]) of a model GGUF."""
    meta, shapes = _gguf_header(path)
    arch = meta.get("general.architecture")
    heads = meta.get(f"{arch}.attention.head_count")
    kv = meta.get(f"{arch}.attention.head_count_kv")
    return {"arch": arch, "heads": int(heads) if heads is not None else None,
            "kv_heads": int(kv) if kv is not None else None,
            "shapes": {name: tuple(reversed(dims)) for name, dims in shapes.items()}, "path": str(path)}


def _base_info(adapter_cfg: dict, base_gguf: str | os.PathLike | None) -> dict:
    """What the export needs to know of the base: from `base_gguf`, else from the adapter's base folder (and the
    GGUF it was converted from, which base_model.py notes in its config.json), else the embedded SmolLM2 GGUF."""
    if base_gguf:
        return _gguf_info(Path(base_gguf))
    base = Path(adapter_cfg.get("base_model_name_or_path") or "")
    cfg_path = base / "config.json" if str(base) not in ("", ".") else None
    if cfg_path is not None and cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        src = cfg.get("_source_gguf")
        if src and Path(src).is_file():
            return _gguf_info(Path(src))
        heads = cfg.get("num_attention_heads")
        return {"arch": cfg.get("model_type"), "heads": heads, "kv_heads": cfg.get("num_key_value_heads", heads),
                "shapes": None, "path": str(cfg_path)}
    from .base_model import embedded_gguf_path
    return _gguf_info(embedded_gguf_path())


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank_pattern / alpha_pattern lookup: a key matches a module path ending in it (as a regex)."""
    for key, val in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return val
    return default


def export_gguf_lora(peft_adapter_dir: str | os.PathLike, out_path: str | os.PathLike,
                     base_gguf: str | os.PathLike | None = None) -> Path:
    """Write `out_path` (a GGUF LoRA adapter for llama.cpp) from a peft adapter folder; returns the path.

    `base_gguf`: the model GGUF the adapter will run on (checks shapes, gives the head counts for the q/k
    permutation); default: the GGUF the trainer's base was converted from, else the embedded SmolLM2."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    src = Path(peft_adapter_dir)
    out = Path(out_path)
    cfg_file, weights_file = src / "adapter_config.json", src / "adapter_model.safetensors"
    if not cfg_file.is_file() or not weights_file.is_file():
        raise ExportError(f"{src} is not a peft adapter folder (adapter_config.json + adapter_model.safetensors)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("peft_type", "LORA").upper() != "LORA":
        raise ExportError(f"only LoRA adapters convert to GGUF; {src} is {cfg.get('peft_type')}")
    if cfg.get("use_dora"):
        raise ExportError("DoRA adapters have no llama.cpp form: train with use_dora=False")
    if cfg.get("fan_in_fan_out"):
        raise ExportError("fan_in_fan_out adapters (GPT-2 style Conv1D) are not llama adapters")
    base = _base_info(cfg, base_gguf)
    if base["arch"] not in ARCHS:
        raise ExportError(f"the GGUF export handles llama-architecture and qwen2 models; the base is "
                          f"{base['arch']!r} ({base['path']})")
    permuted = ARCHS[base["arch"]]
    if not base["heads"]:
        raise ExportError(f"{base['path']}: no attention head count")

    alpha = float(cfg.get("lora_alpha") or 0)
    pairs: dict[str, dict[str, "np.ndarray"]] = {}
    for key, tensor in load_file(str(weights_file)).items():
        m = _KEY.match(key)
        if m is None or m.group(2) not in HF_TO_GGUF:
            raise ExportError(f"{key}: llama.cpp adapters can only hold LoRA on the attention and MLP projections "
                              f"({', '.join(HF_TO_GGUF)})")
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        pairs.setdefault(f"model.layers.{layer}.{module}", {})[ab] = tensor.astype(np.float32)

    tensors: dict[str, "np.ndarray"] = {}
    for module_path, ab in sorted(pairs.items(), key=lambda kv: _natural(kv[0])):
        if set(ab) != {"A", "B"}:
            raise ExportError(f"{module_path}: lora_A or lora_B is missing")
        a, b = ab["A"], ab["B"]
        rank = a.shape[0]
        if b.shape[1] != rank:
            raise ExportError(f"{module_path}: lora_A is {a.shape} and lora_B {b.shape}; ranks differ")
        layer = int(module_path.split(".")[2])
        module = module_path.split(".", 3)[3]
        # peft's scale for this module vs. the one llama.cpp will apply; the difference goes into B.
        m_alpha = float(_pattern_value(cfg.get("alpha_pattern"), module_path, alpha))
        peft_scale = m_alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)
        cpp_scale = alpha / rank if alpha else 1.0
        if not math.isclose(peft_scale, cpp_scale, rel_tol=1e-6):
            b = b * np.float32(peft_scale / cpp_scale)
        name = f"blk.{layer}.{HF_TO_GGUF[module]}.weight"
        if base["shapes"] is not None:
            want = base["shapes"].get(name)
            if want is None:
                raise ExportError(f"{name} is not in the base model {base['path']} (wrong base?)")
            if want != (b.shape[0], a.shape[1]):
                raise ExportError(f"{name}: the adapter is for a [{b.shape[0]}, {a.shape[1]}] weight, the base "
                                  f"{base['path']} has {list(want)} (wrong base?)")
        if not permuted:
            pass
        elif module == "self_attn.q_proj":
            b = permute_for_llama_cpp(b, base["heads"])
        elif module == "self_attn.k_proj":
            b = permute_for_llama_cpp(b, base["kv_heads"] or base["heads"])
        tensors[f"{name}.lora_a"] = np.ascontiguousarray(a)
        tensors[f"{name}.lora_b"] = np.ascontiguousarray(b)
    if not tensors:
        raise ExportError(f"{src}: the adapter holds no LoRA weights")

    with writing(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=base["arch"])
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            writer.add_name(f"sleepy-tui LoRA ({src.name})")
            for name, arr in tensors.items():
                writer.add_tensor(name, arr)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return out


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
