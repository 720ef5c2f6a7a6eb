"""The Parquet store on disk: round trips, provenance, atomic writes (a SIGKILLed writer, a failing write)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from subspace_atlas.errors import AtlasError
from subspace_atlas.store import META_KEY, Store, fingerprint

pytestmark = pytest.mark.integration

PROVENANCE = {"params": {"method": "gram"}, "inputs": {"checkpoint": "run/step1"},
              "versions": {"subspace_atlas": "0.1.0"}, "device": "cpu", "wall_s": 0.25}


def frame(n: int = 4, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame({
        "checkpoint": [f"run/step{k + offset}" for k in range(n)],
        "run": [None] * n,
        "step": pd.array([k + offset if k % 2 == 0 else None for k in range(n)], dtype="Int64"),
        "rows": np.arange(n, dtype="int64") + 10,
        "alpha": np.linspace(1.5, 4.5, n),
        "ok": [k % 3 == 0 for k in range(n)],
    })


def listing(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_then_table_round_trip(tmp_path):
    store = Store(tmp_path / "S")
    want = frame(5)
    assert not store.has("spectra", "fp1")
    store.write("spectra", "fp1", {"matrices": want}, PROVENANCE)
    assert store.has("spectra", "fp1")
    assert not store.has("spectra", "fp2")
    got = store.table("spectra", "matrices")
    pd.testing.assert_frame_equal(got, want)
    assert got["step"].dtype == "Int64"
    assert got["step"].isna().tolist() == [False, True, False, True, False]
    assert got["rows"].dtype == np.int64 and got["ok"].dtype == bool
    assert store.analyses() == ["spectra"]


def test_tables_concatenate_parts_of_finished_jobs(tmp_path):
    store = Store(tmp_path / "S")
    store.write("spectra", "aaa", {"matrices": frame(3), "values": frame(2)}, PROVENANCE)
    store.write("spectra", "bbb", {"matrices": frame(4, offset=100), "values": frame(1)}, PROVENANCE)
    got = store.table("spectra", "matrices")
    assert len(got) == 7
    assert sorted(got["checkpoint"]) == sorted([f"run/step{k}" for k in range(3)] +
                                               [f"run/step{k}" for k in range(100, 104)])
    assert len(store.table("spectra", "values")) == 3
    names = [Path(p).name for p in store.parts("spectra", "values")]
    assert [re.fullmatch(r"part-(\w+)-[0-9a-f]{8}\.parquet", n)[1] for n in names] == ["aaa", "bbb"]


def test_provenance_in_parquet_metadata_and_jobs(tmp_path):
    store = Store(tmp_path / "S")
    store.write("spectra", "fp1", {"matrices": frame(3), "values": frame(6)}, PROVENANCE)
    for table in ("matrices", "values"):
        (part,) = store.parts("spectra", table)
        meta = pq.read_schema(part).metadata
        prov = json.loads(meta[META_KEY])
        for key in ("params", "inputs", "versions", "device", "wall_s"):
            assert prov[key] == PROVENANCE[key]
        assert prov["fingerprint"] == "fp1" and prov["analysis"] == "spectra"
    jobs = store.jobs()
    assert len(jobs) == 1
    job = jobs.iloc[0]
    assert job["fingerprint"] == "fp1" and job["device"] == "cpu"
    assert job["params"] == PROVENANCE["params"]
    assert job["tables"] == {"matrices": 3, "values": 6}
    assert store.jobs("spectra")["fingerprint"].tolist() == ["fp1"]


def test_version_changes_when_a_job_lands(tmp_path):
    store = Store(tmp_path / "S")
    assert store.version() == "" and store.analyses() == [] and store.jobs().empty
    store.write("spectra", "fp1", {"matrices": frame()}, PROVENANCE)
    v1 = store.version()
    assert v1 and v1 == store.version()
    store.write("spectra", "fp2", {"matrices": frame()}, PROVENANCE)
    v2 = store.version()
    assert v2 not in ("", v1)
    store.write("spectra", "fp2", {"matrices": frame(2)}, PROVENANCE)  # a rewrite (--force) changes it too
    assert store.version() not in ("", v1, v2)


def test_table_of_nothing_names_the_store(tmp_path):
    store = Store(tmp_path / "S")
    with pytest.raises(AtlasError, match=r"S: no spectra/matrices results stored"):
        store.table("spectra", "matrices")


def test_fingerprint_is_stable_and_sensitive():
    base = fingerprint("spectra", {"method": "gram"}, {"checkpoint": "abc", "tensors": ""}, 1)
    assert base == fingerprint("spectra", {"method": "gram"}, {"tensors": "", "checkpoint": "abc"}, 1)
    assert base != fingerprint("spectra", {"method": "svd"}, {"checkpoint": "abc", "tensors": ""}, 1)
    assert base != fingerprint("spectra", {"method": "gram"}, {"checkpoint": "abd", "tensors": ""}, 1)
    assert base != fingerprint("spectra", {"method": "gram"}, {"checkpoint": "abc", "tensors": ""}, 2)


# ---------------------------------------------------------------- atomicity


def test_exception_while_building_a_table_leaves_nothing_visible(tmp_path):
    store = Store(tmp_path / "S")
    store.write("spectra", "old", {"matrices": frame(2), "values": frame(3)}, PROVENANCE)
    before = store.table("spectra", "matrices")
    unserializable = pd.DataFrame({"tensor": ["a", "b"], "x": [object(), 1]})
    with pytest.raises(pa.ArrowException):
        store.write("spectra", "new", {"matrices": frame(4), "values": unserializable}, PROVENANCE)
    assert not store.has("spectra", "new")
    pd.testing.assert_frame_equal(store.table("spectra", "matrices"), before)
    assert len(store.table("spectra", "values")) == 3
    assert store.jobs()["fingerprint"].tolist() == ["old"]
    assert not list(Path(store.root).rglob("*.tmp"))


def test_exception_while_renaming_into_place_cleans_up(tmp_path):
    store = Store(tmp_path / "S")
    blocker = Path(store.root) / "spectra" / "_jobs" / "new.json"
    blocker.mkdir(parents=True)  # a folder where the manifest should go: os.replace fails after the write
    with pytest.raises(OSError):
        store.write("spectra", "new", {"matrices": frame(4), "values": frame(3)}, PROVENANCE)
    assert not store.has("spectra", "new")
    assert store.parts("spectra", "matrices") == []
    with pytest.raises(AtlasError):
        store.table("spectra", "matrices")
    assert not list(Path(store.root).rglob("*.tmp")), "temporary files left behind"


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np, pandas as pd
    from subspace_atlas.store import Store

    store = Store(sys.argv[1])
    small = pd.DataFrame({"tensor": ["a", "b"], "alpha": [2.5, 3.5]})
    store.write("spectra", "done", {"matrices": small, "values": small}, {"params": {}})
    rng = np.random.default_rng(0)
    big = pd.DataFrame({"x": rng.random(1_500_000), "y": rng.random(1_500_000)})
    tables = {"matrices": small.assign(alpha=[9.0, 9.0])}
    tables.update({f"values{k}": big for k in range(12)})  # seconds of writing after matrices lands
    print("ready", flush=True)
    store.write("spectra", "unfinished", tables, {"params": {}})
    print("finished", flush=True)
""")


