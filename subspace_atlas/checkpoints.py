"""One reader for the checkpoint formats users have; tensors stream one at a time.

Formats: a single ``.safetensors`` file; an HF folder (``model.safetensors``, shards listed in
``*.safetensors.index.json``, ``pytorch_model.bin`` and its index); ``.bin`` / ``.pt`` / ``.pth`` state
dicts, loaded only with ``weights_only=True``; PEFT adapter folders (their tensors as stored); and run
folders whose children are checkpoints (``checkpoint-500``, ``step500``, ``global_step500`` …), the
step read from the name or ``trainer_state.json``.

Reading a checkpoint's tensor list touches headers only. ``load`` reads one tensor; ``stream`` reads
a list of them in a background thread, a bounded number ahead, so disk reads overlap compute and
peak memory stays near the largest matrix, never the model.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import queue
import re
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from subspace_atlas.errors import AtlasError

SAFETENSORS = (".safetensors",)
PICKLES = (".bin", ".pt", ".pth")
_STEP_NAME = re.compile(r"(?:checkpoint|global_step|step|ckpt|iter|iteration|epoch)[-_]?(\d+)$", re.I)
_SAMPLE_CHUNK = 64 * 1024
_SAMPLE_COUNT = 16


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name, shape and stored dtype, read from headers without loading data."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"}
_SAFETENSORS_DTYPES = {
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I8": "int8", "U8": "uint8",
    "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool",
}


class _SafetensorsFile:
    """Lazy access to one safetensors file (memory-mapped by the library)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._handle = safe_open(str(path), framework="pt")
            keys = list(self._handle.keys())
            self.infos = {}
            for key in keys:
                sl = self._handle.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower())
                self.infos[key] = TensorInfo(key, tuple(sl.get_shape()), dtype)
        except (SafetensorError, OSError, ValueError) as err:
            raise AtlasError(f"{path}: not a readable safetensors file ({err})") from err

    def load(self, name: str) -> torch.Tensor:
        try:
            return self._handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise AtlasError(f"{self.path}: tensor {name!r} could not be read ({err})") from err


