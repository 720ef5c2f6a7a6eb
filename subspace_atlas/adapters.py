"""PEFT LoRA adapter folders read as weight updates: ΔW = scale · B A, kept in factored form.

An adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``/``.bin``) names its
targets by module; ``targets()`` lists each target's weight (``<module>.weight``, without PEFT's
``base_model.model.`` wrapper) and ``update(name)`` gives it as a ``LoraUpdate`` whose factors are
oriented like the base weight (GPT-2 Conv1D ``fan_in_fan_out`` and embedding adapters are transposed
here, as PEFT merges them).
Full tensors an adapter stores (``modules_to_save``) come back from ``full_tensors()``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from subspace_atlas.checkpoints import Checkpoint, TensorInfo, read_json
from subspace_atlas.errors import AtlasError, brief, is_utf8

if TYPE_CHECKING:
    import torch

CONFIG = "adapter_config.json"
_WRAPPER = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$")
_UNSUPPORTED = ("lora_magnitude_vector", "lora_E", "hada_w1", "lokr_w1", "ia3_l")


@dataclass(frozen=True)
class LoraUpdate:
    """ΔW = scale · left @ right, with ``left`` (m × r) and ``right`` (r × n) oriented like W (m × n)."""

    left: torch.Tensor
    right: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        return self.scale * (self.left.to(dtype) @ self.right.to(dtype))


def is_adapter(ckpt: Checkpoint) -> bool:
    """Whether a checkpoint is a PEFT adapter folder."""
    return ckpt.path.is_dir() and (ckpt.path / CONFIG).is_file()


@dataclass(frozen=True)
class _Target:
    a_key: str
    b_key: str
    embedding: bool
    scale: float


class LoraAdapter:
    """One LoRA adapter checkpoint; factors load lazily, one target at a time."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        path = ckpt.path / CONFIG
        self.config = _checked_config(read_json(path, "not a readable adapter config"), path)
        kind = self.config.get("peft_type", "LORA")
        if kind != "LORA":
            raise AtlasError(f"{ckpt.path}: a {brief(kind)} adapter; only LoRA adapters (peft_type LORA) can be "
                             "merged")
        if self.config.get("use_dora"):
            raise AtlasError(f"{ckpt.path}: a DoRA adapter; DoRA rescales the columns of W0 + BA by a learned "
                             "magnitude, which is not merged here (merge it with PEFT and pass the merged model)")
        self.base_path = self.config.get("base_model_name_or_path")
        self.fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        self._rank_pattern = _patterns(self.config, "rank_pattern", path)
        self._alpha_pattern = _patterns(self.config, "alpha_pattern", path)
        self._targets, self._full = self._scan()

    def _scan(self) -> tuple[dict[str, _Target], dict[str, str]]:
        """``({base weight name: its factors}, {base tensor name: stored key of a whole tensor})``."""
        infos = self.ckpt.tensors_by_name()
        factors: dict[str, dict[str, str]] = {}
        full: dict[str, str] = {}
        for key in infos:
            if any(f".{marker}" in key for marker in _UNSUPPORTED):
                raise AtlasError(f"{self.ckpt.path}: tensor {key!r} belongs to an adapter type other than plain "
                                 "LoRA (DoRA, AdaLoRA, LoHa, LoKr, IA3), which is not merged here")
            match = _FACTOR.match(key)
            if match:
                factors.setdefault(match["module"], {})[match["which"]] = key
            else:
                full[key.removeprefix(_WRAPPER)] = key
        targets = {}
        for module, pair in factors.items():
            embedding = "lora_embedding_A" in pair or "lora_embedding_B" in pair
            a, b = (pair.get("lora_embedding_A"), pair.get("lora_embedding_B")) if embedding else (
                pair.get("lora_A"), pair.get("lora_B"))
            if a is None or b is None:
                raise AtlasError(f"{self.ckpt.path}: module {module!r} has only one of its two LoRA factors")
            _check_factors(self.ckpt.path, module, infos[a].shape, infos[b].shape)
            name = module.removeprefix(_WRAPPER)
            targets[f"{name}.weight"] = _Target(a, b, embedding, self._scale(name, infos[a].shape[0]))
        if not targets:
            raise AtlasError(f"{self.ckpt.path}: an adapter folder without LoRA factors (lora_A / lora_B)")
        return targets, full

    def _scale(self, module: str, stored_rank: int) -> float:
        """PEFT's scaling: alpha / r, or alpha / sqrt(r) for rsLoRA, with per-module rank/alpha patterns."""
        rank = _pattern_value(self._rank_pattern, module, self.config.get("r", stored_rank))
        alpha = _pattern_value(self._alpha_pattern, module, self.config.get("lora_alpha", rank))
        if rank != stored_rank:
            raise AtlasError(f"{self.ckpt.path}: module {module!r} stores rank {stored_rank} but the config says "
                             f"r = {rank}")
        return alpha / (math.sqrt(rank) if self.config.get("use_rslora") else rank)

    def targets(self) -> list[TensorInfo]:
        """The weights this adapter updates, with the shape of the base weight it expects."""
        infos = self.ckpt.tensors_by_name()
        out = []
        for weight, target in self._targets.items():
            a, b = infos[target.a_key], infos[target.b_key]
            rows, cols = b.shape[0], a.shape[1]
            if target.embedding or self.fan_in_fan_out:
                rows, cols = cols, rows
            out.append(TensorInfo(weight, (rows, cols), a.dtype))
        return out

    def update(self, weight: str) -> LoraUpdate:
        """The factored update of one target weight, oriented like that weight."""
        target = self._targets[weight]
        a, b = self.ckpt.load(target.a_key), self.ckpt.load(target.b_key)
        if target.embedding or self.fan_in_fan_out:  # PEFT merges these as (B A)ᵀ = Aᵀ Bᵀ
            return LoraUpdate(a.T, b.T, target.scale)
        return LoraUpdate(b, a, target.scale)

    def full_tensors(self) -> list[TensorInfo]:
        """Tensors the adapter stores whole (``modules_to_save``), named as in the base model."""
        infos = self.ckpt.tensors_by_name()
        return [TensorInfo(name, infos[key].shape, infos[key].dtype) for name, key in self._full.items()]

    def load_full(self, name: str) -> torch.Tensor:
        return self.ckpt.load(self._full[name])


