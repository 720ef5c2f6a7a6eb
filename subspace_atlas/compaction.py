"""``subspace-atlas compact``: merge many small per-job part files into few, without a reader ever noticing.

A sweep of 1,000 jobs leaves 1,000 small files per table, and every scan pays for opening each. Compaction
streams a batch of jobs' parts, one at a time, into one ``compact-<id>.parquet`` per table (each row tagged
with its job's fingerprint in ``_job``), then points each job's manifest at the merged files, one atomic
manifest write per job, and only then removes the parts it replaced. At every instant each job's manifest
names files that exist and hold exactly its rows, so readers see the same tables before, during and after;
a kill at any point leaves a readable, complete store (at worst a merged file no manifest names yet, or parts
a manifest records as replaced, which the next ``compact`` removes). A job rewritten while compaction runs keeps its new files.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from subspace_atlas.query import JOB_COLUMN
from subspace_atlas.store import ROW_GROUP_BYTES, Manifest, Store, constant_columns, parquet_options, row_group_rows
from subspace_atlas.verify import remove_leftovers

SMALL_BYTES = 32 << 20  # parts at least this big are left as they are: merging them saves nothing
BATCH_BYTES = 256 << 20  # at most this much of parts goes into one merged file


@dataclass
class Outcome:
    jobs: int = 0  # jobs now read from merged files
    files_before: int = 0
    files_after: int = 0
    orphans_removed: int = 0  # files a killed compaction left behind


def compact(store: Store, small_bytes: int = SMALL_BYTES, batch_bytes: int = BATCH_BYTES,
            log: Callable[[str], None] = lambda s: None) -> Outcome:
    """Merge every analysis's small parts (see the module docstring); returns what changed."""
    outcome = Outcome()
    for analysis in store.analyses():
        manifests = store.catalog(analysis)
        outcome.files_before += len({(t, m.file(t)) for m in manifests for t in _tables(m)})
        outcome.orphans_removed += (remove_leftovers(store, analysis, manifests)
                                    + _remove_replaced(store, analysis, manifests))
        for batch in _batches(store, analysis, manifests, small_bytes, batch_bytes):
            outcome.jobs += _merge(store, analysis, batch)
            log(f"{analysis}: merged {len(batch)} job(s)")
        outcome.files_after += len({(t, m.file(t)) for m in store.catalog(analysis) for t in _tables(m)})
    return outcome


def _tables(manifest: Manifest) -> list[str]:
    return [t for t in manifest.content.get("tables", {}) if manifest.file(t)]


def _batches(store: Store, analysis: str, manifests: list[Manifest], small_bytes: int,
             batch_bytes: int) -> list[list[Manifest]]:
    """Jobs whose parts are all small, in fingerprint order, grouped up to ``batch_bytes`` of parts each."""
    sizes = {}
    for m in manifests:
        parts = [store.table_path(analysis, t, m.file(t)) for t in _tables(m)]
        if parts and all(p.rsplit("/", 1)[-1].startswith("part-") for p in parts):
            sizes[m.fingerprint] = sum(store.fs.size(p) for p in parts)
    batches, current, total = [], [], 0
    for m in manifests:
        size = sizes.get(m.fingerprint)
        if size is None or size >= small_bytes:
            continue
        if current and total + size > batch_bytes:
            batches.append(current)
            current, total = [], 0
        current.append(m)
        total += size
    if len(current) > 1 or batches:
        batches.append(current)
    return [b for b in batches if len(b) > 1]


def _merge(store: Store, analysis: str, batch: list[Manifest]) -> int:
    """Write the batch's merged files, repoint each job's manifest at them, then remove the replaced parts."""
    merged_id = f"compact-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    tables = sorted({t for m in batch for t in _tables(m)})
    constants: dict[str, dict[str, dict]] = {}
    for table in tables:
        members = [m for m in batch if m.file(table)]
        constants[table] = _write_merged(store, analysis, table, members, merged_id)
    replaced = []
    for m in batch:
        current = store.manifest(analysis, m.fingerprint)
        if current is None or current.content.get("files") != m.content.get("files") \
                or current.content.get("tables") != m.content.get("tables"):
            continue  # rewritten or deleted meanwhile: its own files stay the truth
        old = {t: m.file(t) for t in _tables(m)}
        new_files = {t: merged_id for t in old}
        content = dict(m.content) | {"files": new_files, "replaced": old}  # removed below, or by the next run
        recorded = content.get("constants") or {}
        content["constants"] = {t: recorded.get(t, constants[t].get(m.fingerprint, {})) for t in old}
        store.put_manifest(analysis, m.fingerprint, content)
        replaced.append((old, new_files))
    # Only once every manifest of the batch is repointed: a reader that listed before the swap and finds a part
    # gone lists again and sees the merged files alone.
    for old, new_files in replaced:
        store.remove_unnamed(analysis, old, keep=new_files)
    return len(replaced)


def _write_merged(store: Store, analysis: str, table: str, members: list[Manifest], name: str) -> dict[str, dict]:
    """Stream the members' parts into one file, small parts gathered into row groups of about
    ``ROW_GROUP_BYTES`` (1,000 parts of 41 rows are 1,000 row groups otherwise: slower to read than the parts
    were); each job's constant columns."""
    paths = [store.table_path(analysis, table, m.file(table)) for m in members]
    filesystem = None if store.local else store.fs
    schemas = [pq.read_schema(p, filesystem=filesystem) for p in paths]
    schema = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    schema = schema.append(pa.field(JOB_COLUMN, pa.string()))
    target = store.table_path(analysis, table, name)
    constants = {}

    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, schema, filesystem=filesystem, **parquet_options(schema)) as writer:
            gathered: list[pa.Table] = []
            for m, path in zip(members, paths):
                part = pq.read_table(path, filesystem=filesystem)
                constants[m.fingerprint] = constant_columns(part.to_pandas())
                part = part.append_column(JOB_COLUMN, pa.array([m.fingerprint] * len(part), pa.string()))
                gathered.append(_conform(part, schema))
                if sum(t.nbytes for t in gathered) >= ROW_GROUP_BYTES:
                    _flush(writer, gathered)
            _flush(writer, gathered)

    store.write_through(target, write)
    return constants


def _flush(writer: pq.ParquetWriter, gathered: list[pa.Table]) -> None:
    """Write the gathered parts as row groups of about ``ROW_GROUP_BYTES``; empty the list."""
    if gathered:
        merged = pa.concat_tables(gathered)
        writer.write_table(merged, row_group_size=row_group_rows(merged))
        gathered.clear()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns, in its order and types (columns it lacks become nulls)."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(len(table), f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _remove_replaced(store: Store, analysis: str, manifests: list[Manifest]) -> int:
    """Remove the parts a killed compaction had already replaced by merged files but not yet removed."""
    removed = 0
    for m in manifests:
        for table, file in m.content.get("replaced", {}).items():
            path = store.table_path(analysis, table, file)
            if file != m.file(table) and store.fs.exists(path):
                store.fs.rm(path)
                removed += 1
    return removed
