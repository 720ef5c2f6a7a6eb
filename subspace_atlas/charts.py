"""Figures: pure functions from DataFrames to plotly figures, shared by the app and the HTML reports (needs plotly: the `app` extra)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from subspace_atlas.naming import align

# Metric → its one-line meaning, in the order the app offers them.
SPECTRA_METRICS: dict[str, str] = {
    "alpha": "power-law exponent of the eigenvalue tail; WeightWatcher reads < 2 as over-trained, "
             "> 6 as under-trained, 2–6 as well-trained",
    "alpha_weighted": "alpha · log10 λmax",
    "log_norm": "log10 of the squared Frobenius norm, Σλ",
    "log_spectral_norm": "log10 λmax, the squared spectral norm",
    "stable_rank": "Σλ / λmax: how many directions carry the energy",
    "log_alpha_norm": "log10 Σλ^alpha",
    "effective_rank": "exp(entropy of σ/Σσ) (Roy & Vetterli)",
    "num_spikes": "eigenvalues above the Marchenko–Pastur bulk edge",
    "mp_softrank": "bulk edge λ+ / λmax",
    "ks_distance": "Kolmogorov–Smirnov distance of the power-law fit (lower = better fit)",
    "sigma_max": "largest singular value",
}


MAX_LINES = 12  # checkpoints a line chart draws before it picks evenly spaced ones: more are not told apart

# Column → axis title, where the column name is not already words a reader knows.
LABELS: dict[str, str] = {"alpha_weighted": "alpha weighted", "log_norm": "log norm",
                          "log_spectral_norm": "log spectral norm", "stable_rank": "stable rank",
                          "log_alpha_norm": "log alpha norm", "effective_rank": "effective rank",
                          "num_spikes": "spikes above the MP edge", "mp_softrank": "MP soft rank",
                          "ks_distance": "KS distance", "sigma_max": "largest singular value",
                          "overlap": "subspace overlap", "mean_angle_deg": "mean principal angle (°)",
                          "rank_ratio": "rank of ΔW / min(m, n)", "update_rank": "rank of ΔW",
                          "fraction_below": "share of normalised σ below τ", "sar": "subspace alignment ratio",
                          "n_intruders": "intruders", "epsilon": "ε", "of": "subspaces of", "step": "training step",
                          "fldd": "FLDD (%)", "wall_s": "seconds", "loss": "held-out loss",
                          "times_chance": "overlap with the base's top-k ÷ chance",
                          "jaccard_chance": "Jaccard by chance", "changed_a": "changed in a",
                          "changed_b": "changed in b", "overlap_coef": "overlap coefficient"}


def label(column: str) -> str:
    """A column's readable name (``LABELS``), else the column itself."""
    return LABELS.get(column, column)


def _integer_ticks(fig: go.Figure, values, axis: str = "x", every_up_to: int = 16) -> go.Figure:
    """Whole-number ticks on an axis of layers, steps or ranks (never 2.5); every value over a short span."""
    values = pd.Series(values, dtype=float).dropna()
    span = float(values.max() - values.min()) if len(values) else 0.0
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    update(tickformat="d", dtick=1 if span < every_up_to else None)
    return fig


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _layer_kind_grid(grid: pd.DataFrame, title: str, color: str, scale: str, text: str, **zrange) -> go.Figure:
    """A kind × layer heatmap with every layer labelled and the values written in the cells."""
    fig = px.imshow(grid, aspect="auto", color_continuous_scale=scale, text_auto=text,
                    labels={"x": "layer", "y": "kind", "color": color}, **zrange)
    fig.update_xaxes(type="category")
    fig.update_layout(title=title, margin={"t": 50})
    return fig


def layer_kind_heatmap(matrices: pd.DataFrame, metric: str) -> go.Figure:
    """Layer × kind heatmap of one metric (mean when several matrices share a cell)."""
    rows = matrices.dropna(subset=["layer"])
    if rows.empty or rows[metric].isna().all():
        return _empty(f"no per-layer values of {metric}")
    grid = rows.pivot_table(index="kind", columns="layer", values=metric, aggfunc="mean")
    return _layer_kind_grid(grid, f"{label(metric)} by layer and kind", label(metric), "Viridis", ".2f")


def expert_layer_heatmap(matrices: pd.DataFrame, metric: str, kind: str) -> go.Figure:
    """Expert × layer heatmap of one kind's metric (an MoE's experts side by side, one checkpoint): an expert
    unlike the rest of its layer, or a layer whose experts disagree, stands out."""
    rows = matrices[matrices["kind"] == kind].dropna(subset=["expert", "layer", metric])
    if rows.empty:
        return _empty(f"no experts of kind {kind} with {metric}")
    grid = rows.pivot_table(index="expert", columns="layer", values=metric, aggfunc="mean")
    fig = px.imshow(grid, aspect="auto", color_continuous_scale="Viridis",
                    labels={"x": "layer", "y": "expert", "color": label(metric)})
    fig.update_layout(title=f"{label(metric)} of every {kind} expert, by layer")
    _integer_ticks(fig, grid.index, axis="y")
    return _integer_ticks(fig, grid.columns)


def spread_across_experts(matrices: pd.DataFrame, metric: str) -> go.Figure:
    """Per layer, one line per kind: the median of the metric across that layer's experts, with bars from the
    lowest expert to the highest: how far a layer's experts differ from one another."""
    rows = matrices.dropna(subset=["expert", "layer", metric])
    if rows.empty:
        return _empty(f"no experts with {metric}")
    stats = (rows.groupby(["kind", "layer"])[metric].agg(["median", "min", "max"]).reset_index()
             .sort_values(["kind", "layer"]))
    traces = [{"type": "scatter", "x": one["layer"].tolist(), "y": one["median"].tolist(), "mode": "lines+markers",
               "name": kind, "error_y": {"type": "data", "symmetric": False,
                                         "array": (one["max"] - one["median"]).tolist(),
                                         "arrayminus": (one["median"] - one["min"]).tolist()},
               "hovertemplate": f"{kind}, layer %{{x}}: median %{{y:.3g}}<extra></extra>"}
              for kind, one in stats.groupby("kind", sort=True)]
    fig = go.Figure(data=traces, layout={"title": {"text": f"{label(metric)} across experts: median, lowest to highest"},
                                         "xaxis": {"title": {"text": "layer"}},
                                         "yaxis": {"title": {"text": label(metric)}},
                                         "legend": {"title": {"text": "kind"}}})
    return _integer_ticks(fig, stats["layer"])


def in_step_order(frame: pd.DataFrame) -> list[str]:
    """The frame's checkpoints run by run (those of no run first), each run's by training step, then by name with
    numbers compared as numbers (checkpoint-20 before checkpoint-100)."""
    firsts = frame.dropna(subset=["checkpoint"]).drop_duplicates("checkpoint")
    missing = pd.Series(np.nan, index=firsts.index)
    keyed = sorted(zip(firsts.get("run", missing), firsts.get("step", missing), firsts["checkpoint"]), key=_step_key)
    return [name for *_, name in keyed]


