"""Activation patching and the illusion test: the toy's known answers, NumPy projections, a real trained model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")

from subspace_atlas import cli, zoo  # noqa: E402
from subspace_atlas.probes import ioi, patching  # noqa: E402
from subspace_atlas.probes import toy_illusion as toy  # noqa: E402
from subspace_atlas.specs.patching import VERDICTS, Params  # noqa: E402
from subspace_atlas.store import Store  # noqa: E402

PARAMS = Params()


# ---------------------------------------------------------------- the toy: known answers


@pytest.mark.unit
def test_toy_planted_directions_get_their_verdicts():
    data = toy.batches()
    illusory = patching.illusion_test(toy.ToyTarget(), data, data, PARAMS, direction=toy.ILLUSORY).set_index(
        "component")
    assert set(illusory["verdict"]) == {"illusory"}
    assert illusory.loc["full", "fldd"] == pytest.approx(100.0, abs=1e-4)  # moves the output …
    assert illusory.loc["row", "fldd"] == pytest.approx(0.0, abs=1e-6)  # … but the part read downstream alone does not
    assert illusory.loc["null", "fldd"] == pytest.approx(0.0, abs=1e-6)  # and the unread part cannot
    assert illusory.loc["row", "variance_on_data"] == 0.0  # the row part is dormant: constant on the data
    assert illusory.loc["null", "separation"] > 1  # the null part is what differs between base and source
    faithful = patching.illusion_test(toy.ToyTarget(), data, data, PARAMS, direction=toy.FAITHFUL).set_index(
        "component")
    assert set(faithful["verdict"]) == {"faithful"}
    assert faithful.loc["full", "fldd"] == pytest.approx(200.0) and faithful.loc["row", "fldd"] == pytest.approx(200.0)
    assert faithful.loc["full", "accuracy"] == 1.0


@pytest.mark.unit
@pytest.mark.parametrize("method,expected", [
    ("mean_diff", [1.0, 1.0, 0.0]),  # both units that follow the feature
    ("probe", [1.0, 1.0, 0.0]),
    ("gradient", [1.0, 0.0, 1.0]),  # what LD = 2(h1 + h3) is sensitive to, the dormant unit included
])
def test_found_directions_on_the_toy(method, expected):
    data = toy.batches()
    params = dataclasses.replace(PARAMS, method=method)
    v = patching.find_direction(toy.ToyTarget(), patching.measure(toy.ToyTarget(), data), params)
    expected = torch.tensor(expected) / 2**0.5
    assert abs(float(v @ expected)) == pytest.approx(1.0, abs=1e-3)
    assert patching.illusion_test(toy.ToyTarget(), data, data, params)["verdict"].iloc[0] == "faithful"


@pytest.mark.unit
def test_patch_is_the_projection_of_the_difference():
    gen = torch.Generator().manual_seed(0)
    w, u = torch.randn(5, 12, generator=gen, dtype=torch.float64), torch.randn(5, 12, generator=gen, dtype=torch.float64)
    basis = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    b = basis.numpy()
    projector = b @ np.linalg.inv(b.T @ b) @ b.T
    expected = w.numpy() + (u - w).numpy() @ projector
    np.testing.assert_allclose(patching.patch(w, u, basis).numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(patching.patch(w, u, torch.eye(12, dtype=torch.float64)).numpy(), u.numpy(), atol=1e-10)
    np.testing.assert_allclose(patching.patch(w, u, torch.zeros(12, 0, dtype=torch.float64)).numpy(), w.numpy())


@pytest.mark.unit
def test_split_sums_back_and_the_null_part_is_invisible_downstream():
    gen = torch.Generator().manual_seed(1)
    w_out = torch.randn(40, 8, generator=gen, dtype=torch.float64)  # d_mlp × d_model: hidden @ W_out
    v = torch.randn(40, generator=gen, dtype=torch.float64)
    row, null = patching.split(v, w_out)
    torch.testing.assert_close(row + null, v)
    assert float((null @ w_out).abs().max()) < 1e-10
    torch.testing.assert_close(row @ w_out, v @ w_out)
    assert float(row @ null) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.unit
def test_fldd_and_verdict_thresholds():
    assert patching.fldd(1.0, 4.0) == 75.0 and patching.fldd(-2.0, 4.0) == 150.0
    assert patching.verdict(5.0, 5.0, PARAMS) == "inconclusive"  # too small to judge
    assert patching.verdict(46.0, 13.0, PARAMS) == "illusory"  # the paper's MLP8 numbers
    assert patching.verdict(139.0, 126.0, PARAMS) == "faithful"  # the paper's resid_post 8 numbers
    assert patching.verdict(50.0, 25.0, PARAMS) == "inconclusive"


# ---------------------------------------------------------------- a real trained model (the zoo's IOI recipe, mini)


@pytest.fixture(scope="module")
def ioi_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    manifest = zoo.build(root, scale="mini", progress=False, only=[zoo.IOI_NAME])
    run = next(r for r in manifest["runs"] if r["kind"] == "ioi")
    return root / run["checkpoints"][-1]["path"]


@pytest.mark.integration
def test_patching_the_whole_final_residual_equals_running_the_source(ioi_model):
    bridge, tokenizer, _ = patching.load_bridge(str(ioi_model))
    last = bridge.cfg.n_layers - 1
    target = patching.BridgeTarget(bridge, "resid_post", last)
    batch = patching.ioi_batches(tokenizer, ioi.pairs(12, seed=3))[0]
    with torch.no_grad():
        patched = target.logits(batch.base, target.activations(batch.source))
        source = target.logits(batch.source)
    torch.testing.assert_close(patched, source, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
def test_the_null_part_of_an_mlp_direction_changes_nothing(ioi_model):
    bridge, tokenizer, _ = patching.load_bridge(str(ioi_model))
    target = patching.BridgeTarget(bridge, "mlp_hidden", 0)
    batches = patching.ioi_batches(tokenizer, ioi.pairs(16, seed=4))
    v = torch.randn(target.reader_basis().shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, null = patching.split(v, target.reader_basis())
    result = patching.effect(target, patching.measure(target, batches), null[:, None])
    assert result["logit_diff"] == pytest.approx(result["logit_diff_base"], abs=1e-4)


@pytest.mark.integration
def test_cli_stores_effects_skips_reruns_and_refuses_bad_input(ioi_model, tmp_path, capsys):
    store = tmp_path / "store"
    args = ["patch", "--model", str(ioi_model), "--site", "mlp_hidden", "resid_post", "--layer", "0", "--method",
            "mean_diff", "das", "--train-pairs", "12", "--eval-pairs", "12", "--das-epochs", "2", "--store", str(store)]
    assert cli.main(args) == 0
    effects = Store(store).table("patching", "effects")
    assert len(effects) == 2 * 2 * 4  # sites × methods × (activation, full, row, null)
    assert set(effects["verdict"]) <= set(VERDICTS)
    assert effects["clean_accuracy"].between(0, 1).all()
    assert {"model", "task", "site", "layer", "method", "component", "fldd", "accuracy", "logit_diff",
            "variance_on_data", "verdict"} <= set(effects.columns)
    full = effects[effects.component == "full"]
    assert np.allclose(full["norm"], 1.0)
    parts = effects[effects.component.isin(["row", "null"])].groupby(["site", "method"])["norm"]
    assert np.allclose(parts.apply(lambda n: float((n**2).sum())), 1.0)  # ‖v_row‖² + ‖v_null‖² = 1
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "computed 0 job(s), 4 already stored" in capsys.readouterr().out
    assert cli.main(["patch", "--model", str(ioi_model), "--layer", "7", "--store", str(store)]) == 2
    assert "layers 0–1" in capsys.readouterr().err
    assert cli.main(["patch", "--store", str(store)]) == 2
    assert "--model" in capsys.readouterr().err
    assert cli.main(["patch", "--model", str(ioi_model), "--method", "planted_faithful", "--store", str(store)]) == 2
    assert "toy" in capsys.readouterr().err


@pytest.mark.integration
def test_cli_toy_task(tmp_path):
    assert cli.main(["patch", "--task", "toy", "--method", "planted_faithful", "planted_illusory",
                     "--store", str(tmp_path)]) == 0
    effects = Store(tmp_path).table("patching", "effects")
    verdicts = effects.groupby("method")["verdict"].first().to_dict()
    assert verdicts == {"planted_faithful": "faithful", "planted_illusory": "illusory"}
