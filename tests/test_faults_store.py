"""Faults on the store's side (issue 17): a store that cannot be written fails before any compute, with the
original error in one line; job claims let concurrent writers split the work; a killed claimant's job is
taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from subspace_atlas import store as store_module
from subspace_atlas.cli import main
from subspace_atlas.errors import AtlasError
from subspace_atlas.store import Store, atomic_write

pytestmark = pytest.mark.integration


@pytest.fixture
def no_compute(monkeypatch):
    """Fails the test if any job's compute starts."""
    from subspace_atlas import jobs

    def refuse(*args, **kwargs):
        raise AssertionError("computed before checking the store")

    monkeypatch.setattr(jobs, "run", refuse)


def test_a_store_below_a_file_fails_before_compute_with_one_line(tmp_path, tiny_model, no_compute, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc = main(["spectra", str(tiny_model), "--store", str(blocker / "store")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1
    assert "not writable" in err[0] and str(blocker / "store") in err[0]
    assert blocker.read_text() == "not a folder"


def test_a_read_only_filesystem_fails_before_compute(tiny_model, no_compute, capsys):
    target = "/sys/subspace-atlas-store"  # sysfs refuses new folders, also to root
    rc = main(["spectra", str(tiny_model), "--store", target])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "not writable" in err[0] and "not permitted" in err[0].lower()
    assert not os.path.exists(target)


def test_an_unreachable_object_store_fails_before_compute(tiny_model, no_compute, capsys, monkeypatch):
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "_cache", {})  # fsspec reuses filesystems: this one is ours alone
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    rc = main(["spectra", str(tiny_model), "--store", "s3://unreachable-bucket/store"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "s3://unreachable-bucket/store" in err[0] and f"127.0.0.1:{port}" in err[0]


def test_a_cached_rerun_needs_no_writable_store(tmp_path, tiny_model, capsys):
    root = tmp_path / "S"
    assert main(["spectra", str(tiny_model), "--store", str(root)]) == 0
    os.chmod(root, 0o555)  # root ignores modes; what matters is that no probe is written on a cached rerun
    try:
        before = sorted(p.name for p in root.rglob("*"))
        assert main(["spectra", str(tiny_model), "--store", str(root)]) == 0
        assert "computed nothing" in capsys.readouterr().out
        assert sorted(p.name for p in root.rglob("*")) == before
    finally:
        os.chmod(root, 0o755)


def test_a_failed_write_reports_its_own_error_not_the_cleanup(tmp_path):
    def fail(tmp: str) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path / "x.parquet", fail)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- claims

def test_a_claim_excludes_a_second_claimant_until_released(tmp_path):
    store = Store(tmp_path / "S")
    with store.claim("spectra", "fp1") as first:
        assert first is None
        with store.claim("spectra", "fp1") as second:
            assert second == f"{socket.gethostname()} pid {os.getpid()}"
        with store.claim("spectra", "fp2") as other:
            assert other is None
    with store.claim("spectra", "fp1") as again:
        assert again is None
    assert not (tmp_path / "S").exists()  # claims leave nothing behind, not even the folders they made


def _write_claim(store: Store, fp: str, **claim) -> None:
    folder = os.path.join(store.root, "spectra", "_claims")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{fp}.claim"), "w") as fh:
        json.dump(claim, fh)


def test_the_claim_of_a_dead_process_or_an_old_one_is_taken_over(tmp_path):
    store = Store(tmp_path / "S")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_claim(store, "fp-dead", host=socket.gethostname(), pid=dead.pid, time=time.time())
    _write_claim(store, "fp-old", host="elsewhere", pid=1, time=time.time() - store_module.CLAIM_TTL_S - 1)
    _write_claim(store, "fp-live", host="elsewhere", pid=1, time=time.time())
    _write_claim(store, "fp-garbled", host=socket.gethostname(), pid="x")
    for fp in ("fp-dead", "fp-old", "fp-garbled"):
        with store.claim("spectra", fp) as holder:
            assert holder is None, fp
    with store.claim("spectra", "fp-live") as holder:
        assert holder == "elsewhere pid 1"


def test_claims_on_an_object_store(s3):
    from conftest import BUCKET

    store = Store(f"s3://{BUCKET}/claims")
    with store.claim("spectra", "fp1") as first:
        assert first is None
        with store.claim("spectra", "fp1") as second:
            assert second is not None
    assert not s3.glob(f"{BUCKET}/claims/spectra/_claims/*")


def test_ensure_writable_leaves_nothing_behind(tmp_path, s3):
    from conftest import BUCKET

    Store(tmp_path / "new" / "S").ensure_writable()
    assert not (tmp_path / "new").exists()  # a store is made by its first job, not by the check
    (tmp_path / "S").mkdir()
    Store(tmp_path / "S").ensure_writable()
    assert not list((tmp_path / "S").iterdir())
    Store(f"s3://{BUCKET}/probe").ensure_writable()
    assert not s3.glob(f"{BUCKET}/probe/*")
    with pytest.raises(AtlasError, match="exists and is not a folder"):
        (tmp_path / "f").write_text("")
        Store(tmp_path / "f").ensure_writable()


def test_two_writers_at_once_compute_each_job_once(tmp_path, llama_state):
    import toy_checkpoints as toy

    models = [toy.write_hf_folder(tmp_path / f"m{k}", toy.llama_state(seed=k)) for k in range(6)]
    root = tmp_path / "S"
    cli = [sys.executable, "-m", "subspace_atlas.cli", "spectra", *map(str, models), "--store", str(root)]
    procs = [subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    computed = 0
    for out, _ in outs:
        found = [int(w) for w in out.split() if w.isdigit()][:1] if "computed nothing" not in out else [0]
        computed += found[0]
    assert computed == 6, outs  # not 12: a job claimed by one writer is left to it
    assert len(Store(root).jobs()) == 6
    assert not (root / "spectra" / "_claims").exists() or not list((root / "spectra" / "_claims").iterdir())


def test_a_run_with_work_removes_what_killed_writers_left_once_it_is_old(tmp_path, tiny_model, llama_state):
    import toy_checkpoints as toy

    from subspace_atlas.verify import LEFTOVER_AGE_S

    root = tmp_path / "S"
    assert main(["spectra", str(tiny_model), "--store", str(root)]) == 0
    folder = root / "spectra" / "values"
    old_tmp, old_part, young = (folder / ".part-x.parquet.1234.tmp", folder / "part-gone-1234.parquet",
                                folder / ".part-y.parquet.5678.tmp")
    for path in (old_tmp, old_part, young):
        path.write_bytes(b"half a file")
    stale = time.time() - LEFTOVER_AGE_S - 60
    for path in (old_tmp, old_part):
        os.utime(path, (stale, stale))
    before = Store(root).table("spectra", "values")
    other = toy.write_hf_folder(tmp_path / "other", toy.llama_state(seed=5))
    assert main(["spectra", str(other), "--store", str(root)]) == 0
    assert not old_tmp.exists() and not old_part.exists() and young.exists()  # young: maybe a live writer's
    after = Store(root).table("spectra", "values")
    assert len(after) > len(before) and set(before["checkpoint"]) < set(after["checkpoint"])


def test_a_relative_store_keeps_its_old_jobs_when_a_run_with_work_sweeps_leftovers(tmp_path, tiny_model,
                                                                                   monkeypatch):
    """The default store is the relative ``./atlas-store``: its files must not look unnamed to the leftover sweep
    (a relative root once did: the second run, an hour later, deleted every earlier job's tables)."""
    import toy_checkpoints as toy

    from subspace_atlas.verify import LEFTOVER_AGE_S

    monkeypatch.chdir(tmp_path)
    assert main(["spectra", str(tiny_model), "--store", "S"]) == 0
    stale = time.time() - LEFTOVER_AGE_S - 60
    for path in (tmp_path / "S").rglob("*.parquet"):
        os.utime(path, (stale, stale))
    before = Store("S").table("spectra", "values")
    other = toy.write_hf_folder(tmp_path / "other", toy.llama_state(seed=5))
    assert main(["spectra", str(other), "--store", "S"]) == 0
    after = Store("S").table("spectra", "values")
    assert set(after["checkpoint"]) == set(before["checkpoint"]) | {"other"}
    assert main(["verify", "--store", "S"]) == 0


# ---------------------------------------------------------------------------------------------- readers

def _broken_demo(tmp_path):
    """A copy of the demo store with one spectra ``values`` part and one ``matrices`` part cut in half (the base
    model's, which the Spectra page's default view reads)."""
    import shutil
    from pathlib import Path

    root = tmp_path / "store"
    shutil.copytree(Path(__file__).resolve().parent.parent / "data" / "demo-store", root)
    store = Store(root)
    [base] = [m for m in store.catalog("spectra") if m.content["inputs"]["checkpoint"] == "all-MiniLM-L6-v2"]
    cut = [store.parts("spectra", "values")[0], store.table_path("spectra", "matrices", base.file("matrices"))]
    for path in cut:
        data = open(path, "rb").read()
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
    return root, [store.relative(p) for p in cut]


def test_a_hosted_page_over_a_broken_part_warns_and_shows_the_rest(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root, cut = _broken_demo(tmp_path)
    monkeypatch.setenv("SUBSPACE_ATLAS_STORE", str(root))
    monkeypatch.setenv("SUBSPACE_ATLAS_READONLY", "1")
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    at = AppTest.from_file(os.path.join(os.path.dirname(__file__), "..", "app", "main.py"), default_timeout=60)
    at.switch_page("views/spectra.py").run()
    assert not at.exception
    warnings = " ".join(w.value for w in at.warning)
    assert cut[1] in warnings and "does not read" in warnings
    assert str(tmp_path) not in warnings  # a visitor never sees a server path
    assert at.get("plotly_chart")  # the other jobs are drawn


def test_report_and_info_over_a_broken_part(tmp_path, capsys):
    root, cut = _broken_demo(tmp_path)
    assert main(["report", "--store", str(root), "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 100_000
    capsys.readouterr()
    assert main(["verify", "--store", str(root), "--quick"]) == 1
    out = capsys.readouterr().out
    assert all(c in out for c in cut)
