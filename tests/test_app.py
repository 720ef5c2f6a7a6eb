"""Every page of the real Streamlit app through AppTest: no exception, charts present, modes honoured."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from subspace_atlas import analysis

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


def _plotly_array(value) -> np.ndarray:
    """A plotly JSON array: a list, or the typed base64 form ({"dtype", "bdata"}) plotly 6+ writes."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


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
    from subspace_atlas import zoo

    at = _app(monkeypatch, None).run()
    assert not at.exception
    assert any("demo-store" in c.value for c in at.caption)
    assert len(_charts(at)) == 3  # zoo accuracy, pretraining loss curve, stored jobs
    runs = at.dataframe[0].value
    assert set(runs["run"]) == {spec.name for spec in zoo.plan() if spec.kind != "cast"}
    tuned = runs.dropna(subset=["heldout_accuracy"])
    assert (tuned["heldout_accuracy"] > tuned["chance_accuracy"] + 0.2).all(), "every demo fine-tune learned"
    assert "all-MiniLM-L6-v2" in set(at.dataframe[1].value["checkpoint"])


def test_spectra_page_on_demo_shows_base_fine_tunes_and_pretraining(monkeypatch):
    from subspace_atlas import zoo

    at = _app(monkeypatch, None).run()
    at.switch_page("views/spectra.py").run()
    assert not at.exception
    assert len(_charts(at)) == 5
    shown = set(at.dataframe[0].value["checkpoint"])
    fine_tunes = {spec.name for spec in zoo.plan() if spec.kind in ("finetune", "continual")}
    assert shown == {"all-MiniLM-L6-v2"} | fine_tunes
    at.selectbox(key="spectra_group").set_value("pretrain-gpt2-stdlib").run()
    assert not at.exception
    steps = at.dataframe[0].value["step"]
    assert steps.nunique() >= 20
    over_training = json.loads(at.get("plotly_chart")[2].proto.spec)
    xs = {int(x) for trace in over_training["data"] for x in _plotly_array(trace["x"])}
    assert xs == set(steps), "the over-training chart plots every checkpoint's step"


def test_spectra_filters_change_the_view(monkeypatch, run_store):
    at = _app(monkeypatch, run_store).run()
    at.switch_page("views/spectra.py").run()
    assert not at.exception
    full = at.dataframe[0].value
    assert set(full["checkpoint"]) == {"run/checkpoint-10", "run/checkpoint-20"}
    assert full.loc[full["tensor"].str.contains("down_proj"), "nonfinite"].gt(0).all()
    at.multiselect(key="spectra_kinds:run").set_value(["q"]).run()
    assert set(at.dataframe[0].value["kind"]) == {"q"}
    at.slider(key="spectra_layers:run").set_value((1, 1)).run()
    assert set(at.dataframe[0].value["layer"]) == {1}
    at.selectbox(key="spectra_metric").set_value("stable_rank").run()
    assert not at.exception and len(_charts(at)) == 5


def test_empty_store_explains_itself(monkeypatch, tmp_path):
    (tmp_path / "nothing").mkdir()
    at = _app(monkeypatch, tmp_path / "nothing").run()
    assert not at.exception and "empty" in at.info[0].value
    at.switch_page("views/spectra.py").run()
    assert not at.exception and "No spectra" in at.info[0].value
    at.switch_page("views/intruders.py").run()
    assert not at.exception and "No intruder results" in at.info[0].value
    at.switch_page("views/sparsity.py").run()
    assert not at.exception and "No sparsity results" in at.info[0].value
    at.switch_page("views/angles.py").run()
    assert not at.exception and "No task angles" in at.info[0].value


READING_PAGES = ["views/overview.py", *(spec.page.path for spec in analysis.SPECS.values() if spec.page)]


def _says_no_such_store(at: AppTest, root: Path) -> None:
    """Every page that reads shows one "no such store" error and nothing else (no "compute them" advice)."""
    for page in READING_PAGES:
        at.switch_page(page).run()
        assert not at.exception
        assert [e.value for e in at.error] == [f"no such store: {root}"], page
        assert not at.info and not at.title and not _charts(at), page


def test_a_mistyped_store_path_says_no_such_store(monkeypatch, tmp_path):
    typo = tmp_path / "stroe"
    at = _app(monkeypatch, None)
    monkeypatch.setattr(sys, "argv", ["streamlit", "--store", str(typo)])
    _says_no_such_store(at.run(), typo)
    assert not typo.exists(), "looking at a store never creates it"


def test_a_mistyped_store_in_the_sidebar_says_no_such_store(monkeypatch, tmp_path):
    at = _app(monkeypatch, None).run()
    assert not at.error
    at.sidebar.text_input(key="store_root").set_value(str(tmp_path / "stroe")).run()
    _says_no_such_store(at, tmp_path / "stroe")


def test_checkpoint_lists_follow_training_steps_not_names(monkeypatch):
    at = _app(monkeypatch, None).run()
    at.switch_page("views/spectra.py").run()
    at.selectbox(key="spectra_group").set_value("sentiment-full").run()
    assert not at.exception
    steps = at.dataframe[0].value.drop_duplicates("checkpoint").set_index("checkpoint")["step"]
    assert "sentiment-full/checkpoint-8" in steps
    for key in ("spectra_checkpoints:sentiment-full", "spectra_heat_checkpoint", "spectra_esd_checkpoint"):
        widget = at.multiselect(key=key) if key.startswith("spectra_checkpoints") else at.selectbox(key=key)
        assert [steps[c] for c in widget.options] == sorted(steps), key  # checkpoint-8 first, not after -60
    at.switch_page("views/intruders.py").run()
    options = at.selectbox(key="intruders_one_checkpoint").options
    run = [c for c in options if c.startswith("code-full/")]
    assert [int(c.rsplit("-", 1)[1]) for c in run] == sorted(int(c.rsplit("-", 1)[1]) for c in run)
    assert options.index("code-full/checkpoint-8") + len(run) - 1 == options.index("code-full/checkpoint-60")


