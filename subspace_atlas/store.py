"""The Parquet result store: one job's tables become visible together, atomically; nothing half-written is read.

Layout under ``root``, a local folder or an fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``)::

    <analysis>/_jobs/<fingerprint>.json               the job's manifest: provenance, and the file of each table
    <analysis>/<table>/part-<fingerprint>-<w>.parquet one write of the job's rows of that table (w: a fresh token)
    <analysis>/<table>/compact-<id>.parquet           many jobs' rows, tagged by a ``_job`` column (``compact``)

The manifest is the truth: a job counts as stored once its manifest exists, and a reader reads exactly the
files its manifest names (stores written before manifests named their files use ``part-<fingerprint>.parquet``).
Every file appears whole or not at all: on a local disk it is written to a hidden temporary name and
renamed; on an object store it is one PUT. A rewrite (``--force``) writes new files under a new token and
then swaps the manifest, so a kill at any point leaves the old job or the new one, never a mix; files no
manifest names are removed afterwards. Each manifest also records, per table, the columns that hold one
value in all of the job's rows (``constants``), which lets a reader skip jobs a filter excludes without
opening them. A table's rows are stored sorted by ``tensor`` (stable), after any boolean columns an analysis
names to store first (``Analysis.first``), in row groups of at most ``ROW_GROUP_ROWS`` rows and
``ROW_GROUP_BYTES``, so a read of one matrix decodes one group. Reading is in ``subspace_atlas.query``; merging small parts in ``subspace_atlas.compaction``.

Object stores take their credentials and endpoint the usual way (``AWS_*`` variables, ``~/.aws``,
``GOOGLE_APPLICATION_CREDENTIALS``; an S3-compatible server through ``AWS_ENDPOINT_URL`` or
``FSSPEC_S3_ENDPOINT_URL``). This module imports no torch: the dashboard reads stores with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import posixpath
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from subspace_atlas.errors import AtlasError, first_line

META_KEY = b"subspace_atlas"
JOBS = "_jobs"
CLAIMS = "_claims"  # <analysis>/_claims/<fingerprint>.claim: the job is being computed by a live process
CLAIM_TTL_S = 24 * 3600  # a claim from another host older than this is taken over
ROW_GROUP_BYTES = 16 << 20  # a row group's decoded size at most …
ROW_GROUP_ROWS = 1 << 14  # … and its rows: four 4096-σ spectra, so one matrix's read of a 7B part decodes 1/57 of it
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def fingerprint(analysis: str, params: object, inputs: dict, schema_version: int) -> str:
    """A stable hash of what determines a job's result: analysis, params, input identities, schema."""
    payload = {
        "analysis": analysis,
        "params": dataclasses.asdict(params) if dataclasses.is_dataclass(params) else params,
        "inputs": inputs,
        "schema_version": schema_version,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def is_url(root: str | os.PathLike) -> bool:
    """Whether ``root`` names a store through an fsspec protocol (``s3://…``) rather than a local path."""
    return bool(_PROTOCOL.match(str(root))) and not str(root).startswith("file://")


@dataclass(frozen=True)
class Manifest:
    """One stored job: its manifest's content and where its tables' rows are."""

    analysis: str
    fingerprint: str
    content: dict

    def file(self, table: str) -> str | None:
        """The file (a name inside ``<analysis>/<table>/``) holding this job's rows of ``table``; None if it has none."""
        files = self.content.get("files")
        if files is not None:
            return files.get(table)
        return f"part-{self.fingerprint}.parquet" if table in self.content.get("tables", {}) else None

    def constants(self, table: str) -> dict:
        """Columns of ``table`` that hold one value in every row of this job (empty when not recorded)."""
        return self.content.get("constants", {}).get(table, {})


class Store:
    """Parquet tables under a folder or URL; ``Store(root).table("spectra", "matrices")`` is a DataFrame."""

    def __init__(self, root: str | os.PathLike):
        if is_url(root):
            self.root = str(root).rstrip("/")
            try:
                self.fs, self._base = fsspec.core.url_to_fs(self.root)
            except (ImportError, ValueError) as err:
                raise AtlasError(f"store {self.root}: {err}") from err
        else:
            self.root = str(Path(str(root).removeprefix("file://")).expanduser())
            # absolute, as the filesystem's listings are: a relative root once made every file look unnamed
            self.fs, self._base = LocalFileSystem(), os.path.abspath(self.root)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.unreadable: dict[str, str] = {}  # files found broken while reading: path → why

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def _path(self, *parts: str) -> str:
        return posixpath.join(self._base, *parts)

    def relative(self, path: str) -> str:
        """A path within the store's filesystem, relative to the store (for messages that name no server path)."""
        return posixpath.relpath(path, self._base) if path.startswith(self._base) else posixpath.basename(path)

    def explain(self, err: BaseException) -> str:
        """An error's first line, with paths shown relative to the store (a visitor never sees server paths)."""
        return first_line(err).replace(self._base.rstrip("/") + "/", "")

    def table_path(self, analysis: str, table: str, file: str) -> str:
        """A table file's path within the store's filesystem."""
        return self._path(_valid(analysis), _valid(table), _valid(file))

    def _manifest(self, analysis: str, fp: str) -> str:
        return self._path(_valid(analysis), JOBS, f"{_valid(fp)}.json")

    def _fresh(self) -> None:
        """Forget cached listings: another process may have written since (object stores cache them)."""
        if not self.local:
            self.fs.invalidate_cache()

    def ensure_writable(self) -> None:
        """Fail with one line, before any compute, when results could not be written: the root is a file, a
        folder that cannot be created or written (read-only, full), or an object store that does not answer."""
        if self.local and os.path.exists(self.root) and not os.path.isdir(self.root):
            raise AtlasError(f"--store {self.root}: exists and is not a folder")
        probe = self._path(f".write-probe-{uuid.uuid4().hex[:8]}")
        created = _missing_folders(self.root) if self.local else []
        try:
            for folder in created:
                os.mkdir(folder)
            self.put(probe, b"\0" * 4096)
            self.fs.rm(probe)
        except Exception as err:  # noqa: BLE001 (any failure here means no result could be stored)
            raise AtlasError(f"--store {self.root}: not writable ({first_line(err)})") from err
        finally:  # the store stays as it was until a job is written (a bad input must not leave a folder)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)

    @contextlib.contextmanager
    def claim(self, analysis: str, fp: str) -> Iterator[str | None]:
        """Claim one job for this process while it computes it: yields None when claimed (and releases it
        after), or who holds it (``host pid N``) when another live process does, so concurrent writers split
        the work instead of each computing every job. A claim whose process is gone (same host) or older than
        ``CLAIM_TTL_S`` (another host) is taken over. Exclusive on a local or shared POSIX folder; on an
        object store a claim is a best-effort marker (last writer wins), as object stores have no create-if-absent.
        """
        path = self._path(_valid(analysis), CLAIMS, f"{_valid(fp)}.claim")
        mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}).encode()
        made = _missing_folders(posixpath.dirname(path)) if self.local else []
        holder = self._take(path, mine)
        try:
            yield holder
        finally:
            if holder is None:
                with contextlib.suppress(OSError):
                    self.fs.rm(path)
            for folder in reversed(made):  # folders the claim made, once empty: a failed job leaves no trace
                with contextlib.suppress(OSError):
                    os.rmdir(folder)

    def _take(self, path: str, mine: bytes) -> str | None:
        for _ in range(2):  # a stale claim is removed, then taken once more
            try:
                if self.local:
                    os.makedirs(posixpath.dirname(path), exist_ok=True)
                    with open(path, "xb") as fh:
                        fh.write(mine)
                    return None
                if not self.fs.exists(path):
                    self.fs.pipe_file(path, mine)
                    return None
            except FileExistsError:
                pass
            try:
                held = json.loads(self.fs.cat_file(path))
            except (OSError, ValueError):  # vanished or half-written: look again
                continue
            if _alive(held):
                return f"{held.get('host')} pid {held.get('pid')}"
            with contextlib.suppress(OSError):
                self.fs.rm(path)
        return None

    def exists(self) -> bool:
        """Whether there is anything at the store's root (a mistyped path is not a store)."""
        self._fresh()
        return self.fs.exists(self._base)

    def has(self, analysis: str, fp: str) -> bool:
        """Whether the job with this fingerprint is fully stored (a manifest that does not read counts as absent,
        so a rerun computes the job again)."""
        return self.manifest(analysis, fp) is not None

    def write(self, analysis: str, fp: str, tables: dict[str, pd.DataFrame], provenance: dict,
              first: Mapping[str, Sequence[str]] | None = None) -> None:
        """Store one job's tables under fresh names, then its manifest naming them; then drop what it replaced.

        Rows are stored sorted by ``tensor`` (stable), after ``first[table]``: boolean columns whose true rows go
        ahead of the rest, so a read filtered on them skips the row groups that hold none (a run's overlap
        pairs: the previous/first/last pairs a page draws are 10 % of the 1.6 M rows of 50 checkpoints)."""
        meta = json.dumps({**provenance, "fingerprint": fp, "analysis": analysis}, default=str)
        token = uuid.uuid4().hex[:8]
        files, constants = {}, {}
        for name, frame in tables.items():
            frame = _stored_order(frame, tuple((first or {}).get(name, ())))
            table = pa.Table.from_pandas(frame, preserve_index=False)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: meta.encode()})
            files[name] = f"part-{_valid(fp)}-{token}.parquet"
            self.put(self.table_path(analysis, name, files[name]), parquet_bytes(table))
            constants[name] = constant_columns(frame)
        old = self.manifest(analysis, fp)
        manifest = json.loads(meta) | {"tables": {k: len(v) for k, v in tables.items()}, "files": files,
                                       "constants": constants}
        self.put_manifest(analysis, fp, manifest)
        if old is not None:
            self.remove_unnamed(analysis, {t: old.file(t) for t in old.content.get("tables", {})}, keep=files)

    def put(self, path: str, data: bytes) -> None:
        """Write one file whole or not at all."""
        if self.local:
            atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
        else:  # one PUT: an object store shows the object only once it is complete
            self.fs.pipe_file(path, data)

    def write_through(self, path: str, write: Callable[[str], None]) -> None:
        """Write one file by ``write(where)`` (a path on this store's filesystem), whole or not at all."""
        if self.local:
            atomic_write(Path(path), write)
        else:  # an upload is published only once it completes
            write(path)

    def files(self, analysis: str) -> dict[str, dict]:
        """Every file under ``<analysis>/`` (hidden temporaries too), with its info (size, mtime …)."""
        self._fresh()
        found = self.fs.find(self._path(_valid(analysis)), detail=True)
        return {path: info for path, info in found.items() if info.get("type") == "file"}

    def put_manifest(self, analysis: str, fp: str, content: dict) -> None:
        """Write a job's manifest (the moment the job, or its new files, become visible)."""
        self.put(self._manifest(analysis, fp), json.dumps(content, indent=1, default=str).encode())

    def remove_unnamed(self, analysis: str, files: dict[str, str | None], keep: dict[str, str]) -> None:
        """Remove per-job part files a manifest no longer names (compacted files are shared: they stay)."""
        for table, file in files.items():
            if file and file.startswith("part-") and keep.get(table) != file:
                path = self.table_path(analysis, table, file)
                if self.fs.exists(path):
                    self.fs.rm(path)

    def delete(self, analysis: str, fp: str) -> None:
        """Remove one job: its manifest first (the job vanishes at once), then its own part files."""
        old = self.manifest(analysis, fp)
        if old is None:
            return
        self.fs.rm(self._manifest(analysis, fp))
        self.remove_unnamed(analysis, {t: old.file(t) for t in old.content.get("tables", {})}, keep={})

    def manifest(self, analysis: str, fp: str) -> Manifest | None:
        """One job's manifest, or None when the job is not stored."""
        self._fresh()
        path = self._manifest(analysis, fp)
        try:
            return Manifest(analysis, fp, _manifest_content(self.fs.cat_file(path)))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except ValueError as err:  # unreadable: the job is not stored (a rerun writes it anew)
            self.unreadable[path] = self.explain(err)
            return None
        except Exception as err:  # noqa: BLE001 (an object store that does not answer: one line, not a traceback)
            raise self._unreachable(err) from err

    def _manifests(self, analysis: str = "*") -> dict[str, dict]:
        """Every job manifest (of one analysis or all) with its file info, by path."""
        self._fresh()
        pattern = self._path(analysis if analysis == "*" else _valid(analysis), JOBS, "*.json")
        try:
            listing = self.fs.glob(pattern, detail=True)
        except Exception as err:  # noqa: BLE001 (see ``manifest``)
            raise self._unreachable(err) from err
        return dict(sorted((p, i) for p, i in listing.items() if i.get("type") == "file"))

    def _unreachable(self, err: BaseException) -> AtlasError:
        return AtlasError(f"--store {self.root}: cannot be read ({first_line(err)})")

    def catalog(self, analysis: str = "*") -> list[Manifest]:
        """Every stored job's manifest (of one analysis or all), in fingerprint order, read in one batch."""
        paths = list(self._manifests(analysis))
        blobs = self.fs.cat(paths, on_error="return") if paths else {}
        found = []
        for path in paths:
            try:
                content = _manifest_content(blobs[path])
            except (OSError, ValueError) as err:  # truncated or corrupt: skipped, and named in ``unreadable``
                self.unreadable[path] = self.explain(err)
                continue
            found.append(Manifest(posixpath.basename(posixpath.dirname(posixpath.dirname(path))),
                                  posixpath.basename(path).removesuffix(".json"), content))
        return found

    def analyses(self) -> list[str]:
        """Analyses with at least one stored job."""
        return sorted({posixpath.basename(posixpath.dirname(posixpath.dirname(p))) for p in self._manifests()})

    def jobs(self, analysis: str | None = None) -> pd.DataFrame:
        """One row per stored job: its manifest (analysis, fingerprint, inputs, device, wall time, …)."""
        return pd.DataFrame([m.content for m in self.catalog(analysis or "*")])

    def parts(self, analysis: str, table: str) -> list[str]:
        """The Parquet files holding stored jobs' rows of one table (paths within the store's filesystem)."""
        return sorted({self.table_path(analysis, table, f) for m in self.catalog(analysis) if (f := m.file(table))})

    def table(self, analysis: str, table: str, where: dict[str, object] | None = None,
              columns: list[str] | None = None) -> pd.DataFrame:
        """Stored rows of one table across every job; ``where`` keeps rows whose columns equal its values
        (a list: any of them), ``columns`` reads only those. Raises when no stored job wrote the table."""
        found = self.table_if_stored(analysis, table, where, columns)
        if found is None:
            raise AtlasError(f"{self.root}: no {analysis}/{table} results stored")
        return found

    def table_if_stored(self, analysis: str, table: str, where: dict[str, object] | None = None,
                        columns: list[str] | None = None) -> pd.DataFrame | None:
        """``table``, or None when no stored job wrote that table. One scan over the files, filters pushed down."""
        from subspace_atlas import query

        found = query.scan(self, analysis, table, where=where, columns=columns)
        return None if found is None else found.to_pandas()

    def version(self) -> str:
        """Changes whenever a job is added, rewritten or compacted: a short cache key for readers."""
        stamp = ("mtime", "ETag", "etag", "md5Hash", "LastModified", "updated", "created")
        listing = [(path, info.get("size"), str(next((info[k] for k in stamp if info.get(k)), "")))
                   for path, info in self._manifests().items()]
        return hashlib.sha256(repr(listing).encode()).hexdigest()[:16] if listing else ""


