"""The Compare page of the real Streamlit app through AppTest: the demo store, links, and a store lacking analyses."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from subspace_atlas import query
from subspace_atlas.store import Store

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
DEMO = ROOT / "data" / "demo-store"
PAGE = "views/compare.py"


def _app(monkeypatch, store: Path) -> AppTest:
    monkeypatch.setenv("SUBSPACE_ATLAS_STORE", str(store))
    monkeypatch.delenv("SUBSPACE_ATLAS_READONLY", raising=False)
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    return AppTest.from_file(MAIN, default_timeout=60)


def _open(monkeypatch, params: dict | None = None, store: Path = DEMO) -> AppTest:
    at = _app(monkeypatch, store)
    at.query_params.update(params or {})
    return at.switch_page(PAGE).run()


def _figures(at: AppTest) -> dict[str, dict]:
    """Every chart's plotly JSON by its title, in page order."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {spec["layout"]["title"]["text"]: spec for spec in specs}


def _z(figure: dict) -> np.ndarray:
    z = figure["data"][0]["z"]
    if isinstance(z, dict):  # plotly 6+: a typed base64 array, shaped
        flat = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"])
        return flat.reshape([int(n) for n in str(z["shape"]).split(",")]) if "shape" in z else flat
    return np.asarray(z, dtype=float)


def _grey(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith(":grey[")]


def test_compare_opens_on_a_base_and_one_of_its_fine_tunes(monkeypatch):
    at = _open(monkeypatch)
    assert not at.exception
    assert (at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value) == ("all-MiniLM-L6-v2",
                                                                                          "code-full")
    titles = list(_figures(at))
    assert titles[0].startswith("Δ alpha = code-full − all-MiniLM-L6-v2, by layer and kind (colour saturates")  # the −6 outlier
    assert titles[1].endswith(": singular values by rank")
    assert titles[2] == "intruders of code-full against all-MiniLM-L6-v2, per layer and kind (ε = 0.5)"
    grey = _grey(at)
    assert len(grey) == 2 and "no sparsity job pairs" in grey[0] and "no angles job covers" in grey[1]
    assert "subspace-atlas sparsity --base" in grey[0]
    assert sum(c.value.startswith("How to read this") for c in at.caption) == 3  # one under every chart
    assert at.query_params == {}, "the defaults are left out of the URL"


def test_changing_a_or_b_changes_the_charts_and_the_url(monkeypatch):
    at = _open(monkeypatch)
    before = _figures(at)
    at.selectbox(key="compare_b").set_value("sentiment-lora-r64").run()
    assert not at.exception
    after = _figures(at)
    delta_before, delta_after = (_z(next(iter(f.values()))) for f in (before, after))
    assert delta_before.shape == delta_after.shape and not np.allclose(delta_before, delta_after, equal_nan=True)
    # The intruders heatmap holds what the store says for the new pair, counted here independently.
    stored = query.scan(Store(DEMO), "intruders", "summary", where={"base": "all-MiniLM-L6-v2",
                                                                    "checkpoint": "sentiment-lora-r64"}).to_pandas()
    stored = stored[(stored["side"] == "left") & (stored["epsilon"] == 0.5)].dropna(subset=["layer"])
    intruders = after["intruders of sentiment-lora-r64 against all-MiniLM-L6-v2, per layer and kind (ε = 0.5)"]
    assert np.nansum(_z(intruders)) == stored["n_intruders"].sum() > 0
    assert at.query_params == {"b": "sentiment-lora-r64"}
    at.selectbox(key="compare_a").set_value("sentiment-lora-r64").run()
    assert not at.exception and "same checkpoint" in at.warning[0].value and not at.get("plotly_chart")


def test_a_link_opens_on_its_pair_and_metric(monkeypatch):
    link = {"a": "sentiment-full", "b": "topic-full", "metric": "stable_rank"}
    at = _open(monkeypatch, link)
    assert not at.exception
    assert {k: at.selectbox(key=f"compare_{k}").value for k in link} == link
    titles = list(_figures(at))
    assert titles[0] == "Δ stable rank = topic-full − sentiment-full, by layer and kind"  # no outlier: no clipping
    assert any(t.startswith("overlap of the updates sentiment-full") for t in titles)  # an angles job pairs them
    assert any("no intruders job pairs sentiment-full and topic-full" in g for g in _grey(at))
    assert at.query_params == link


def test_bad_values_in_a_link_fall_back_to_the_defaults(monkeypatch):
    default = _open(monkeypatch)
    at = _open(monkeypatch, {"a": "../../etc/passwd", "b": "", "metric": "__import__('os')", "side": "up",
                             "epsilon": "0.55", "matrix": "\x00"})
    assert not at.exception
    filters = {w.key: w.value for kind in ("selectbox", "radio") for w in getattr(at, kind)}
    assert filters == {w.key: w.value for kind in ("selectbox", "radio") for w in getattr(default, kind)}
    assert list(_figures(at)) == list(_figures(default)) and at.query_params == {}


@pytest.fixture(scope="module")
def spectra_only(tmp_path_factory) -> Path:
    """A copy of the demo store holding its spectra only: no intruders, sparsity or angles jobs."""
    store = tmp_path_factory.mktemp("spectra-only") / "store"
    shutil.copytree(DEMO / "spectra", store / "spectra")
    return store


def test_a_store_without_intruders_says_what_would_fill_the_section(monkeypatch, spectra_only):
    at = _open(monkeypatch, store=spectra_only)
    assert not at.exception
    assert (at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value) == (
        "code-full/checkpoint-8", "code-full/checkpoint-60"), "no base pairs: the first and last of a run"
    assert len(_figures(at)) == 2  # metric deltas, spectra overlaid
    grey = _grey(at)
    assert len(grey) == 3 and "no intruders job pairs code-full/checkpoint-8 and code-full/checkpoint-60" in grey[0]
    assert "subspace-atlas intruders --base" in grey[0] and "no sparsity job" in grey[1] and "no angles job" in grey[2]
    linked = _open(monkeypatch, {"a": "all-MiniLM-L6-v2", "b": "sentiment-lora-r8"}, store=spectra_only)
    assert not linked.exception and len(_figures(linked)) == 2
    assert "no intruders job pairs all-MiniLM-L6-v2 and sentiment-lora-r8" in _grey(linked)[0]