def _step_key(entry: tuple) -> tuple:
    run, step, name = entry
    return (pd.notna(run), natural_key(run) if pd.notna(run) else (), pd.notna(step), step if pd.notna(step) else 0,
            natural_key(name))


def natural_key(name: str) -> tuple:
    """Sort key that reads runs of digits as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name)))


def spread(ordered: list, limit: int = MAX_LINES) -> list:
    """At most ``limit`` items, evenly spaced, always the first and the last."""
    if len(ordered) <= limit:
        return list(ordered)
    picks = np.unique(np.round(np.linspace(0, len(ordered) - 1, limit)).astype(int))
    return [ordered[k] for k in picks]


def thinned(size: int, head: int = 64, limit: int = 512) -> np.ndarray:
    """Positions of a curve worth drawing: the first ``head`` (the top singular values, where spectra differ)
    and about ``limit`` evenly spaced after them, always the last; a browser draws 4,096-point lines slowly."""
    if size <= head + limit:
        return np.arange(size)
    rest = np.linspace(head, size - 1, limit).round().astype(int)
    return np.unique(np.concatenate([np.arange(head), rest]))


def _step_colours(count: int) -> list[str]:
    """A sequential scale: early checkpoints dark, late ones bright, so order reads at a glance."""
    return px.colors.sample_colorscale("Viridis", list(np.linspace(0, 0.9, count)) if count > 1 else [0.0])


def _shown(total: int, drawn: int) -> str:
    return "" if drawn == total else f" ({drawn} of {total} checkpoints, evenly spaced; choose fewer to see each)"


def metric_by_layer(matrices: pd.DataFrame, metric: str) -> go.Figure:
    """The metric across layers, one panel per kind and one line per checkpoint coloured by step order;
    beyond ``MAX_LINES`` checkpoints, evenly spaced ones are drawn. Built as one dict, like ``overlap_over_steps``."""
    rows = matrices.dropna(subset=["layer", metric]).sort_values("layer")
    if rows.empty:
        return _empty(f"no per-layer values of {metric}")
    order = in_step_order(rows)
    drawn = spread(order)
    kinds = sorted(rows["kind"].unique())
    cols = min(3, len(kinds))
    layout, axes = _panels(kinds, cols, gap_x=0.06, gap_y=0.12)
    groups = dict(tuple(rows[rows["checkpoint"].isin(drawn)].groupby(["kind", "checkpoint"], sort=False)))
    mode = "lines+markers" if len(drawn) <= 3 else "lines"  # thousands of SVG markers are slow to draw
    traces = []
    for k, (kind, axis) in enumerate(zip(kinds, axes)):
        if axis:
            layout[f"xaxis{axis}"]["matches"] = "x"
        for checkpoint, colour in zip(drawn, _step_colours(len(drawn))):
            one = groups.get((kind, checkpoint))
            if one is None:
                continue
            traces.append({"type": "scatter", "x": one["layer"].tolist(), "y": one[metric].tolist(), "mode": mode,
                           "name": str(checkpoint), "legendgroup": str(checkpoint), "showlegend": k == 0,
                           "line": {"color": colour}, "customdata": one[["tensor"]].to_numpy().tolist(),
                           "xaxis": f"x{axis}", "yaxis": f"y{axis}",
                           "hovertemplate": "%{customdata[0]}<br>layer %{x}: %{y:.3g}<extra>%{fullData.name}</extra>"})
    layout |= {"title": {"text": f"{label(metric)} across layers{_shown(len(order), len(drawn))}"},
               "legend": {"title": {"text": "checkpoint"}}, "height": 260 * -(-len(kinds) // cols) + 80}
    return _integer_ticks(go.Figure(data=traces, layout=layout), rows["layer"])


def metric_over_steps(matrices: pd.DataFrame, metric: str) -> go.Figure:
    """For checkpoints with steps: the metric's mean per kind against training step, one line per run."""
    rows = matrices.dropna(subset=["step", metric])
    if rows.empty:
        return _empty("no checkpoints with a training step")
    mean = (rows.assign(run=rows["run"].fillna("—"))
            .groupby(["run", "kind", "step"], as_index=False)[metric].mean().sort_values("step"))
    fig = px.line(mean, x="step", y=metric, color="kind", line_dash="run", markers=True, labels=LABELS)
    fig.update_layout(title=f"mean {label(metric)} per kind over training")
    return _integer_ticks(fig, mean["step"])


def esd_with_fit(sigma: np.ndarray, fit: pd.Series, bins: int = 60) -> go.Figure:
    """Log-log density of the eigenvalues λ = σ², the power-law tail fit and xmin, and the MP bulk edge."""
    lam = np.asarray(sigma, dtype=float) ** 2
    lam = lam[lam > 0]
    if lam.size < 2:
        return _empty("too few non-zero eigenvalues to draw a density")
    edges = np.logspace(np.log10(lam.min()), np.log10(lam.max()), bins + 1)
    edges[0], edges[-1] = lam.min(), lam.max()  # logspace rounding must not drop the extremes
    counts, edges = np.histogram(lam, bins=edges)
    density = counts / (lam.size * np.diff(edges))
    centers = np.sqrt(edges[:-1] * edges[1:])
    keep = density > 0
    fig = go.Figure(go.Scatter(x=centers[keep], y=density[keep], mode="markers+lines", name="ESD",
                               line={"shape": "hvh"}))
    alpha, xmin = fit.get("alpha"), fit.get("xmin")
    if pd.notna(alpha) and pd.notna(xmin) and xmin > 0:
        share = fit.get("n_tail", 0) / lam.size
        x = np.logspace(np.log10(xmin), np.log10(lam.max()), 50)
        y = share * (alpha - 1) / xmin * (x / xmin) ** (-alpha)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"power law, alpha = {alpha:.2f}",
                                 line={"dash": "dash", "color": "crimson"}))
        _log_vline(fig, xmin, "xmin", "crimson", top=True)
    edge = fit.get("mp_bulk_max")
    if pd.notna(edge) and edge > 0:
        _log_vline(fig, edge, "MP bulk edge", "gray", top=False)
    fig.update_xaxes(type="log", title="eigenvalue λ = σ²", exponentformat="power", minorloglabels="complete")
    fig.update_yaxes(type="log", title="density", exponentformat="power", minorloglabels="complete")
    fig.update_layout(title=f"eigenvalue density of {fit.get('tensor', '')}")
    return fig


def _log_vline(fig: go.Figure, x: float, text: str, colour: str, top: bool) -> None:
    """A dotted vertical line on a log x-axis, labelled beside it at the top or bottom (an annotation on a log
    axis sits at log10 x, a shape at x itself)."""
    fig.add_vline(x=x, line={"color": colour, "dash": "dot"})
    fig.add_annotation(x=float(np.log10(x)), xref="x", y=1 if top else 0, yref="paper", text=text, showarrow=False,
                       xanchor="left", yanchor="top" if top else "bottom", font={"color": colour})