def test_angles_page_on_demo_shows_tasks_pairs_and_alignment(monkeypatch):
    at = _app(monkeypatch, None).run()
    at.switch_page("views/angles.py").run()
    assert not at.exception
    assert len(_charts(at)) == 5  # task × task, by layer, one pair, base alignment, SAR
    matrix = json.loads(at.get("plotly_chart")[0].proto.spec)
    tasks = {"sentiment-full", "topic-full", "code-full", "sentiment-lora-r8", "topic-lora-r8", "code-lora-r8",
             "continual after sentiment", "continual after topic"}
    assert set(matrix["data"][0]["x"]) == tasks
    at.multiselect(key="angles_tasks:all-MiniLM-L6-v2").set_value(["sentiment-full", "topic-full"]).run()
    assert not at.exception
    assert set(at.dataframe[0].value["checkpoint_a"]) | set(at.dataframe[0].value["checkpoint_b"]) == {
        "sentiment-full", "topic-full"}
    whole = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["z"]
    at.selectbox(key="angles_layer").set_value(5).run()
    assert not at.exception
    layer5 = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["z"]
    assert layer5 != whole  # one layer's overlap, not the model's mean
    at.radio(key="angles_value").set_value("mean_angle_deg").run()
    at.selectbox(key="angles_side").set_value("right").run()
    assert not at.exception
    spectrum = json.loads(at.get("plotly_chart")[2].proto.spec)
    assert spectrum["data"] and all(0 <= y <= 90 for y in charts_y(spectrum["data"][0]))


def charts_y(trace) -> list:
    return list(_plotly_array(trace["y"]))


def test_sparsity_page_on_demo_compares_rl_and_sft(monkeypatch):
    at = _app(monkeypatch, None).run()
    at.switch_page("views/sparsity.py").run()
    assert not at.exception
    assert len(_charts(at)) == 5  # compare, heatmap, over training, overlap, update rank
    assert set(at.selectbox(key="sparsity_base").options) == {"gpt2-stdlib-bf16", "pretrain-gpt2-stdlib (fp32)"}
    at.selectbox(key="sparsity_base").set_value("gpt2-stdlib-bf16").run()
    compare = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in compare["data"]] == ["exact", "atol", "ulp"]
    assert set(compare["data"][0]["x"]) == {"rl-grpo-seed0", "rl-grpo-seed1", "sft-seed0"}
    overlap = json.loads(at.get("plotly_chart")[3].proto.spec)
    assert any(t["name"].startswith("chance") for t in overlap["data"])
    at.radio(key="sparsity_definition").set_value("ulp").run()
    assert not at.exception
    at.multiselect(key="sparsity_kinds:gpt2-stdlib-bf16").set_value(["qkv"]).run()
    assert set(at.dataframe[0].value["kind"]) == {"qkv"}


def test_intruders_page_on_demo_compares_full_and_lora(monkeypatch):
    from subspace_atlas import zoo

    at = _app(monkeypatch, None).run()
    at.switch_page("views/intruders.py").run()
    assert not at.exception
    assert len(_charts(at)) == 6  # heatmap, ε sweep, over training, similarity, spectrum, mitigation
    kinds = at.multiselect(key="intruders_kinds")
    assert kinds.value == kinds.options and "embed" in kinds.value, "starts on every kind, not only shared ones"
    fine_tunes = {spec.name for spec in zoo.plan() if spec.kind in ("finetune", "continual")}
    assert set(at.multiselect(key="intruders_compare").value) == fine_tunes
    sweep = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert {trace["name"] for trace in sweep["data"]} == fine_tunes
    over_training = json.loads(at.get("plotly_chart")[2].proto.spec)
    runs = {trace["name"] for trace in over_training["data"]}
    assert "sentiment-lora-r8" in runs and "sentiment-full" in runs
    # One matrix of a LoRA fine-tune, its worst matrix first: the spectrum marks its intruders.
    at.selectbox(key="intruders_one_checkpoint").set_value("sentiment-lora-r64").run()
    assert not at.exception
    spectrum = json.loads(at.get("plotly_chart")[4].proto.spec)
    names = [trace["name"] for trace in spectrum["data"]]
    assert "intruder" in names and any(n.startswith("mitigated") for n in names)
    at.selectbox(key="intruders_side").set_value("left").run()
    at.selectbox(key="intruders_epsilon").set_value(0.9).run()
    at.multiselect(key="intruders_kinds").set_value(["q", "v"]).run()
    assert not at.exception
    assert set(at.dataframe[-1].value["kind"]) == {"q", "v"}
    assert set(at.dataframe[-1].value["epsilon"]) == {0.9}


