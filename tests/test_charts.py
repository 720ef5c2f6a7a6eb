"""Chart functions are pure: their traces carry exactly the numbers computed here independently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from subspace_atlas import charts

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
    # On a log axis an annotation's x is log10 of the value (a shape's is the value): each label sits on its line.
    labels = {a.text: a.x for a in fig.layout.annotations}
    assert labels["xmin"] == pytest.approx(np.log10(1.5)) and labels["MP bulk edge"] == pytest.approx(np.log10(1.2))
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
    stored = pd.DataFrame({"index": [0, 1], "sigma": [3.0, 2.0], "is_intruder": [True, False]})  # E = 3² as stored
    fig = charts.mitigation_curve(row, stored, 0.6)
    shift, left = (np.asarray(t.y) for t in fig.data)
    assert shift[0] == pytest.approx(0.3) and shift[-1] == pytest.approx(0.0)  # λ = 0 removes √E = 3 of ‖W‖ = 10
    assert left[0] == pytest.approx(np.sqrt(25 - 8 + 9) / 5) and left[-1] == pytest.approx(1.0)
    assert [s.x0 for s in fig.layout.shapes] == [0.6]  # the λ chosen, not the stored one
    empty = charts.mitigation_curve(row, stored.assign(is_intruder=False), 0.75)
    assert "no intruders" in empty.layout.annotations[0].text


def test_mitigation_curve_follows_the_chosen_epsilon_not_the_stored_one():
    """The stored row knows no intruder (at its ε); at the chosen ε two are: the matrix moves by √(3² + 2²)."""
    row = pd.Series({"intruder_energy": 0.0, "intruder_update_proj": 0.0, "norm_tuned": 10.0, "norm_update": 5.0,
                     "mitigation_lambda": 0.75})
    chosen = pd.DataFrame({"index": [0, 1, 2], "sigma": [3.0, 2.0, 1.0], "is_intruder": [True, True, False]})
    fig = charts.mitigation_curve(row, chosen, 0.75)
    assert len(fig.data) == 1, "the update left needs u_iᵀΔW v_i of these intruders, stored for another ε"
    assert fig.data[0].y[0] == pytest.approx(np.sqrt(13) / 10)
    assert "first ε only" in fig.layout.title.text


def test_mitigation_curve_draws_the_update_left_at_any_epsilon_from_the_vectors():
    row = pd.Series({"intruder_energy": 0.0, "intruder_update_proj": 0.0, "norm_tuned": 10.0, "norm_update": 5.0,
                     "mitigation_lambda": 0.75})  # the job's first ε marked nothing
    chosen = pd.DataFrame({"index": [0, 1, 2], "sigma": [3.0, 2.0, 1.0], "is_intruder": [True, True, False],
                           "update_along": [1.0, 0.5, 9.0]})
    fig = charts.mitigation_curve(row, chosen, 0.75)
    shift, left = (np.asarray(t.y) for t in fig.data)
    proj, energy = 3.0 * 1.0 + 2.0 * 0.5, 13.0  # P = Σ s·u ᵀΔW v and E = Σ s² over the two marked here
    assert left[0] == pytest.approx(np.sqrt(25 - 2 * proj + energy) / 5) and left[-1] == pytest.approx(1.0)
    assert "first ε only" not in fig.layout.title.text


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


def test_pairs_never_computed_are_grey_and_say_so():
    pairs = pd.DataFrame({"checkpoint_a": ["a", "a"], "checkpoint_b": ["b", "c"], "overlap": [0.0, 0.4],
                          "mean_angle_deg": [90.0, 50.0]})
    for value in ("overlap", "mean_angle_deg"):
        fig = charts.task_overlap_matrix(pairs, value)
        values, marks = fig.data
        assert np.isnan(np.asarray(values.z, dtype=float)[1, 2])  # b × c was never computed ...
        grey = np.asarray(marks.z, dtype=float)
        assert marks.name == "not computed" and set(marks.colorscale[0][1:] + marks.colorscale[-1][1:]) == {"lightgrey"}
        assert (~np.isnan(grey)).tolist() == [[False] * 3, [False, False, True], [False, True, False]]
        assert np.asarray(marks.text)[1, 2] == "not computed"  # ... and says so, unlike a computed overlap of 0
    full = pd.concat([pairs, pd.DataFrame({"checkpoint_a": ["b"], "checkpoint_b": ["c"], "overlap": [0.5],
                                           "mean_angle_deg": [45.0]})])
    assert len(charts.task_overlap_matrix(full).data) == 1


def test_checkpoints_follow_their_runs_and_steps_not_their_names():
    frame = pd.DataFrame({"checkpoint": ["r/checkpoint-100", "final", "r/checkpoint-20", "q/checkpoint-5"],
                          "run": ["r", None, "r", "q"], "step": [100, None, 20, 5]})
    assert charts.in_step_order(frame) == ["final", "q/checkpoint-5", "r/checkpoint-20", "r/checkpoint-100"]
    m = pd.DataFrame({"checkpoint": ["run/checkpoint-100", "run/checkpoint-20"], "run": "run", "step": [100, 20],
                      "numel": 10, "unchanged_exact": 0.5, "unchanged_atol": 0.5, "unchanged_ulp": 0.5})
    assert list(charts.sparsity_by_checkpoint(m).data[0].x) == ["run/checkpoint-20", "run/checkpoint-100"]


def test_axis_titles_are_words_and_ticks_whole_numbers(matrices):
    """No raw column names (rank_ratio, fraction_below, sar, "mean mean_angle_deg") nor literal σ_i, θ_i; layers
    and steps tick at whole numbers."""
    ranks = pd.DataFrame({"checkpoint": "a", "layer": [0, 1, 2], "rank_ratio": 0.5, "kind": "q", "tensor": "t",
                          "update_rank": 4})
    welore = pd.DataFrame({"kind": "q", "step": [0, 1, 2], "fraction_below": 0.3})
    sar = pd.DataFrame({"checkpoint": "a", "layer": [0, 1], "sar": 0.4})
    angles = pd.DataFrame({"side": ["left"], "k": [3], "angles": [[10.0, 20.0, 30.0]]})
    spectrum = pd.DataFrame({"step": [0], "tensor": ["w"], "sigma": [[3.0, 2.0, 1.0]]})
    figures = [charts.update_rank_by_layer(ranks), charts.welore_over_steps(welore, 0.5), charts.sar_by_task(sar),
               charts.angle_spectrum(angles), charts.spectrum_over_training(spectrum),
               charts.metric_over_steps(matrices, "alpha")]
    for fig in figures:
        assert fig.layout.xaxis.tickformat == "d"
        assert fig.layout.xaxis.dtick == (None if fig is figures[-1] else 1)  # every value of a short span
        titles = [fig.layout.xaxis.title.text, fig.layout.yaxis.title.text]
        assert all(t and "_" not in t for t in titles), titles
    assert figures[0].layout.yaxis.title.text == charts.LABELS["rank_ratio"]
    assert figures[3].layout.yaxis.title.text.startswith("θ<sub>i</sub>")
    assert figures[4].layout.yaxis.title.text == "singular value σᵢ"
    for fig in (figures[4], charts.singular_value_curves(pd.DataFrame({"checkpoint": "a", "index": [0, 1, 2],
                                                                       "sigma": [3.0, 2.0, 1.0]}))):
        assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.minorloglabels == "complete"  # 0.2, not "2"
    pairs = pd.DataFrame({"checkpoint_a": ["a"], "checkpoint_b": ["b"], "overlap": [0.2], "mean_angle_deg": [60.0]})
    title = charts.task_overlap_matrix(pairs, "mean_angle_deg").layout.title.text
    assert "mean_angle_deg" not in title and "mean mean" not in title


def test_task_overlap_matrix_is_symmetric_with_unit_diagonal():
    pairs = pd.DataFrame({"checkpoint_a": ["a", "a", "b"], "checkpoint_b": ["b", "c", "c"],
                          "overlap": [0.2, 0.4, 0.6], "mean_angle_deg": [60.0, 50.0, 40.0]})
    z = np.asarray(charts.task_overlap_matrix(pairs).data[0].z)
    np.testing.assert_allclose(z, [[1, 0.2, 0.4], [0.2, 1, 0.6], [0.4, 0.6, 1]])
    z = np.asarray(charts.task_overlap_matrix(pairs, "mean_angle_deg").data[0].z)
    assert z[0, 1] == 60.0 and z[1, 1] == 0.0


def _run_pairs() -> pd.DataFrame:
    rows = []
    for a, b in [(0, 10), (10, 20), (0, 20)]:
        for layer, kind in [(0, "q"), (1, "q"), (0, "down")]:
            rows.append({"step_a": a, "step_b": b, "tensor": f"l{layer}.{kind}", "layer": layer, "kind": kind,
                         "overlap": 0.5 + 0.01 * b + 0.1 * layer, "chance": 0.1,
                         "previous": b - a == 10, "from_first": a == 0, "to_last": b == 20})
    return pd.DataFrame(rows)


def test_reference_choice_picks_the_right_pairs_and_x():
    pairs = _run_pairs()
    prev = charts.against_reference(pairs, "previous")
    assert set(zip(prev.step_a, prev.step_b)) == {(0, 10), (10, 20)} and list(prev.step) == list(prev.step_b)
    last = charts.against_reference(pairs, "last")
    assert set(zip(last.step_a, last.step_b)) == {(10, 20), (0, 20)} and list(last.step) == list(last.step_a)


def test_overlap_figures_hold_the_values():
    pairs = _run_pairs()
    prev = charts.against_reference(pairs, "previous")
    grid = charts.overlap_layer_step(prev, "previous")
    z = np.asarray(grid.data[0].z, dtype=float)
    # layer 0 at step 20: mean of q (0.7) and down (0.7); layer 1 at step 10: 0.7
    assert z.shape == (2, 2) and z[0, 1] == pytest.approx(0.7) and z[1, 0] == pytest.approx(0.7)
    lines = charts.overlap_over_steps(prev, "previous")
    assert len(lines.data) == 3  # layers 0 and 1 in panel q, layer 0 in panel down
    matrix = charts.checkpoint_overlap_matrix(pairs[pairs.tensor == "l1.q"])
    m = np.asarray(matrix.data[0].z, dtype=float)
    np.testing.assert_allclose(m, m.T)
    assert np.diag(m).tolist() == [1.0, 1.0, 1.0] and m[0, 2] == pytest.approx(0.8)


def test_convergence_by_layer_needs_every_matrix_settled():
    conv = pd.DataFrame({"of": ["weights"] * 3, "layer": [0, 0, 1], "settled_step": pd.array([10, 30, None],
                                                                                               dtype="Int64")})
    fig = charts.convergence_by_layer(conv)
    bars = fig.data[0]
    assert list(bars.y)[0] == 30 and np.isnan(float(list(bars.y)[1]))  # layer 1 never settled
    never = fig.data[-1]
    assert never.name == "not settled" and list(never.x) == [1] and list(never.text) == ["not settled"]
    assert min(never.y) > 30, "drawn above every bar, not at step 0 (a layer settled from the start)"
    nothing = charts.convergence_by_layer(conv.assign(settled_step=pd.array([None] * 3, dtype="Int64")))
    assert not nothing.data and "no layer settled" in nothing.layout.annotations[0].text


def test_patching_opens_on_the_strongest_effect():
    effects = pd.DataFrame({"layer": [0, 0, 1, 1, 2], "method": ["das", "das", "das", "probe", "das"],
                            "component": ["full", "row", "full", "full", "full"],
                            "fldd": [0.0, 90.0, 5.0, -40.0, 20.0]})
    best = charts.strongest_effect(effects)
    assert (best["layer"], best["method"]) == (1, "probe")  # |−40 %| of the full direction; a part's 90 % is not it


def test_spectrum_and_welore_figures():
    spectrum = pd.DataFrame({"step": [0, 10], "tensor": ["w", "w"], "sigma": [[3.0, 2.0, 1.0], [4.0, 1.0, 0.5]]})
    fig = charts.spectrum_over_training(spectrum)
    assert [list(t.y) for t in fig.data] == [[3.0, 2.0, 1.0], [4.0, 1.0, 0.5]]
    welore = pd.DataFrame({"kind": ["q", "q", "q"], "step": [0, 10, 10], "fraction_below": [0.1, 0.4, 0.6]})
    fig = charts.welore_over_steps(welore, 0.5)
    assert list(fig.data[0].y) == [0.1, 0.5]


def test_long_spectra_are_thinned_but_keep_the_top_and_the_last():
    keep = charts.thinned(4096)
    assert keep[:64].tolist() == list(range(64)) and keep[-1] == 4095 and len(keep) <= 64 + 512
    assert np.all(np.diff(keep) > 0) and charts.thinned(100).tolist() == list(range(100))
    sigma = np.geomspace(100, 1, 4096)
    spectrum = pd.DataFrame({"step": range(30), "tensor": "w", "sigma": [sigma * (1 + s / 10) for s in range(30)]})
    fig = charts.spectrum_over_training(spectrum)
    assert len(fig.data) == charts.MAX_LINES and "12 of 30 checkpoints" in fig.layout.title.text
    np.testing.assert_allclose(fig.data[-1].y, (sigma * 3.9)[keep])  # the last step drawn, at the kept ranks
    assert list(fig.data[-1].x) == (keep + 1).tolist()


@pytest.mark.parametrize("kinds", [1, 2, 3, 4, 5, 7, 10])
def test_overlap_panels_tile_the_figure_for_any_number_of_kinds(kinds):
    rows = pd.DataFrame([{"kind": f"k{k}", "layer": layer, "step": step, "overlap": 0.5, "chance": 0.1}
                         for k in range(kinds) for layer in (0, 1) for step in (10, 20)])
    fig = charts.overlap_over_steps(rows, "previous")
    layout = fig.layout.to_plotly_json()
    domains = [layout[key]["domain"] for key in layout if key.startswith(("xaxis", "yaxis"))]
    assert len(domains) == 2 * kinds and all(0 <= lo < hi <= 1 for lo, hi in domains)
    assert len(fig.data) == 2 * kinds and len(fig.layout.shapes) == kinds  # a line per layer, a chance line per panel


def test_stored_jobs_counts_jobs_per_analysis_and_device():
    jobs = pd.DataFrame({"analysis": ["spectra"] * 5 + ["overlap"] * 2,
                         "device": ["cpu", "cpu", "cuda", "cpu", "cuda", "cpu", "cpu"],
                         "checkpoint": ["a", "b", "c", "d", "e", "r", "r"], "matrices": [10] * 7,
                         "wall_s": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]})
    fig = charts.stored_jobs(jobs)
    bars = {(t.name, y): x for t in fig.data for y, x in zip(t.y, t.x)}
    assert bars == {("cpu", "spectra"): 3, ("cuda", "spectra"): 2, ("cpu", "overlap"): 2}
    cuda = next(t for t in fig.data if t.name == "cuda")
    assert list(cuda.customdata[0]) == [2, 20, 8.0]  # checkpoints, matrices, seconds summed (3 + 5)


# ---------------------------------------------------------------- MoE experts


def _experts() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"checkpoint": "m", "tensor": f"layers.{layer}.mlp.experts.{kind}_proj[{e}]", "layer": layer, "kind": kind,
             "expert": e, "alpha": float(rng.uniform(2, 6))}
            for layer in range(3) for kind in ("down", "gate") for e in range(4)]
    rows.append({"checkpoint": "m", "tensor": "layers.0.self_attn.q_proj", "layer": 0, "kind": "q", "expert": None,
                 "alpha": 9.0})
    return pd.DataFrame(rows).astype({"expert": "Int64"})


def test_expert_layer_heatmap_puts_each_experts_value_in_its_cell():
    frame = _experts()
    fig = charts.expert_layer_heatmap(frame, "alpha", "gate")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (4, 3)  # experts × layers; the q row (no expert) and down experts are left out
    for _, row in frame[(frame["kind"] == "gate")].iterrows():
        assert z[int(row["expert"]), int(row["layer"])] == row["alpha"]
    assert charts.expert_layer_heatmap(frame, "alpha", "q").layout.annotations  # no experts of that kind: says so


def test_spread_across_experts_is_the_median_and_range_per_layer():
    frame = _experts()
    fig = charts.spread_across_experts(frame, "alpha")
    assert sorted(t.name for t in fig.data) == ["down", "gate"]
    down = next(t for t in fig.data if t.name == "down")
    for k, layer in enumerate(down.x):
        values = frame.loc[(frame["kind"] == "down") & (frame["layer"] == layer), "alpha"].to_numpy()
        assert down.y[k] == pytest.approx(np.median(values))
        assert down.y[k] + down.error_y.array[k] == pytest.approx(values.max())
        assert down.y[k] - down.error_y.arrayminus[k] == pytest.approx(values.min())
