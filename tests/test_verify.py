"""``verify`` finds every file that does not read back; ``--repair`` makes a plain rerun recompute those jobs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from subspace_atlas.cli import main
from subspace_atlas.store import Store
from subspace_atlas.verify import LEFTOVER_AGE_S

pytestmark = pytest.mark.integration


def _store(root: Path) -> Store:
    store, rng = Store(root), np.random.default_rng(0)
    for k in range(3):
        store.write("spectra", f"job{k}", {"matrices": pd.DataFrame({"v": [float(k)] * 500}),
                                           "values": pd.DataFrame({"w": rng.random(20_000)})}, {})
    return store


def _garble(path: str) -> None:
    """Zero the data pages, keep the footer: the file opens, its rows do not decode."""
    data = Path(path).read_bytes()
    footer = int.from_bytes(data[-8:-4], "little") + 8  # the metadata's length, then "PAR1"
    Path(path).write_bytes(data[:4] + bytes(len(data) - 4 - footer) + data[-footer:])


def test_verify_finds_a_truncated_part_a_garbled_part_and_a_truncated_manifest(tmp_path, capsys):
    store = _store(tmp_path)
    truncated = [p for p in store.parts("spectra", "matrices") if "job0" in p][0]
    Path(truncated).write_bytes(Path(truncated).read_bytes()[:50])
    garbled = [p for p in store.parts("spectra", "values") if "job1" in p][0]
    _garble(garbled)
    manifest = tmp_path / "spectra" / "_jobs" / "job2.json"
    manifest.write_text(manifest.read_text()[:30])
    assert main(["verify", "--store", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "3 broken, 2 job(s) affected" in out
    for path in (truncated, garbled, str(manifest)):
        assert Store(tmp_path).relative(path) in out
    assert str(tmp_path) not in out.replace(f"{tmp_path}:", "")  # names files inside the store, not server paths
    # --quick reads footers only: it sees the truncation, not the garbled pages
    assert main(["verify", "--store", str(tmp_path), "--quick"]) == 1
    assert "2 broken" in capsys.readouterr().out

    assert main(["verify", "--store", str(tmp_path), "--repair"]) == 0
    capsys.readouterr()
    fresh = Store(tmp_path)
    assert not any(fresh.has("spectra", f"job{k}") for k in range(3))  # a rerun computes all three again
    assert main(["verify", "--store", str(tmp_path)]) == 0
    assert "0 broken" in capsys.readouterr().out


def test_info_names_an_unreadable_manifest_and_fails(tmp_path, capsys):
    _store(tmp_path)
    (tmp_path / "spectra" / "_jobs" / "job1.json").write_text("{")
    assert main(["info", "--store", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "spectra: 2 job(s)" in out and "unreadable:" in out and "job1.json" in out


def test_repair_removes_old_leftovers_only(tmp_path, capsys):
    store = _store(tmp_path)
    folder = tmp_path / "spectra" / "values"
    old_tmp, young_tmp, old_part = folder / ".a.parquet.1.tmp", folder / ".b.parquet.2.tmp", folder / "part-x-1.parquet"
    for path in (old_tmp, young_tmp, old_part):
        path.write_bytes(b"left by a killed writer")
    for path in (old_tmp, old_part):
        os.utime(path, (time.time() - 2 * LEFTOVER_AGE_S,) * 2)
    assert main(["verify", "--store", str(tmp_path)]) == 1
    assert "2 leftover(s)" in capsys.readouterr().out
    assert main(["verify", "--store", str(tmp_path), "--repair"]) == 0
    assert not old_tmp.exists() and not old_part.exists() and young_tmp.exists()
    assert len(store.table("spectra", "values")) == 60_000