def test_intruders_mitigation_follows_the_chosen_epsilon(monkeypatch):
    """At ε = 0.7 this matrix has 3 intruders (0 at the stored ε = 0.5): table, spectrum and mitigation agree."""
    from subspace_atlas.store import Store

    tensor = "encoder.layer.5.attention.output.dense.weight"
    at = _app(monkeypatch, None).run()
    at.switch_page("views/intruders.py").run()
    at.selectbox(key="intruders_epsilon").set_value(0.7).run()
    at.selectbox(key="intruders_one_checkpoint").set_value("code-lora-r8").run()
    at.selectbox(key="intruders_one_tensor:code-lora-r8").set_value(tensor).run()
    assert not at.exception
    vectors = at.dataframe[0].value
    sigma = vectors.loc[vectors["is_intruder"], "sigma"].to_numpy()
    assert len(sigma) == 3
    spectrum, mitigation = (json.loads(chart.proto.spec) for chart in _charts(at)[4:6])
    marked = next(trace for trace in spectrum["data"] if trace["name"] == "intruder")
    assert len(_plotly_array(marked["x"])) == 3
    matrix = Store(DEMO).table("intruders", "matrices", {"checkpoint": "code-lora-r8", "tensor": tensor}).iloc[0]
    assert matrix["n_intruders"] == 0, "stored at the job's first ε, 0.5"
    assert mitigation["data"], "not 'no intruders'"
    moved = _plotly_array(mitigation["data"][0]["y"])
    assert moved[0] == pytest.approx(np.sqrt(np.sum(sigma**2)) / matrix["norm_tuned"], rel=1e-5)


def test_read_only_hides_work_and_paths(monkeypatch):
    at = _app(monkeypatch, None, read_only=True).run()
    assert not at.exception
    assert len(at.sidebar.text_input) == 0
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("views/compute.py")


def _wait(at: AppTest, done, seconds: float = 180) -> AppTest:
    """Rerun the page (as the job's auto-refreshing fragment does) until ``done(at)`` or the time is up."""
    deadline = time.monotonic() + seconds
    while not done(at) and time.monotonic() < deadline:
        time.sleep(0.5)
        at.run()
    assert not at.exception
    return at


def test_compute_page_writes_to_a_user_store_not_the_demo_store(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    at = _app(monkeypatch, None).run()
    at.switch_page("views/compute.py").run()
    assert not at.exception
    user = str(tmp_path / "cache" / "subspace-atlas" / "store")
    assert at.text_input(key="compute_store").value == user
    assert any("demo store" in i.value and user in i.value for i in at.info), "it says why"
    assert f"--store {user}" in at.code[0].value and "demo-store" not in at.code[0].value
    own = tmp_path / "mine"
    at = _app(monkeypatch, own).run()
    at.switch_page("views/compute.py").run()
    assert at.text_input(key="compute_store").value == str(own) and not at.info, "a session's own store: itself"


def test_compute_page_offers_every_registered_analysis(monkeypatch, tmp_path):
    from subspace_atlas.specs import PairedAnalysis, RunAnalysis

    at = _app(monkeypatch, tmp_path / "store").run()
    at.switch_page("views/compute.py").run()
    assert at.selectbox(key="compute_analysis").options == [spec.name for spec in analysis.batch_specs()]
    at.text_area(key="compute_paths").set_value("a.safetensors")
    for spec in analysis.batch_specs():
        name = spec.name
        at.selectbox(key="compute_analysis").set_value(name).run()
        assert not at.exception
        assert any(c.value == spec.description for c in at.caption)
        paired, run = isinstance(spec, PairedAnalysis), isinstance(spec, RunAnalysis)
        keys = {t.key for t in at.text_input}
        assert ("compute_base" in keys) == paired and ("compute_start" in keys) == run
        if paired:
            at.text_input(key="compute_base").set_value("").run()
        assert at.code[0].value.startswith(f"subspace-atlas {name} a.safetensors --store ")
        assert at.button(key="compute_go").disabled == paired, "a paired analysis needs its base first"
        if paired:
            at.text_input(key="compute_base").set_value("base folder").run()
            assert "--base 'base folder'" in at.code[0].value and not at.button(key="compute_go").disabled


def test_compute_page_runs_the_cli_in_the_background(monkeypatch, tmp_path, tiny_model):
    store = tmp_path / "target"
    at = _app(monkeypatch, tmp_path / "read").run()
    at.switch_page("views/compute.py").run()
    at.text_input(key="compute_store").set_value(str(store))
    at.text_area(key="compute_paths").set_value(str(tiny_model))
    at.selectbox(key="compute_device").set_value("cpu")
    at.text_input(key="compute_flags").set_value("--tensors 'mlp'").run()
    at.button(key="compute_go").click().run()
    assert not at.exception
    job = at.session_state["compute_job"]
    assert job["process"].args[:4] == [sys.executable, "-m", "subspace_atlas.cli", "spectra"]
    assert job["process"].args[-2:] == ["--tensors", "mlp"]
    assert job["process"].poll() is None, "the page came back while the CLI still runs"
    assert any("Running" in i.value for i in at.info) and at.button(key="compute_stop")
    assert at.button(key="compute_go").disabled, "one job at a time"
    _wait(at, lambda at: len(at.success) > 0)
    assert at.success[0].value.startswith("spectra: computed 1 job(s)") and not at.error
    assert len(list((store / "spectra" / "_jobs").glob("*.json"))) == 1 and not (tmp_path / "read").exists()
    assert not at.button(key="compute_go").disabled
    at.button(key="compute_open").click().run()
    assert at.sidebar.text_input(key="store_root").value == str(store), "the session now reads the job's store"


def test_compute_page_shows_the_cli_error_line(monkeypatch, tmp_path):
    store, missing = tmp_path / "store", tmp_path / "missing.safetensors"
    at = _app(monkeypatch, store).run()
    at.switch_page("views/compute.py").run()
    at.text_area(key="compute_paths").set_value(str(missing)).run()
    at.button(key="compute_go").click().run()
    _wait(at, lambda at: len(at.error) > 0 or len(at.success) > 0)
    assert [e.value for e in at.error] == [f"subspace-atlas: error: {missing}: no such file or folder"]
    assert not at.success and not store.exists()


def test_compute_page_stops_a_job(monkeypatch, tmp_path, tiny_model):
    at = _app(monkeypatch, tmp_path / "store").run()
    at.switch_page("views/compute.py").run()
    at.text_area(key="compute_paths").set_value(str(tiny_model)).run()
    at.button(key="compute_go").click().run()
    at.button(key="compute_stop").click().run()
    _wait(at, lambda at: len(at.warning) > 0, seconds=60)
    assert "Stopped" in at.warning[0].value and not at.success and not at.error
    assert at.session_state["compute_job"]["process"].returncode != 0


def test_overlap_page_on_demo_shows_runs_references_and_convergence(monkeypatch):
    at = _app(monkeypatch, None).run()
    at.switch_page("views/overlap.py").run()
    assert not at.exception
    assert len(_charts(at)) == 6  # over steps, layer × step, checkpoint matrix, convergence, spectrum, WeLore
    assert {"pretrain-gpt2-stdlib", "rl-grpo-seed0", "sft-seed0", "sentiment-full"} <= set(
        at.selectbox(key="overlap_run").options)
    at.selectbox(key="overlap_run").set_value("pretrain-gpt2-stdlib").run()
    assert set(at.selectbox(key="overlap_of").options) == {"weights", "updates", "steps", "gradients"}
    at.selectbox(key="overlap_of").set_value("gradients").run()
    assert not at.exception
    convergence = json.loads(at.get("plotly_chart")[3].proto.spec)
    assert {t["name"] for t in convergence["data"]} == {"gradients"}, "the convergence of the subspaces chosen only"
    grid = json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]
    before = grid["z"]
    assert len(_plotly_array(grid["x"])) == 24  # 25 checkpoints: 24 steps compared with their previous one
    matrix = json.loads(at.get("plotly_chart")[2].proto.spec)
    assert "not computed" not in matrix["layout"]["title"]["text"]  # the demo compares every two
    at.radio(key="overlap_reference").set_value("first").run()
    assert not at.exception
    assert json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]["z"] != before
    at.multiselect(key="overlap_kinds:pretrain-gpt2-stdlib").set_value(["qkv"]).run()
    assert set(at.dataframe[0].value["kind"]) == {"qkv"}
    assert set(at.dataframe[0].value["of"]) == {"gradients"}
    at.radio(key="overlap_rule").set_value("qgalore_step").run()
    assert not at.exception


