"""Chart functions are pure: their traces carry exactly the numbers computed here independently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import charts

pytestmark = pytest.mark.unit


@pytest.fixture
def matrices() -> pd.DataFrame:
    rows = []
    for ckpt, shift in (("a", 0.0), ("b", 1.0)):
        for layer in range(3):
            for kind in ("q", "fc_in"):
                rows.append({"checkpoint": ckpt, "run": "r", "step": 100 * (1 + int(shift)), "layer": layer,
                             "kind": kind, "tensor": f"l{layer}.{kind}", "alpha": 2 + layer + shift})
    rows.append({"checkpoint": "a", "run": "r", "step": 100, "layer": None, "kind": "embed",
                 "tensor": "embed", "alpha": 9.0})
    frame = pd.DataFrame(rows)
    frame["layer"] = frame["layer"].astype("Int64")
    return frame


def test_heatmap_cells_are_layer_kind_means(matrices):
    fig = charts.layer_kind_heatmap(matrices, "alpha")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert list(fig.data[0].y) == ["fc_in", "q"]
    expected = [[np.mean([2 + layer, 3 + layer]) for layer in range(3)]] * 2
    np.testing.assert_allclose(z, expected)


def test_lines_per_checkpoint_and_kind_skip_unlayered(matrices):
    fig = charts.metric_by_layer(matrices, "alpha")
    assert len(fig.data) == 4  # 2 checkpoints × 2 kinds; the layer-less embedding is left out
    for trace in fig.data:
        assert list(trace.x) == [0, 1, 2]


def test_over_steps_means_per_kind(matrices):
    fig = charts.metric_over_steps(matrices, "alpha")
    q = next(t for t in fig.data if t.name.startswith("q"))
    np.testing.assert_allclose(q.y, [3.0, 4.0])  # mean over layers 0..2 of 2+l, then 3+l
    assert list(q.x) == [100, 200]


def test_esd_fit_line_has_slope_minus_alpha_and_marks_xmin():
    rng = np.random.default_rng(0)
    sigma = np.sqrt(rng.pareto(2.0, 500) + 1)
    fit = pd.Series({"alpha": 3.0, "xmin": 1.5, "n_tail": 200, "mp_bulk_max": 1.2, "tensor": "w"})
    fig = charts.esd_with_fit(sigma, fit)
    line = fig.data[1]
    slope = np.diff(np.log(line.y)) / np.diff(np.log(line.x))
    np.testing.assert_allclose(slope, -3.0)
    assert line.x[0] == pytest.approx(1.5)
    xs = sorted(shape.x0 for shape in fig.layout.shapes)
    assert xs == pytest.approx([1.2, 1.5])
    # The histogram is a density: it integrates to 1 over the log bins.
    lam = sigma**2
    edges = np.exp(np.linspace(np.log(lam.min()), np.log(lam.max()), 61))
    counts = np.array([np.sum((lam >= lo) & ((lam < hi) if k < 59 else (lam <= hi)))
                       for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))])
    assert counts.sum() == lam.size
    np.testing.assert_allclose(fig.data[0].y, (counts / (lam.size * np.diff(edges)))[counts > 0], rtol=1e-6)


def test_empty_inputs_give_a_message_not_an_error():
    frame = pd.DataFrame({"checkpoint": [], "layer": [], "kind": [], "alpha": [], "step": [], "run": [],
                          "tensor": []})
    for fig in (charts.layer_kind_heatmap(frame, "alpha"), charts.metric_by_layer(frame, "alpha"),
                charts.metric_over_steps(frame, "alpha"), charts.esd_with_fit(np.array([1.0]), pd.Series())):
        assert fig.layout.annotations and not fig.data


# ---------------------------------------------------------------- intruders


def _one_matrix():
    values = pd.DataFrame({"which": ["base"] * 4 + ["tuned"] * 4, "index": [0, 1, 2, 3] * 2,
                           "sigma": [5.0, 4.0, 3.0, 2.0, 6.0, 4.5, 3.5, 1.0]})
    vectors = pd.DataFrame({"index": [0, 1, 2, 3], "sigma": [6.0, 4.5, 3.5, 1.0],
                            "max_cos": [0.1, 0.9, 0.95, 0.3], "is_intruder": [True, False, False, True]})
    return values, vectors


def test_mitigated_spectrum_scales_only_intruders_and_resorts():
    values, vectors = _one_matrix()
    after = charts.mitigated_sigma(values, vectors, 0.5)
    np.testing.assert_allclose(after["sigma"], [4.5, 3.5, 3.0, 0.5])


def test_mitigation_curve_matches_the_closed_form_at_the_ends():
    row = pd.Series({"intruder_energy": 9.0, "intruder_update_proj": 4.0, "norm_tuned": 10.0,
                     "norm_update": 5.0, "mitigation_lambda": 0.75})
    fig = charts.mitigation_curve(row)
    shift, left = (np.asarray(t.y) for t in fig.data)
    assert shift[0] == pytest.approx(0.3) and shift[-1] == pytest.approx(0.0)  # λ = 0 removes √E = 3 of ‖W‖ = 10
    assert left[0] == pytest.approx(np.sqrt(25 - 8 + 9) / 5) and left[-1] == pytest.approx(1.0)
    empty = charts.mitigation_curve(pd.Series({**row, "intruder_energy": 0.0}))
    assert "no intruders" in empty.layout.annotations[0].text


def test_intruder_figures_draw_what_they_are_given():
    values, vectors = _one_matrix()
    names = [t.name for t in charts.spectrum_with_intruders(values, vectors, 0.75).data]
    assert names == ["base", "tuned", "intruder", "mitigated, λ = 0.75"]
    summary = pd.DataFrame({"checkpoint": ["a", "a", "b", "b"], "epsilon": [0.5, 0.9] * 2, "n_intruders": [1, 3, 0, 2],
                            "layer": [0, 0, 1, 1], "kind": ["q"] * 4, "top_k": 10, "run": ["r", "r", None, None],
                            "step": [10, 10, None, None]})
    sweep = charts.intruders_vs_epsilon(summary)
    assert {t.name: list(t.y) for t in sweep.data} == {"a": [1, 3], "b": [0, 2]}
    heat = charts.intruder_heatmap(summary[summary["epsilon"] == 0.9], "t")
    assert np.asarray(heat.data[0].z).tolist() == [[3, 2]]
    steps = charts.intruders_over_steps(summary[summary["epsilon"] == 0.5])
    assert [t.name for t in steps.data] == ["r"]
    sim = pd.DataFrame({"index": [0, 0, 1, 1], "base_index": [0, 1, 0, 1], "cos": [0.1, 0.2, 0.9, 0.1]})
    fig = charts.similarity_matrix(sim, vectors.head(2))
    assert list(fig.layout.yaxis.ticktext) == ["0 ⚠", "1"]


# ---------------------------------------------------------------- sparsity


def test_weighted_unchanged_weights_by_entries_not_matrices():
    m = pd.DataFrame({"checkpoint": ["a", "a"], "numel": [100, 900], "unchanged_exact": [1.0, 0.0],
                      "unchanged_atol": [1.0, 0.5], "unchanged_ulp": [1.0, 1.0]})
    total = charts.weighted_unchanged(m, ["checkpoint"]).iloc[0]
    assert total["unchanged_exact"] == pytest.approx(0.1) and total["unchanged_atol"] == pytest.approx(0.55)
    assert total["unchanged_ulp"] == pytest.approx(1.0) and total["numel"] == 1000
    fig = charts.sparsity_by_checkpoint(m)
    assert [t.name for t in fig.data] == ["exact", "atol", "ulp"] and list(fig.data[0].y) == pytest.approx([0.1])


def test_overlap_chart_draws_the_chance_diagonal():
    o = pd.DataFrame({"checkpoint_a": ["a"], "checkpoint_b": ["b"], "tensor": ["t"], "jaccard": [0.5],
                      "jaccard_chance": [0.2], "changed_a": [5], "changed_b": [6], "overlap_coef": [0.7]})
    fig = charts.overlap_vs_chance(o)
    assert list(fig.data[0].y) == [0.5] and fig.data[-1].name.startswith("chance")


# ---------------------------------------------------------------- task angles


def test_task_overlap_matrix_is_symmetric_with_unit_diagonal():
    pairs = pd.DataFrame({"checkpoint_a": ["a", "a", "b"], "checkpoint_b": ["b", "c", "c"],
                          "overlap": [0.2, 0.4, 0.6], "mean_angle_deg": [60.0, 50.0, 40.0]})
    z = np.asarray(charts.task_overlap_matrix(pairs).data[0].z)
    np.testing.assert_allclose(z, [[1, 0.2, 0.4], [0.2, 1, 0.6], [0.4, 0.6, 1]])
    z = np.asarray(charts.task_overlap_matrix(pairs, "mean_angle_deg").data[0].z)
    assert z[0, 1] == 60.0 and z[1, 1] == 0.0
