"""``subspace-atlas verify``: find every manifest and table file of a store that does not read back; repair.

A truncated or garbled file (a full disk, a killed copy, bit rot) must not break whole tables, and a rerun
must be able to heal it: readers already leave such files out and name them; ``verify`` finds them all
(``deep``: every page decoded, not only the footers) and ``--repair`` removes the broken jobs' manifests, so
that a plain rerun of the same command computes exactly those jobs again. It also removes what killed
writers left behind (hidden temporaries, files no manifest names) once they are old enough not to belong
to a writer still running.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from subspace_atlas.store import JOBS, Manifest, Store

LEFTOVER_AGE_S = 3600  # younger unnamed files may belong to a writer that is still running


@dataclass
class Findings:
    broken: dict[str, str] = field(default_factory=dict)  # path → why it does not read
    broken_jobs: list[tuple[str, str]] = field(default_factory=list)  # (analysis, fingerprint)
    leftovers: list[str] = field(default_factory=list)  # temporaries and unnamed files, old enough to remove
    files: int = 0
    repaired: bool = False


def verify(store: Store, repair: bool = False, deep: bool = True,
           progress: Callable[[str], None] = lambda s: None) -> Findings:
    """Check every manifest and every file a manifest names (``deep``: read every row; else footers only)."""
    found = Findings()
    catalog = store.catalog()
    found.broken.update(store.unreadable)  # manifests that do not parse
    named: dict[str, list[Manifest]] = {}
    for m in catalog:
        for table in m.content.get("tables", {}):
            if (file := m.file(table)) is not None:
                named.setdefault(store.table_path(m.analysis, table, file), []).append(m)
    filesystem = None if store.local else store.fs
    for k, (path, owners) in enumerate(sorted(named.items()), 1):
        progress(f"[{k}/{len(named)}] {store.relative(path)}")
        try:
            if deep:
                pq.read_table(path, filesystem=filesystem)
            else:
                pq.read_metadata(store.fs.open(path, "rb") if filesystem else path)
        except Exception as err:  # noqa: BLE001 (any failure to read back is what we look for)
            found.broken[path] = store.explain(err)
            found.broken_jobs += [(m.analysis, m.fingerprint) for m in owners]
    found.files = len(named)
    found.leftovers = [p for a in sorted({m.analysis for m in catalog}) for p in leftovers(store, a, set(named))]
    if repair:
        for analysis, fp in sorted(set(found.broken_jobs)):
            store.delete(analysis, fp)
        for path in [p for p in found.broken if posixpath.basename(posixpath.dirname(p)) == JOBS]:
            store.fs.rm(path)
        for path in found.leftovers:
            store.fs.rm(path)
        found.repaired = True
    return found


def leftovers(store: Store, analysis: str, named: set[str]) -> list[str]:
    """An analysis's hidden temporaries of killed writes and table files no manifest names (``named``: the
    paths manifests name), older than ``LEFTOVER_AGE_S``."""
    now, old = time.time(), []
    for path, info in store.files(analysis).items():
        name = posixpath.basename(path)
        leftover = name.endswith(".tmp") or (name.endswith(".parquet") and path not in named)
        modified = info.get("mtime") or info.get("LastModified")
        stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or now)
        if leftover and now - stamp > LEFTOVER_AGE_S:
            old.append(path)
    return sorted(old)


def remove_leftovers(store: Store, analysis: str, manifests: list[Manifest] | None = None) -> int:
    """Remove an analysis's leftovers (see ``leftovers``) before new work is written or merged: a store that
    killed runs wrote to does not keep growing. ``manifests``: the analysis's catalog, when the caller has
    read it already. Returns how many files went."""
    named = {store.table_path(m.analysis, table, file) for m in (store.catalog(analysis) if manifests is None
                                                                  else manifests)
             for table in m.content.get("tables", {}) if (file := m.file(table)) is not None}
    found = leftovers(store, analysis, named)
    for path in found:
        with contextlib.suppress(FileNotFoundError):  # another writer's sweep took it first
            store.fs.rm(path)
    return len(found)