def test_convergence_draws_layers_that_never_settled_apart(monkeypatch):
    """Steps of GPT-2's layer 0 never all reach Q-GaLore's threshold: marked above the bars, not at step 0."""
    at = _app(monkeypatch, None).run()
    at.switch_page("views/overlap.py").run()
    at.selectbox(key="overlap_run").set_value("pretrain-gpt2-stdlib").run()
    at.selectbox(key="overlap_of").set_value("steps").run()
    at.radio(key="overlap_rule").set_value("qgalore_step").run()
    assert not at.exception
    traces = {t["name"]: t for t in json.loads(at.get("plotly_chart")[3].proto.spec)["data"]}
    assert set(traces) == {"steps", "not settled"}
    never, bars = traces["not settled"], _plotly_array(traces["steps"]["y"]).astype(float)
    assert list(never["text"]) == ["not settled"] and min(_plotly_array(never["y"])) > np.nanmax(bars)


def test_patching_page_on_demo_shows_verdicts_parts_and_layers(monkeypatch):
    at = _app(monkeypatch, None).run()
    at.switch_page("views/patching.py").run()
    assert not at.exception
    assert len(_charts(at)) == 4  # verdict grid, parts, norm split, across layers
    assert set(at.selectbox(key="patching_model").options) >= {"toy-illusion"}
    assert at.selectbox(key="patching_model").value != "toy-illusion"  # the real model first
    grid = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert set(grid["y"]) == {"das", "mean_diff", "probe", "gradient"}
    shown = at.dataframe[0].value
    full = shown[shown["component"] == "full"]
    strongest = full.loc[full["fldd"].abs().idxmax()]
    site = at.selectbox(key="patching_site:ioi-gpt2").value
    opened = (at.selectbox(key=f"patching_layer:ioi-gpt2:{site}").value,
              at.selectbox(key=f"patching_method:ioi-gpt2:{site}").value)
    assert opened == (strongest["layer"], strongest["method"]) and strongest["layer"] != 0, \
        "opens on the largest effect, not on layer 0 where everything is 0 %"
    at.selectbox(key="patching_model").set_value("toy-illusion").run()
    assert not at.exception
    at.selectbox(key="patching_method:toy-illusion:mlp_hidden").set_value("planted_illusory").run()
    assert not at.exception
    assert any("illusory" in m.value for m in at.markdown)
    parts = json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]
    assert [round(float(v)) for v in _plotly_array(parts["y"])] == [200, 100, 0, 0]  # whole, v, v_row, v_null


# Filters in the URL: a link (query parameters) reproduces a view; a link's bad values are ignored.

def _open(monkeypatch, page: str, params: dict | None = None, store: Path | None = None,
          read_only: bool = False) -> AppTest:
    """A new session opened on ``page`` by a link with the query ``params``, as a shared URL opens it."""
    at = _app(monkeypatch, store, read_only)
    at.query_params.update(params or {})
    return at.switch_page(page).run()