def kill_mid_write(argv: list[str], landed, grace: float = 0.05, limit: float = 30) -> None:
    """Start a writer that prints "ready" then writes a job; SIGKILL it once ``landed()`` (its first file is
    in place, the rest being written) and ``grace`` seconds more have passed."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + limit
        while not landed():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(grace)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = proc.stdout.read()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and "finished" not in rest


def test_sigkill_mid_write_leaves_no_visible_part(tmp_path):
    root = tmp_path / "S"
    matrices = root / "spectra" / "matrices"

    def landed() -> bool:
        return any(matrices.glob("part-unfinished-*.parquet"))

    kill_mid_write([sys.executable, "-c", _WRITER, str(root)], landed)

    assert landed()  # the killed job really had files on disk …
    store = Store(root)
    assert not store.has("spectra", "unfinished")  # … yet none of it counts
    assert store.has("spectra", "done")
    assert [Path(p).name[:10] for p in store.parts("spectra", "matrices")] == ["part-done-"]
    matrices = store.table("spectra", "matrices")
    assert matrices["alpha"].tolist() == [2.5, 3.5]
    assert store.table("spectra", "values")["tensor"].tolist() == ["a", "b"]
    for k in range(12):
        assert store.parts("spectra", f"values{k}") == []
    assert store.jobs()["fingerprint"].tolist() == ["done"]
    assert store.analyses() == ["spectra"]
    # Leftover temporaries are hidden and are never read as parts.
    assert all(p.name.startswith(".") for p in root.rglob("*.tmp"))

    # A rerun of the killed job makes it visible (its own new files; the stray one is never read).
    store.write("spectra", "unfinished", {"matrices": pd.DataFrame({"tensor": ["c"], "alpha": [4.0]})},
                {"params": {}})
    assert store.has("spectra", "unfinished")
    assert sorted(store.table("spectra", "matrices")["alpha"]) == [2.5, 3.5, 4.0]


def test_table_where_keeps_only_matching_rows(tmp_path):
    store = Store(tmp_path)
    for fp, ckpt in (("a1", "a"), ("b1", "b")):
        store.write("x", fp, {"t": pd.DataFrame({"checkpoint": ckpt, "tensor": ["m1", "m2"], "v": [1.0, 2.0]})}, {})
    got = store.table("x", "t", {"checkpoint": "b", "tensor": "m2"})
    assert got.to_dict("records") == [{"checkpoint": "b", "tensor": "m2", "v": 2.0}]
    none = store.table("x", "t", {"checkpoint": "c"})
    assert none.empty and list(none.columns) == ["checkpoint", "tensor", "v"]


def test_table_if_stored_is_none_where_table_would_raise(tmp_path):
    store = Store(tmp_path)
    store.write("x", "a1", {"t": pd.DataFrame({"v": [1.0, 2.0]})}, {})
    assert store.table_if_stored("x", "other") is None and store.table_if_stored("y", "t") is None
    with pytest.raises(AtlasError, match="no x/other results stored"):
        store.table("x", "other")
    pd.testing.assert_frame_equal(store.table_if_stored("x", "t"), store.table("x", "t"))


_REWRITER = textwrap.dedent("""
    import sys
    import numpy as np, pandas as pd
    from subspace_atlas.store import Store

    store = Store(sys.argv[1])
    rng = np.random.default_rng(1)
    big = pd.DataFrame({"x": rng.random(1_500_000)})
    tables = {"matrices": pd.DataFrame({"tensor": ["a"], "alpha": [9.0]})} | {f"values{k}": big for k in range(12)}
    print("ready", flush=True)
    store.write("spectra", "job", tables, {"params": {}})  # --force: the same job written again
    print("finished", flush=True)
