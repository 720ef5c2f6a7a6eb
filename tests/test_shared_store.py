"""Shared stores through fsspec: a real S3-compatible server (moto's, started here) and ``memory://``.

The same write / read / skip-on-rerun / atomicity guarantees as a local folder: each object appears
whole or not at all, and a job whose writer died leaves nothing a reader counts.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from subspace_atlas.cli import main
from subspace_atlas.errors import AtlasError
from conftest import BUCKET
from subspace_atlas.store import Store, is_url
from test_store import kill_mid_write

pytestmark = pytest.mark.integration


def _frame(n: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"checkpoint": [f"c{k % 3}" for k in range(n)], "tensor": [f"t{k}" for k in range(n)],
                         "alpha": [1.5 + shift + k / 10 for k in range(n)]})


def test_url_roots_are_told_from_paths():
    assert is_url("s3://b/p") and is_url("memory://x") and is_url("gs://b")
    assert not is_url("/tmp/s") and not is_url("relative/dir") and not is_url("file:///tmp/s")
    assert Store("file:///tmp/some/store").local and Store("file:///tmp/some/store").root == "/tmp/some/store"


def test_unknown_protocol_is_one_clear_error():
    with pytest.raises(AtlasError, match="nosuchfs://x"):
        Store("nosuchfs://x/store")


def test_s3_store_reads_back_what_a_local_store_holds(s3, tmp_path):
    remote, local = Store(f"s3://{BUCKET}/api"), Store(tmp_path / "local")
    for store in (remote, local):
        store.write("spectra", "fp1", {"matrices": _frame(5), "values": _frame(9)}, {"device": "cpu"})
        store.write("spectra", "fp2", {"matrices": _frame(4, 1.0)}, {"device": "cpu"})
        store.write("overlap", "fp3", {"pairs": _frame(2)}, {"device": "cpu"})
    assert remote.analyses() == local.analyses() == ["overlap", "spectra"]
    assert remote.has("spectra", "fp1") and not remote.has("spectra", "nope")
    for analysis, table in (("spectra", "matrices"), ("spectra", "values"), ("overlap", "pairs")):
        pd.testing.assert_frame_equal(remote.table(analysis, table), local.table(analysis, table))
    pd.testing.assert_frame_equal(remote.table("spectra", "matrices", {"checkpoint": "c1"}),
                                  local.table("spectra", "matrices", {"checkpoint": "c1"}))
    same = [c for c in local.jobs().columns if c != "files"]  # part names carry a random token
    pd.testing.assert_frame_equal(remote.jobs()[same], local.jobs()[same])
    before = remote.version()
    assert before
    remote.write("spectra", "fp4", {"matrices": _frame(1)}, {})
    assert remote.version() != before
    remote.delete("spectra", "fp4")
    assert remote.version() == before and not remote.has("spectra", "fp4")
    assert not any("fp4" in p for p in s3.find(f"{BUCKET}/api"))


def test_a_second_reader_sees_jobs_written_after_it_listed(s3):
    reader, writer = Store(f"s3://{BUCKET}/late"), Store(f"s3://{BUCKET}/late")
    writer.write("spectra", "first", {"matrices": _frame(2)}, {})
    assert reader.analyses() == ["spectra"] and len(reader.table("spectra", "matrices")) == 2
    writer.write("spectra", "second", {"matrices": _frame(3)}, {})
    assert reader.has("spectra", "second") and len(reader.table("spectra", "matrices")) == 5


def test_store_names_cannot_leave_the_store(s3):
    store = Store(f"s3://{BUCKET}/names")
    for bad in ("../outside", "a/b", "..", "", ".hidden"):
        with pytest.raises(AtlasError, match="not a valid"):
            store.table(bad, "matrices")
        with pytest.raises(AtlasError, match="not a valid"):
            store.write("spectra", bad, {"matrices": _frame(1)}, {})
    assert not s3.exists(f"{BUCKET}/names") and not s3.exists(f"{BUCKET}/outside")


def test_cli_writes_to_s3_skips_on_rerun_and_matches_a_local_run(s3, capsys, tmp_path, tiny_model):
    url, local = f"s3://{BUCKET}/cli-store", tmp_path / "local"
    for store in (url, local):
        assert main(["spectra", str(tiny_model), "--store", str(store), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["spectra", str(tiny_model), "--store", url, "--device", "cpu"]) == 0
    assert "computed nothing" in capsys.readouterr().out
    for table in ("matrices", "values"):
        pd.testing.assert_frame_equal(Store(url).table("spectra", table), Store(local).table("spectra", table))
    assert main(["info", "--store", url]) == 0
    assert "spectra" in capsys.readouterr().out


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np, pandas as pd
    from subspace_atlas.store import Store

    store = Store(sys.argv[1])
    small = pd.DataFrame({"tensor": ["a", "b"], "alpha": [2.5, 3.5]})
    store.write("spectra", "done", {"matrices": small}, {})
    rng = np.random.default_rng(0)
    big = pd.DataFrame({"x": rng.random(600_000), "y": rng.random(600_000)})
    tables = {"matrices": small.assign(alpha=[9.0, 9.0])} | {f"values{k}": big for k in range(30)}
    print("ready", flush=True)
    store.write("spectra", "unfinished", tables, {})
    print("finished", flush=True)
""")