def _specs(at: AppTest) -> list[str]:
    """Every chart's plotly JSON; on a page without charts (Compute), the command it shows."""
    return [c.proto.spec for c in at.get("plotly_chart")] or [c.value for c in at.code]


def _filters(at: AppTest) -> dict:
    return {w.key: w.value for kind in ("selectbox", "multiselect", "radio", "slider") for w in getattr(at, kind)}


def _title(spec: str) -> str:
    """A chart's title and its traces' names."""
    spec = json.loads(spec)
    return " | ".join([(spec["layout"].get("title") or {}).get("text", "")] + [str(t.get("name")) for t in spec["data"]])


@pytest.fixture(scope="module")
def default_views() -> dict:
    """(filters, figures) of each page opened without query parameters, filled once per page and store."""
    return {}


def _default(monkeypatch, views: dict, page: str, store: Path | None = None) -> tuple[dict, list]:
    if (page, store) not in views:
        at = _open(monkeypatch, page, store=store)
        assert not at.exception
        assert at.query_params == {}, "defaults are left out of the URL"
        views[page, store] = (_filters(at), _specs(at))
    return views[page, store]


# page: (a link's query, the filters it sets, (chart, what that chart's title or traces then say))
LINKS = {
    "views/spectra.py": ({"group": "sentiment-full", "metric": "stable_rank",
                          "checkpoints": ["sentiment-full/checkpoint-8", "sentiment-full/checkpoint-60"]},
                         {"spectra_group": "sentiment-full", "spectra_metric": "stable_rank",
                          "spectra_checkpoints:sentiment-full": ["sentiment-full/checkpoint-8",
                                                                 "sentiment-full/checkpoint-60"]},
                         (2, "mean stable rank per kind over training")),
    "views/intruders.py": ({"heat_checkpoint": "code-full", "lambda": "0.30"},
                           {"intruders_heat_checkpoint": "code-full", "intruders_lambda": 0.3},
                           (4, "mitigated, λ = 0.3")),
    "views/sparsity.py": ({"base": "pretrain-gpt2-stdlib (fp32)", "definition": "ulp"},
                          {"sparsity_base": "pretrain-gpt2-stdlib (fp32)", "sparsity_definition": "ulp"},
                          (1, "in rl-grpo-seed0 (fp32) (ulp)")),
    "views/angles.py": ({"side": "right", "layer": "5", "show": "mean_angle_deg"},
                        {"angles_side": "right", "angles_layer": 5, "angles_value": "mean_angle_deg"},
                        (0, "mean principal angle")),
    "views/overlap.py": ({"of": "gradients", "reference": "first", "tau": "0.21"},
                         {"overlap_of": "gradients", "overlap_reference": "first", "overlap_tau": 0.21},
                         (0, "overlap with the first checkpoint")),
    "views/patching.py": ({"model": "toy-illusion", "method": "planted_illusory"},
                          {"patching_model": "toy-illusion", "patching_method:toy-illusion:mlp_hidden": "planted_illusory"},
                          (1, "verdict: illusory")),
    "views/compute.py": ({"device": "cpu"}, {"compute_device": "cpu"}, (0, "--device cpu")),
}


@pytest.mark.parametrize("page", list(LINKS))
def test_a_link_opens_the_page_on_its_filters(monkeypatch, default_views, page):
    params, shown, (chart, text) = LINKS[page]
    default_filters, default_figures = _default(monkeypatch, default_views, page)
    at = _open(monkeypatch, page, params)
    assert not at.exception
    assert {k: _filters(at)[k] for k in shown} == shown
    assert all(default_filters.get(k) != v for k, v in shown.items()), "the link asks for other than the defaults"
    figures = _specs(at)
    assert figures != default_figures
    said = (lambda spec: spec) if page == "views/compute.py" else _title
    assert text in said(figures[chart]) and text not in said(default_figures[chart])
    if page == "views/spectra.py":  # over training: the two linked checkpoints only
        assert {int(x) for t in json.loads(figures[2])["data"] for x in _plotly_array(t["x"])} == {8, 60}
    assert at.query_params == {k: "0.3" if v == "0.30" else v for k, v in params.items()}, \
        "the URL keeps the link's filters (numbers written one way)"


def _text(value) -> str | list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)