def _pattern_value(patterns: list[tuple[re.Pattern, object]], module: str, default):
    """PEFT's per-module override: a key matches when the module name ends with it (as a regex)."""
    for pattern, value in patterns:
        if pattern.match(module):
            return value
    return default


def _checked_config(config: object, path: Path) -> dict:
    """The adapter config, refused (naming the file and the field) where PEFT's own types do not hold:
    an object, ``r`` a positive integer, ``lora_alpha`` a finite number, the base model a string."""
    if not isinstance(config, dict):
        raise AtlasError(f"{path}: not a readable adapter config (a JSON {type(config).__name__}, not an object)")
    for key, (valid, kind) in _FIELDS.items():
        if key in config:
            _check_value(config[key], valid, f"{path}: {key}", kind)
    base = config.get("base_model_name_or_path")
    if base is not None and not (isinstance(base, str) and "\0" not in base and is_utf8(base)):
        raise AtlasError(f"{path}: base_model_name_or_path {brief(base)} is not a path or hub id")
    return config


def _patterns(config: dict, key: str, path: Path) -> list[tuple[re.Pattern, object]]:
    """``rank_pattern`` / ``alpha_pattern`` compiled as PEFT matches them, each value checked like the field
    it overrides; a key that is not a regex is an AtlasError naming the file."""
    patterns = config.get(key) or {}
    if not isinstance(patterns, dict):
        raise AtlasError(f"{path}: {key} is {brief(patterns)}, not an object of module patterns")
    valid, kind = _FIELDS[_OVERRIDES[key]]
    compiled = []
    for pattern, value in patterns.items():
        _check_value(value, valid, f"{path}: {key}[{brief(pattern)}]", kind)
        try:
            compiled.append((re.compile(rf"(.*\.)?({pattern})$"), value))
        except (re.error, RecursionError, OverflowError) as err:
            raise AtlasError(f"{path}: {key} key {brief(pattern)} is not a valid regular expression "
                             f"({type(err).__name__}: {err})") from err
    return compiled


def _check_value(value: object, valid: Callable[[object], bool], what: str, kind: str) -> None:
    if not valid(value):
        raise AtlasError(f"{what} is {brief(value)}, not {kind}")


def _is_rank(value: object) -> bool:
    return type(value) is int and value > 0


def _is_alpha(value: object) -> bool:
    """A finite number, also as a float (a 400-digit integer is not one)."""
    try:
        return type(value) in (int, float) and math.isfinite(float(value))
    except OverflowError:
        return False


_FIELDS = {"r": (_is_rank, "a positive integer"), "lora_alpha": (_is_alpha, "a finite number")}
_OVERRIDES = {"rank_pattern": "r", "alpha_pattern": "lora_alpha"}


def _check_factors(path: Path, module: str, a: tuple[int, ...], b: tuple[int, ...]) -> None:
    """LoRA factors are matrices, A r × in and B out × r, sharing the rank r."""
    if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
        raise AtlasError(f"{path}: module {module!r}: lora_A is {list(a)} but lora_B is {list(b)}; LoRA factors "
                         "are an r × in and an out × r matrix (conv and other non-matrix LoRA layers are not merged)")


def recorded_base(adapter: LoraAdapter) -> Path | None:
    """The adapter's recorded base model when that is a folder on this machine (else a hub id: None)."""
    if not adapter.base_path:
        return None
    try:
        path = Path(adapter.base_path).expanduser()
        return path.resolve() if path.exists() else None
    except (OSError, RuntimeError):  # a name too long, an unknown ~user: no folder here
        return None
