"""An analysis registered from outside the package (here, this module) joins the CLI, ``scan``, the report and
the app's navigation, and runs, with no other file edited (docs/adding-an-analysis.md)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

import toy_checkpoints as toy
from subspace_atlas import analysis, report, scan
from subspace_atlas.cli import main
from subspace_atlas.specs import SCAN_MODELS, CheckpointAnalysis, Page
from subspace_atlas.store import Store

pytestmark = pytest.mark.integration

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")


@dataclass(frozen=True)
class NormParams:
    power: float = field(default=2.0, metadata={"help": "which entrywise p-norm of each matrix"})


def norms(stream, params: NormParams, context) -> dict[str, pd.DataFrame]:
    """The analysis's compute: one row per matrix with its entrywise p-norm."""
    rows = [{"tensor": info.name, "norm": float(torch.linalg.vector_norm(t.double(), params.power))}
            for info, t in stream]
    return {"matrices": pd.DataFrame(rows)}


def sections(store: Store) -> list[report.Section]:
    """The analysis's report section: its table."""
    table = store.table_if_stored("norms", "matrices")
    return [] if table is None else [report.Section("Matrix norms", note="p-norm per matrix", table=table)]


PAGE = 'import streamlit as st\nst.title("Matrix norms page")\n'


@pytest.fixture
def norms_spec(tmp_path):
    """The test's analysis, registered for one test (its app page a file of its own)."""
    page = tmp_path / "norms_page.py"
    page.write_text(PAGE)
    spec = CheckpointAnalysis(name="norms", description="entrywise p-norm of every 2-D weight matrix",
                              params=NormParams, tables=("matrices",), compute=f"{__name__}:norms",
                              scan=SCAN_MODELS, page=Page(str(page), "Norms", ":material/straighten:"),
                              report=f"{__name__}:sections")
    analysis.register(spec)
    yield spec
    analysis.unregister("norms")


@pytest.fixture
def model(tmp_path) -> Path:
    return toy.write_hf_folder(tmp_path / "models" / "tiny", toy.llama_state(0))


def test_the_cli_offers_it(norms_spec, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "norms" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["norms", "--help"])
    out = capsys.readouterr().out
    assert norms_spec.description in out and "--power" in out and "--base" not in out


def test_scan_plans_it_for_every_checkpoint(norms_spec, model):
    groups = dict(scan.plan(model.parent).groups)
    assert [j.spec.name for j in groups["norms of 1 checkpoint(s)"]] == ["norms"]
    assert scan.plan(model.parent, ("spectra",)).groups[0][0] == "spectra of 1 checkpoint(s)"


def test_it_runs_through_the_cli_and_reports(norms_spec, model, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["norms", str(model), "--power", "1", "--store", str(store), "--device", "cpu"]) == 0
    table = Store(store).table("norms", "matrices")
    state = toy.llama_state(0)
    expected = {name: float(t.double().abs().sum()) for name, t in state.items() if t.ndim == 2}
    assert dict(zip(table["tensor"], table["norm"])) == pytest.approx(expected)
    assert set(table["checkpoint"]) == {"tiny"} and "layer" in table  # labelled like every analysis
    assert main(["norms", str(model), "--power", "1", "--store", str(store)]) == 0
    assert "all 1 job(s) already in" in capsys.readouterr().out
    assert "norms" in report.pages()
    assert "Matrix norms" in report.store_report(Store(store), ["norms"])


def test_the_app_shows_its_page_and_offers_it(norms_spec, monkeypatch, tmp_path):
    monkeypatch.setenv("SUBSPACE_ATLAS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("SUBSPACE_ATLAS_READONLY", raising=False)
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.switch_page(norms_spec.page.path).run()
    assert not at.exception and [t.value for t in at.title] == ["Matrix norms page"]
    at.switch_page("views/compute.py").run()
    assert "norms" in at.selectbox(key="compute_analysis").options


def test_only_specs_register():
    with pytest.raises(TypeError):
        analysis.register(object())