# page: batches of changes (widget kind, key, value or a function of the options, query parameter), one run each
CHANGES = {
    "views/intruders.py": [
        [("selectbox", "intruders_epsilon", 0.9, "epsilon"), ("multiselect", "intruders_kinds", ["q", "v"], "kinds"),
         ("selectbox", "intruders_heat_checkpoint", "code-full", "heat_checkpoint"),
         ("multiselect", "intruders_compare", ["sentiment-lora-r8", "code-full"], "compare"),
         ("selectbox", "intruders_one_checkpoint", "sentiment-lora-r8", "checkpoint"),
         ("slider", "intruders_lambda", 0.3, "lambda")],
        [("selectbox", "intruders_one_tensor:sentiment-lora-r8", lambda options: options[-1], "matrix")],
    ],
    "views/sparsity.py": [
        [("selectbox", "sparsity_base", "pretrain-gpt2-stdlib (fp32)", "base"),
         ("radio", "sparsity_definition", "atol", "definition")],
        [("multiselect", "sparsity_kinds:pretrain-gpt2-stdlib (fp32)", ["qkv", "o"], "kinds"),
         ("selectbox", "sparsity_heat_checkpoint:pretrain-gpt2-stdlib (fp32)", "sft-seed0 (fp32)", "heat_checkpoint")],
    ],
    "views/angles.py": [
        [("multiselect", "angles_tasks:all-MiniLM-L6-v2", ["topic-full", "sentiment-full", "code-lora-r8"], "tasks"),
         ("selectbox", "angles_side", "right", "side"), ("radio", "angles_value", "mean_angle_deg", "show"),
         ("selectbox", "angles_layer", 5, "layer"), ("selectbox", "angles_a", "code-lora-r8", "task_a"),
         ("selectbox", "angles_b", "sentiment-full", "task_b"),  # Task B offers the tasks but A, in their order
         ("selectbox", "angles_group:all-MiniLM-L6-v2", lambda options: options[-1], "summed")],
        [("selectbox", "angles_tensor:code-lora-r8:sentiment-full", lambda options: options[-1], "matrix")],
    ],
    "views/overlap.py": [
        [("selectbox", "overlap_run", "sft-seed0", "run")],
        [("selectbox", "overlap_of", "updates", "of"), ("selectbox", "overlap_side", "right", "side"),
         ("radio", "overlap_reference", "last", "reference"),
         ("multiselect", "overlap_kinds:sft-seed0", ["qkv", "fc_in"], "kinds"),
         ("selectbox", "overlap_tensor:sft-seed0", lambda options: [t for t in options if "c_attn" in t][-1], "matrix"),
         ("radio", "overlap_rule", "qgalore_step", "rule"), ("selectbox", "overlap_tau", 0.21, "tau"),
         ("selectbox", "overlap_spectrum_tensor:sft-seed0", lambda options: options[-1], "spectrum_matrix")],
    ],
    "views/patching.py": [
        [("selectbox", "patching_site:ioi-gpt2", "mlp_hidden", "site")],
        [("selectbox", "patching_layer:ioi-gpt2:mlp_hidden", 2, "layer"),
         ("selectbox", "patching_method:ioi-gpt2:mlp_hidden", "probe", "method")],
    ],
    "views/compute.py": [[("selectbox", "compute_device", "cuda", "device")]],
}


@pytest.mark.parametrize("page", list(CHANGES))
def test_changed_filters_go_to_the_url_and_a_new_session_reproduces_the_view(monkeypatch, default_views, page):
    at = _open(monkeypatch, page)
    wanted, link = {}, {}
    for batch in CHANGES[page]:
        for kind, key, value, param in batch:
            widget = getattr(at, kind)(key=key)
            value = value(widget.options) if callable(value) else value
            assert value != widget.value, f"{key} is changed, not set to what it shows"
            widget.set_value(value)
            wanted[key], link[param] = value, _text(value)
        at.run()
        assert not at.exception
    assert {k: _filters(at)[k] for k in wanted} == wanted
    assert at.query_params == link, "one query parameter per changed filter, holding its value"
    assert _specs(at) != _default(monkeypatch, default_views, page)[1]
    again = _open(monkeypatch, page, link)
    assert not again.exception
    assert _filters(again) == _filters(at)
    assert _specs(again) == _specs(at)
    assert again.query_params == link


def test_spectra_filters_round_trip_on_a_run_store(monkeypatch, run_store):
    at = _open(monkeypatch, "views/spectra.py", store=run_store)
    at.multiselect(key="spectra_kinds:run").set_value(["q", "k"])
    at.slider(key="spectra_layers:run").set_value((1, 1))
    at.selectbox(key="spectra_metric").set_value("stable_rank").run()
    at.selectbox(key="spectra_esd_checkpoint").set_value("run/checkpoint-20").run()
    tensor = at.selectbox(key="spectra_esd_tensor").options[-1]
    at.selectbox(key="spectra_esd_tensor").set_value(tensor).run()
    assert not at.exception
    assert at.query_params == {"kinds": ["q", "k"], "layers": ["1", "1"], "metric": "stable_rank",
                               "esd_checkpoint": "run/checkpoint-20", "matrix": tensor}
    assert set(at.dataframe[0].value["kind"]) == {"q", "k"} and set(at.dataframe[0].value["layer"]) == {1}
    again = _open(monkeypatch, "views/spectra.py", dict(at.query_params), store=run_store)
    assert not again.exception
    assert _filters(again) == _filters(at)
    assert _specs(again) == _specs(at)
    assert again.dataframe[0].value.equals(at.dataframe[0].value)


def test_a_filter_shown_later_starts_from_its_default_not_from_the_url(monkeypatch):
    """The Kinds filter is keyed by base and starts on all of that base's kinds. The kinds picked for the previous
    base, still in the URL, are this session's own choice, not a link's, so the next base does not inherit them."""
    at = _open(monkeypatch, "views/sparsity.py")
    at.multiselect(key="sparsity_kinds:gpt2-stdlib-bf16").set_value(["qkv", "o"]).run()
    assert at.query_params == {"kinds": ["qkv", "o"]}
    at.selectbox(key="sparsity_base").set_value("pretrain-gpt2-stdlib (fp32)").run()
    kinds = at.multiselect(key="sparsity_kinds:pretrain-gpt2-stdlib (fp32)")
    assert {"qkv", "o"} < set(kinds.options) and kinds.value == kinds.options
    assert at.query_params == {"base": "pretrain-gpt2-stdlib (fp32)"}