def test_sigkill_mid_upload_leaves_no_half_written_object(s3):
    url = f"s3://{BUCKET}/killed"
    def uploaded() -> bool:  # the job's first table is up; ~10 MB objects are being uploaded
        s3.invalidate_cache()
        return bool(s3.glob(f"{BUCKET}/killed/spectra/matrices/part-unfinished-*.parquet"))

    kill_mid_write([sys.executable, "-c", _WRITER, url], uploaded, grace=0.3, limit=60)

    s3.invalidate_cache()
    objects = s3.find(f"{BUCKET}/killed")
    assert uploaded()  # the killed job really had objects up …
    for path in objects:  # … each one whole
        if path.endswith(".parquet"):
            assert pq.read_metadata(s3.open(path, "rb")).num_rows > 0
    store = Store(url)
    assert not store.has("spectra", "unfinished")  # … yet none of it counts
    assert store.table("spectra", "matrices")["alpha"].tolist() == [2.5, 3.5]
    assert store.jobs()["fingerprint"].tolist() == ["done"]
    assert all(store.parts("spectra", f"values{k}") == [] for k in range(30))

    store.write("spectra", "unfinished", {"matrices": pd.DataFrame({"tensor": ["c"], "alpha": [4.0]})}, {})
    assert sorted(store.table("spectra", "matrices")["alpha"]) == [2.5, 3.5, 4.0]


def test_memory_store_round_trip():
    store = Store("memory://atlas-test/store")
    assert not store.local and store.analyses() == [] and store.jobs().empty
    store.write("intruders", "j1", {"matrices": _frame(3)}, {"device": "cpu"})
    assert Store("memory://atlas-test/store").table("intruders", "matrices")["alpha"].tolist() == [1.5, 1.6, 1.7]
    with pytest.raises(AtlasError, match="no intruders/other results"):
        store.table("intruders", "other")


def test_app_reads_an_s3_store(s3, monkeypatch, tmp_path, tiny_model):
    from streamlit.testing.v1 import AppTest

    url = f"s3://{BUCKET}/dashboard"
    assert main(["spectra", str(tiny_model), "--store", url, "--device", "cpu"]) == 0
    monkeypatch.setenv("SUBSPACE_ATLAS_STORE", url)
    monkeypatch.setenv("SUBSPACE_ATLAS_READONLY", "1")
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app" / "main.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert any(url in c.value for c in at.caption)
    at.switch_page("views/spectra.py").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 4
