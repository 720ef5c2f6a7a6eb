"""A hosted dashboard: installs without torch, the Procfile line serves the app on $PORT, read-only mode
refuses work and paths outside the store (traversal attempts over HTTP and through the app), and
Streamlit's login gates every page when configured."""

from __future__ import annotations

import http.client
import os
import shlex
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from subspace_atlas import analysis

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
DEMO = ROOT / "data" / "demo-store"
VIEWS = ["overview", *(Path(spec.page.path).stem for spec in analysis.SPECS.values() if spec.page)]
SECRET_FILE = "root:x:0:0"  # what /etc/passwd would leak
AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "c" * 32, "client_id": "atlas",
        "client_secret": "secret", "server_metadata_url": "https://login.example.org/.well-known/openid-configuration"}


def _app(monkeypatch, read_only: bool = True) -> AppTest:
    monkeypatch.setenv("SUBSPACE_ATLAS_STORE", str(DEMO))
    monkeypatch.setenv("SUBSPACE_ATLAS_READONLY", "1" if read_only else "0")
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    return AppTest.from_file(MAIN, default_timeout=60)


@pytest.mark.unit
def test_the_dashboard_install_holds_no_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    light = project["dependencies"] + project["optional-dependencies"]["app"]
    assert not [d for d in light if d.split(">")[0].split("=")[0].strip() in ("torch", "safetensors", "scipy")]
    lines = [ln.strip() for ln in (ROOT / "requirements-dashboard.txt").read_text().splitlines()]
    assert [ln for ln in lines if ln and not ln.startswith("#")] == ["-e .[app]"]


_NO_TORCH = textwrap.dedent("""
    import sys
    for name in ("torch", "safetensors", "scipy", "transformers"):
        sys.modules[name] = None  # importing any of them now fails, as on a light host
    sys.argv = ["streamlit"]
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file({main!r}, default_timeout=120).run()
    assert not at.exception, at.exception
    shown = {{"overview": len(at.get("plotly_chart"))}}
    for view in {views!r}[1:]:
        at.switch_page(f"views/{{view}}.py").run()
        assert not at.exception, (view, at.exception)
        shown[view] = len(at.get("plotly_chart"))
    print(shown)
""")