BAD = "../../etc/passwd"
JUNK = {  # every filter of each page given a value it cannot take; the tab too, where there are tabs
    "views/overview.py": {"group": BAD},
    "views/spectra.py": {"group": BAD, "checkpoints": ["nope", BAD], "kinds": "%00", "metric": "__import__('os')",
                         "layers": ["0", "99"], "heat_checkpoint": "/etc/passwd", "esd_checkpoint": "",
                         "matrix": "\x00", "tab": BAD},
    "views/intruders.py": {"side": "up", "epsilon": "0.55", "kinds": BAD, "heat_checkpoint": "x", "compare": "x",
                           "checkpoint": BAD, "matrix": "1", "lambda": "1.5", "tab": "Table "},
    "views/sparsity.py": {"base": BAD, "definition": "rm -rf", "kinds": "x", "heat_checkpoint": "..", "tab": ""},
    "views/angles.py": {"base": BAD, "side": "0", "kinds": "x", "tasks": [BAD, "x"], "show": "1", "layer": "99",
                        "task_a": BAD, "task_b": "x", "matrix": "x", "summed": "x", "tab": "table"},
    "views/overlap.py": {"run": BAD, "of": "x", "side": "x", "reference": "nan", "kinds": "x", "matrix": "x",
                         "rule": "x", "spectrum_matrix": "x", "tau": "0.5", "tab": "Tabelle"},
    "views/patching.py": {"model": BAD, "site": "x", "layer": "-1", "method": "x"},
    "views/compute.py": {"device": BAD},
}


@pytest.mark.parametrize("page", list(JUNK))
def test_bad_values_in_the_url_fall_back_to_the_defaults(monkeypatch, default_views, page):
    default_filters, default_figures = _default(monkeypatch, default_views, page)
    at = _open(monkeypatch, page, JUNK[page])
    assert not at.exception
    assert _filters(at) == default_filters
    assert _specs(at) == default_figures
    assert not at.tabs or _open_tab(at) == at.tabs[0].label, "a tab the page lacks opens the first"
    if page == "views/overview.py":
        assert any("demo-store" in c.value for c in at.caption), "the configured store, no filter taken"
    else:  # the page's parameters now say what it shows, the defaults: left out
        assert at.query_params == {}


@pytest.mark.parametrize("layers", [["a", "b"], ["-1", "1"], ["0", "1", "1"], ["nan", "1"]])
def test_bad_layer_ranges_in_the_url_are_ignored(monkeypatch, default_views, run_store, layers):
    default_filters, default_figures = _default(monkeypatch, default_views, "views/spectra.py", run_store)
    at = _open(monkeypatch, "views/spectra.py", {"layers": layers}, store=run_store)
    assert not at.exception
    assert at.slider(key="spectra_layers:run").value == (0, 1) == default_filters["spectra_layers:run"]
    assert _specs(at) == default_figures and at.query_params == {}


def _choices(app_dir: str) -> None:
    """A script with one of each kind of filter ``choose`` and ``slide`` take, for the test below."""
    import sys

    import streamlit as st

    sys.path.insert(0, app_dir)
    from links import choose, slide

    st.session_state["shown"] = {
        "pills": choose(st.pills, "Pills", ["a", "b", "c"], selection_mode="multi", default=["a"], key="p", url="p"),
        "segment": choose(st.segmented_control, "Segment", [1, 2, 3], key="s", url="s"),
        "maybe": choose(st.selectbox, "Maybe", ["x", "y"], index=None, key="m", url="m"),
        "share": choose(st.radio, "Share", [0.1, 0.5], index=1, horizontal=True, key="r", url="r",
                        format_func=lambda v: f"{v:.0%}"),
        "lambda": slide(st.slider, "λ", 0.0, 1.0, 0.75, step=0.05, key="l", url="l"),
    }


@pytest.mark.parametrize("link, shown, kept", [
    ({}, (["a"], None, None, 0.5, 0.75), {}),
    ({"p": ["c", "b", "zz"], "s": "2", "m": "y", "r": "0.10", "l": "0.3"}, (["c", "b"], 2, "y", 0.1, 0.3),
     {"p": ["c", "b"], "s": "2", "m": "y", "r": "0.1", "l": "0.3"}),
    ({"p": "", "s": "", "m": "", "r": "", "l": ""}, ([], None, None, 0.5, 0.75), {"p": ""}),
    ({"p": ["zz", BAD], "s": "4", "m": "z", "r": "nan", "l": "2"}, (["a"], None, None, 0.5, 0.75), {}),
])
def test_choose_and_slide_take_every_kind_of_filter(link, shown, kept):
    at = AppTest.from_function(_choices, args=(str(ROOT / "app"),), default_timeout=30)
    at.query_params.update(link)
    at.run()
    assert not at.exception
    assert tuple(at.session_state["shown"].values()) == shown
    assert at.query_params == kept


def test_deselecting_one_of_many_checkpoints_writes_one_short_entry(monkeypatch):
    """The demo's pretraining run has 25 checkpoints: leaving one out writes `~that one`, not the other 24."""
    run = "pretrain-gpt2-stdlib"
    at = _open(monkeypatch, "views/spectra.py", {"group": run})
    box = at.multiselect(key=f"spectra_checkpoints:{run}")
    everything = list(box.value)
    assert len(everything) == 25
    box.set_value(everything[:1] + everything[2:]).run()
    assert at.query_params == {"group": run, "checkpoints": f"~{everything[1]}"}
    again = _open(monkeypatch, "views/spectra.py", dict(at.query_params))
    assert again.multiselect(key=f"spectra_checkpoints:{run}").value == everything[:1] + everything[2:]
    few = _open(monkeypatch, "views/spectra.py", {"group": run, "checkpoints": everything[0]})
    assert few.multiselect(key=f"spectra_checkpoints:{run}").value == everything[:1]  # a plain list still works


