"""A real browser against the real app: Playwright drives Debian's chromium through every page.

``streamlit run app/main.py`` starts on a free port on the committed demo store; the test waits for it,
visits every page, checks that charts render, changes a filter and checks that the chart and the URL change,
opens a page from a link with query parameters and checks its filters, and saves a screenshot of each page
under ``$E2E_SCREENSHOTS`` (default: ``test-artifacts/e2e``, git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# every page of the navigation (URL path: charts drawn on the demo store; no randomization results are stored there)
PAGES = {"": 3, "spectra": 4, "intruders": 6, "sparsity": 5, "angles": 2, "overlap": 1, "patching": 4,
         "randomization": 3, "compare": 3, "compute": 0}
SHOTS = Path(os.environ.get("E2E_SCREENSHOTS", ROOT / "test-artifacts" / "e2e"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    port = free_port()
    env = {**os.environ, "SUBSPACE_ATLAS_STORE": str(ROOT / "data" / "demo-store")}
    env.pop("SUBSPACE_ATLAS_READONLY", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"),
                             "--server.port", str(port), "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError(f"the app did not start: {proc.stdout.read1().decode(errors='replace')}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


DRAWN = "Array.from(document.querySelectorAll('.js-plotly-plot')).filter(d => d.querySelector('.main-svg'))"


def charts(page, at_least: int) -> int:
    """Wait until ``at_least`` plotly charts have drawn their SVG; return how many there are."""
    page.wait_for_function(f"{DRAWN}.length >= {at_least}", timeout=60_000)
    return page.evaluate(f"{DRAWN}.length")


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_renders_its_charts(app_url, browser, path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{app_url}/{path}")
    page.get_by_role("heading", level=1).first.wait_for(timeout=60_000)
    assert charts(page, PAGES[path]) >= PAGES[path]
    assert page.locator("[data-testid='stException']").count() == 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{path or 'overview'}.png"), full_page=True)
    page.close()


def test_the_pages_visited_are_the_navigation():
    from subspace_atlas import analysis

    registered = {Path(spec.page.path).stem for spec in analysis.SPECS.values() if spec.page}
    assert set(PAGES) == {"", "compare", "compute"} | registered


def test_a_link_with_a_store_and_a_tab_opens_both_in_a_fresh_page(app_url, browser, tmp_path):
    store = tmp_path / "angles-only"
    shutil.copytree(ROOT / "data" / "demo-store" / "angles", store / "angles")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # a new page: no session, only the link
    page.goto(f"{app_url}/angles?{urllib.parse.urlencode({'store': store, 'tab': 'By layer'})}")
    tab = page.get_by_role("tab", name="By layer")
    tab.wait_for(timeout=60_000)
    assert tab.get_attribute("aria-selected") == "true"
    shown = page.locator("[role='tabpanel']:visible .js-plotly-plot .gtitle")
    shown.first.wait_for(timeout=60_000)
    assert shown.evaluate_all("titles => titles.map(t => t.textContent.replaceAll('\\u200b', ''))") == [
        "subspace overlap ‖QaᵀQb‖²F / k across layers"]  # that tab's chart, drawn
    assert page.locator("[data-testid='stSidebar'] input").input_value() == str(store)
    _shot(page, "angles-from-link")
    page.get_by_role("link", name="Overview").click()  # the store goes along; the tab stays with its page
    page.get_by_text(f"Store: {store}").wait_for(timeout=60_000)
    page.wait_for_function("document.location.search.includes('store=')", timeout=60_000)
    assert "tab=" not in page.url
    page.close()


def test_changing_a_filter_changes_the_chart(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{app_url}/overlap")
    page.get_by_role("tab", name="Layer × step").click()
    charts(page, 2)  # over training, layer × step
    read = "(() => JSON.stringify(Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => d.data)))"
    before = page.evaluate(read)
    page.get_by_text("first", exact=True).click()  # compare with the first checkpoint, not the previous
    page.wait_for_function(f"{read}() !== {json.dumps(before)}", timeout=60_000)
    assert page.evaluate(read) != before
    page.wait_for_function("document.location.search.includes('reference=first')", timeout=60_000)  # the link too
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "overlap-first.png"), full_page=True)
    page.close()


def test_a_link_with_query_parameters_opens_the_page_on_its_filters(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{app_url}/spectra?metric=stable_rank&kinds=q&kinds=k&layers=2&layers=4")
    charts(page, 2)
    metric = page.locator("[data-testid='stSelectbox']").filter(has_text="Metric").locator("input")
    assert metric.input_value() == "stable_rank"
    kinds = page.locator("[data-testid='stMultiSelect']").filter(has_text="Kinds").inner_text()
    assert kinds.split()[1:] == ["q", "k"]
    assert "stable rank by layer and kind" in page.locator(".js-plotly-plot").first.inner_text()
    assert page.locator("[data-testid='stSlider']").filter(has_text="Layers").locator(
        "[data-testid='stSliderThumbValue']").all_inner_texts() == ["2", "4"]
    assert "metric=stable_rank" in page.url and "kinds=q&kinds=k" in page.url
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "spectra-from-link.png"), full_page=True)
    # Another page does not inherit these filters: its Kinds start from its own defaults.
    page.get_by_role("link", name="Intruders").click()
    page.get_by_role("heading", name="Intruder dimensions").wait_for(timeout=60_000)
    charts(page, 1)
    kinds = page.locator("[data-testid='stMultiSelect']").filter(has_text="Kinds").first.inner_text()
    assert "fc_in" in kinds.split() and "kinds=" not in page.url
    page.close()


# ---------------------------------------------------------------- Compare


def _titles(page, count: int) -> list[str]:
    """Wait until ``count`` plotly charts have drawn their SVG; return their titles as drawn, in page order."""
    page.wait_for_function(f"{DRAWN}.length >= {count}", timeout=60_000)
    return page.evaluate(f"{DRAWN}.map(d => d.querySelector('.gtitle').textContent)")


def _shot(page, name: str) -> None:
    """The whole page: the viewport is tall enough for every section (Streamlit scrolls inside, not the page)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_compare_page_draws_a_base_against_its_fine_tune(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 3000})
    page.goto(f"{app_url}/compare")
    titles = _titles(page, 3)
    assert titles[0].startswith("Δ alpha = code-full − all-MiniLM-L6-v2, by layer and kind (colour saturates")  # the −6 outlier
    assert titles[1].endswith("singular values by rank") and titles[2].startswith("intruders of code-full")
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.get_by_text("no sparsity job pairs all-MiniLM-L6-v2 and code-full").count() == 1
    _shot(page, "compare")
    page.close()


def test_compare_page_from_a_link_shows_two_tasks_angles(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 3000})
    page.goto(f"{app_url}/compare?a=sentiment-full&b=topic-full&metric=stable_rank")
    titles = _titles(page, 3)
    assert titles[0] == "Δ stable rank = topic-full − sentiment-full, by layer and kind"  # no outlier: no clipping
    assert titles[2].startswith("overlap of the updates sentiment-full")
    boxes = page.locator("[data-testid='stSelectbox'] input")  # A, B, metric, then the matrix
    assert [boxes.nth(k).input_value() for k in range(3)] == ["sentiment-full", "topic-full", "stable_rank"]
    assert "a=sentiment-full" in page.url and "b=topic-full" in page.url
    _shot(page, "compare-from-link")
    page.close()
