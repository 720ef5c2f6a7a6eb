"""Every page of the real Streamlit app through AppTest: no exception, charts present, modes honoured."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
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


def test_patching_page_on_demo_shows_verdicts_parts_and_layers(monkeypatch):
    at = _app(monkeypatch, None).run()
    at.switch_page("views/patching.py").run()
    assert not at.exception
    assert len(_charts(at)) == 4  # verdict grid, parts, norm split, across layers
    assert set(at.selectbox(key="patching_model").options) >= {"toy-illusion"}
    assert at.selectbox(key="patching_model").value != "toy-illusion"  # the real model first
    grid = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert set(grid["y"]) == {"das", "mean_diff", "probe", "gradient"}
    at.selectbox(key="patching_model").set_value("toy-illusion").run()
    assert not at.exception
    at.selectbox(key="patching_method:toy-illusion:mlp_hidden").set_value("planted_illusory").run()
    assert not at.exception
    assert any("illusory" in m.value for m in at.markdown)
    parts = json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]
    assert [round(float(v)) for v in _plotly_array(parts["y"])] == [200, 100, 0, 0]  # whole, v, v_row, v_null