# every page with charts on the demo store (not an analysis it holds no results of)
DRAWING_PAGES = ["views/overview.py", *(spec.page.path for spec in analysis.SPECS.values()
                                        if spec.page and (DEMO / spec.name).is_dir()), "views/compare.py"]


@pytest.mark.parametrize("page", DRAWING_PAGES)
def test_every_chart_saves_as_an_svg_named_after_it(monkeypatch, page):
    at = _app(monkeypatch, DEMO).switch_page(page).run()
    charts = _charts(at)
    assert charts and not at.exception
    options = [json.loads(chart.proto.config)["toImageButtonOptions"] for chart in charts]
    assert all(o["format"] == "svg" and o["filename"].startswith("atlas-") for o in options)
    assert len({o["filename"] for o in options}) == len(options)  # each chart's file has its own name


def _open_tab(at: AppTest) -> str:
    """The label of the tab the page shows open (the page has one set of tabs)."""
    (tabs,) = at.get("tab_container")
    return tabs.children[tabs.proto.tab_container.default_tab_index].label


# page: a tab other than the first, which a link names
TABS = {"views/spectra.py": "Eigenvalue density", "views/intruders.py": "One matrix",
        "views/sparsity.py": "Overlap vs chance", "views/angles.py": "Alignment",
        "views/overlap.py": "Spectrum & WeLore"}


@pytest.mark.parametrize("page", list(TABS))
def test_the_open_tab_is_in_the_url_and_a_link_opens_it(monkeypatch, page):
    at = _open(monkeypatch, page)
    assert _open_tab(at) == at.tabs[0].label and "tab" not in at.query_params
    tab = TABS[page]
    again = _open(monkeypatch, page, {"tab": tab})
    assert not again.exception
    assert _open_tab(again) == again.session_state["tab"] == tab
    assert again.query_params == {"tab": tab}
    assert _specs(again) == _specs(at), "every tab's charts are drawn, whichever is open"


@pytest.mark.parametrize("read_only", [False, True])
def test_a_link_with_a_store_opens_it_unless_hosted(monkeypatch, run_store, read_only):
    at = _open(monkeypatch, "views/spectra.py", {"store": str(run_store), "tab": "Table"}, store=DEMO,
               read_only=read_only)
    assert not at.exception and _open_tab(at) == "Table"
    shown = set(at.dataframe[0].value["checkpoint"])
    if read_only:  # a visitor cannot point the server at a path: the hosted store, and no box to type one in
        assert "all-MiniLM-L6-v2" in shown and not at.sidebar.text_input
        return
    assert shown == {"run/checkpoint-10", "run/checkpoint-20"}
    assert at.sidebar.text_input(key="store_root").value == str(run_store)
    assert at.query_params == {"store": str(run_store), "tab": "Table"}
    at.sidebar.text_input(key="store_root").set_value(str(DEMO)).run()  # back to the configured store …
    assert not at.exception and at.query_params == {"tab": "Table"}  # … which the link leaves out


def _in_order(node) -> list:
    """Every element under ``node`` in the order the page draws them (a column's or tab's in turn)."""
    children = getattr(node, "children", None)
    return [node] if children is None else [e for child in children.values() for e in _in_order(child)]


@pytest.mark.parametrize("page", DRAWING_PAGES)
def test_every_chart_has_a_how_to_read_it_caption_right_after_it(monkeypatch, page):
    at = _app(monkeypatch, DEMO).switch_page(page).run()
    drawn = _in_order(at.main)
    charts = [k for k, element in enumerate(drawn) if element.type == "plotly_chart"]
    assert charts and not at.exception
    after = [drawn[k + 1] for k in charts if k + 1 < len(drawn)]
    explained = [e for e in after if e.type == "caption" and e.value.startswith("How to read this: ")]
    assert len(explained) == len(charts), [getattr(e, "value", e.type) for e in after]


@pytest.fixture(scope="module")
def moe_store(tmp_path_factory) -> Path:
    """A store with the spectra of a tiny Mixtral (Transformers' own class; fused 3-D experts)."""
    import test_moe

    root = tmp_path_factory.mktemp("moe")
    test_moe._spectra(test_moe._write_fused(test_moe._mixtral().state_dict(), root / "mixtral"), root / "S")
    return root / "S"


def test_an_moe_store_gets_an_experts_tab_with_every_expert_by_layer(monkeypatch, moe_store):
    at = _open(monkeypatch, "views/spectra.py", {"tab": "Experts", "metric": "stable_rank"}, store=moe_store)
    assert not at.exception and _open_tab(at) == "Experts"
    from subspace_atlas.store import Store

    figures = {fig["layout"].get("title", {}).get("text", ""): fig
               for fig in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))}
    kind = at.selectbox(key="spectra_expert_kind").value
    [heat] = [f for title, f in figures.items() if title.endswith(f"every {kind} expert, by layer")]
    stored = Store(moe_store).table("spectra", "matrices")
    mine = stored[stored["kind"] == kind].dropna(subset=["expert"])
    z = np.array([_plotly_array(row) for row in heat["data"][0]["z"]] if isinstance(heat["data"][0]["z"], list)
                 else _plotly_array(heat["data"][0]["z"]).reshape(mine["expert"].nunique(), -1), dtype=float)
    for _, row in mine.iterrows():
        assert z[int(row["expert"]), int(row["layer"])] == pytest.approx(row["stable_rank"])
    assert any(title.startswith("stable rank across experts") for title in figures)
    plain = _open(monkeypatch, "views/spectra.py", store=DEMO)  # no experts: no such tab
    assert "Experts" not in [t.label for t in plain.tabs]
