"""The Parquet result store: one file per job and table, written atomically, skipped when present.

Layout under ``root``::

    <analysis>/<table>/part-<fingerprint>.parquet   the job's rows of that table
    <analysis>/_jobs/<fingerprint>.json             the job's provenance; written last

A job counts as stored only once its manifest exists, and readers only read parts whose manifest
exists, so a job killed at any point leaves nothing visible: every file goes to a hidden temporary
name first and is renamed into place. Provenance (params, inputs, versions, device, wall time) is in
each manifest and in every Parquet file's schema metadata under the key ``subspace_atlas``.

This module imports no torch: the dashboard reads stores with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from subspace_atlas.errors import AtlasError

META_KEY = b"subspace_atlas"
JOBS = "_jobs"


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


class Store:
    """A folder of Parquet tables; ``Store(root).table("spectra", "matrices")`` is a DataFrame."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def _manifest(self, analysis: str, fp: str) -> Path:
        return self.root / analysis / JOBS / f"{fp}.json"

    def has(self, analysis: str, fp: str) -> bool:
        """Whether the job with this fingerprint is fully stored."""
        return self._manifest(analysis, fp).is_file()

    def write(self, analysis: str, fp: str, tables: dict[str, pd.DataFrame], provenance: dict) -> None:
        """Store one job's tables, then its manifest; each file appears whole or not at all."""
        meta = json.dumps({**provenance, "fingerprint": fp, "analysis": analysis}, default=str)
        for name, frame in tables.items():
            table = pa.Table.from_pandas(frame, preserve_index=False)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: meta.encode()})
            atomic_write(self.root / analysis / name / f"part-{fp}.parquet",
                    lambda tmp, table=table: pq.write_table(table, tmp, compression="zstd"))
        manifest = json.loads(meta) | {"tables": {k: len(v) for k, v in tables.items()}}
        atomic_write(self._manifest(analysis, fp),
                lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1, default=str)))

    def delete(self, analysis: str, fp: str) -> None:
        """Remove one job: its manifest first (the job vanishes at once), then its parts."""
        self._manifest(analysis, fp).unlink(missing_ok=True)
        for part in (self.root / analysis).glob(f"*/part-{fp}.parquet"):
            part.unlink()

    def analyses(self) -> list[str]:
        """Analyses with at least one stored job."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{JOBS}") if any(p.glob("*.json")))

    def jobs(self, analysis: str | None = None) -> pd.DataFrame:
        """One row per stored job: its manifest (analysis, fingerprint, inputs, device, wall time, …)."""
        names = [analysis] if analysis else self.analyses()
        rows = [json.loads(p.read_text()) for a in names for p in sorted((self.root / a / JOBS).glob("*.json"))]
        return pd.DataFrame(rows)

    def parts(self, analysis: str, table: str) -> list[Path]:
        """The Parquet files of one table that belong to fully stored jobs."""
        folder = self.root / analysis / table
        done = {p.stem for p in (self.root / analysis / JOBS).glob("*.json")}
        return sorted(p for p in folder.glob("part-*.parquet") if p.stem.removeprefix("part-") in done)

    def table(self, analysis: str, table: str, where: dict[str, object] | None = None) -> pd.DataFrame:
        """All stored rows of one table, concatenated; ``where`` keeps rows whose columns equal its values.

        Filtering happens while reading (row groups and rows that do not match are never converted),
        so a dashboard can read one matrix's rows out of a large table cheaply.
        """
        parts = self.parts(analysis, table)
        if not parts:
            raise AtlasError(f"{self.root}: no {analysis}/{table} results stored")
        filters = [(column, "==", value) for column, value in (where or {}).items()] or None
        frames = [pq.read_table(p, filters=filters).to_pandas() for p in parts]
        kept = [f for f in frames if len(f)] or frames[:1]
        return pd.concat(kept, ignore_index=True) if len(kept) > 1 else kept[0]

    def version(self) -> tuple:
        """Changes whenever a job is added or rewritten: a cache key for readers."""
        if not self.root.is_dir():
            return ()
        return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in self.root.glob(f"*/{JOBS}/*.json")))


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
