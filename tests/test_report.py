"""Offline HTML reports: one file, plotly.js inlined exactly once, every figure's data inside, no network
needed (checked in a real browser with every request outside the file refused); from the CLI and the app."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from subspace_atlas import report
from subspace_atlas.cli import main
from subspace_atlas.errors import AtlasError
from subspace_atlas.store import Store

ROOT = Path(__file__).resolve().parent.parent
DEMO = Store(ROOT / "data" / "demo-store")
PLOTLY_JS = get_plotlyjs()


def _figure_specs(page: str) -> list[dict]:
    """The data of every figure in a report, parsed back from its Plotly.newPlot calls."""
    calls = re.findall(r'Plotly\.newPlot\(\s*"([^"]+)",\s*(\[.*?\]),\s*\{', page, flags=re.S)
    return [{"id": div, "data": json.loads(data)} for div, data in calls]


@pytest.mark.unit
def test_html_inlines_plotly_once_and_carries_every_figure():
    y = np.array([0.125, 2.5, 7.75])
    figures = [go.Figure(go.Scatter(x=[1, 2, 3], y=y, name="alpha")), go.Figure(go.Bar(x=["q", "k"], y=[4, 5]))]
    page = report.html("Spectra <of> mine", [report.Section("First", figures[:1], note="a & b"),
                                            report.Section("Second", figures[1:])], source="s3://bucket/store")
    assert page.count(PLOTLY_JS) == 1 and len(PLOTLY_JS) > 1_000_000
    assert page.index(PLOTLY_JS) < page.index("<body>")
    specs = _figure_specs(page)
    assert [s["id"] for s in specs] == ["s0-fig0", "s1-fig0"]
    assert specs[1]["data"][0]["x"] == ["q", "k"]
    assert "<title>Spectra &lt;of&gt; mine</title>" in page and "a &amp; b" in page and "s3://bucket/store" in page
    ours = page.replace(PLOTLY_JS, "")  # (plotly.js itself names its CDN for optional extras; never fetched)
    assert not re.search(r'<script[^>]+src=|cdn\.plot\.ly|<link[^>]+href="http', ours)


@pytest.mark.integration
def test_store_report_of_the_demo_has_every_page():
    page = report.store_report(DEMO)
    headings = re.findall(r'<h2 id="s\d+">([^<]+)</h2>', page)
    for expected in ("What the store holds", "Spectra: pretrain-gpt2-stdlib", "Intruder dimensions",
                     "Task subspaces of fine-tunes of all-MiniLM-L6-v2", "Training dynamics: rl-grpo-seed0",
                     "Activation patching: ioi-gpt2, resid_post"):
        assert expected in headings, expected
    assert any(h.startswith("Update sparsity against") for h in headings)
    assert page.count(PLOTLY_JS) == 1 and len(_figure_specs(page)) >= 40
    spectra = report.store_report(DEMO, ["spectra"])
    assert all(h.startswith("Spectra: ") for h in re.findall(r'<h2 id="s\d+">([^<]+)</h2>', spectra))
    # The summary table's counts are the store's own job counts.
    counts = DEMO.jobs().query("analysis != 'zoo'").groupby("analysis").size()
    for analysis, n in counts.items():
        assert re.search(rf"<td>{analysis}</td>\s*<td>{n}</td>", page), analysis


@pytest.mark.integration
def test_report_errors_are_one_line(tmp_path):
    with pytest.raises(AtlasError, match="empty store"):
        report.store_report(Store(tmp_path / "nothing"))
    with pytest.raises(AtlasError, match="unknown page"):
        report.store_report(DEMO, ["nope"])
    only_zoo = Store(tmp_path / "zoo-only")
    only_zoo.write("zoo", "z1", {"runs": DEMO.table("zoo", "runs")}, {})
    with pytest.raises(AtlasError, match="no results stored for spectra"):
        report.store_report(only_zoo, ["spectra"])


@pytest.mark.integration
def test_cli_report_writes_one_file(tmp_path, capsys):
    out = tmp_path / "share" / "atlas.html"
    out.parent.mkdir()
    assert main(["report", "--store", str(DEMO.root), "--page", "patching", "overlap", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    page = out.read_text()
    figures = len(_figure_specs(page))
    assert f"{figures} figures" in said and figures >= 10
    assert page.count(PLOTLY_JS) == 1 and list(out.parent.iterdir()) == [out]  # no temporary left behind
    assert main(["report", "--store", str(tmp_path / "none"), "-o", str(tmp_path / "x.html")]) == 2
    assert not (tmp_path / "x.html").exists()


@pytest.mark.app
def test_the_app_offers_this_page_and_the_store_as_html(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SUBSPACE_ATLAS_STORE", str(DEMO.root))
    monkeypatch.setenv("SUBSPACE_ATLAS_READONLY", "1")
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60).run()
    at.switch_page("views/patching.py").run()
    assert not at.exception
    buttons = {b.key: b.label for b in at.get("download_button")}
    assert buttons["export_page"] == "This page as HTML" and buttons["export_store"] == "Whole store as HTML"
    shown = at.session_state["_figures"]
    assert len(shown) == len(at.get("plotly_chart")) >= 4
    # What the button builds: the figures exactly as the page drew them.
    page = report.html("Activation patching", [report.Section("Activation patching", shown)])
    drawn = [json.loads(c.proto.spec)["data"] for c in at.get("plotly_chart")]
    assert [s["data"] for s in _figure_specs(page)] == drawn


@pytest.mark.e2e
def test_report_renders_offline_in_a_browser(tmp_path):
    from test_e2e import CHROMIUM

    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's)")
    sync_api = pytest.importorskip("playwright.sync_api")
    out = tmp_path / "report.html"
    assert main(["report", "--store", str(DEMO.root), "--page", "spectra", "patching", "-o", str(out)]) == 0
    expected = len(_figure_specs(out.read_text()))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors, refused = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:")
                   else (refused.append(r.request.url), r.abort()))
        page.goto(out.as_uri())
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {expected}",
                               timeout=60_000)
        browser.close()
    assert errors == [] and refused == []