def singular_value_curves(values: pd.DataFrame, order: list[str] | None = None) -> go.Figure:
    """σ_i against rank i (log y), one line per checkpoint coloured by step order (``order``, default by
    name): how the whole spectrum compares. Beyond ``MAX_LINES`` checkpoints, evenly spaced ones are drawn."""
    if values.empty:
        return _empty("no singular values")
    present = set(values["checkpoint"])
    order = [c for c in (order or sorted(present, key=natural_key)) if c in present]
    drawn = spread(order)
    fig = go.Figure()
    groups = dict(tuple(values[values["checkpoint"].isin(drawn)].groupby("checkpoint", sort=False)))
    for checkpoint, colour in zip(drawn, _step_colours(len(drawn))):
        one = groups[checkpoint].sort_values("index")
        one = one.iloc[thinned(len(one))]
        fig.add_trace(go.Scatter(x=one["index"], y=one["sigma"], mode="lines", name=str(checkpoint),
                                 line={"color": colour}))
    fig.update_yaxes(type="log", title="singular value σᵢ", exponentformat="power", minorloglabels="complete")
    fig.update_layout(title=f"singular values by rank{_shown(len(order), len(drawn))}", xaxis_title="rank i",
                      legend_title_text="checkpoint")
    return _integer_ticks(fig, values["index"])


def stored_jobs(jobs: pd.DataFrame) -> go.Figure:
    """What the store holds: one bar per analysis, its jobs split by the device they ran on, with their
    checkpoints, matrices and recorded compute time on hover. Readable at 1,000 jobs, where a bar per job
    was not (a job's ``wall_s`` is its share of its command's time, so it is summed, never drawn alone)."""
    if jobs.empty:
        return _empty("the store is empty")
    frame = jobs.assign(device=jobs["device"].fillna("?") if "device" in jobs else "?",
                        matrices=jobs["matrices"] if "matrices" in jobs else 0,
                        wall_s=jobs["wall_s"] if "wall_s" in jobs else np.nan)
    per = (frame.groupby(["analysis", "device"], as_index=False)
           .agg(jobs=("analysis", "size"), checkpoints=("checkpoint", "nunique"), matrices=("matrices", "sum"),
                seconds=("wall_s", "sum")))
    order = per.groupby("analysis")["jobs"].sum().sort_values().index.tolist()
    fig = px.bar(per, y="analysis", x="jobs", color="device", orientation="h", text="jobs",
                 category_orders={"analysis": order[::-1]},
                 hover_data={"checkpoints": True, "matrices": True, "seconds": ":.1f"})
    fig.update_layout(title="stored jobs by analysis, and the device they ran on", xaxis_title="jobs",
                      yaxis_title=None, height=120 + 40 * len(order))
    return fig


def zoo_accuracy(runs: pd.DataFrame) -> go.Figure:
    """Final train and held-out accuracy of every fine-tune (per task for continual runs), chance dashed."""
    rows = runs.dropna(subset=["heldout_accuracy"])
    if rows.empty:
        return _empty("no classification runs")
    label = rows["run"] + np.where(rows["kind"] == "continual", " · " + rows["task"], "")
    fig = go.Figure([
        go.Bar(x=label, y=rows["train_accuracy"], name="train accuracy"),
        go.Bar(x=label, y=rows["heldout_accuracy"], name="held-out accuracy"),
        go.Scatter(x=label, y=rows["chance_accuracy"], name="chance", mode="markers",
                   marker={"symbol": "line-ew-open", "size": 28, "color": "black"}),
    ])
    fig.update_layout(barmode="group", title="demo zoo: what each fine-tune learned", yaxis_range=[0, 1.02],
                      yaxis_title="accuracy")
    return fig


def loss_curves(curves: pd.DataFrame) -> go.Figure:
    """Held-out loss against training step, one line per run."""
    if curves.empty:
        return _empty("no loss curves")
    fig = px.line(curves, x="step", y="loss", color="run", markers=True, labels=LABELS)
    fig.update_layout(title="held-out loss over training", yaxis_title="cross-entropy (nats/token)")
    return _integer_ticks(fig, curves["step"])


# ---------------------------------------------------------------- intruder dimensions


def intruder_heatmap(summary: pd.DataFrame, title: str) -> go.Figure:
    """Layer × kind: intruders among each matrix's top-k singular vectors (one checkpoint, ε, side)."""
    rows = summary.dropna(subset=["layer"])
    if rows.empty:
        return _empty("no per-layer matrices")
    grid = rows.pivot_table(index="kind", columns="layer", values="n_intruders", aggfunc="sum")
    top_k = int(rows["top_k"].max())
    return _layer_kind_grid(grid, title, "intruders", "Reds", "d", zmin=0, zmax=max(1, top_k))


def intruders_vs_epsilon(summary: pd.DataFrame) -> go.Figure:
    """Total intruders (summed over matrices) against ε, one line per checkpoint: the paper's Figure-style sweep."""
    if summary.empty:
        return _empty("no intruder summaries")
    total = summary.groupby(["checkpoint", "epsilon"], as_index=False)["n_intruders"].sum().sort_values("epsilon")
    fig = px.line(total, x="epsilon", y="n_intruders", color="checkpoint", markers=True,
                  category_orders={"checkpoint": in_step_order(summary)})
    fig.update_layout(title="intruders in the top-k vs threshold ε (all selected matrices)",
                      xaxis_title="ε (a vector is an intruder when max |cos| with every base vector < ε)",
                      yaxis_title="intruders")
    return fig


def intruders_over_steps(summary: pd.DataFrame) -> go.Figure:
    """For runs with checkpoints: total intruders against training step, one line per run."""
    rows = summary.dropna(subset=["step", "run"])
    if rows.empty:
        return _empty("no runs with checkpoints")
    total = rows.groupby(["run", "step"], as_index=False)["n_intruders"].sum().sort_values("step")
    fig = px.line(total, x="step", y="n_intruders", color="run", markers=True, labels=LABELS)
    fig.update_layout(title="intruders over training (all selected matrices)")
    return _integer_ticks(fig, total["step"])


def similarity_matrix(similarity: pd.DataFrame, vectors: pd.DataFrame) -> go.Figure:
    """|Uᵀ U0| for one matrix: the fine-tune's top-k vectors (rows) against the base's top-N (columns)."""
    if similarity.empty:
        return _empty("no similarity stored for this matrix")
    grid = similarity.pivot(index="index", columns="base_index", values="cos")
    marks = vectors.set_index("index")["is_intruder"].reindex(grid.index, fill_value=False)
    labels = [f"{i} ⚠" if marks[i] else str(i) for i in grid.index]
    fig = px.imshow(grid.to_numpy(), x=list(grid.columns), y=list(grid.index), zmin=0, zmax=1,
                    color_continuous_scale="Blues", aspect="auto",
                    labels={"x": "base singular vector (rank)", "y": "fine-tuned vector (rank; ⚠ intruder)",
                            "color": "|cos|"})
    fig.update_yaxes(tickmode="array", tickvals=list(grid.index), ticktext=labels)
    fig.update_layout(title="similarity |Uᵀ U0| (intruders have no bright cell anywhere in the base)")
    return fig


