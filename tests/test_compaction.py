"""``compact``: many parts become few files and every table reads the same before, during and after, even when
the compaction is killed at any step (on a folder and on a real S3-compatible server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from subspace_atlas import compaction, query
from subspace_atlas.cli import main
from subspace_atlas.store import Store
from subspace_atlas.verify import LEFTOVER_AGE_S
from conftest import BUCKET

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo-store"


def snapshot(store: Store) -> dict[tuple[str, str], pa.Table]:
    """Every table of every analysis, as read (with a job column, so rows can be compared whatever the order)."""
    found = {}
    for m in store.catalog():
        for table in m.content["tables"]:
            found.setdefault((m.analysis, table), None)
    return {key: _sorted(query.scan(store, *key)) for key in sorted(found)}


def _sorted(table: pa.Table) -> pa.Table:
    keys = [(name, "ascending") for name, kind in zip(table.column_names, table.schema.types)
            if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
            or pa.types.is_floating(kind)]
    return table.sort_by(keys).combine_chunks() if keys else table.combine_chunks()


def assert_same_tables(store: Store, want: dict[tuple[str, str], pa.Table]) -> None:
    got = snapshot(store)
    assert list(got) == list(want)
    for key, table in want.items():
        assert got[key].equals(table), key


def sweep(root, jobs: int = 12, url: bool = False) -> Store:
    """A store of ``jobs`` small spectra-like jobs of two tables, one part file each."""
    store = Store(root)
    for k in range(jobs):
        matrices = pd.DataFrame({"checkpoint": f"c{k}", "step": k * 10, "run": "r" if k % 2 else None,
                                 "tensor": ["q", "k", "v"], "alpha": [2.0 + k, 3.0, 4.0]})
        values = pd.DataFrame({"checkpoint": f"c{k}", "tensor": ["q"] * 5 + ["k"] * 5, "sigma": range(10)})
        store.write("spectra", f"job{k:03d}", {"matrices": matrices, "values": values}, {"inputs": {"checkpoint": f"c{k}"}})
    return store


def test_the_demo_store_compacts_to_few_files_with_equal_tables(tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(DEMO, root)
    store = Store(root)
    before = snapshot(store)
    files = len(list(root.rglob("*.parquet")))
    done = compaction.compact(store)
    assert done.jobs == len(store.catalog()) - 1  # all but the zoo's single job
    assert len(list(root.rglob("*.parquet"))) == done.files_after < files / 20
    assert_same_tables(store, before)
    assert compaction.compact(store).jobs == 0  # nothing left to merge


def test_small_parts_become_few_row_groups(tmp_path):
    import pyarrow.parquet as pq

    store = sweep(tmp_path / "S", jobs=60)
    want = snapshot(store)
    compaction.compact(store)
    [merged] = [p for p in store.parts("spectra", "values")]
    assert pq.ParquetFile(merged).metadata.num_row_groups == 1  # not 60: one per part would read slowly
    assert_same_tables(store, want)


def test_cli_compact_and_filters_after_compaction(tmp_path, capsys):
    store = sweep(tmp_path / "S")
    assert main(["compact", "--store", str(tmp_path / "S")]) == 0
    assert "12 job(s)" in capsys.readouterr().out
    assert len(list((tmp_path / "S" / "spectra" / "values").glob("*.parquet"))) == 1
    got = store.table("spectra", "matrices", {"checkpoint": "c7", "tensor": "q"})
    assert got["alpha"].tolist() == [9.0]
    assert store.table("spectra", "matrices", {"run": None})["checkpoint"].nunique() == 6


def test_readers_during_compaction_always_see_every_row(tmp_path):
    store = sweep(tmp_path / "S", jobs=60)
    want = snapshot(store)
    errors, reads = [], [0]

    def read_until(stop: threading.Event) -> None:
        reader = Store(tmp_path / "S")
        while not stop.is_set():
            try:
                assert_same_tables(reader, want)
                reads[0] += 1
            except BaseException as err:  # noqa: BLE001 (reported below)
                errors.append(err)
                return

    stop = threading.Event()
    thread = threading.Thread(target=read_until, args=(stop,))
    thread.start()
    try:
        compaction.compact(store, batch_bytes=40_000)  # several merged files, so several swaps
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[0]
    assert reads[0] >= 1
    assert_same_tables(store, want)


def test_a_job_rewritten_while_compacting_keeps_its_new_rows(tmp_path, monkeypatch):
    store = sweep(tmp_path / "S", jobs=4)
    real = compaction._write_merged

    def and_meanwhile(store_, analysis, table, members, name):
        constants = real(store_, analysis, table, members, name)
        if table == "values":  # both merged files are written; the manifests are not yet repointed
            store.write("spectra", "job002", {"matrices": pd.DataFrame({"checkpoint": "c2", "tensor": ["new"],
                                                                        "alpha": [99.0]})}, {})
        return constants

    monkeypatch.setattr(compaction, "_write_merged", and_meanwhile)
    done = compaction.compact(store)
    assert done.jobs == 3
    assert store.table("spectra", "matrices", {"checkpoint": "c2"})["alpha"].tolist() == [99.0]
    assert store.table("spectra", "values", {"checkpoint": "c2"}).empty  # its new write has no values table
    assert len(store.table("spectra", "matrices")) == 3 * 3 + 1


def test_old_unnamed_merged_files_are_removed_young_ones_kept(tmp_path, monkeypatch):
    store = sweep(tmp_path / "S", jobs=3)
    folder = tmp_path / "S" / "spectra" / "values"
    old, young = folder / "compact-old.parquet", folder / "compact-young.parquet"
    for path in (old, young):
        path.write_bytes(b"left by a killed compaction")
    os.utime(old, (time.time() - 2 * LEFTOVER_AGE_S,) * 2)
    stale_tmp = folder / ".part-x.parquet.1234abcd.tmp"
    stale_tmp.write_bytes(b"a killed write")
    os.utime(stale_tmp, (time.time() - 2 * LEFTOVER_AGE_S,) * 2)
    assert compaction.compact(store).orphans_removed == 2
    assert not old.exists() and not stale_tmp.exists() and young.exists()


_KILLED = textwrap.dedent("""
    import os, signal, sys
    import pyarrow.parquet as pq
    from subspace_atlas import compaction
    from subspace_atlas.store import Store

    store, kill_at, where = Store(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    count = [0]

    def counted(call):
        def wrapper(*args, **kwargs):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return call(*args, **kwargs)
        return wrapper

    if where == "inside-merged-file":  # between the row groups of a merged file being written
        compaction.ROW_GROUP_BYTES = 1  # a row group per part, so there is a "between"
        pq.ParquetWriter.write_table = counted(pq.ParquetWriter.write_table)
    else:  # before the kill_at-th file operation: merged file written, manifest swapped, part removed
        store.put, store.write_through, store.fs.rm = map(counted, (store.put, store.write_through, store.fs.rm))
    compaction.compact(store, batch_bytes=int(sys.argv[4]))
    print("finished")
""")


def _kill_compaction(root: str, kill_at: int, where: str, batch_bytes: int = 1 << 30) -> None:
    done = subprocess.run([sys.executable, "-c", _KILLED, root, str(kill_at), where, str(batch_bytes)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9 and "finished" not in done.stdout, done.stderr


@pytest.mark.parametrize("kill_at,where", [(1, "files"), (2, "files"), (3, "files"), (6, "files"),
                                           (12, "files"), (20, "files"), (2, "inside-merged-file")])
def test_sigkill_mid_compaction_leaves_a_complete_store(tmp_path, kill_at, where):
    store = sweep(tmp_path / "S", jobs=8)
    want = snapshot(store)
    _kill_compaction(str(tmp_path / "S"), kill_at, where)
    assert_same_tables(Store(tmp_path / "S"), want)
    assert all(store.has("spectra", f"job{k:03d}") for k in range(8))
    compaction.compact(store)  # a rerun finishes the job
    assert_same_tables(store, want)
    named = {m.file(t) for m in store.catalog() for t in m.content["tables"]}
    assert all(m.file(t).startswith("compact-") for m in store.catalog() for t in m.content["tables"])
    unnamed = {f.name for f in (tmp_path / "S").rglob("*.parquet")} - named
    assert all(name.startswith("compact-") for name in unnamed)  # a killed run's merged file, kept an hour


def test_sigkill_mid_compaction_on_s3(s3):
    url = f"s3://{BUCKET}/compact-killed"
    store = sweep(url, jobs=6)
    want = snapshot(store)
    _kill_compaction(url, 4, "files")  # merged files uploaded, one manifest repointed
    assert_same_tables(Store(url), want)
    _kill_compaction(url, 3, "inside-merged-file")
    assert_same_tables(Store(url), want)
    compaction.compact(Store(url))
    assert_same_tables(Store(url), want)
    assert len(s3.glob(f"{BUCKET}/compact-killed/spectra/values/*.parquet")) <= 3
