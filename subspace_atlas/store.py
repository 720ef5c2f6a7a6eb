"""The Parquet result store: one file per job and table, written atomically, skipped when present.

Layout under ``root``, a local folder or an fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``)::

    <analysis>/<table>/part-<fingerprint>.parquet   the job's rows of that table
    <analysis>/_jobs/<fingerprint>.json             the job's provenance; written last

A job counts as stored only once its manifest exists, and readers only read parts whose manifest
exists, so a job killed at any point leaves nothing visible. Every file appears whole or not at
all: on a local disk it is written to a hidden temporary name and renamed; on an object store it is
one PUT, which the store publishes only once complete. Provenance (params, inputs, versions, device,
wall time) is in each manifest and in every Parquet file's schema metadata under ``subspace_atlas``.

Object stores take their credentials and endpoint the usual way (``AWS_*`` variables, ``~/.aws``,
``GOOGLE_APPLICATION_CREDENTIALS``; an S3-compatible server through ``AWS_ENDPOINT_URL`` or
``FSSPEC_S3_ENDPOINT_URL``). This module imports no torch: the dashboard reads stores with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import posixpath
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from subspace_atlas.errors import AtlasError

META_KEY = b"subspace_atlas"
JOBS = "_jobs"
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
            self.fs, self._base = LocalFileSystem(), self.root
        self.local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def _path(self, *parts: str) -> str:
        return posixpath.join(self._base, *parts)

    def _manifest(self, analysis: str, fp: str) -> str:
        return self._path(_valid(analysis), JOBS, f"{_valid(fp)}.json")

    def _fresh(self) -> None:
        """Forget cached listings: another process may have written since (object stores cache them)."""
        if not self.local:
            self.fs.invalidate_cache()

    def ensure_writable(self) -> None:
        """Fail with one line when the store's root exists but is not a folder."""
        if self.local and os.path.exists(self.root) and not os.path.isdir(self.root):
            raise AtlasError(f"--store {self.root}: exists and is not a folder")

    def has(self, analysis: str, fp: str) -> bool:
        """Whether the job with this fingerprint is fully stored."""
        self._fresh()
        return self.fs.isfile(self._manifest(analysis, fp))

    def write(self, analysis: str, fp: str, tables: dict[str, pd.DataFrame], provenance: dict) -> None:
        """Store one job's tables, then its manifest; each file appears whole or not at all."""
        meta = json.dumps({**provenance, "fingerprint": fp, "analysis": analysis}, default=str)
        for name, frame in tables.items():
            table = pa.Table.from_pandas(frame, preserve_index=False)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: meta.encode()})
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            self._put(self._path(_valid(analysis), _valid(name), f"part-{_valid(fp)}.parquet"), buffer.getvalue())
        manifest = json.loads(meta) | {"tables": {k: len(v) for k, v in tables.items()}}
        self._put(self._manifest(analysis, fp), json.dumps(manifest, indent=1, default=str).encode())

    def _put(self, path: str, data: bytes) -> None:
        if self.local:
            atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
        else:  # one PUT: an object store shows the object only once it is complete
            self.fs.pipe_file(path, data)

    def delete(self, analysis: str, fp: str) -> None:
        """Remove one job: its manifest first (the job vanishes at once), then its parts."""
        self._fresh()
        manifest = self._manifest(analysis, fp)
        if self.fs.exists(manifest):
            self.fs.rm(manifest)
        for part in self.fs.glob(self._path(_valid(analysis), "*", f"part-{_valid(fp)}.parquet")):
            self.fs.rm(part)

    def _manifests(self, analysis: str = "*") -> dict[str, dict]:
        """Every job manifest (of one analysis or all) with its file info, by path."""
        self._fresh()
        pattern = self._path(analysis if analysis == "*" else _valid(analysis), JOBS, "*.json")
        return dict(sorted(self.fs.glob(pattern, detail=True).items()))

    def analyses(self) -> list[str]:
        """Analyses with at least one stored job."""
        return sorted({posixpath.basename(posixpath.dirname(posixpath.dirname(p))) for p in self._manifests()})

    def jobs(self, analysis: str | None = None) -> pd.DataFrame:
        """One row per stored job: its manifest (analysis, fingerprint, inputs, device, wall time, …)."""
        paths = list(self._manifests(analysis or "*"))
        blobs = self.fs.cat(paths) if paths else {}
        return pd.DataFrame([json.loads(blobs[p]) for p in paths])

    def parts(self, analysis: str, table: str) -> list[str]:
        """The Parquet files of one table that belong to fully stored jobs (paths within the store's filesystem)."""
        done = {posixpath.basename(p).removesuffix(".json") for p in self._manifests(analysis)}
        found = self.fs.glob(self._path(_valid(analysis), _valid(table), "part-*.parquet"))
        return sorted(p for p in found if posixpath.basename(p)[len("part-"):-len(".parquet")] in done)

    def table(self, analysis: str, table: str, where: dict[str, object] | None = None) -> pd.DataFrame:
        """All stored rows of one table, concatenated; ``where`` keeps rows whose columns equal its values.

        Filtering happens while reading (row groups and rows that do not match are never converted),
        so a dashboard can read one matrix's rows out of a large table cheaply.
        """
        found = self.table_if_stored(analysis, table, where)
        if found is None:
            raise AtlasError(f"{self.root}: no {analysis}/{table} results stored")
        return found

    def table_if_stored(self, analysis: str, table: str,
                        where: dict[str, object] | None = None) -> pd.DataFrame | None:
        """``table``, or None when no stored job wrote that table (one listing either way)."""
        parts = self.parts(analysis, table)
        if not parts:
            return None
        filters = [(column, "==", value) for column, value in (where or {}).items()] or None
        filesystem = None if self.local else self.fs

        def read(path: str) -> pd.DataFrame:
            return pq.read_table(path, filters=filters, filesystem=filesystem).to_pandas()

        if self.local:
            frames = [read(p) for p in parts]
        else:  # an object store answers slowly but in parallel
            with ThreadPoolExecutor(max_workers=16) as pool:
                frames = list(pool.map(read, parts))
        kept = [f for f in frames if len(f)] or frames[:1]
        return pd.concat(kept, ignore_index=True) if len(kept) > 1 else kept[0]

    def version(self) -> tuple:
        """Changes whenever a job is added or rewritten: a cache key for readers."""
        stamp = ("mtime", "ETag", "etag", "md5Hash", "LastModified", "updated", "created")
        return tuple((path, info.get("size"), str(next((info[k] for k in stamp if info.get(k)), "")))
                     for path, info in self._manifests().items())


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
        tmp.unlink(missing_ok=True)