def mitigated_sigma(values: pd.DataFrame, vectors: pd.DataFrame, lam: float) -> pd.DataFrame:
    """The fine-tuned spectrum after PEFT-style mitigation: intruders' σ times λ (vectors unchanged)."""
    tuned = values[values["which"] == "tuned"].set_index("index")["sigma"].copy()
    hit = vectors.loc[vectors["is_intruder"], "index"]
    tuned.loc[tuned.index.intersection(hit)] *= lam
    return pd.DataFrame({"index": np.arange(len(tuned)), "sigma": np.sort(tuned.to_numpy())[::-1]})


def spectrum_with_intruders(values: pd.DataFrame, vectors: pd.DataFrame, lam: float | None = None) -> go.Figure:
    """Base and fine-tuned singular values by rank, intruders marked at their ranks; optionally mitigated."""
    if values.empty:
        return _empty("no singular values stored for this matrix")
    fig = go.Figure()
    for which, style in (("base", {"color": "gray", "dash": "dot"}), ("tuned", {"color": "steelblue"})):
        part = values[values["which"] == which]
        fig.add_trace(go.Scatter(x=part["index"], y=part["sigma"], mode="lines+markers", name=which, line=style,
                                 marker={"size": 4}))
    hit = vectors[vectors["is_intruder"]]
    if not hit.empty:
        fig.add_trace(go.Scatter(x=hit["index"], y=hit["sigma"], mode="markers", name="intruder",
                                 marker={"symbol": "x", "size": 13, "color": "crimson"},
                                 hovertemplate="rank %{x}<br>σ %{y:.4g}<extra>intruder</extra>"))
        if lam is not None:
            after = mitigated_sigma(values, vectors, lam)
            fig.add_trace(go.Scatter(x=after["index"], y=after["sigma"], mode="lines", name=f"mitigated, λ = {lam:g}",
                                     line={"color": "darkorange", "dash": "dash"}))
    fig.update_layout(title="leading singular values", xaxis_title="rank", yaxis_title="σ")
    return _integer_ticks(fig, values["index"])


def mitigation_curve(matrix: pd.Series, vectors: pd.DataFrame, lam: float) -> go.Figure:
    """How far PEFT-style mitigation of the intruders ``vectors`` marks (at the chosen ε) moves one matrix, for
    every λ in [0, 1]: away from W, back toward W0; the chosen ``lam`` dotted.

    ‖W' − W‖ = (1 − λ)·√E with the intruders' energy E = Σ s_i².
    ‖W' − W0‖² = ‖ΔW‖² − 2(1 − λ)·P + (1 − λ)²·E needs P = Σ s_i·u_iᵀΔW v_i: from the vectors' ``update_along``
    where stored (any ε), else ``matrix``'s, which holds the intruders of the job's first ε only.
    """
    intruders = vectors[vectors["is_intruder"]]
    energy = float(np.sum(intruders["sigma"].to_numpy(dtype=float) ** 2))
    if not energy > 0:
        return _empty("no intruders at this ε: mitigation leaves the matrix unchanged")
    grid = np.linspace(0, 1, 51)
    traces = [go.Scatter(x=grid, y=(1 - grid) * np.sqrt(energy) / matrix["norm_tuned"],
                         name="‖W′ − W‖ / ‖W‖ (how far the matrix moves)")]
    if "update_along" in intruders and intruders["update_along"].notna().all():
        proj = float(np.sum(intruders["sigma"].to_numpy(dtype=float) * intruders["update_along"].to_numpy(dtype=float)))
    elif np.isclose(energy, matrix["intruder_energy"], rtol=1e-4):
        proj = float(matrix["intruder_update_proj"])
    else:
        proj = None
    if proj is not None:
        update = matrix["norm_update"]
        moved = np.sqrt(np.maximum(update**2 - 2 * (1 - grid) * proj + (1 - grid) ** 2 * energy, 0))
        traces.append(go.Scatter(x=grid, y=moved / update, name="‖W′ − W0‖ / ‖W − W0‖ (update left)"))
    fig = go.Figure(traces)
    fig.add_vline(x=lam, line={"dash": "dot", "color": "gray"}, annotation_text=f"λ = {lam:g}")
    note = "" if proj is not None else ("<br><sup>the update left, ‖W′ − W0‖, is stored for the job's first ε only "
                                        "(rerun the job to store it per vector)</sup>")
    fig.update_layout(title=f"mitigation W′ = W + (λ − 1)·Σ<sub>intruders</sub> s u vᵀ{note}",
                      xaxis_title="λ", yaxis_title="relative Frobenius distance")
    return fig


# ---------------------------------------------------------------- update sparsity

SPARSITY_DEFINITIONS: dict[str, str] = {
    "exact": "bit-for-bit equal in the stored dtype (the RL-subnetwork paper's count)",
    "atol": "|tuned − base| ≤ atol in float32",
    "ulp": "at most n representable values apart in the stored dtype",
}


