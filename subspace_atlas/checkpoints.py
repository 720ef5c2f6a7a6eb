"""One reader for the checkpoint formats users have; tensors stream one at a time.

Formats: a single ``.safetensors`` file; an HF folder (``model.safetensors``, shards listed in
``*.safetensors.index.json``, ``pytorch_model.bin`` and its index); ``.bin`` / ``.pt`` / ``.pth`` state
dicts, loaded only with ``weights_only=True``; PEFT adapter folders (their tensors as stored); and run
folders whose children are checkpoints (``checkpoint-500``, ``step500``, ``global_step500`` …), the
step read from the name or ``trainer_state.json``.

Reading a checkpoint's tensor list touches headers only. ``load`` reads one tensor; ``stream`` reads
a list of them in a background thread, a bounded number ahead, so disk reads overlap compute and
peak memory stays near the largest matrix, never the model. Opening, listing and ``identity``
need no torch for safetensors files and HF folders (dtypes stay names until a tensor loads); a
``.bin`` / ``.pt`` pickle is loaded with torch to list its tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import queue
import re
import struct
import threading
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from subspace_atlas.errors import AtlasError

if TYPE_CHECKING:
    import torch

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

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


def select_matrices(infos: Iterable[TensorInfo]) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Split tensors into non-empty 2-D floating-point matrices (what weight analyses take) and the rest."""
    taken, skipped = [], []
    for info in infos:
        (taken if info.is_matrix and info.is_float and min(info.shape) > 0 else skipped).append(info)
    return taken, skipped


FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"}
# Bytes per element of a dtype, by its torch name (``TensorInfo.dtype``).
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
            "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}
# safetensors dtype code → torch dtype name.
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool",
}
_MAX_HEADER = 100 << 20


class _SafetensorsFile:
    """One safetensors file, read with plain positioned reads rather than a memory map.

    A memory map would leave every page read resident (and counted in RSS) until the file is closed,
    so a 2 GB model would cost 2 GB of RSS; reading each tensor into its own buffer bounds memory by
    the tensor. The header is validated against the file size, so a truncated file fails on open.
    """

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        try:
            with path.open("rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8).ljust(8, b"\0"))
                if not 2 <= length <= min(size - 8, _MAX_HEADER):
                    raise ValueError(f"header length {length} does not fit a {size}-byte file")
                header = json.loads(fh.read(length))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (ValueError, UnicodeDecodeError, struct.error) as err:
            raise AtlasError(f"{path}: not a readable safetensors file ({err})") from err
        self._data_start = 8 + length
        data_size = size - self._data_start
        self.infos: dict[str, TensorInfo] = {}
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise AtlasError(f"{path}: tensor {name!r} has a malformed header entry ({err})") from err
            expected = math.prod(shape) * ITEMSIZE[dtype]
            if end - begin != expected or begin < 0:
                raise AtlasError(f"{path}: tensor {name!r} spans {end - begin} bytes, its shape needs {expected}")
            if end > data_size:
                raise AtlasError(f"{path}: truncated: tensor {name!r} ends at byte {self._data_start + end} "
                                 f"of a {size}-byte file")
            self._entries[name] = (dtype, shape, begin, end)
            self.infos[name] = TensorInfo(name, shape, dtype)

    def load(self, name: str) -> torch.Tensor:
        import torch

        dtype_name, shape, begin, end = self._entries[name]
        dtype = getattr(torch, dtype_name)
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        buffer = bytearray(end - begin)
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._data_start + begin)
                got = fh.readinto(buffer)
        except OSError as err:
            raise AtlasError(f"{self.path}: tensor {name!r} could not be read ({err})") from err
        if got != len(buffer):
            raise AtlasError(f"{self.path}: tensor {name!r} could not be read (file shrank while reading)")
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)


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
    import torch

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
    import torch

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

    def __getstate__(self) -> dict:
        """Pickle (to a Ray worker) without the opened files: they reopen there, lazily."""
        return {**self.__dict__, "_sources": None}

    def tensors(self) -> list[TensorInfo]:
        """Every tensor's name, shape and dtype, in file order (headers only)."""
        return [src.infos[name] for name, src in self._index().items()]

    def tensors_by_name(self) -> dict[str, TensorInfo]:
        """Every tensor's info keyed by name (headers only)."""
        return {name: src.infos[name] for name, src in self._index().items()}

    def load(self, name: str) -> torch.Tensor:
        """One tensor as stored (CPU, stored dtype)."""
        sources = self._index()
        if name not in sources:
            raise AtlasError(f"{self.path}: no tensor named {name!r}")
        return sources[name].load(name)

    def stream(self, names: Sequence[str], ahead_bytes: int = 256 << 20) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` in order while a background thread reads the next ones.

        The reader runs ahead only while the tensors alive (the one in use and those read ahead) fit in
        ``ahead_bytes``; a tensor larger than that is read only once the previous one is released.
        """
        sources = self._index()
        sizes = {n: sources[n].infos[n].nbytes for n in names if n in sources}
        items = ((n, sizes.get(n, 0), lambda n=n: self.load(n)) for n in names)
        yield from _prefetch(items, ahead_bytes)

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


def _prefetch(items: Iterator[tuple[str, int, object]], budget: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Run each item's loader in one background thread, keeping the bytes alive within ``budget``.

    Alive = the item the consumer holds plus those loaded ahead; the consumer releases an item when it
    asks for the next one. The worker loads the next item only while it fits (or nothing is alive),
    so memory stays near max(budget, largest item) while disk reads overlap compute.
    """
    slots: queue.SimpleQueue = queue.SimpleQueue()
    gate = threading.Condition()
    alive = [0]
    stop = threading.Event()
    done = object()

    def worker() -> None:
        try:
            for name, size, loader in items:
                with gate:
                    gate.wait_for(lambda: stop.is_set() or alive[0] == 0 or alive[0] + size <= budget)
                    if stop.is_set():
                        return
                    alive[0] += size
                slots.put((name, size, loader()))
        except BaseException as err:  # handed to the consumer, raised there
            slots.put((None, 0, err))
            return
        slots.put((None, 0, done))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    held = 0
    try:
        while True:
            with gate:
                alive[0] -= held
                gate.notify()
            name, held, value = slots.get()
            if value is done:
                return
            if name is None:
                raise value
            yield name, value
            del value
    finally:
        with gate:
            stop.set()
            gate.notify()
        thread.join(timeout=5)


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


def open_one(path: str | Path, name: str | None = None, flag: str = "") -> Checkpoint:
    """Exactly one checkpoint (a base, a run's start, a model to probe); a run folder is an error naming ``flag``."""
    found = open_checkpoints(path, name)
    if len(found) != 1:
        raise AtlasError(f"{flag + ' ' if flag else ''}{path}: a run folder of {len(found)} checkpoints; "
                         "give one checkpoint")
    return found[0]