@pytest.mark.app
def test_every_page_renders_with_torch_unimportable():
    env = {**os.environ, "SUBSPACE_ATLAS_STORE": str(DEMO), "SUBSPACE_ATLAS_READONLY": "1"}
    out = subprocess.run([sys.executable, "-c", _NO_TORCH.format(main=MAIN, views=VIEWS)], env=env, cwd=ROOT / "app",
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    shown = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 (our own subprocess's dict)
    assert all(shown[v] >= 1 for v in VIEWS), shown


@pytest.fixture(scope="module")
def procfile_app():
    """The Procfile's web line, run as a host runs it: by a shell, with $PORT set, in read-only mode."""
    from test_e2e import free_port

    (line,) = [ln for ln in (ROOT / "Procfile").read_text().splitlines() if ln.startswith("web:")]
    port = free_port()
    env = {**os.environ, "PORT": str(port), "SUBSPACE_ATLAS_READONLY": "1", "SUBSPACE_ATLAS_STORE": str(DEMO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", "-c", f"exec {line.removeprefix('web:').strip()}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    assert r.read() == b"ok"
                    break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read1().decode(errors="replace")
                time.sleep(0.5)
        yield url, port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.integration
def test_procfile_line_serves_the_page_on_port(procfile_app):
    url, port = procfile_app
    assert "--server.port=$PORT" in (ROOT / "Procfile").read_text()
    with urllib.request.urlopen(url, timeout=10) as r:
        page = r.read().decode()
    assert r.status == 200 and '<div id="root">' in page


@pytest.mark.integration
@pytest.mark.parametrize("path", [
    "/../../../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static/../../../../../../etc/passwd", "/static/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/media/../../../../../etc/passwd", "/app/static/../../../../../etc/passwd", "/component/../../../etc/passwd",
    "/data/demo-store/spectra/_jobs", "/pyproject.toml", "/app/static/pyproject.toml",
])
def test_traversal_over_http_reaches_nothing(procfile_app, path):
    _, port = procfile_app
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)  # sent verbatim: no client-side normalisation of '..'
    response = conn.getresponse()
    body = response.read().decode(errors="replace")
    conn.close()
    assert SECRET_FILE not in body and "[project]" not in body and '"fingerprint"' not in body
    assert response.status in (200, 301, 302, 400, 403, 404)


@pytest.mark.e2e
def test_read_only_host_in_a_browser_offers_no_work_and_no_other_store(procfile_app):
    from test_e2e import CHROMIUM, charts

    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's)")
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _ = procfile_app
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/compute?store=/etc&store_root=/etc")  # a page that does not exist here, another store
        page.get_by_text("Stored jobs").wait_for(timeout=60_000)  # … falls back to the Overview
        charts(page, 3)
        nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert "Compute" not in nav and "Overview" in nav
        assert page.locator('[data-testid="stTextInput"]').count() == 0
        captions = page.locator('[data-testid="stMain"] [data-testid="stCaptionContainer"]').all_inner_texts()
        assert f"Store: {DEMO}" in captions
        browser.close()


@pytest.mark.app
def test_read_only_ignores_a_store_set_by_session_or_link(monkeypatch, tmp_path):
    at = _app(monkeypatch)
    at.session_state["store_root"] = "/etc"
    at.query_params["store"] = "/etc"
    at.run()
    assert not at.exception
    assert [c.value for c in at.caption if "Store:" in c.value] == [f"Store: `{DEMO}`"]
    assert len(at.sidebar.text_input) == 0 and len(at.get("plotly_chart")) == 3


@pytest.mark.app
def test_writable_mode_does_let_the_sidebar_choose_a_store(monkeypatch, tmp_path):
    at = _app(monkeypatch, read_only=False).run()
    (tmp_path / "elsewhere").mkdir()  # a folder with no jobs yet (a missing one is "no such store")
    at.sidebar.text_input(key="store_root").set_value(str(tmp_path / "elsewhere")).run()
    assert not at.exception
    assert any("This store is empty" in i.value for i in at.info)


@pytest.mark.app
def test_login_gates_every_page_when_configured(monkeypatch):
    at = _app(monkeypatch)
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Log in"]
    assert len(at.get("plotly_chart")) == 0 and len(at.dataframe) == 0
    at.switch_page("views/spectra.py").run()  # a deep link shows the login too
    assert not at.exception and [b.label for b in at.button] == ["Log in"] and len(at.get("plotly_chart")) == 0

    at.user = {"is_logged_in": True, "email": "ana@lab.example", "name": "Ana"}
    at.run()  # the deep link now shows its page
    assert not at.exception and len(at.get("plotly_chart")) >= 4
    assert [b.label for b in at.sidebar.button] == ["Log out ana@lab.example"]


@pytest.mark.app
def test_login_allow_list_turns_other_accounts_away(monkeypatch):
    at = _app(monkeypatch)
    at.secrets["auth"] = AUTH
    at.secrets["atlas"] = {"allowed_emails": ["bob@lab.example"]}
    at.user = {"is_logged_in": True, "email": "eve@elsewhere.example"}
    at.run()
    assert not at.exception and len(at.get("plotly_chart")) == 0
    assert [e.value for e in at.error] == ["eve@elsewhere.example may not see this dashboard."]
    at.user = {"is_logged_in": True, "email": "bob@lab.example"}
    at.run()
    assert not at.exception and len(at.get("plotly_chart")) == 3


@pytest.mark.app
def test_without_auth_secrets_there_is_no_login(monkeypatch):
    at = _app(monkeypatch).run()
    assert not at.exception and not [b for b in at.button if b.label == "Log in"]
    assert len(at.get("plotly_chart")) == 3


@pytest.mark.unit
def test_procfile_is_a_single_shell_line():
    (line,) = [ln for ln in (ROOT / "Procfile").read_text().splitlines() if ln.strip()]
    words = shlex.split(line.removeprefix("web:"))
    assert words[:3] == ["streamlit", "run", "app/main.py"] and "--server.headless=true" in words
