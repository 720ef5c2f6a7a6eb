"""Write small, real checkpoints in every format ``open_checkpoints`` reads (no mocks; for any test).

Every writer takes a state dict (name → tensor) and a destination, writes it the way the producing
library does (``safetensors.torch.save_file``, ``torch.save``, HF shard indexes) and returns the path.
The toy state dicts mix float32, float16 and bfloat16 matrices with 1-D tensors, and their smallest
matrix side is ≥ 24, so the spectra power-law fit (≥ 20 eigenvalues) gives a finite alpha.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTER, VOCAB = 32, 48, 40


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


def llama_state(seed: int = 0, layers: int = 1) -> dict[str, torch.Tensor]:
    """A tiny Llama-style state dict: fp32, bf16 and fp16 matrices plus 1-D norms."""
    gen = torch.Generator().manual_seed(seed)
    state = {"model.embed_tokens.weight": _randn(gen, VOCAB, HIDDEN, dtype=torch.float16)}
    for i in range(layers):
        p = f"model.layers.{i}."
        state[p + "self_attn.q_proj.weight"] = _randn(gen, HIDDEN, HIDDEN)
        state[p + "self_attn.v_proj.weight"] = _randn(gen, HIDDEN, HIDDEN, dtype=torch.bfloat16)
        state[p + "mlp.down_proj.weight"] = _randn(gen, HIDDEN, INTER, dtype=torch.bfloat16)
        state[p + "input_layernorm.weight"] = _randn(gen, HIDDEN)
    state["model.norm.weight"] = _randn(gen, HIDDEN)
    return state


def gpt2_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny GPT-2-style state dict (Conv1D weights stored as in/out, as GPT-2 does)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "transformer.wte.weight": _randn(gen, VOCAB, HIDDEN),
        "transformer.wpe.weight": _randn(gen, 24, HIDDEN),
        "transformer.h.1.attn.c_attn.weight": _randn(gen, HIDDEN, 3 * HIDDEN),
        "transformer.h.1.attn.c_proj.weight": _randn(gen, HIDDEN, HIDDEN),
        "transformer.h.1.mlp.c_fc.weight": _randn(gen, HIDDEN, 4 * HIDDEN),
        "transformer.h.1.mlp.c_proj.weight": _randn(gen, 4 * HIDDEN, HIDDEN),
        "transformer.h.1.ln_1.weight": _randn(gen, HIDDEN),
    }


def write_safetensors(path: Path, state: Mapping[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(state), str(path))
    return path


def write_torch(path: Path, state: Mapping[str, torch.Tensor], nest: str | None = None,
                legacy: bool = False, extra: Mapping | None = None) -> Path:
    """``torch.save`` a state dict, optionally nested under ``nest`` (``{"state_dict": {...}}``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj: dict = {nest: dict(state)} if nest else dict(state)
    obj.update(extra or {})
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def write_hf_folder(folder: Path, state: Mapping[str, torch.Tensor], fmt: str = "safetensors") -> Path:
    """An HF model folder with ``model.safetensors`` (or ``pytorch_model.bin``) and a config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
    if fmt == "safetensors":
        write_safetensors(folder / "model.safetensors", state)
    else:
        write_torch(folder / "pytorch_model.bin", state)
    return folder


def shard_names(shards: int, fmt: str = "safetensors") -> list[str]:
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    return [f"{stem}-{k:05d}-of-{shards:05d}.{ext}" for k in range(1, shards + 1)]


def write_sharded(folder: Path, state: Mapping[str, torch.Tensor], shards: int = 2,
                  fmt: str = "safetensors") -> Path:
    """A sharded HF folder: tensors dealt round-robin over ``shards`` files, plus the shard index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = shard_names(shards, fmt)
    parts: list[dict[str, torch.Tensor]] = [{} for _ in names]
    weight_map = {}
    for k, (key, tensor) in enumerate(state.items()):
        parts[k % shards][key] = tensor
        weight_map[key] = names[k % shards]
    for name, part in zip(names, parts):
        if fmt == "safetensors":
            write_safetensors(folder / name, part)
        else:
            write_torch(folder / name, part)
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


def write_trainer_state(folder: Path, global_step: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "trainer_state.json"
    path.write_text(json.dumps({"global_step": global_step, "epoch": 1.0, "log_history": []}))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its length, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def assert_matches(ckpt, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """The checkpoint holds exactly ``state`` (names with ``prefix``): shapes, dtypes and values."""
    infos = {i.name: i for i in ckpt.tensors()}
    assert set(infos) == {prefix + k for k in state}
    for key, want in state.items():
        info = infos[prefix + key]
        assert info.shape == tuple(want.shape), key
        assert info.dtype == str(want.dtype).removeprefix("torch."), key
        got = ckpt.load(prefix + key)
        assert got.dtype == want.dtype, key
        assert torch.equal(got, want), key
