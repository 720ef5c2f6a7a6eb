"""Every page of the real Streamlit app through AppTest: no exception, charts present, modes honoured."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
DEMO = ROOT / "data" / "demo-store"


def _app(monkeypatch, store: Path | None, read_only: bool = False) -> AppTest:
    if store is not None:
        monkeypatch.setenv("SUBSPACE_ATLAS_STORE", str(store))
    else:
        monkeypatch.delenv("SUBSPACE_ATLAS_STORE", raising=False)
    if read_only:
        monkeypatch.setenv("SUBSPACE_ATLAS_READONLY", "1")
    else:
        monkeypatch.delenv("SUBSPACE_ATLAS_READONLY", raising=False)
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    return AppTest.from_file(MAIN, default_timeout=60)


def _charts(at: AppTest) -> list:
    return list(at.get("plotly_chart"))


@pytest.fixture(scope="module")
def run_store(tmp_path_factory) -> Path:
    """A store with spectra of a tiny two-checkpoint run (Llama names) and a matrix holding NaN."""
    from subspace_atlas.cli import main

    base = tmp_path_factory.mktemp("run")
    gen = torch.Generator().manual_seed(0)
    for step in (10, 20):
        folder = base / "run" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        tensors = {f"model.layers.{i}.self_attn.{p}_proj.weight": torch.randn(32, 32, generator=gen)
                   for i in range(2) for p in "qkvo"}
        tensors["model.layers.0.mlp.up_proj.weight"] = torch.randn(64, 32, generator=gen)
        bad = torch.randn(32, 64, generator=gen)
        bad[0, 0] = float("nan")
        tensors["model.layers.1.mlp.down_proj.weight"] = bad
        save_file(tensors, str(folder / "model.safetensors"))
    store = base / "store"
    assert main(["spectra", str(base / "run"), "--store", str(store)]) == 0
    return store


def test_demo_store_is_committed():
    assert (DEMO / "spectra" / "_jobs").is_dir(), "run `subspace-atlas demo` and commit data/demo-store"


def test_overview_opens_on_the_demo_store(monkeypatch):
    at = _app(monkeypatch, None).run()
    assert not at.exception
    assert any("demo-store" in c.value for c in at.caption)
    assert len(_charts(at)) == 1
    assert at.dataframe[0].value["checkpoint"].tolist() == ["all-MiniLM-L6-v2"]


def test_spectra_page_on_demo(monkeypatch):
    at = _app(monkeypatch, None).run()
    at.switch_page("views/spectra.py").run()
    assert not at.exception
    assert len(_charts(at)) == 5
    table = at.dataframe[0].value
    assert len(table) == 40 and {"alpha", "layer", "kind"} <= set(table.columns)


def test_spectra_filters_change_the_view(monkeypatch, run_store):
    at = _app(monkeypatch, run_store).run()
    at.switch_page("views/spectra.py").run()
    assert not at.exception
    full = at.dataframe[0].value
    assert set(full["checkpoint"]) == {"run/checkpoint-10", "run/checkpoint-20"}
    assert full.loc[full["tensor"].str.contains("down_proj"), "nonfinite"].gt(0).all()
    at.multiselect(key="spectra_kinds").set_value(["q"]).run()
    assert set(at.dataframe[0].value["kind"]) == {"q"}
    at.slider(key="spectra_layers").set_value((1, 1)).run()
    assert set(at.dataframe[0].value["layer"]) == {1}
    at.selectbox(key="spectra_metric").set_value("stable_rank").run()
    assert not at.exception and len(_charts(at)) == 5


def test_empty_store_explains_itself(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path / "nothing").run()
    assert not at.exception and "empty" in at.info[0].value
    at.switch_page("views/spectra.py").run()
    assert not at.exception and "No spectra" in at.info[0].value


def test_read_only_hides_work_and_paths(monkeypatch):
    at = _app(monkeypatch, None, read_only=True).run()
    assert not at.exception
    assert len(at.sidebar.text_input) == 0
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("views/compute.py")


def test_compute_page_launches_the_cli(monkeypatch, tmp_path):
    ckpt = tmp_path / "tiny.safetensors"
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(48, 24)}, str(ckpt))
    store = tmp_path / "store"
    at = _app(monkeypatch, store).run()
    at.switch_page("views/compute.py").run()
    assert not at.exception
    at.text_area(key="compute_paths").set_value(str(ckpt)).run()
    at.button(key="compute_go").click().run(timeout=120)
    assert not at.exception
    assert (store / "spectra" / "_jobs").is_dir() and len(list((store / "spectra" / "_jobs").glob("*.json"))) == 1