def _manifest_content(blob: bytes | Exception) -> dict:
    """A manifest's JSON object; ValueError when it is not one (truncated, corrupt, not an object)."""
    if isinstance(blob, Exception):
        raise blob
    try:
        content = json.loads(blob)
    except RecursionError as err:
        raise ValueError("JSON nested too deeply") from err
    if not isinstance(content, dict) or not isinstance(content.get("tables", {}), dict):
        raise ValueError("not a job manifest")
    return content


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as zstd Parquet bytes, in row groups small enough that filters can skip most of a large part."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_rows(table), **parquet_options(table.schema))
    return buffer.getvalue()


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group: at most ``ROW_GROUP_ROWS`` and about ``ROW_GROUP_BYTES`` decoded, so that a filtered read
    of one matrix decodes a small group, not the whole part: a 7B checkpoint's ``values`` (925 k rows) in 88 k-row
    groups made one matrix over 50 checkpoints 0.46 s; a run's spectra (list columns, 32 KB a row) get ~500-row
    groups."""
    per_row = table.nbytes / max(table.num_rows, 1)
    return int(max(64, min(ROW_GROUP_ROWS, ROW_GROUP_BYTES // max(per_row, 1))))


def parquet_options(schema: pa.Schema) -> dict:
    """How the store encodes a table: zstd; dictionaries for names, integers and flags (few distinct values);
    floats byte-stream-split (their bytes compress apart): a third smaller ``values`` than the defaults, and
    faster to decode (measured in bench/RESULTS.md)."""
    flat = [f for f in schema if not pa.types.is_nested(f.type)]
    floats = [f.name for f in flat if pa.types.is_floating(f.type)]
    return {"compression": "zstd", "use_dictionary": [f.name for f in flat if f.name not in floats],
            "column_encoding": {name: "BYTE_STREAM_SPLIT" for name in floats}}


def _stored_order(frame: pd.DataFrame, first: tuple[str, ...]) -> pd.DataFrame:
    """``frame`` with its rows true in ``first``'s columns ahead (in that order), then one matrix's rows together."""
    flags = [c for c in first if c in frame]
    tensor = ["tensor"] if "tensor" in frame else []
    if not flags + tensor or len(frame) < 2:
        return frame
    return frame.sort_values(flags + tensor, ascending=[False] * len(flags) + [True] * len(tensor), kind="stable",
                             ignore_index=True)


def constant_columns(frame: pd.DataFrame) -> dict[str, object]:
    """The columns holding one non-null scalar in every row (strings, integers, booleans, finite floats), and
    those null in every row (as None: a filter for a value skips the job, one for null keeps it)."""
    found = {}
    for column in frame.columns:
        values = frame[column]
        if len(values) and values.isna().all():
            found[str(column)] = None
            continue
        if not len(values) or values.dtype == object and not isinstance(values.iloc[0], str):
            continue
        first = values.iloc[0]
        if isinstance(first, (str, bool, int, float, np.generic)) and not pd.isna(first):
            if (values == first).all():
                found[str(column)] = first.item() if isinstance(first, np.generic) else first
    return found


def _missing_folders(root: str) -> list[str]:
    """The folders that creating ``root`` would make, outermost first."""
    missing, folder = [], os.path.abspath(root)
    while not os.path.exists(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing[::-1]


def _alive(claim: dict) -> bool:
    """Whether the process that wrote a claim may still be computing."""
    if time.time() - float(claim.get("time", 0)) > CLAIM_TTL_S:
        return False
    if claim.get("host") != socket.gethostname():
        return True
    try:
        pid = int(claim.get("pid", 0))
        if pid <= 0:
            return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True
    return True


def _valid(name: str) -> str:
    """An analysis, table or job name, which can never lead outside the store (no '/', no '..')."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AtlasError(f"{name!r} is not a valid analysis, table or job name")
    return name


def atomic_write(target: Path, write) -> None:
    """Write through ``write(tmp_path)`` to a hidden temporary name beside ``target``, then rename.

    A reader sees the old file or the new one, never half of one (also used by the SVD cache).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):  # e.g. a read-only disk: the write's own error is the one to see
            tmp.unlink(missing_ok=True)
