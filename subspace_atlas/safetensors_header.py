"""A safetensors header, read and checked the way the ``safetensors`` library checks it, in plain Python.

Reading headers ourselves keeps listing a checkpoint free of torch and of memory maps, so every rule
the library applies is applied here too, and a file it refuses is refused here with one line that says
why: a header that fits the file and its 100 MB limit, UTF-8 JSON (no NaN, no lone surrogates), a
``__metadata__`` map of strings, known dtypes, shapes of non-negative integers, and ``data_offsets``
that tile the data section exactly (from byte 0, in order, without gaps or overlaps, each spanning dtype
size × elements, the last ending where the file ends). A shape whose byte size does not match its
offsets is refused before anything is allocated for it. A few files the library reads are refused too:
duplicate keys (which entry counts is ambiguous), dtypes torch cannot hold (F4, C64 …) and dims past int64.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from subspace_atlas.errors import AtlasError, brief, is_utf8

MAX_HEADER = 100_000_000  # the library's limit, in bytes
_USIZE = 1 << 64  # offsets, dims and byte counts are u64 in the library
_TORCH_DIM = (1 << 63) - 1  # torch sizes are int64
# safetensors dtype code → (torch dtype name, bytes per element).
DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "I64": ("int64", 8), "I32": ("int32", 4),
    "I16": ("int16", 2), "I8": ("int8", 1), "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2),
    "U8": ("uint8", 1), "BOOL": ("bool", 1),
}


@dataclass(frozen=True)
class Entry:
    """One tensor of the header: torch dtype name, shape, and its byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read(fh: BinaryIO, size: int, path: Path) -> tuple[int, dict[str, Entry]]:
    """``(where the data section starts, {name: entry} in header order)`` of the open file ``fh``."""
    raw = _header_bytes(fh, size, path)
    header = _parse(raw, path)
    entries = {name: _entry(name, value, path) for name, value in header.items() if name != "__metadata__"}
    _check_tiling(entries, 8 + len(raw), size, path)
    return 8 + len(raw), entries


def _refuse(path: Path, why: str) -> AtlasError:
    return AtlasError(f"{path}: not a readable safetensors file ({why})")


def _header_bytes(fh: BinaryIO, size: int, path: Path) -> bytes:
    """The header's bytes, after checking its declared length against the file and the library's limit."""
    head = fh.read(8)
    if len(head) != 8:
        raise _refuse(path, f"a {size}-byte file has no 8-byte header length")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER:
        raise _refuse(path, f"header length {length} is over the {MAX_HEADER}-byte limit")
    if length > size - 8:
        raise _refuse(path, f"header length {length} does not fit a {size}-byte file")
    raw = fh.read(length)
    if len(raw) != length:
        raise _refuse(path, "file shrank while reading its header")
    return raw


def _parse(raw: bytes, path: Path) -> dict:
    """The header as a dict: strict UTF-8 JSON, an object at the top, every string valid Unicode."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as err:
        raise _refuse(path, f"header is not UTF-8: {err.reason} at byte {err.start}") from err
    except RecursionError as err:
        raise _refuse(path, "header JSON is nested too deeply") from err
    except ValueError as err:
        raise _refuse(path, f"header is not valid JSON: {err}") from err
    if not isinstance(header, dict):
        raise _refuse(path, "header is not a JSON object")
    _check_metadata(header.get("__metadata__"), path)
    return header


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are unique and valid Unicode (lone surrogates are not)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {brief(key)} appears twice")
        if not is_utf8(key):
            raise ValueError(f"key {brief(key)} is not valid Unicode (a lone surrogate)")
        out[key] = value
    return out


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _check_metadata(metadata: object, path: Path) -> None:
    """``__metadata__`` is absent, null, or a map of strings to strings."""
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(isinstance(v, str) and is_utf8(v) for v in metadata.values()):
        raise _refuse(path, "__metadata__ is not a map of strings to strings")


def _entry(name: str, value: object, path: Path) -> Entry:
    """One tensor's header entry, checked: known dtype, shape of non-negative ints, two offsets in order."""
    def bad(why: str) -> AtlasError:
        return AtlasError(f"{path}: tensor {name!r} has a malformed header entry ({why})")

    if not isinstance(value, dict):
        raise bad("not a JSON object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise AtlasError(f"{path}: tensor {name!r} has dtype {brief(dtype)}, which is not supported here "
                         f"({', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_uint(d, _TORCH_DIM + 1) for d in shape):
        raise bad(f"shape {brief(shape)} is not a list of non-negative integers below 2**63")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o, _USIZE) for o in offsets):
        raise bad(f"data_offsets {brief(offsets)} is not two non-negative integers below 2**64")
    begin, end = offsets
    if end < begin:
        raise bad(f"data_offsets {offsets} end before they begin")
    torch_name, itemsize = DTYPES[dtype]
    needed = _byte_size(shape, itemsize)
    if needed is None:
        raise bad(f"shape {brief(shape)} of {dtype} is over 2**64 bytes")
    if end - begin != needed:
        raise AtlasError(f"{path}: tensor {name!r} spans {end - begin} bytes, its shape needs {needed}")
    return Entry(torch_name, tuple(shape), begin, end)


def _is_uint(value: object, limit: int) -> bool:
    return type(value) is int and 0 <= value < limit


def _byte_size(shape: list[int], itemsize: int) -> int | None:
    """Elements × itemsize, or None when a partial product overflows u64 (the library refuses that too)."""
    count = 1
    for dim in shape:
        count *= dim
        if count >= _USIZE:
            return None
    total = count * itemsize
    return total if total < _USIZE else None


def _check_tiling(entries: dict[str, Entry], data_start: int, size: int, path: Path) -> None:
    """The tensors' byte ranges, in offset order, cover the data section from 0 to the file's end exactly once."""
    at = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != at:
            how = "overlaps the tensor before it" if entry.begin < at else f"leaves a gap after data byte {at}"
            raise _refuse(path, f"tensor {name!r} at data bytes {entry.begin}-{entry.end} {how}")
        if data_start + entry.end > size:
            raise AtlasError(f"{path}: truncated: tensor {name!r} ends at byte {data_start + entry.end} "
                             f"of a {size}-byte file")
        at = entry.end
    if data_start + at != size:
        raise _refuse(path, f"{size - data_start - at} bytes after the last tensor are not covered by the header")
