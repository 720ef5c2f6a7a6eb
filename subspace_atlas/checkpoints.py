"""One reader for the checkpoint formats users have; tensors stream one at a time.

Formats: a single ``.safetensors`` file; an HF folder (``model.safetensors``, shards listed in
``*.safetensors.index.json``, ``pytorch_model.bin`` and its index); ``.bin`` / ``.pt`` / ``.pth`` state
dicts, loaded only with ``weights_only=True``; PEFT adapter folders (their tensors as stored); folders
of loose weight files without an index (one checkpoint per file); and run folders whose children are
checkpoints (``checkpoint-500``, ``step500``, ``global_step500`` …), the step read from the name or
``trainer_state.json``. Bad input (a malformed header or index, a FIFO, a name that is not UTF-8) is one
``AtlasError`` line naming the file.

Reading a checkpoint's tensor list touches headers only. ``load`` reads one tensor; ``stream`` reads
a list of them in a background thread, a bounded number ahead, so disk reads overlap compute and
peak memory stays near the largest matrix, never the model. Opening, listing and ``identity``
need no torch for safetensors files and HF folders (dtypes stay names until a tensor loads); a
``.bin`` / ``.pt`` pickle is loaded with torch to list its tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import queue
import re
import stat
import threading
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from subspace_atlas import safetensors_header
from subspace_atlas.errors import AtlasError, brief, first_line, is_utf8
from subspace_atlas.views import HALVES, View, expanded

if TYPE_CHECKING:
    import torch

SAFETENSORS = (".safetensors",)
PICKLES = (".bin", ".pt", ".pth")
_STEP_NAME = re.compile(r"(?:checkpoint|global_step|step|ckpt|iter|iteration|epoch)[-_]?(\d+)$", re.I)
_SAMPLE_CHUNK = 64 * 1024
_SAMPLE_COUNT = 16
_MAX_STEP = (1 << 63) - 1  # steps are stored as int64
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
# Tied embeddings (``Checkpoint.tied_embeddings``): a class with an LM head, whose output projection transformers
# ties to the token embedding (``_tied_weights_keys``); the token embeddings (T5's ``shared`` is what its
# ``embed_tokens`` and ``lm_head`` tie to); and the output projections that, when stored, mean it is not tied.
_LM_HEAD_CLASS = re.compile(r"(?:ForCausalLM|ForMaskedLM|ForConditionalGeneration|LMHeadModel)$")
_TOKEN_EMBED = re.compile(r"(?:^|\.)(?:(?:embed_tokens|wte|word_embeddings|embed_in|shared)\.weight|W_E)$")
_UNEMBED = re.compile(r"(?:^|\.)(?:(?:lm_head|lm_head\.decoder|embed_out|predictions\.decoder)\.weight|W_U)$")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name, shape and stored dtype, read from headers without loading data.

    With ``view``, a matrix cut from a 3-D tensor (``views``): its name is not a stored tensor's. ``halves``:
    for a fused ``experts.gate_up_proj``, how its model type lays out the gate and up halves
    (``views.HALVES``); None when the checkpoint does not say.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    view: View | None = None
    halves: str | None = None

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
    """Split tensors into non-empty 2-D floating-point matrices (what weight analyses take) and the rest.

    A 3-D tensor ``views`` knows (fused MoE experts, per-head attention) is replaced by its matrices.
    """
    taken, skipped = [], []
    for info in expanded(infos):
        matrix = info.is_matrix and info.is_float and min(info.shape) > 0 and not _PER_HEAD_BIAS.search(info.name)
        (taken if matrix else skipped).append(info)
    return taken, skipped


# TransformerLens per-head biases ``attn.b_Q`` / ``b_K`` / ``b_V`` ``[n_heads, d_head]``: 2-D, but a bias per head,
# not a map between spaces (``b_O`` and the MLP's biases are 1-D and skipped anyway).
_PER_HEAD_BIAS = re.compile(r"(?:^|\.)attn\._?b_[QKV]$")


FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"}
# Bytes per element of a dtype, by its torch name (``TensorInfo.dtype``).
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
            "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1,
            "bool": 1}


def _require_regular(path: Path) -> None:
    """Refuse anything but a regular file before it is opened: opening a FIFO blocks until a writer comes,
    and a device such as ``/dev/zero`` never ends."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise _unreadable(path, err) from err
    if not stat.S_ISREG(mode):
        raise AtlasError(f"{path}: not a regular file (a folder, device, FIFO or socket)")


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading once it is known to be a regular file. The open is non-blocking, so a
    FIFO swapped in after the check reads as empty instead of hanging."""
    _require_regular(path)
    try:
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
    except OSError as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: OSError) -> AtlasError:
    return AtlasError(f"{path}: cannot be read ({err.strerror or err})")


def read_json(path: Path, problem: str) -> object:
    """A JSON file's value; an unreadable, invalid or absurdly nested file is ``"{path}: {problem} (why)"``."""
    try:
        with open_regular(path) as fh:
            raw = fh.read()
        return json.loads(raw)
    except RecursionError as err:
        raise AtlasError(f"{path}: {problem} (JSON nested too deeply)") from err
    except (OSError, ValueError) as err:
        raise AtlasError(f"{path}: {problem} ({err})") from err