class _PickleFile:
    """A torch state dict, loaded with ``weights_only=True`` (and memory-mapped when the format allows)."""

    def __init__(self, path: Path):
        self.path = path
        state = _torch_load(path)
        self.tensors: dict[str, torch.Tensor] = {}
        self.non_tensors: list[str] = []
        _flatten(state, "", self.tensors, self.non_tensors)
        self.infos = {
            name: TensorInfo(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
            for name, t in self.tensors.items()
        }

    def load(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def _torch_load(path: Path) -> object:
    mmap = zipfile.is_zipfile(path)  # only the zip format can be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = next((line for line in lines if "Unsupported global" in line or "GLOBAL" in line),
                     lines[0] if lines else type(err).__name__)
        raise AtlasError(
            f"{path}: refused: this pickle would run code or load objects other than tensors, and only "
            f"weights_only=True loads are allowed ({first})"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise AtlasError(f"{path}: not a readable torch checkpoint ({err})") from err


def _flatten(obj: object, prefix: str, out: dict[str, torch.Tensor], skipped: list[str]) -> None:
    """Flatten nested dicts (``{"model": {...}}``, ``{"state_dict": {...}}``) into dotted tensor names."""
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out, skipped)
    else:
        skipped.append(prefix or "<root>")


def _open_file(path: Path) -> _SafetensorsFile | _PickleFile:
    if path.suffix in SAFETENSORS:
        return _SafetensorsFile(path)
    if path.suffix in PICKLES:
        return _PickleFile(path)
    raise AtlasError(f"{path}: unknown checkpoint format (expected {', '.join(SAFETENSORS + PICKLES)})")


@dataclass
class Checkpoint:
    """A set of weight files read as one state dict; tensors load lazily, one at a time."""

    name: str
    path: Path
    files: tuple[Path, ...]
    step: int | None = None
    run: str | None = None
    _sources: dict[str, _SafetensorsFile | _PickleFile] | None = field(default=None, repr=False)

    def _index(self) -> dict[str, _SafetensorsFile | _PickleFile]:
        if self._sources is None:
            sources: dict[str, _SafetensorsFile | _PickleFile] = {}
            for file in self.files:
                if not file.exists():
                    raise AtlasError(f"{file}: listed by {self.path} but missing")
                opened = _open_file(file)
                for name in opened.infos:
                    sources.setdefault(name, opened)
            self._sources = sources
        return self._sources

    def tensors(self) -> list[TensorInfo]:
        """Every tensor's name, shape and dtype, in file order (headers only)."""
        return [src.infos[name] for name, src in self._index().items()]

    def load(self, name: str) -> torch.Tensor:
        """One tensor as stored (CPU, stored dtype)."""
        sources = self._index()
        if name not in sources:
            raise AtlasError(f"{self.path}: no tensor named {name!r}")
        return sources[name].load(name)

    def stream(self, names: Sequence[str], ahead: int = 2) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` in order, reading up to ``ahead`` tensors in a background thread."""
        yield from _prefetch(((n, lambda n=n: self.load(n)) for n in names), ahead)

    def identity(self) -> str:
        """A path-independent content fingerprint: sizes, headers and sampled bytes of every weight file."""
        digest = hashlib.sha256()
        for file in sorted(self.files, key=lambda p: p.name):
            if not file.is_file():
                raise AtlasError(f"{file}: listed by {self.path} but missing")
            digest.update(file.name.encode())
            digest.update(_sample_hash(file))
        return digest.hexdigest()[:24]


def _sample_hash(path: Path) -> bytes:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))  # the header and first tensors
        if size > (1 << 20):
            for i in range(_SAMPLE_COUNT + 1):
                fh.seek(max(0, (size - _SAMPLE_CHUNK) * i // _SAMPLE_COUNT))
                digest.update(fh.read(_SAMPLE_CHUNK))
    return digest.digest()


def _prefetch(items: Iterator[tuple[str, object]], ahead: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Run each item's loader in one background thread, at most ``ahead`` results waiting."""
    slots: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()
    done = object()

    def worker() -> None:
        try:
            for name, loader in items:
                if stop.is_set():
                    return
                slots.put((name, loader()))
        except BaseException as err:  # handed to the consumer, raised there
            slots.put((None, err))
            return
        slots.put((None, done))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            name, value = slots.get()
            if value is done:
                return
            if name is None:
                raise value
            yield name, value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def _weight_files(folder: Path) -> tuple[Path, ...]:
    """The weight files of a checkpoint folder, in the precedence HF uses; empty when there are none."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise AtlasError(f"{index}: not a valid shard index ({err})") from err
            return tuple(folder / shard for shard in dict.fromkeys(weight_map.values()))
    for single in ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin"):
        if (folder / single).exists():
            return ((folder / single),)
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SAFETENSORS)
    if not found:
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in PICKLES)
    return tuple(found)


def _step_of(path: Path) -> int | None:
    match = _STEP_NAME.search(path.stem if path.is_file() else path.name)
    if match:
        return int(match.group(1))
    state = path / "trainer_state.json" if path.is_dir() else None
    if state is not None and state.exists():
        try:
            return int(json.loads(state.read_text())["global_step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
    return None


def _children(folder: Path) -> list[Path]:
    """Children of a run folder that are checkpoints: step-named folders with weights, or step-named files."""
    kids = []
    for child in folder.iterdir():
        if child.name.startswith("."):
            continue
        if child.is_dir() and _step_of(child) is not None and _weight_files(child):
            kids.append(child)
        elif child.is_file() and child.suffix in SAFETENSORS + PICKLES and _STEP_NAME.search(child.stem):
            kids.append(child)
    return sorted(kids, key=lambda p: (_step_of(p), p.name))


def open_checkpoints(path: str | Path, name: str | None = None) -> list[Checkpoint]:
    """Expand a path into checkpoints: a file or folder is one; a run folder is its children in step order.

    ``name`` replaces the checkpoint's display name (the file stem or folder name), or a run's name.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise AtlasError(f"{path}: no such file or folder")
    path = path.resolve()
    if path.is_file():
        if path.suffix not in SAFETENSORS + PICKLES:
            raise AtlasError(f"{path}: unknown checkpoint format (expected {', '.join(SAFETENSORS + PICKLES)})")
        return [Checkpoint(name=name or path.stem, path=path, files=(path,), step=_step_of(path))]
    children = _children(path)
    own = tuple(f for f in _weight_files(path) if f not in children)  # step-named files are children
    if not own and not children:
        raise AtlasError(
            f"{path}: no checkpoint found (looked for *.safetensors, shard indexes, pytorch_model.bin, "
            f"*.pt/*.pth, and checkpoint-N / stepN subfolders)"
        )
    run = (name or path.name) if children else None
    found = [
        Checkpoint(
            name=f"{run}/{child.stem if child.is_file() else child.name}",
            path=child,
            files=(child,) if child.is_file() else _weight_files(child),
            step=_step_of(child),
            run=run,
        )
        for child in children
    ]
    if own:
        found.append(Checkpoint(name=f"{run}/final" if run else (name or path.name), path=path, files=own,
                                step=_step_of(path), run=run))
    return found
