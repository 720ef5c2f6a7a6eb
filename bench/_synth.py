"""Write synthetic Llama-shaped bf16 checkpoints in the HF layout, one tensor at a time.

The safetensors format is written by hand (8-byte header length, JSON header, raw bytes) so no
more than one tensor is ever in memory: the whole-model dict that ``safetensors.torch.save_file``
needs never exists. Shards are listed in ``model.safetensors.index.json`` as HF does.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    heads: int
    kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


TINYLLAMA = LlamaShape(hidden=2048, intermediate=5632, layers=22, vocab=32000, heads=32, kv_heads=4)
LLAMA2_7B = LlamaShape(hidden=4096, intermediate=11008, layers=32, vocab=32000, heads=32, kv_heads=32)
SMALL = LlamaShape(hidden=256, intermediate=688, layers=2, vocab=1000, heads=8, kv_heads=8)


def tensor_list(s: LlamaShape) -> list[tuple[str, tuple[int, ...]]]:
    """HF Llama names and shapes, in the order HF writes them (torch Linear weights are out × in)."""
    kv = s.kv_heads * s.head_dim
    out = [("model.embed_tokens.weight", (s.vocab, s.hidden))]
    for i in range(s.layers):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (s.hidden, s.hidden)),
            (p + "self_attn.k_proj.weight", (kv, s.hidden)),
            (p + "self_attn.v_proj.weight", (kv, s.hidden)),
            (p + "self_attn.o_proj.weight", (s.hidden, s.hidden)),
            (p + "mlp.gate_proj.weight", (s.intermediate, s.hidden)),
            (p + "mlp.up_proj.weight", (s.intermediate, s.hidden)),
            (p + "mlp.down_proj.weight", (s.hidden, s.intermediate)),
            (p + "input_layernorm.weight", (s.hidden,)),
            (p + "post_attention_layernorm.weight", (s.hidden,)),
        ]
    out += [("model.norm.weight", (s.hidden,)), ("lm_head.weight", (s.vocab, s.hidden))]
    return out


def _random(shape: tuple[int, ...], gen: torch.Generator, device: str) -> torch.Tensor:
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    t.mul_(0.02)
    return t.to(torch.bfloat16).cpu()


def write_checkpoint(folder: Path, s: LlamaShape, shards: int = 2, seed: int = 0,
                     device: str = "cpu", log=print) -> dict:
    """Write ``folder`` (config.json, shards, index). Reuses an existing identical one. Returns a summary."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "synth.json"
    spec = {"shape": asdict(s), "shards": shards, "seed": seed, "format": 1}
    items = tensor_list(s)
    total_bytes = sum(2 * math.prod(shape) for _, shape in items)
    if marker.exists() and json.loads(marker.read_text()) == spec:
        log(f"reusing {folder} ({total_bytes / 1e9:.2f} GB)")
        return {"folder": str(folder), "bytes": total_bytes, "seconds": 0.0, "reused": True,
                "tensors": len(items), "params": total_bytes // 2}
    marker.unlink(missing_ok=True)
    for old in folder.glob("*.safetensors"):
        old.unlink()

    # Split into shards of about equal bytes, keeping tensor order.
    target = total_bytes / shards
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    acc = 0
    for name, shape in items:
        size = 2 * math.prod(shape)
        if acc + size / 2 > target * len(groups) and len(groups) < shards and groups[-1]:
            groups.append([])
        groups[-1].append((name, shape))
        acc += size
    names = [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]

    gen = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    weight_map = {}
    for fname, group in zip(names, groups):
        header, offset = {}, 0
        for name, shape in group:
            size = 2 * math.prod(shape)
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = fname
        header["__metadata__"] = {"format": "pt"}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        path = folder / fname
        with open(path, "wb") as fh:
            fh.write(struct.pack("<Q", len(blob)))
            fh.write(blob)
            for name, shape in group:
                t = _random(shape, gen, device)
                fh.write(t.view(torch.int16).numpy().data)  # no extra copy
                del t
            fh.flush()
            os.fsync(fh.fileno())
        log(f"wrote {path.name}: {offset / 1e6:.1f} MB, {len(group)} tensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": s.hidden,
        "intermediate_size": s.intermediate, "num_hidden_layers": s.layers, "vocab_size": s.vocab,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "torch_dtype": "bfloat16",
        "tie_word_embeddings": False}, indent=1))
    marker.write_text(json.dumps(spec))
    seconds = time.perf_counter() - t0
    return {"folder": str(folder), "bytes": total_bytes, "seconds": seconds, "reused": False,
            "tensors": len(items), "params": total_bytes // 2}


def evict_page_cache(folder: Path) -> bool:
    """Ask the kernel to drop the cached pages of every weight file (no root needed for clean pages)."""
    ok = hasattr(os, "posix_fadvise")
    for path in sorted(folder.glob("*.safetensors")):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            if ok:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return ok