def weighted_unchanged(matrices: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Unchanged fraction of every definition over groups of matrices, weighted by entries (not a mean of fractions)."""
    cols = [f"unchanged_{d}" for d in SPARSITY_DEFINITIONS]
    weighted = matrices[cols].mul(matrices["numel"], axis=0).assign(numel=matrices["numel"])
    weighted[by] = matrices[by]
    total = weighted.groupby(by, as_index=False, dropna=False).sum()
    total[cols] = total[cols].div(total["numel"], axis=0)
    return total


def sparsity_heatmap(matrices: pd.DataFrame, definition: str, title: str) -> go.Figure:
    """Layer × kind: the share of entries a fine-tune left unchanged (one checkpoint, one definition)."""
    rows = matrices.dropna(subset=["layer"])
    if rows.empty:
        return _empty("no per-layer matrices")
    grid = weighted_unchanged(rows, ["kind", "layer"]).pivot(index="kind", columns="layer",
                                                             values=f"unchanged_{definition}")
    return _layer_kind_grid(grid, title, "unchanged", "Greens", ".2f", zmin=0, zmax=1)


def sparsity_by_checkpoint(matrices: pd.DataFrame) -> go.Figure:
    """Whole-model unchanged share per checkpoint, one bar per definition: RL vs SFT, and what bf16 hides."""
    if matrices.empty:
        return _empty("no matrices")
    total = weighted_unchanged(matrices, ["checkpoint"]).set_index("checkpoint").loc[in_step_order(matrices)]
    total = total.reset_index()
    fig = go.Figure([go.Bar(x=total["checkpoint"], y=total[f"unchanged_{d}"], name=d,
                            hovertemplate="%{x}<br>%{y:.1%} unchanged<extra>" + d + "</extra>")
                     for d in SPARSITY_DEFINITIONS])
    fig.update_layout(barmode="group", title="share of parameters left unchanged (whole model, by entries)",
                      yaxis_tickformat=".0%", yaxis_range=[0, 1], legend_title_text="unchanged when")
    return fig


def sparsity_over_steps(matrices: pd.DataFrame, definition: str) -> go.Figure:
    """For runs: whole-model unchanged share against training step."""
    rows = matrices.dropna(subset=["step", "run"])
    if rows.empty:
        return _empty("no runs with checkpoints")
    total = weighted_unchanged(rows, ["run", "step"]).sort_values("step")
    fig = px.line(total, x="step", y=f"unchanged_{definition}", color="run", markers=True, labels=LABELS)
    fig.update_layout(title=f"unchanged share over training ({definition})", yaxis_tickformat=".0%",
                      yaxis_title="unchanged")
    return _integer_ticks(fig, total["step"])


def overlap_vs_chance(overlap: pd.DataFrame) -> go.Figure:
    """Per matrix and pair of fine-tunes: Jaccard of their changed-masks against independent masks' expectation."""
    if overlap.empty:
        return _empty("no pairs of fine-tunes")
    pair = overlap["checkpoint_a"] + " ∩ " + overlap["checkpoint_b"]
    fig = px.scatter(overlap.assign(pair=pair), x="jaccard_chance", y="jaccard", color="pair",
                     hover_data=["tensor", "changed_a", "changed_b", "overlap_coef"], labels=LABELS)
    lo = float(min(overlap["jaccard_chance"].min(), overlap["jaccard"].min()))
    fig.add_trace(go.Scatter(x=[lo, 1], y=[lo, 1], mode="lines", name="chance (independent masks)",
                             line={"dash": "dash", "color": "gray"}))
    fig.update_layout(title="subnetwork overlap: above the diagonal = more shared than chance",
                      xaxis_title="Jaccard expected by chance, pq / (p + q − pq)", yaxis_title="Jaccard")
    return fig


def update_rank_by_layer(matrices: pd.DataFrame) -> go.Figure:
    """Update rank / min(m, n) across layers, per checkpoint and kind."""
    rows = matrices.dropna(subset=["layer", "rank_ratio"]).sort_values("layer")
    if rows.empty:
        return _empty("no update ranks stored (computed without --rank?)")
    fig = px.line(rows, x="layer", y="rank_ratio", color="checkpoint", line_dash="kind", markers=True,
                  hover_data=["tensor", "update_rank"], labels=LABELS,
                  category_orders={"checkpoint": in_step_order(rows)})
    fig.update_layout(title="numerical rank of ΔW / min(m, n)", yaxis_range=[0, 1.05])
    return _integer_ticks(fig, rows["layer"])


# ---------------------------------------------------------------- task-subspace angles


def task_overlap_matrix(pairs: pd.DataFrame, value: str = "overlap") -> go.Figure:
    """Task × task: the mean over matrices of the subspace overlap (1 on the diagonal) or mean angle."""
    if pairs.empty:
        return _empty("no pairs of tasks")
    mean = pairs.groupby(["checkpoint_a", "checkpoint_b"], as_index=False)[value].mean()
    tasks = sorted(set(mean["checkpoint_a"]) | set(mean["checkpoint_b"]), key=natural_key)
    grid = pd.DataFrame(np.nan, index=tasks, columns=tasks)
    for row in mean.itertuples():
        grid.loc[row.checkpoint_a, row.checkpoint_b] = grid.loc[row.checkpoint_b, row.checkpoint_a] = getattr(row, value)
    for t in tasks:
        grid.loc[t, t] = 1.0 if value == "overlap" else 0.0
    scale, zrange = ("Blues", (0, 1)) if value == "overlap" else ("Blues_r", (0, 90))
    fig = px.imshow(grid, text_auto=".2f", color_continuous_scale=scale, zmin=zrange[0], zmax=zrange[1],
                    labels={"color": label(value)}, aspect="auto")
    _mark_not_computed(fig, grid)
    fig.update_layout(title=f"task × task: {label(value)}, averaged over the selected matrices")
    return fig


def _mark_not_computed(fig: go.Figure, grid: pd.DataFrame) -> None:
    """Grey cells saying "not computed" over a heatmap's missing pairs (blank would read as the scale's low end)."""
    missing = grid.isna().to_numpy()
    if missing.any():
        fig.add_trace(go.Heatmap(z=np.where(missing, 0.0, np.nan), x=list(grid.columns), y=list(grid.index),
                                 colorscale=[[0, "lightgrey"], [1, "lightgrey"]], showscale=False, name="not computed",
                                 text=np.where(missing, "not computed", "").tolist(), texttemplate="%{text}",
                                 hovertemplate="%{y} × %{x}: not computed<extra></extra>"))


def overlap_by_layer(pairs: pd.DataFrame) -> go.Figure:
    """Subspace overlap across layers, one line per pair of tasks (mean over the kinds in view)."""
    rows = pairs.dropna(subset=["layer"])
    if rows.empty:
        return _empty("no per-layer matrices")
    rows = rows.assign(pair=rows["checkpoint_a"] + " ↔ " + rows["checkpoint_b"])
    mean = rows.groupby(["pair", "layer"], as_index=False)["overlap"].mean().sort_values("layer")
    fig = px.line(mean, x="layer", y="overlap", color="pair", markers=True, labels=LABELS)
    fig.update_layout(title="subspace overlap ‖Q<sub>a</sub>ᵀQ<sub>b</sub>‖²<sub>F</sub> / k across layers",
                      yaxis_range=[0, 1.02])
    return _integer_ticks(fig, mean["layer"])


def angle_spectrum(pair_rows: pd.DataFrame) -> go.Figure:
    """All principal angles of one pair and matrix, per side, smallest first (0° shared, 90° orthogonal)."""
    if pair_rows.empty:
        return _empty("no such pair and matrix")
    fig = go.Figure([go.Scatter(x=np.arange(1, len(row.angles) + 1), y=list(row.angles), mode="lines+markers",
                                name=f"{row.side} (k = {row.k})") for row in pair_rows.itertuples()])
    fig.update_layout(title="principal angles", xaxis_title="i", yaxis_title="θ<sub>i</sub> (degrees)",
                      yaxis_range=[0, 91])
    return _integer_ticks(fig, [1, max(len(row.angles) for row in pair_rows.itertuples())])


def base_alignment(tasks: pd.DataFrame) -> go.Figure:
    """Per task and layer: how much of the update's top-k subspace lies in the base's own top-k (vs chance)."""
    rows = tasks.dropna(subset=["layer"])
    if rows.empty:
        return _empty("no per-layer matrices")
    rows = rows.assign(times_chance=rows["overlap_with_base_top"] / rows["overlap_chance"])
    mean = rows.groupby(["checkpoint", "layer"], as_index=False)["times_chance"].mean()
    fig = px.line(mean.sort_values("layer"), x="layer", y="times_chance", color="checkpoint", markers=True,
                  labels=LABELS, category_orders={"checkpoint": in_step_order(rows)})
    fig.add_hline(y=1.0, line={"dash": "dot", "color": "gray"}, annotation_text="chance (a random k-dim subspace)")
    fig.update_layout(title="does the update write into the base's principal directions? "
                            "‖U0<sub>k</sub>ᵀU<sub>t</sub>‖²<sub>F</sub> / k, as a multiple of chance (k / m)",
                      yaxis_rangemode="tozero")
    return _integer_ticks(fig, mean["layer"])


def sar_by_task(alignment: pd.DataFrame) -> go.Figure:
    """Iso-C's Subspace Alignment Ratio of each task against the summed task matrix, per layer."""
    rows = alignment.dropna(subset=["layer"])
    if rows.empty:
        return _empty("no alignment with a summed task matrix (needs two or more tasks)")
    mean = rows.groupby(["checkpoint", "layer"], as_index=False)["sar"].mean().sort_values("layer")
    fig = px.line(mean, x="layer", y="sar", color="checkpoint", markers=True, labels=LABELS,
                  category_orders={"checkpoint": in_step_order(rows)})
    fig.update_layout(title="Subspace Alignment Ratio with the summed task matrix (Iso-C)", yaxis_range=[0, 1.02])
    return _integer_ticks(fig, mean["layer"])


# ---------------------------------------------------------------- training dynamics (overlap)

REFERENCE_FLAGS = {"previous": "previous", "first": "from_first", "last": "to_last"}


def against_reference(pairs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The pairs comparing each checkpoint with its previous, the first or the last one; ``step`` = the other end."""
    rows = pairs[pairs[REFERENCE_FLAGS[reference]].astype(bool)]
    return rows.assign(step=rows["step_a"] if reference == "last" else rows["step_b"])


def overlap_over_steps(rows: pd.DataFrame, reference: str) -> go.Figure:
    """Overlap vs step, one line per layer (dark: early layers, bright: late), one panel per kind, with the
    chance level dotted. Built as one dict (a run of 50 checkpoints has hundreds of lines; plotly's
    per-call validation was most of a page's time)."""
    rows = rows.dropna(subset=["overlap"])
    if rows.empty:
        return _empty("no overlaps for these filters")
    mean = (rows.groupby(["kind", "layer", "step"], dropna=False, as_index=False)
            .agg(overlap=("overlap", "mean"), chance=("chance", "mean")).sort_values("step"))
    kinds = sorted(mean["kind"].unique())
    layers = sorted(mean["layer"].dropna().unique()) + ([None] if mean["layer"].isna().any() else [])
    colours = dict(zip(layers, _step_colours(len(layers))))
    cols = min(3, len(kinds))
    layout, axes = _panels(kinds, cols)
    chance = float(mean["chance"].mean())
    traces, shown = [], set()
    for kind, axis in zip(kinds, axes):
        layout[f"yaxis{axis}"]["range"] = [0, 1.02]
        layout["shapes"].append({"type": "line", "xref": f"x{axis} domain", "yref": f"y{axis}", "x0": 0, "x1": 1,
                                 "y0": chance, "y1": chance, "line": {"dash": "dot", "color": "grey"}})
        for layer, one in mean[mean["kind"] == kind].groupby("layer", dropna=False, sort=True):
            layer = None if pd.isna(layer) else layer
            name = "—" if layer is None else str(int(layer))
            traces.append({"type": "scatter", "x": one["step"].tolist(), "y": one["overlap"].tolist(),
                           "mode": "lines", "name": name, "legendgroup": name,
                           "showlegend": name not in shown, "line": {"color": colours[layer]},
                           "xaxis": f"x{axis}", "yaxis": f"y{axis}",
                           "hovertemplate": f"{kind}, layer {name}<br>step %{{x}}: %{{y:.3f}}<extra></extra>"})
            shown.add(name)
    layout["annotations"].append({"text": f"chance ≈ {chance:.2g}", "xref": "paper", "yref": "y", "x": 1,
                                  "y": chance, "xanchor": "right", "yanchor": "bottom", "showarrow": False,
                                  "font": {"color": "grey"}})
    layout |= {"title": {"text": f"Top-k subspace overlap with the {reference} checkpoint"},
               "legend": {"title": {"text": "layer"}}, "height": 280 * -(-len(kinds) // cols) + 120}
    return _integer_ticks(go.Figure(data=traces, layout=layout), mean["step"])


def _panels(titles: list[str], cols: int, gap_x: float = 0.05, gap_y: float = 0.14) -> tuple[dict, list[str]]:
    """A layout dict of small multiples, row by row, each titled; and each panel's axis suffix ("", "2", …)."""
    rows = -(-len(titles) // cols)
    width, height = (1 - gap_x * (cols - 1)) / cols, (1 - gap_y * (rows - 1)) / rows
    layout: dict = {"annotations": [], "shapes": []}
    axes = []
    for k, title in enumerate(titles):
        row, col = divmod(k, cols)
        axis = "" if k == 0 else str(k + 1)
        x0, top = col * (width + gap_x), 1 - row * (height + gap_y)
        layout[f"xaxis{axis}"] = {"domain": [max(0.0, x0), min(1.0, x0 + width)], "anchor": f"y{axis}"}
        layout[f"yaxis{axis}"] = {"domain": [max(0.0, top - height), min(1.0, top)], "anchor": f"x{axis}"}
        layout["annotations"].append({"text": title, "x": x0 + width / 2, "y": top, "xref": "paper", "yref": "paper",
                                      "xanchor": "center", "yanchor": "bottom", "showarrow": False})
        axes.append(axis)
    return layout, axes


def overlap_layer_step(rows: pd.DataFrame, reference: str) -> go.Figure:
    """Layer × step heatmap of the overlap (mean over the selected kinds)."""
    rows = rows.dropna(subset=["layer", "overlap"])
    if rows.empty:
        return _empty("no per-layer overlaps for these filters")
    grid = rows.pivot_table(index="layer", columns="step", values="overlap", aggfunc="mean")
    fig = px.imshow(grid, aspect="auto", color_continuous_scale="Viridis", zmin=0, zmax=1,
                    labels={"x": "step", "y": "layer", "color": "overlap"})
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    fig.update_layout(title=f"Overlap with the {reference} checkpoint, by layer and step")
    return fig


def checkpoint_overlap_matrix(rows: pd.DataFrame) -> go.Figure:
    """Checkpoint × checkpoint overlap of one matrix's subspaces (symmetric; grey where not computed)."""
    if rows.empty:
        return _empty("no pairs for this matrix")
    steps = sorted(set(rows["step_a"].dropna()) | set(rows["step_b"].dropna()))
    both = pd.concat([rows[["step_a", "step_b", "overlap"]],
                      rows[["step_b", "step_a", "overlap"]].set_axis(["step_a", "step_b", "overlap"], axis=1)])
    values = (both.pivot_table(index="step_a", columns="step_b", values="overlap", aggfunc="first")
              .reindex(index=steps, columns=steps).to_numpy(dtype=float, copy=True))
    np.fill_diagonal(values, 1.0)
    grid = pd.DataFrame(values, index=steps, columns=steps)
    fig = px.imshow(grid, color_continuous_scale="Viridis", zmin=0, zmax=1,
                    labels={"x": "step", "y": "step", "color": "overlap"})
    _mark_not_computed(fig, grid)
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    missing = int(grid.isna().to_numpy().sum())
    note = f" ({missing // 2} pairs not computed: rerun with --reference all)" if missing else ""
    fig.update_layout(title=f"{rows['tensor'].iloc[0]}: overlap between checkpoints{note}")
    return fig


def convergence_by_layer(convergence: pd.DataFrame, column: str = "settled_step") -> go.Figure:
    """Per layer and kind of subspace: the step after which every matrix of the layer stopped moving."""
    rows = convergence.dropna(subset=["layer"])
    if rows.empty:
        return _empty("no per-layer convergence")
    per = rows.groupby(["of", "layer"], as_index=False).agg(
        step=(column, lambda s: s.max() if s.notna().all() else np.nan),
        settled=(column, lambda s: int(s.notna().sum())), matrices=(column, "size"))
    if per["step"].isna().all():
        return _empty("no layer settled within the run: some matrix of every layer kept moving")
    fig = px.bar(per, x="layer", y="step", color="of", barmode="group", hover_data=["settled", "matrices"],
                 labels=LABELS)
    never = per[per["step"].isna()]
    if not never.empty:  # above every bar, labelled: a layer that never settled is not one that settled at 0
        top = max(float(per["step"].max()), 1.0) * 1.12
        fig.add_trace(go.Scatter(x=never["layer"], y=[top] * len(never), mode="markers+text", name="not settled",
                                 marker={"symbol": "x", "size": 12, "color": "black"},
                                 text=["not settled"] * len(never), textposition="top center", cliponaxis=False,
                                 customdata=never[["of", "settled", "matrices"]],
                                 hovertemplate="layer %{x}: %{customdata[0]} not settled within the run "
                                               "(%{customdata[1]} of %{customdata[2]} matrices did)<extra></extra>"))
    fig.update_xaxes(type="category")
    _integer_ticks(fig, per["step"], axis="y")
    what = "stays ≥ the threshold with the previous checkpoint" if column == "settled_step" else \
        "reaches Q-GaLore's leading-vector threshold"
    fig.update_layout(title=f"Step from which every matrix of a layer {what}")
    return fig


def spectrum_over_training(spectrum: pd.DataFrame) -> go.Figure:
    """One matrix's singular values at every checkpoint, coloured from early (dark) to late (light)."""
    if spectrum.empty:
        return _empty("no spectra stored for this matrix")
    every = spectrum.sort_values("step")
    rows = every.iloc[spread(list(range(len(every))))]
    steps = rows["step"].astype(float).to_numpy()
    span = (steps - steps.min()) / (np.ptp(steps) or 1)
    colors = px.colors.sample_colorscale("Viridis", list(span))
    fig = go.Figure()
    for (step, sigma), color in zip(rows[["step", "sigma"]].itertuples(index=False), colors):
        sigma = np.asarray(sigma)
        keep = thinned(sigma.size)
        fig.add_trace(go.Scatter(x=keep + 1, y=sigma[keep], mode="lines", name=f"step {step}",
                                 line={"color": color}))
    shown = "" if len(rows) == len(every) else f" ({len(rows)} of {len(every)} checkpoints, evenly spaced)"
    fig.update_layout(title=f"{rows['tensor'].iloc[0]}: singular values over training{shown}",
                      xaxis_title="rank i", yaxis_title="singular value σᵢ", yaxis_type="log",
                      yaxis_exponentformat="power", yaxis_minorloglabels="complete")
    return _integer_ticks(fig, [1, max(np.asarray(s).size for s in rows["sigma"])])


def welore_over_steps(welore: pd.DataFrame, share: float) -> go.Figure:
    """WeLore: the fraction of min-max normalised σ below τ over training, per kind, with the LRC line."""
    if welore.empty:
        return _empty("no WeLore values for these filters")
    mean = welore.groupby(["kind", "step"], as_index=False)["fraction_below"].mean()
    fig = px.line(mean.sort_values("step"), x="step", y="fraction_below", color="kind", markers=True,
                  range_y=[0, 1], labels=LABELS)
    fig.add_hline(y=share, line_dash="dot", line_color="grey", annotation_text="low-rank component above")
    fig.update_layout(title="Share of normalised singular values below τ (heavier tail → higher)")
    return _integer_ticks(fig, mean["step"])


# ---------------------------------------------------------------- activation patching

VERDICT_COLORS = {"faithful": "#2a9d8f", "illusory": "#e76f51", "inconclusive": "#adb5bd"}
COMPONENT_ORDER = ["activation", "full", "row", "null"]
PARTS = ["v<sub>row</sub>", "v<sub>null</sub>"]


def strongest_effect(effects: pd.DataFrame) -> pd.Series:
    """The result (its layer, method, …) where the whole direction moves the answer most: the largest |FLDD| of
    the ``full`` component (the first row when no effect is known)."""
    size = effects["fldd"].where(effects["component"] == "full").abs()
    return effects.loc[size.idxmax()] if size.notna().any() else effects.iloc[0]


def verdict_grid(effects: pd.DataFrame) -> go.Figure:
    """Layer × method: the full direction's FLDD in each cell, coloured by the verdict."""
    full = effects[effects["component"] == "full"]
    if full.empty:
        return _empty("no patching results")
    layers = sorted(full["layer"].unique())
    methods = sorted(full["method"].unique())
    code = {v: i for i, v in enumerate(VERDICT_COLORS)}
    z = np.full((len(methods), len(layers)), np.nan)
    text = np.full(z.shape, "", dtype=object)
    for row in full.itertuples():
        i, j = methods.index(row.method), layers.index(row.layer)
        z[i, j] = code[row.verdict]
        text[i, j] = f"{round(row.fldd) or 0:.0f} %<br>{row.verdict}"  # no "-0 %"
    scale = [[k / 2, c] for k, c in enumerate(VERDICT_COLORS.values())]
    fig = go.Figure(go.Heatmap(z=z, x=[str(x) for x in layers], y=methods, text=text, texttemplate="%{text}",
                               colorscale=scale, zmin=0, zmax=2, showscale=False,
                               hovertemplate="layer %{x}, %{y}: %{text}<extra></extra>"))
    fig.update_xaxes(type="category")
    fig.update_layout(title="Verdict per layer and method (cell: the full direction's FLDD)",
                      xaxis_title="layer", yaxis_title="method")
    return fig


def effect_by_component(rows: pd.DataFrame) -> go.Figure:
    """One direction: FLDD of the whole activation, the direction, and its row and null parts patched alone."""
    if rows.empty:
        return _empty("no result for this choice")
    rows = rows.set_index("component").reindex(COMPONENT_ORDER).dropna(subset=["fldd"]).reset_index()
    labels = {"activation": "whole activation", "full": "direction v", "row": "v<sub>row</sub> (read downstream)",
              "null": "v<sub>null</sub> (not read)"}
    fig = go.Figure(go.Bar(x=[labels[c] for c in rows["component"]], y=rows["fldd"],
                           text=[f"{v:.1f} %" for v in rows["fldd"]], textposition="outside",
                           customdata=rows["accuracy"], hovertemplate="%{x}: FLDD %{y:.1f} %, "
                                                                      "interchange accuracy %{customdata:.2f}"))
    fig.add_hline(y=100, line_dash="dot", line_color="grey", annotation_text="100 % = no preference left")
    verdict = rows["verdict"].iloc[0]
    fig.update_layout(title=f"Effect of each part, patched alone — verdict: {verdict}", yaxis_title="FLDD (%)")
    return fig


def norm_split(rows: pd.DataFrame) -> go.Figure:
    """How the unit direction splits (‖v_row‖, ‖v_null‖) and how much base and source differ along each part."""
    parts = rows[rows["component"].isin(["row", "null"])].set_index("component").reindex(["row", "null"])
    if parts["norm"].isna().all():
        return _empty("no split for this choice")
    fig = go.Figure([
        go.Bar(x=PARTS, y=parts["norm"], name="norm in v (‖v‖ = 1)"),
        go.Bar(x=PARTS, y=parts["separation"], name="base↔source difference / spread on the data"),
    ])
    fig.update_layout(barmode="group", title="The direction's parts: size, and how much they vary with the feature")
    return fig


def effect_across_layers(effects: pd.DataFrame) -> go.Figure:
    """FLDD of each part across layers, for one site and method."""
    rows = effects[effects["component"].isin(COMPONENT_ORDER)].sort_values("layer")
    if rows.empty:
        return _empty("no results across layers")
    fig = px.line(rows, x="layer", y="fldd", color="component", markers=True,
                  category_orders={"component": COMPONENT_ORDER}, hover_data=["verdict", "accuracy"])
    fig.update_xaxes(type="category")
    fig.update_layout(title="Effect across layers", yaxis_title="FLDD (%)")
    return fig


# ---------------------------------------------------------------- compare two checkpoints

PAIRED_ANALYSES = ("intruders", "sparsity")  # jobs that pair a fine-tune with its base


def default_pair(jobs: pd.DataFrame) -> tuple[str, str] | None:
    """The pair the Compare page opens on, from the stored jobs (inputs as columns): a base and one of its
    fine-tunes that an intruders or sparsity job pairs (finals before a run's checkpoints, both with spectra
    first); else the first and last checkpoint of a run; else the first and last checkpoint; None below two."""
    with_spectra = set(jobs.loc[jobs["analysis"] == "spectra", "checkpoint"])
    paired = jobs[jobs["analysis"].isin(PAIRED_ANALYSES)]
    if "base" in paired:
        paired = paired.dropna(subset=["base"])
        if not paired.empty:
            rank = {name: k for k, name in enumerate(in_step_order(paired))}
            best = min(zip(paired["base"], paired["checkpoint"]),
                       key=lambda pair: (not set(pair) <= with_spectra, rank[pair[1]]))
            return best
    in_runs = jobs.dropna(subset=["run"]) if "run" in jobs else jobs.iloc[:0]
    for _, run in sorted(in_runs.groupby("run"), key=lambda item: natural_key(item[0])):
        order = in_step_order(run)
        if len(order) > 1:
            return order[0], order[-1]
    order = in_step_order(jobs)
    return (order[0], order[-1]) if len(order) > 1 else None


def metric_deltas(matrices: pd.DataFrame, metric: str, a: str, b: str) -> pd.DataFrame:
    """Per matrix of ``b`` paired with one of ``a``: ``value_a``, ``value_b`` and ``delta`` = b − a of ``metric``.
    Matrices pair by name, ignoring a prefix one checkpoint wraps the other's in (``bert.encoder…`` vs
    ``encoder…``, ``naming.align``); ``tensor``, ``layer`` and ``kind`` are b's, ``tensor_a`` a's name."""
    one = matrices[matrices["checkpoint"] == a].drop_duplicates("tensor").set_index("tensor")
    two = matrices[matrices["checkpoint"] == b].drop_duplicates("tensor").set_index("tensor")
    pairs = align(list(one.index), list(two.index))
    tuned = list(pairs)
    frame = pd.DataFrame({"tensor": tuned, "tensor_a": [pairs[t] for t in tuned],
                          "layer": two.loc[tuned, "layer"].to_numpy(), "kind": two.loc[tuned, "kind"].to_numpy(),
                          "value_a": one.loc[list(pairs.values()), metric].to_numpy(dtype=float),
                          "value_b": two.loc[tuned, metric].to_numpy(dtype=float)})
    return frame.assign(delta=frame["value_b"] - frame["value_a"])


def delta_heatmap(deltas: pd.DataFrame, metric: str, a: str, b: str) -> go.Figure:
    """Layer × kind: the mean change b − a of ``metric`` (``metric_deltas``) on a diverging scale centred on 0.
    When the largest |Δ| is over 3× the 90th percentile, the scale stops there (outliers saturate, their numbers
    still printed), so one outlier (a power-law fit's xmin moving) does not wash out every other cell."""
    rows = deltas.dropna(subset=["layer", "delta"])
    if rows.empty:
        return _empty(f"no per-layer matrix of {b} pairs with one of {a} holding {metric}")
    grid = rows.pivot_table(index="kind", columns="layer", values="delta", aggfunc="mean")
    size = np.abs(grid.to_numpy(dtype=float))
    largest = float(np.nanmax(size))
    typical = float(np.nanquantile(size, 0.9))
    reach = typical if 0 < typical and largest > 3 * typical else largest or 1.0
    clipped = f" (colour saturates at ±{reach:.2g}; largest |Δ| {largest:.2g})" if reach < largest else ""
    return _layer_kind_grid(grid, f"Δ {label(metric)} = {b} − {a}, by layer and kind{clipped}", f"Δ {label(metric)}",
                            "RdBu_r", ".2g", zmin=-reach, zmax=reach)


def singular_values_pair(values: pd.DataFrame, a: str, b: str, matrix: str) -> go.Figure:
    """One matrix's singular values by rank in ``a`` (dark grey, dotted, drawn over) and ``b`` (wide blue) on one log
    axis: where the spectra coincide, A's dots run along B's line."""
    if values.empty:
        return _empty(f"no singular values of {matrix}")
    fig = go.Figure()
    for which, name, style in (("B", b, {"color": "steelblue", "width": 4}),
                               ("A", a, {"color": "dimgray", "dash": "dot", "width": 2})):
        one = values[values["checkpoint"] == name].sort_values("index")
        one = one.iloc[thinned(len(one))]
        fig.add_trace(go.Scatter(x=one["index"], y=one["sigma"], mode="lines", name=f"{which}: {name}", line=style))
    fig.update_yaxes(type="log", title="singular value σᵢ", exponentformat="power", minorloglabels="complete")
    fig.update_layout(title=f"{matrix}: singular values by rank", xaxis_title="rank i", legend_title_text="checkpoint",
                      legend_traceorder="reversed")
    return _integer_ticks(fig, values["index"])


def pair_overlap_heatmap(pairs: pd.DataFrame, title: str) -> go.Figure:
    """Layer × kind: the subspace overlap of two fine-tunes' updates (one pair and side; mean per cell)."""
    rows = pairs.dropna(subset=["layer", "overlap"])
    if rows.empty:
        return _empty("no per-layer matrices")
    grid = rows.pivot_table(index="kind", columns="layer", values="overlap", aggfunc="mean")
    return _layer_kind_grid(grid, title, "overlap", "Blues", ".2f", zmin=0, zmax=1)