""")


def test_sigkill_during_a_rewrite_keeps_the_old_job_whole(tmp_path):
    root = tmp_path / "S"
    store = Store(root)
    old = {"matrices": pd.DataFrame({"tensor": ["a"], "alpha": [1.0]})} | {
        f"values{k}": pd.DataFrame({"x": [float(k)]}) for k in range(12)}
    store.write("spectra", "job", old, {"params": {}})
    first = set(store.parts("spectra", "matrices"))

    def landed() -> bool:  # the new matrices part is in place, the values parts are being written
        return len(list((root / "spectra" / "matrices").glob("part-job-*.parquet"))) == 2

    kill_mid_write([sys.executable, "-c", _REWRITER, str(root)], landed)
    assert set(store.parts("spectra", "matrices")) == first
    assert store.table("spectra", "matrices")["alpha"].tolist() == [1.0]  # not the half-written rewrite's 9.0
    for k in range(12):
        assert store.table("spectra", f"values{k}")["x"].tolist() == [float(k)]


def test_parts_encode_floats_byte_stream_split_and_names_as_dictionaries(tmp_path):
    store = Store(tmp_path / "S")
    want = frame(50)
    store.write("spectra", "fp1", {"matrices": want}, PROVENANCE)
    part = pq.ParquetFile(store.parts("spectra", "matrices")[0]).metadata.row_group(0)
    encodings = {part.column(k).path_in_schema: set(part.column(k).encodings) for k in range(part.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["alpha"]
    assert {"RLE_DICTIONARY", "PLAIN_DICTIONARY"} & encodings["checkpoint"]
    pd.testing.assert_frame_equal(store.table("spectra", "matrices"), want)


def test_rows_true_in_first_columns_are_stored_ahead_so_a_filter_on_them_skips_row_groups(tmp_path, monkeypatch):
    import pyarrow.dataset as ds

    from subspace_atlas import store as store_module

    monkeypatch.setattr(store_module, "ROW_GROUP_ROWS", 100)
    rng = np.random.default_rng(0)
    n = 2000
    frame = pd.DataFrame({"tensor": rng.choice(["a", "b", "c"], n), "previous": rng.random(n) < 0.05,
                          "to_last": rng.random(n) < 0.05, "overlap": rng.random(n)})
    store = Store(tmp_path)
    store.write("overlap", "job", {"pairs": frame}, {}, first={"pairs": ("previous", "to_last")})
    path = store.parts("overlap", "pairs")[0]
    stored = pq.read_table(path).to_pandas()
    flagged = stored["previous"] | stored["to_last"]
    assert flagged.iloc[:flagged.sum()].all() and not flagged.iloc[flagged.sum():].any()  # flagged rows first
    within = stored[~flagged]
    assert within["tensor"].is_monotonic_increasing  # then one matrix's rows together
    fragment = next(ds.dataset(path).get_fragments())
    wanted = ds.field("previous") | ds.field("to_last")
    kept = fragment.split_by_row_group(wanted)
    assert len(kept) <= -(-int(flagged.sum()) // 100) + 1 < pq.ParquetFile(path).num_row_groups
    got = store.table("overlap", "pairs", {"previous": True})
    want = frame[frame["previous"]]
    assert sorted(got["overlap"]) == sorted(want["overlap"])
