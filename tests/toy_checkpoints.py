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


def write_lora_adapter(folder: Path, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], rank: int,
                       alpha: float, base_path: str | None = None, rslora: bool = False,
                       fan_in_fan_out: bool = False, extra: Mapping[str, torch.Tensor] | None = None,
                       **config) -> Path:
    """A PEFT LoRA adapter folder as ``save_pretrained`` writes it: ``{module: (A, B)}`` factors."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for module, (a, b) in factors.items():
        state[f"base_model.model.{module}.lora_A.weight"] = a
        state[f"base_model.model.{module}.lora_B.weight"] = b
    for name, tensor in (extra or {}).items():
        state[f"base_model.model.{name}"] = tensor
    write_safetensors(folder / "adapter_model.safetensors", state)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": rslora,
           "fan_in_fan_out": fan_in_fan_out, "base_model_name_or_path": base_path,
           "target_modules": sorted({m.rsplit(".", 1)[-1] for m in factors}), **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def planted_intruders(rows: int = 80, cols: int = 48, seed: int = 0):
    """A base W0 and a tuned W whose SVDs are known exactly, with intruders at known ranks.

    W0 = U0 diag(s0) V0ᵀ. W keeps U0's columns except the last three, which give way to:
    two vectors orthogonal to every column of U0 (intruders, max |cos| = 0) at ranks 2 and 5, and one
    at cos 0.3 to U0[:, 7] (an intruder at ε = 0.5, not at ε = 0.2) at rank 8. Base vector 40 moves
    to rank 0: matching it needs ALL of W0's vectors, not its top ones. Returns (W0, W, expected)
    with expected = {rank: (max_cos, best_match_index or None)}.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    u0, outside = q[:, :cols], q[:, cols:]  # outside ⟂ every column of U0
    v0, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    s0 = np.linspace(10.0, 1.0, cols)
    w0 = u0 @ np.diag(s0) @ v0.T
    partial = 0.3 * u0[:, 7] + np.sqrt(1 - 0.09) * outside[:, 2]
    left = [u0[:, 40]] + [u0[:, i] for i in range(cols) if i not in (7, 40)]  # U0[:, 7] gives way to `partial`
    for rank, vector in ((2, outside[:, 0]), (5, outside[:, 1]), (8, partial)):
        left.insert(rank, vector)
    u = np.stack(left[:cols], axis=1)
    s = np.linspace(12.0, 0.5, cols)
    w = u @ np.diag(s) @ v0.T
    expected = {0: (1.0, 40), 2: (0.0, None), 5: (0.0, None), 8: (0.3, 7)}
    return torch.tensor(w0, dtype=torch.float64), torch.tensor(w, dtype=torch.float64), expected


def transformer_lens_state(seed: int = 0, layers: int = 2, heads: int = 3, d_head: int = 8) -> dict[str, torch.Tensor]:
    """A tiny TransformerLens ``HookedTransformer`` state dict: per-head attention weights ``W_Q`` ``W_K`` ``W_V``
    ``[heads, d_model, d_head]`` and ``W_O`` ``[heads, d_head, d_model]``, 2-D MLP and embedding matrices, 1-D norms."""
    gen = torch.Generator().manual_seed(seed)
    state = {"embed.W_E": _randn(gen, VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"blocks.{i}."
        for w in "QKV":
            state[f"{p}attn.W_{w}"] = _randn(gen, heads, HIDDEN, d_head)
        state[p + "attn.W_O"] = _randn(gen, heads, d_head, HIDDEN)
        state[p + "mlp.W_in"] = _randn(gen, HIDDEN, INTER)
        state[p + "mlp.W_out"] = _randn(gen, INTER, HIDDEN)
        state[p + "ln1.w"] = _randn(gen, HIDDEN)
    state["unembed.W_U"] = _randn(gen, HIDDEN, VOCAB)
    return state