class _SafetensorsFile:
    """One safetensors file, read with plain positioned reads rather than a memory map.

    A memory map would leave every page read resident (and counted in RSS) until the file is closed,
    so a 2 GB model would cost 2 GB of RSS; reading each tensor into its own buffer bounds memory by
    the tensor. The header is checked as the ``safetensors`` library checks it (``safetensors_header``),
    so a truncated or malformed file fails on open.
    """

    def __init__(self, path: Path):
        self.path = path
        with open_regular(path) as fh:
            self._data_start, self._entries = safetensors_header.read(fh, os.fstat(fh.fileno()).st_size, path)
        self.infos = {name: TensorInfo(name, e.shape, e.dtype) for name, e in self._entries.items()}

    def load(self, name: str, index: int | None = None) -> torch.Tensor:
        """The tensor, or with ``index`` only its slice along the first axis (read alone from disk)."""
        import torch

        entry = self._entries[name]
        dtype = getattr(torch, entry.dtype)
        shape, begin, size = entry.shape, entry.begin, entry.end - entry.begin
        if index is not None:
            shape, size = shape[1:], size // shape[0]
            begin += index * size
        if size == 0:
            return torch.empty(shape, dtype=dtype)
        try:
            buffer = bytearray(size)
        except MemoryError as err:
            raise AtlasError(f"{self.path}: tensor {name!r} needs {size} bytes, more memory "
                             "than this machine has free") from err
        with open_regular(self.path) as fh:
            try:
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
        try:
            _flatten(state, "", self.tensors, self.non_tensors)
        except RecursionError as err:
            raise AtlasError(f"{path}: not a readable torch checkpoint (dicts nested too deeply)") from err
        except ValueError as err:
            raise AtlasError(f"{path}: not a readable torch checkpoint ({err})") from err
        self.infos = {
            name: TensorInfo(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
            for name, t in self.tensors.items()
        }

    def load(self, name: str, index: int | None = None) -> torch.Tensor:
        return self.tensors[name] if index is None else self.tensors[name][index]


def _torch_load(path: Path) -> object:
    import torch

    _require_regular(path)
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
    except Exception as err:  # noqa: BLE001 (whatever a damaged file makes torch.load raise, it is unreadable)
        raise AtlasError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {first_line(err)})"
                         ) from err


