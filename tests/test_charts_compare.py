"""The Compare page's figures and default pair, checked against values computed here with pandas and numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from subspace_atlas import charts

pytestmark = pytest.mark.unit

BASE = [f"encoder.layer.{i}.attention.self.{p}.weight" for i in range(3) for p in ("query", "value")]


def _matrices(seed: int = 0) -> pd.DataFrame:
    """Spectra rows of a base (bare names) and a fine-tune that wraps them in ``bert.`` and adds a classifier."""
    rng = np.random.default_rng(seed)
    rows = []
    for checkpoint, prefix in (("base", ""), ("tuned", "bert.")):
        for name in BASE:
            layer = int(name.split(".")[2])
            rows.append({"checkpoint": checkpoint, "tensor": prefix + name, "layer": layer,
                         "kind": "q" if "query" in name else "v", "alpha": rng.uniform(2, 6)})
    rows.append({"checkpoint": "tuned", "tensor": "classifier.weight", "layer": None, "kind": "other", "alpha": 9.0})
    frame = pd.DataFrame(rows)
    return frame.astype({"layer": "Int64"})


def test_metric_deltas_pair_matrices_across_a_prefix():
    frame = _matrices()
    deltas = charts.metric_deltas(frame, "alpha", "base", "tuned")
    assert sorted(deltas["tensor_a"]) == sorted(BASE) and "classifier.weight" not in set(deltas["tensor"])
    assert (deltas["tensor"] == "bert." + deltas["tensor_a"]).all()
    by_name = frame.set_index(["checkpoint", "tensor"])["alpha"]
    expected = [by_name[("tuned", "bert." + n)] - by_name[("base", n)] for n in deltas["tensor_a"]]
    np.testing.assert_allclose(deltas["delta"], expected)
    backwards = charts.metric_deltas(frame, "alpha", "tuned", "base")  # B − A either way round
    np.testing.assert_allclose(backwards.set_index("tensor")["delta"].loc[deltas["tensor_a"]], -deltas["delta"])


def test_delta_heatmap_is_the_mean_change_per_cell_on_a_scale_centred_on_zero():
    frame = _matrices(1)
    deltas = charts.metric_deltas(frame, "alpha", "base", "tuned")
    fig = charts.delta_heatmap(deltas, "alpha", "base", "tuned")
    heat = fig.data[0]
    wide = frame.pivot_table(index=["kind", "layer"], columns="checkpoint", values="alpha").dropna()
    expected = (wide["tuned"] - wide["base"]).unstack("layer")
    assert list(heat.y) == list(expected.index) and [int(x) for x in heat.x] == list(expected.columns)
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), expected.to_numpy())
    reach = np.abs(expected.to_numpy()).max()  # no outlier: the scale reaches the largest change
    assert fig.layout.coloraxis.cmin == pytest.approx(-reach) and fig.layout.coloraxis.cmax == pytest.approx(reach)
    assert "tuned − base" in fig.layout.title.text


def test_one_outlier_saturates_instead_of_washing_out_the_delta_scale():
    cells = [(layer, kind) for layer in range(12) for kind in ("q", "k", "v")]
    delta = np.random.default_rng(3).normal(0, 0.01, len(cells))
    delta[0] = -6.0  # one power-law fit's xmin moving, as in the demo's code-full
    deltas = pd.DataFrame({"layer": [c[0] for c in cells], "kind": [c[1] for c in cells], "delta": delta})
    fig = charts.delta_heatmap(deltas, "alpha", "base", "tuned")
    assert fig.layout.coloraxis.cmax == pytest.approx(np.quantile(np.abs(delta), 0.9))
    assert fig.layout.coloraxis.cmax < 0.1 and "saturates" in fig.layout.title.text
    assert np.nanmin(np.asarray(fig.data[0].z, dtype=float)) == -6.0  # the outlier's number is still there


def test_delta_heatmap_says_when_nothing_pairs():
    frame = _matrices()
    frame.loc[frame["checkpoint"] == "tuned", "tensor"] = "renamed." + frame["tensor"] + ".x"
    fig = charts.delta_heatmap(charts.metric_deltas(frame, "alpha", "base", "tuned"), "alpha", "base", "tuned")
    assert not fig.data and "pairs" in fig.layout.annotations[0].text


def test_singular_values_pair_draws_a_and_b_on_one_log_axis():
    sigma_a, sigma_b = np.sort(np.random.default_rng(2).uniform(0.1, 5, 40))[::-1], np.linspace(6, 0.2, 40)
    values = pd.concat([pd.DataFrame({"checkpoint": name, "index": np.arange(40), "sigma": s})
                        for name, s in (("b", sigma_b), ("a", sigma_a))])
    fig = charts.singular_values_pair(values, "a", "b", "W")
    drawn = {t.name: t for t in fig.data}
    assert set(drawn) == {"A: a", "B: b"} and fig.data[-1].name == "A: a"  # A's dots over B's line
    np.testing.assert_allclose(drawn["A: a"].y, sigma_a)
    np.testing.assert_allclose(drawn["B: b"].y, sigma_b)
    np.testing.assert_array_equal(drawn["A: a"].x, np.arange(40))
    assert fig.layout.yaxis.type == "log" and fig.layout.title.text.startswith("W:")


def test_pair_overlap_heatmap_averages_each_cell():
    pairs = pd.DataFrame({"layer": [0, 0, 1, 1, None], "kind": ["q", "q", "q", "v", "embed"],
                          "overlap": [0.2, 0.4, 0.9, 0.1, 0.5]}).astype({"layer": "Int64"})
    heat = charts.pair_overlap_heatmap(pairs, "t").data[0]
    grid = pd.DataFrame(np.asarray(heat.z, dtype=float), index=list(heat.y), columns=[int(x) for x in heat.x])
    assert grid.loc["q", 0] == pytest.approx(0.3) and grid.loc["q", 1] == pytest.approx(0.9)
    assert grid.loc["v", 1] == pytest.approx(0.1) and np.isnan(grid.loc["v", 0]) and "embed" not in grid.index


def _jobs(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["analysis", "checkpoint", "run", "step", "base"])


def test_default_pair_prefers_a_base_and_a_final_fine_tune_with_spectra():
    jobs = _jobs(("spectra", "base", None, None, None), ("spectra", "full", None, None, None),
                 ("spectra", "lora", None, None, None),
                 ("intruders", "full/checkpoint-10", "full", 10, "base"), ("intruders", "lora", None, None, "base"),
                 ("intruders", "full", None, None, "base"), ("sparsity", "rl", None, None, "other-base"))
    assert charts.default_pair(jobs) == ("base", "full")  # finals in name order, both ends with spectra


def test_default_pair_falls_back_to_a_run_then_to_any_two():
    run = _jobs(("spectra", "solo", None, None, None), ("spectra", "r/checkpoint-100", "r", 100, None),
                ("spectra", "r/checkpoint-20", "r", 20, None), ("spectra", "r/checkpoint-5", "r", 5, None))
    assert charts.default_pair(run) == ("r/checkpoint-5", "r/checkpoint-100")
    loose = _jobs(("spectra", "m-10", None, None, None), ("spectra", "m-9", None, None, None))
    assert charts.default_pair(loose) == ("m-9", "m-10")
    assert charts.default_pair(loose.iloc[:1]) is None
