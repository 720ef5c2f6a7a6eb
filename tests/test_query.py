"""The query layer: every read the pages and the report make equals the old read-everything-then-filter,
on the committed demo store; filters skip jobs without opening them; rewrites swap a job's tables at once."""

from __future__ import annotations

import functools
import glob
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from subspace_atlas import query
from subspace_atlas.errors import AtlasError
from subspace_atlas.store import Store

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo-store"


@functools.cache
def old_read(root: Path, analysis: str, table: str) -> pd.DataFrame:
    """How the store was read before the query layer: every part of a finished job, concatenated."""
    done = {p.stem for p in (root / analysis / "_jobs").glob("*.json")}
    parts = sorted(p for p in glob.glob(str(root / analysis / table / "part-*.parquet"))  # part-<fp>[-<token>]
                   if os.path.basename(p)[len("part-"):-len(".parquet")].split("-")[0] in done)
    frames = [pq.read_table(p).to_pandas() for p in parts]
    kept = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(kept, ignore_index=True)


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal frames, where missing text may be None in one and NaN in the other (a column null in every row
    of one part reads as None on its own, as NaN once the parts' schemas are unified)."""
    # A column some jobs lack (expert, tied) may sit elsewhere, and is null in every row on the side that has it
    # without the other: the old read dropped parts with no rows; a filtered read opens only the matching jobs.
    for frame, other in ((got, want), (want, got)):
        extra = set(frame.columns) - set(other.columns)
        assert all(frame[c].isna().all() for c in extra), extra
    got = got.drop(columns=sorted(set(got.columns) - set(want.columns))).reset_index(drop=True)
    want = want[list(got.columns)].reset_index(drop=True)
    for column in got.columns:
        if got[column].dtype != want[column].dtype:
            got[column], want[column] = (f[column].astype(object).where(f[column].notna(), None) for f in (got, want))
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def _tables(store: Store) -> list[tuple[str, str]]:
    return sorted({(m.analysis, t) for m in store.catalog() for t in m.content["tables"]})


@pytest.fixture(scope="module")
def demo() -> Store:
    return Store(DEMO)


def test_every_demo_table_reads_as_before(demo):
    tables = _tables(demo)
    assert len(tables) >= 18
    for analysis, table in tables:
        assert_same(demo.table(analysis, table), old_read(DEMO, analysis, table))


def _old_filtered(analysis: str, table: str, where: dict, columns: list[str] | None = None) -> pd.DataFrame:
    frame = old_read(DEMO, analysis, table).copy()
    for column, value in where.items():
        frame = frame[frame[column].isin(value) if isinstance(value, list) else frame[column] == value]
    return frame[columns] if columns else frame


def _page_queries(demo: Store) -> list[tuple[str, str, dict, list[str] | None]]:
    """The slices the pages and the report ask for, with values taken from the demo store."""
    values = demo.table("spectra", "matrices", columns=["checkpoint", "tensor", "run"])
    run_ckpts = sorted(values.loc[values["run"].notna(), "checkpoint"].unique())
    ckpt, tensor = values.iloc[5][["checkpoint", "tensor"]]
    summary = demo.table("intruders", "summary")
    one = summary.sort_values("n_intruders").iloc[-1]
    convergence = demo.table("overlap", "convergence")
    run = convergence["run"].iloc[0]
    pair_columns = ["run", "step_a", "step_b", "tensor", "kind", "of", "side", "overlap", "chance"]
    queries = [("spectra", "values", {"checkpoint": ckpt, "tensor": tensor}, None),
               ("spectra", "values", {"tensor": tensor, "checkpoint": run_ckpts[:4]}, None),
               ("overlap", "pairs", {"run": run, "tensor": convergence["tensor"].iloc[0]}, None),
               ("overlap", "spectrum", {"run": run, "tensor": convergence["tensor"].iloc[0]}, None),
               ("overlap", "welore", {"run": run}, None),
               ("overlap", "pairs", {"previous": True, "side": "left"}, pair_columns)]
    for flag in ("previous", "from_first", "to_last"):
        queries.append(("overlap", "pairs", {"run": run, "of": "weights", "side": "left",
                                             "kind": sorted(convergence["kind"].unique())[:2], flag: True},
                        pair_columns))
    for name in ("vectors", "similarity", "values", "matrices"):
        queries.append(("intruders", name, {"checkpoint": one["checkpoint"], "tensor": one["tensor"]}, None))
    return queries


def test_page_queries_equal_filtering_the_old_full_reads(demo):
    for analysis, table, where, columns in _page_queries(demo):
        got = demo.table(analysis, table, where, columns)
        assert len(got), (analysis, table, where)
        assert_same(got, _old_filtered(analysis, table, where, columns))


def test_a_filter_no_row_meets_keeps_the_columns(demo):
    got = demo.table("spectra", "matrices", {"checkpoint": "no such checkpoint"})
    assert got.empty and "alpha" in got.columns
    got = demo.table("spectra", "matrices", {"no_such_column": "x"})
    assert got.empty
    with pytest.raises(AtlasError, match="no column"):
        demo.table("spectra", "matrices", columns=["checkpoint", "nope"])


def _count_files(monkeypatch) -> list[int]:
    opened = []
    real = query._fragments

    def counting(store, analysis, table, files):
        opened.append(len(files))
        return real(store, analysis, table, files)

    monkeypatch.setattr(query, "_fragments", counting)
    return opened


def test_a_filter_on_a_job_constant_opens_only_that_jobs_file(tmp_path, monkeypatch):
    store = Store(tmp_path)
    for k in range(40):
        rows = pd.DataFrame({"checkpoint": f"ckpt-{k}", "step": k, "tensor": ["a", "b", "c"], "alpha": [1.0, 2.0, k]})
        store.write("spectra", f"job{k:03d}", {"matrices": rows}, {})
    opened = _count_files(monkeypatch)
    got = store.table("spectra", "matrices", {"checkpoint": "ckpt-7", "tensor": "c"})
    assert got["alpha"].tolist() == [7.0] and opened == [1]
    got = store.table("spectra", "matrices", {"step": [3, 5]})
    assert sorted(got["checkpoint"].unique()) == ["ckpt-3", "ckpt-5"] and opened[-1] == 2
    assert store.table("spectra", "matrices", {"tensor": "a"})["step"].tolist() == list(range(40))
    assert opened[-1] == 40  # tensor is not constant within a job: every file is scanned


def test_a_column_null_in_every_row_is_a_constant_that_prunes(tmp_path, monkeypatch):
    store = Store(tmp_path)
    for k in range(6):  # three jobs of one run, three single checkpoints (run null)
        run = "r" if k < 3 else None
        store.write("spectra", f"job{k}", {"matrices": pd.DataFrame({"checkpoint": f"c{k}", "run": [run] * 2,
                                                                     "alpha": [1.0, 2.0]})}, {})
    opened = _count_files(monkeypatch)
    assert sorted(store.table("spectra", "matrices", {"run": None})["checkpoint"].unique()) == ["c3", "c4", "c5"]
    assert opened[-1] == 3
    assert sorted(store.table("spectra", "matrices", {"run": ["r", None]})["checkpoint"].unique()) == [
        f"c{k}" for k in range(6)]
    assert store.table("spectra", "matrices", {"run": "r"})["checkpoint"].nunique() == 3 and opened[-1] == 3


def test_distinct_reads_constants_off_the_manifests(tmp_path, monkeypatch):
    store = Store(tmp_path)
    for k in range(5):  # run constant per job; "kind" varies within a job
        run = None if k == 4 else f"run-{k % 2}"
        store.write("spectra", f"job{k}", {"matrices": pd.DataFrame({"run": [run] * 2, "kind": ["q", f"k{k}"]})}, {})
    opened = _count_files(monkeypatch)
    assert query.distinct(store, "spectra", "matrices", "run") == [None, "run-0", "run-1"] and opened == []
    want = sorted(store.table("spectra", "matrices")["kind"].unique())
    opened.clear()
    assert query.distinct(store, "spectra", "matrices", "kind") == want and opened == [5]
    assert query.distinct(store, "spectra", "matrices", "nope") == [None]
    assert query.distinct(store, "nothing", "matrices", "run") is None


def test_distinct_matches_the_full_read_on_the_demo_store(demo):
    for analysis, table in _tables(demo):
        frame = demo.table(analysis, table)
        for column in ("run", "checkpoint", "kind"):
            if column in frame:
                want = sorted(frame[column].dropna().unique(), key=str)
                got = query.distinct(demo, analysis, table, column)
                assert [v for v in got if v is not None] == want, (analysis, table, column)
                assert (None in got) == bool(frame[column].isna().any()), (analysis, table, column)


def test_columns_differing_in_type_across_jobs_unify(tmp_path):
    store = Store(tmp_path)
    store.write("x", "a", {"t": pd.DataFrame({"k": [1, 2], "run": [None, None]})}, {})
    store.write("x", "b", {"t": pd.DataFrame({"k": [3], "run": ["r"], "extra": [0.5]})}, {})
    got = store.table("x", "t").sort_values("k")
    assert got["k"].tolist() == [1, 2, 3] and got["run"].isna().tolist() == [True, True, False]
    assert got["extra"].isna().sum() == 2
    assert store.table("x", "t", {"run": None})["k"].tolist() == [1, 2]


def test_a_rewrite_swaps_every_table_and_removes_the_old_files(tmp_path):
    store = Store(tmp_path)
    store.write("x", "j", {"t": pd.DataFrame({"v": [1.0]}), "u": pd.DataFrame({"w": [1.0]})}, {})
    first = store.parts("x", "t") + store.parts("x", "u")
    store.write("x", "j", {"t": pd.DataFrame({"v": [2.0]}), "u": pd.DataFrame({"w": [2.0]})}, {})
    assert store.table("x", "t")["v"].tolist() == [2.0] and store.table("x", "u")["w"].tolist() == [2.0]
    assert not any(Path(p).exists() for p in first)
    assert len(list(tmp_path.rglob("*.parquet"))) == 2


def test_a_corrupt_manifest_is_skipped_and_named(tmp_path):
    store = Store(tmp_path)
    store.write("x", "good", {"t": pd.DataFrame({"v": [1.0]})}, {})
    store.write("x", "bad", {"t": pd.DataFrame({"v": [2.0]})}, {})
    manifest = tmp_path / "x" / "_jobs" / "bad.json"
    manifest.write_bytes(manifest.read_bytes()[:20])
    assert store.table("x", "t")["v"].tolist() == [1.0]
    assert not store.has("x", "bad") and str(manifest) in store.unreadable


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_an_unreadable_part_is_left_out_and_named(tmp_path, damage):
    store = Store(tmp_path)
    for k in range(3):
        store.write("x", f"job{k}", {"t": pd.DataFrame({"v": [float(k)] * 1000, "w": range(1000)})}, {})
    (bad,) = [p for p in store.parts("x", "t") if "job1" in p]
    data = Path(bad).read_bytes()
    Path(bad).write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:200] + bytes(len(data) - 400)
                          + data[-200:])
    got = store.table("x", "t")
    assert sorted(got["v"].unique()) == [0.0, 2.0] and len(got) == 2000
    assert list(store.unreadable) == [bad] and "job1" in store.unreadable[bad]
    assert store.table("x", "t", {"v": 2.0})["w"].tolist() == list(range(1000))