def _flatten(obj: object, prefix: str, out: dict[str, torch.Tensor], skipped: list[str]) -> None:
    """Flatten nested dicts (``{"model": {...}}``, ``{"state_dict": {...}}``) into dotted tensor names.

    A name two entries flatten to (``{"a.b": x, "a": {"b": y}}``) or one that is not valid Unicode is a
    ``ValueError``: keeping either tensor, or storing the name, would go wrong silently later.
    """
    import torch

    if isinstance(obj, torch.Tensor):
        if prefix in out:
            raise ValueError(f"two entries flatten to the tensor name {prefix!r}")
        if not is_utf8(prefix):
            raise ValueError(f"tensor name {prefix!r} is not valid Unicode")
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
    _views: dict[str, TensorInfo] | None = field(default=None, repr=False)
    _config: dict | None = field(default=None, repr=False)
    _tied: frozenset[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for text in (str(self.path), *map(str, self.files), self.name):
            _require_utf8(text)

    def _index(self) -> dict[str, _SafetensorsFile | _PickleFile]:
        """Every tensor name → the opened file holding it; a name in two files of this checkpoint is an error."""
        if self._sources is None:
            sources: dict[str, _SafetensorsFile | _PickleFile] = {}
            for file in self.files:
                opened = _open_file(self._listed(file))
                for name in opened.infos:
                    if name in sources:
                        raise AtlasError(f"{self.path}: tensor {name!r} is in both {sources[name].path.name} and "
                                         f"{file.name}; the files of one checkpoint must not share tensor names")
                    sources[name] = opened
            self._mark_halves(sources)
            self._sources = sources
        return self._sources

    def _mark_halves(self, sources: dict[str, _SafetensorsFile | _PickleFile]) -> None:
        """Tell each fused ``experts.gate_up_proj`` how its gate and up halves lie, from ``config.json``."""
        fused = [name for name in sources if name.endswith("experts.gate_up_proj")]
        halves = HALVES.get(self.model_type() or "") if fused else None
        for name in fused if halves else ():
            infos = sources[name].infos
            infos[name] = replace(infos[name], halves=halves)

    def config(self) -> dict:
        """The ``config.json`` beside the weights (read once); empty when there is none. A config that cannot be
        read is empty with a warning: it only describes the model, it holds no weights."""
        if self._config is None:
            path = (self.path if self.path.is_dir() else self.path.parent) / "config.json"
            data: object = {}
            if path.is_file():
                try:
                    data = read_json(path, "not a readable model config")
                except AtlasError as err:
                    _log.warning("subspace-atlas: warning: %s; the model's type and tying are unknown", err)
            self._config = data if isinstance(data, dict) else {}
        return self._config

    def model_type(self) -> str | None:
        """``model_type`` from the ``config.json`` beside the weights; None when there is none."""
        kind = self.config().get("model_type")
        return kind if isinstance(kind, str) else None

    def tied_embeddings(self) -> frozenset[str]:
        """The stored token embeddings that are also the model's output projection (tied word embeddings, which
        ``save_pretrained`` stores once, under the embedding's name); empty when the checkpoint is not tied.

        Tied when the weights hold a token embedding but no output projection (``lm_head``, ``embed_out``, a
        masked-LM decoder, ``W_U``), and ``config.json`` names a class with an LM head (``…ForCausalLM``,
        ``…ForMaskedLM``, ``…ForConditionalGeneration``, ``…LMHeadModel``) without ``tie_word_embeddings: false``.
        A config without the key (one saved by transformers 4, which left out values equal to the defaults) gets
        the default of its ``model_type``'s own config class, as transformers would load it (Llama's false,
        GPT-2's true); where that class cannot be built, true, the only reading in which the LM head has weights.
        With no config there is no claim: the names cannot tell a causal LM that ties from a headless encoder
        (``BertModel``) or bare base model (``LlamaModel``), which store the same embedding and no head.
        Reads only ``config.json`` and tensor names; computed once.
        """
        if self._tied is None:
            names = [info.name for info in self.tensors() if info.is_matrix]
            embeds = [name for name in names if _TOKEN_EMBED.search(name)]
            shared = [name for name in embeds if name == "shared.weight" or name.endswith(".shared.weight")]
            tied = bool(embeds) and not any(_UNEMBED.search(name) for name in names) and self._ties_by_config()
            self._tied = frozenset(shared or embeds) if tied else frozenset()
        return self._tied

    def _ties_by_config(self) -> bool:
        """Whether ``config.json`` names a class with an LM head and leaves its word embeddings tied."""
        config = self.config()
        classes = config.get("architectures")
        if not isinstance(classes, list) or not any(isinstance(c, str) and _LM_HEAD_CLASS.search(c) for c in classes):
            return False
        setting = config.get("tie_word_embeddings")
        return setting if isinstance(setting, bool) else _tie_default(self.model_type())

    def _listed(self, file: Path) -> Path:
        if not file.exists():
            raise AtlasError(f"{file}: listed by {self.path} but missing")
        return file

    def __getstate__(self) -> dict:
        """Pickle (to a Ray worker) without the opened files: they reopen there, lazily."""
        return {**self.__dict__, "_sources": None, "_views": None}

    def tensors(self) -> list[TensorInfo]:
        """Every tensor's name, shape and dtype, in file order (headers only)."""
        return [src.infos[name] for name, src in self._index().items()]

    def tensors_by_name(self) -> dict[str, TensorInfo]:
        """Every tensor's info keyed by name, and every matrix cut from a 3-D tensor (headers only)."""
        return {name: src.infos[name] for name, src in self._index().items()} | self._cut()

    def _cut(self) -> dict[str, TensorInfo]:
        """The matrices ``views`` cuts from this checkpoint's 3-D tensors, by name."""
        if self._views is None:
            self._views = {info.name: info for info in expanded(self.tensors()) if info.view is not None}
        return self._views

    def load(self, name: str) -> torch.Tensor:
        """One tensor as stored (CPU, stored dtype), or a matrix cut from a 3-D one (only its expert or head read)."""
        sources = self._index()
        if name in sources:
            return sources[name].load(name)
        info = self._cut().get(name)
        if info is None:
            raise AtlasError(f"{self.path}: no tensor named {name!r}")
        view = info.view
        return view.cut(sources[view.source].load(view.source, view.index), info.shape)

    def stream(self, names: Sequence[str], ahead_bytes: int = 256 << 20) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` in order while a background thread reads the next ones.

        The reader runs ahead only while the tensors alive (the one in use and those read ahead) fit in
        ``ahead_bytes``; a tensor larger than that is read only once the previous one is released.
        """
        infos = self.tensors_by_name()
        sizes = {n: infos[n].nbytes for n in names if n in infos}
        items = ((n, sizes.get(n, 0), lambda n=n: self.load(n)) for n in names)
        yield from _prefetch(items, ahead_bytes)

    def identity(self) -> str:
        """A path-independent content fingerprint: sizes, headers and sampled bytes of every weight file."""
        digest = hashlib.sha256()
        for file in sorted(self.files, key=lambda p: p.name):
            digest.update(file.name.encode())
            digest.update(_sample_hash(self._listed(file)))
        return digest.hexdigest()[:24]


def _tie_default(model_type: str | None) -> bool:
    """``tie_word_embeddings`` of a fresh config of ``model_type``, built by transformers' own config class
    (offline: no download); false for a class without the setting, as transformers reads it; true where no
    class can be built (no model type, one transformers does not know, or no transformers)."""
    try:
        from transformers import AutoConfig

        return bool(getattr(AutoConfig.for_model(model_type), "tie_word_embeddings", False))
    except Exception as err:  # noqa: BLE001 (ImportError, an unknown model type, a class that will not build)
        _log.debug("no config class for model type %r: %s", model_type, err)
        return True


def _sample_hash(path: Path) -> bytes:
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        digest = hashlib.sha256(str(size).encode())
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


def _file_sets(folder: Path) -> list[tuple[Path, ...]]:
    """The weight files of a folder's checkpoints, in the precedence HF uses; empty when there are none.

    An index's shards, or one standard file (``model.safetensors`` …), make one checkpoint. Otherwise
    each loose weight file is a checkpoint of its own: files without an index saying they belong
    together are as likely separate models as parts of one, and merging two models would mix them.
    """
    for index in (folder / name for name in _INDEXES):
        if index.exists():
            return [_shards(index)]
    for single in (folder / name for name in _SINGLES):
        if single.exists():
            return [(single,)]
    files = [p for p in _listing(folder) if p.is_file()]
    loose = [p for p in files if p.suffix in SAFETENSORS] or [p for p in files if p.suffix in PICKLES]
    return [(p,) for p in loose]


def _shards(index: Path) -> tuple[Path, ...]:
    """The files a shard index lists, in first-listed order."""
    data = read_json(index, "not a valid shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise AtlasError(f"{index}: not a valid shard index (no \"weight_map\" object of tensor names to files)")
    return tuple(dict.fromkeys(_shard_path(index, shard) for shard in weight_map.values()))


def _shard_path(index: Path, shard: object) -> Path:
    """A shard the index names: a relative path inside the index's folder (not absolute, no ``..``).

    Checked on the name, not the resolved path: HF's cache links each shard to a blob outside the folder.
    """
    relative = PurePosixPath(shard) if isinstance(shard, str) else None
    if relative is None or not shard or "\0" in shard or relative.is_absolute() or ".." in relative.parts:
        raise AtlasError(f"{index}: not a valid shard index (weight_map names {brief(shard)}, not a file "
                         "inside the index's folder)")
    return index.parent / relative


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise _unreadable(folder, err) from err


def _as_step(value: object, what: str) -> int:
    """A step as stored (int64): a non-negative integer below 2**63, else an AtlasError naming ``what``."""
    if type(value) is not int or not 0 <= value <= _MAX_STEP:
        raise AtlasError(f"{what} {brief(value)} is not a step (a non-negative integer below 2**63)")
    return value


def _trainer_step(folder: Path) -> int | None:
    """``global_step`` from the folder's ``trainer_state.json``; None when there is no such file."""
    state = folder / "trainer_state.json"
    if not state.exists():
        return None
    data = read_json(state, "not a readable trainer state")
    if not isinstance(data, dict):
        raise AtlasError(f"{state}: not a readable trainer state (not a JSON object)")
    if "global_step" not in data:  # e.g. a run's final model folder: not a step of the run
        return None
    return _as_step(data["global_step"], f"{state}: global_step")


def _step_of(path: Path) -> int | None:
    """The step in the name, else ``trainer_state.json``'s; None when neither gives one.

    A step that cannot be read (a malformed trainer state, a number past int64) is None with a warning
    naming the file: the checkpoint stays where it is, without a step, rather than failing or vanishing.
    """
    match = _STEP_NAME.search(path.stem if path.is_file() else path.name)
    try:
        if match:
            return _as_step(int(match.group(1)), f"{path}: step")
        return _trainer_step(path) if path.is_dir() else None
    except AtlasError as err:
        _log.warning("subspace-atlas: warning: %s; %s is read without a step", err, path.name)
        return None


def _claims_step(folder: Path) -> bool:
    """Whether a folder says it is a run's checkpoint: a step in its name, or a ``trainer_state.json`` with a
    ``global_step`` (or one too broken to tell: kept without a step, with a warning, never dropped)."""
    state = folder / "trainer_state.json"
    if _STEP_NAME.search(folder.name) or not state.exists():
        return bool(_STEP_NAME.search(folder.name))
    try:
        data = read_json(state, "not a readable trainer state")
    except AtlasError:
        return True
    return not isinstance(data, dict) or "global_step" in data


def _children(folder: Path) -> list[tuple[Path, int | None, list[tuple[Path, ...]]]]:
    """A run folder's checkpoints as ``(path, step, weight file sets)`` in step order (unknown steps last):
    folders that claim a step and hold weights, and step-named weight files."""
    kids = []
    for child in _listing(folder):
        if child.name.startswith("."):
            continue
        if child.is_dir() and _claims_step(child):
            sets = _file_sets(child)
            if sets:
                kids.append((child, sets))
        elif child.is_file() and child.suffix in SAFETENSORS + PICKLES and _STEP_NAME.search(child.stem):
            kids.append((child, [(child,)]))
    stepped = [(kid, _step_of(kid), sets) for kid, sets in kids]
    return sorted(stepped, key=lambda kid: (kid[1] is None, kid[1] or 0, kid[0].name))


def _in_folder(folder: Path, sets: list[tuple[Path, ...]], name: str, prefix: str, step: int | None,
               run: str | None) -> list[Checkpoint]:
    """One set of files is the checkpoint ``name`` at ``folder``; several (loose files) are one checkpoint
    each, ``prefix/stem`` at the file."""
    if len(sets) == 1:
        return [Checkpoint(name=name, path=folder, files=sets[0], step=step, run=run)]
    return [Checkpoint(name=f"{prefix}/{files[0].stem}", path=files[0], files=files, step=step, run=run)
            for files in sets]


def _require_utf8(text: str) -> None:
    """Refuse a name or path that is not valid UTF-8 (a non-UTF-8 file name, a ``\\ud800`` escape in an
    index): it could not be stored, printed or even opened as named."""
    if not is_utf8(text):
        shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
        raise AtlasError(f"{shown}: not valid UTF-8; rename it (checkpoint names and paths are stored as UTF-8 text)")


def _existing(path: str | Path) -> Path:
    """The absolute path of a file or folder that exists; anything else is an AtlasError naming it."""
    _require_utf8(str(path))
    try:
        path = Path(path).expanduser()
        if not path.exists():
            raise AtlasError(f"{path}: no such file or folder")
        return path.resolve()
    except (OSError, ValueError) as err:  # a name too long, a NUL byte
        raise AtlasError(f"{brief(str(path), 200)}: cannot be opened ({err})") from err


def open_checkpoints(path: str | Path, name: str | None = None) -> list[Checkpoint]:
    """Expand a path into checkpoints: a file or folder is one; a run folder is its children in step order.

    ``name`` replaces the checkpoint's display name (the file stem or folder name), or a run's name. A
    folder of several loose weight files (no index) is one checkpoint per file, ``folder/stem``.
    """
    path = _existing(path)
    if path.is_file():
        if path.suffix not in SAFETENSORS + PICKLES:
            raise AtlasError(f"{path}: unknown checkpoint format (expected {', '.join(SAFETENSORS + PICKLES)})")
        return [Checkpoint(name=name or path.stem, path=path, files=(path,), step=_step_of(path))]
    if not path.is_dir():
        raise AtlasError(f"{path}: not a checkpoint (a device, FIFO or socket, not a regular file or folder)")
    children = _children(path)
    kids = {kid for kid, _, _ in children}
    own = [files for files in _file_sets(path) if files[0] not in kids]  # step-named files are children
    if not own and not children:
        raise AtlasError(
            f"{path}: no checkpoint found (looked for *.safetensors, shard indexes, pytorch_model.bin, "
            f"*.pt/*.pth, and checkpoint-N / stepN subfolders)"
        )
    run = (name or path.name) if children else None
    found = []
    for kid, step, sets in children:
        label = f"{run}/{kid.stem if kid.is_file() else kid.name}"
        found += _in_folder(kid, sets, label, label, step, run)
    if own:
        found += _in_folder(path, own, f"{run}/final" if run else (name or path.name), run or name or path.name,
                            _step_of(path), run)
    return found


def open_one(path: str | Path, name: str | None = None, flag: str = "") -> Checkpoint:
    """Exactly one checkpoint (a base, a run's start, a model to probe); a run folder is an error naming ``flag``."""
    found = open_checkpoints(path, name)
    if len(found) != 1:
        raise AtlasError(f"{flag + ' ' if flag else ''}{path}: holds {len(found)} checkpoints (a run folder, or "
                         "weight files without an index); give one checkpoint")
    return found[0]
