"""Figures: pure functions from DataFrames to plotly figures, shared by the app and the HTML reports (needs plotly: the `app` extra)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

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
                          "ks_distance": "KS distance", "sigma_max": "largest singular value"}


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
    return _layer_kind_grid(grid, f"{metric} by layer and kind", metric, "Viridis", ".2f")


def in_step_order(frame: pd.DataFrame) -> list[str]:
    """The frame's checkpoints by training step, then by name with numbers compared as numbers
    (checkpoint-20 before checkpoint-100)."""
    firsts = frame.drop_duplicates("checkpoint")
    steps = firsts["step"] if "step" in firsts else pd.Series(np.nan, index=firsts.index)
    keyed = sorted(zip(steps, firsts["checkpoint"]), key=lambda p: (pd.notna(p[0]), p[0] if pd.notna(p[0]) else 0,
                                                                    natural_key(p[1])))
    return [name for _, name in keyed]


def natural_key(name: str) -> tuple:
    """Sort key that reads runs of digits as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name)))


def spread(ordered: list, limit: int = MAX_LINES) -> list:
    """At most ``limit`` items, evenly spaced, always the first and the last."""
    if len(ordered) <= limit:
        return list(ordered)
    picks = np.unique(np.round(np.linspace(0, len(ordered) - 1, limit)).astype(int))
    return [ordered[k] for k in picks]


def _step_colours(count: int) -> list[str]:
    """A sequential scale: early checkpoints dark, late ones bright, so order reads at a glance."""
    return px.colors.sample_colorscale("Viridis", list(np.linspace(0, 0.9, count)) if count > 1 else [0.0])


def _shown(total: int, drawn: int) -> str:
    return "" if drawn == total else f" ({drawn} of {total} checkpoints, evenly spaced; choose fewer to see each)"


def metric_by_layer(matrices: pd.DataFrame, metric: str) -> go.Figure:
    """The metric across layers, one panel per kind and one line per checkpoint coloured by step order;
    beyond ``MAX_LINES`` checkpoints, evenly spaced ones are drawn."""
    rows = matrices.dropna(subset=["layer", metric]).sort_values("layer")
    if rows.empty:
        return _empty(f"no per-layer values of {metric}")
    order = in_step_order(rows)
    drawn = spread(order)
    kinds = sorted(rows["kind"].unique())
    cols = min(3, len(kinds))
    fig = make_subplots(rows=-(-len(kinds) // cols), cols=cols, subplot_titles=kinds, shared_xaxes=True,
                        horizontal_spacing=0.06, vertical_spacing=0.12)
    groups = dict(tuple(rows[rows["checkpoint"].isin(drawn)].groupby(["kind", "checkpoint"], sort=False)))
    for k, kind in enumerate(kinds):
        for checkpoint, colour in zip(drawn, _step_colours(len(drawn))):
            one = groups.get((kind, checkpoint))
            if one is None:
                continue
            fig.add_trace(go.Scatter(x=one["layer"], y=one[metric], mode="lines+markers", name=str(checkpoint),
                                     legendgroup=str(checkpoint), showlegend=k == 0, line={"color": colour},
                                     customdata=one[["tensor"]], hovertemplate="%{customdata[0]}<br>layer %{x}: "
                                     "%{y:.3g}<extra>%{fullData.name}</extra>"), row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(dtick=1 if rows["layer"].nunique() <= 16 else None, tickformat="d")
    fig.update_layout(title=f"{LABELS.get(metric, metric)} across layers{_shown(len(order), len(drawn))}",
                      legend_title_text="checkpoint", height=260 * (-(-len(kinds) // cols)) + 80)
    return fig


def metric_over_steps(matrices: pd.DataFrame, metric: str) -> go.Figure:
    """For checkpoints with steps: the metric's mean per kind against training step, one line per run."""
    rows = matrices.dropna(subset=["step", metric])
    if rows.empty:
        return _empty("no checkpoints with a training step")
    mean = (rows.assign(run=rows["run"].fillna("—"))
            .groupby(["run", "kind", "step"], as_index=False)[metric].mean().sort_values("step"))
    fig = px.line(mean, x="step", y=metric, color="kind", line_dash="run", markers=True)
    fig.update_layout(title=f"mean {metric} per kind over training")
    return fig


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
        fig.add_vline(x=xmin, line={"color": "crimson", "dash": "dot"}, annotation_text="xmin")
    edge = fit.get("mp_bulk_max")
    if pd.notna(edge) and edge > 0:
        fig.add_vline(x=edge, line={"color": "gray", "dash": "dot"}, annotation_text="MP bulk edge",
                      annotation_position="bottom right")
    fig.update_xaxes(type="log", title="eigenvalue λ = σ²")
    fig.update_yaxes(type="log", title="density")
    fig.update_layout(title=f"eigenvalue density of {fit.get('tensor', '')}")
    return fig


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
        fig.add_trace(go.Scatter(x=one["index"], y=one["sigma"], mode="lines", name=str(checkpoint),
                                 line={"color": colour}))
    fig.update_yaxes(type="log", title="singular value σᵢ", exponentformat="power")
    fig.update_layout(title=f"singular values by rank{_shown(len(order), len(drawn))}", xaxis_title="rank i",
                      legend_title_text="checkpoint")
    return fig


def jobs_timeline(jobs: pd.DataFrame) -> go.Figure:
    """Wall time of each stored job, by analysis: what the store holds and what it cost."""
    if jobs.empty:
        return _empty("the store is empty")
    fig = px.bar(jobs, x="checkpoint", y="wall_s", color="analysis", hover_data=["created", "device"],
                 barmode="group")
    fig.update_layout(title="stored jobs: compute time per checkpoint", yaxis_title="seconds")
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
    fig = px.line(curves, x="step", y="loss", color="run", markers=True)
    fig.update_layout(title="held-out loss over training", yaxis_title="cross-entropy (nats/token)")
    return fig


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
    fig = px.line(total, x="epsilon", y="n_intruders", color="checkpoint", markers=True)
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
    fig = px.line(total, x="step", y="n_intruders", color="run", markers=True)
    fig.update_layout(title="intruders over training (all selected matrices)", yaxis_title="intruders")
    return fig


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
    return fig


def mitigation_curve(matrix: pd.Series) -> go.Figure:
    """How far PEFT-style mitigation moves one matrix, for every λ in [0, 1]: away from W, back toward W0.

    ‖W' − W‖ = (1 − λ)·√E and ‖W' − W0‖² = ‖ΔW‖² − 2(1 − λ)·P + (1 − λ)²·E, from the stored intruder
    energy E = Σ s_i² and projection P = Σ s_i·u_iᵀΔW v_i.
    """
    energy, proj = matrix["intruder_energy"], matrix["intruder_update_proj"]
    if not energy > 0:
        return _empty("no intruders in this matrix: mitigation leaves it unchanged")
    lam = np.linspace(0, 1, 51)
    shift = (1 - lam) * np.sqrt(energy) / matrix["norm_tuned"]
    moved = np.sqrt(np.maximum(matrix["norm_update"] ** 2 - 2 * (1 - lam) * proj + (1 - lam) ** 2 * energy, 0))
    fig = go.Figure([
        go.Scatter(x=lam, y=shift, name="‖W′ − W‖ / ‖W‖ (how far the matrix moves)"),
        go.Scatter(x=lam, y=moved / matrix["norm_update"], name="‖W′ − W0‖ / ‖W − W0‖ (update left)"),
    ])
    fig.add_vline(x=matrix["mitigation_lambda"], line={"dash": "dot", "color": "gray"}, annotation_text="stored λ")
    fig.update_layout(title="mitigation W′ = W + (λ − 1)·Σ_intruders s u vᵀ", xaxis_title="λ",
                      yaxis_title="relative Frobenius distance")
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
    total = weighted_unchanged(matrices, ["checkpoint"])
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
    fig = px.line(total, x="step", y=f"unchanged_{definition}", color="run", markers=True)
    fig.update_layout(title=f"unchanged share over training ({definition})", yaxis_tickformat=".0%",
                      yaxis_title="unchanged")
    return fig


def overlap_vs_chance(overlap: pd.DataFrame) -> go.Figure:
    """Per matrix and pair of fine-tunes: Jaccard of their changed-masks against independent masks' expectation."""
    if overlap.empty:
        return _empty("no pairs of fine-tunes")
    pair = overlap["checkpoint_a"] + " ∩ " + overlap["checkpoint_b"]
    fig = px.scatter(overlap.assign(pair=pair), x="jaccard_chance", y="jaccard", color="pair",
                     hover_data=["tensor", "changed_a", "changed_b", "overlap_coef"])
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
                  hover_data=["tensor", "update_rank"])
    fig.update_layout(title="numerical rank of ΔW / min(m, n)", yaxis_range=[0, 1.05])
    return fig


# ---------------------------------------------------------------- task-subspace angles


def task_overlap_matrix(pairs: pd.DataFrame, value: str = "overlap") -> go.Figure:
    """Task × task: the mean over matrices of the subspace overlap (1 on the diagonal) or mean angle."""
    if pairs.empty:
        return _empty("no pairs of tasks")
    mean = pairs.groupby(["checkpoint_a", "checkpoint_b"], as_index=False)[value].mean()
    tasks = sorted(set(mean["checkpoint_a"]) | set(mean["checkpoint_b"]))
    grid = pd.DataFrame(np.nan, index=tasks, columns=tasks)
    for row in mean.itertuples():
        grid.loc[row.checkpoint_a, row.checkpoint_b] = grid.loc[row.checkpoint_b, row.checkpoint_a] = getattr(row, value)
    for t in tasks:
        grid.loc[t, t] = 1.0 if value == "overlap" else 0.0
    scale, zrange = ("Blues", (0, 1)) if value == "overlap" else ("Blues_r", (0, 90))
    fig = px.imshow(grid, text_auto=".2f", color_continuous_scale=scale, zmin=zrange[0], zmax=zrange[1],
                    labels={"color": value}, aspect="auto")
    fig.update_layout(title=f"task × task: mean {value} over the selected matrices")
    return fig


def overlap_by_layer(pairs: pd.DataFrame) -> go.Figure:
    """Subspace overlap across layers, one line per pair of tasks (mean over the kinds in view)."""
    rows = pairs.dropna(subset=["layer"])
    if rows.empty:
        return _empty("no per-layer matrices")
    rows = rows.assign(pair=rows["checkpoint_a"] + " ↔ " + rows["checkpoint_b"])
    mean = rows.groupby(["pair", "layer"], as_index=False)["overlap"].mean().sort_values("layer")
    fig = px.line(mean, x="layer", y="overlap", color="pair", markers=True)
    fig.update_layout(title="subspace overlap ‖Q_aᵀQ_b‖²_F / k across layers", yaxis_range=[0, 1.02])
    return fig


def angle_spectrum(pair_rows: pd.DataFrame) -> go.Figure:
    """All principal angles of one pair and matrix, per side, smallest first (0° shared, 90° orthogonal)."""
    if pair_rows.empty:
        return _empty("no such pair and matrix")
    fig = go.Figure([go.Scatter(x=np.arange(1, len(row.angles) + 1), y=list(row.angles), mode="lines+markers",
                                name=f"{row.side} (k = {row.k})") for row in pair_rows.itertuples()])
    fig.update_layout(title="principal angles", xaxis_title="i", yaxis_title="θ_i (degrees)", yaxis_range=[0, 91])
    return fig


def base_alignment(tasks: pd.DataFrame) -> go.Figure:
    """Per task and layer: how much of the update's top-k subspace lies in the base's own top-k (vs chance)."""
    rows = tasks.dropna(subset=["layer"])
    if rows.empty:
        return _empty("no per-layer matrices")
    rows = rows.assign(times_chance=rows["overlap_with_base_top"] / rows["overlap_chance"])
    mean = rows.groupby(["checkpoint", "layer"], as_index=False)["times_chance"].mean()
    fig = px.line(mean.sort_values("layer"), x="layer", y="times_chance", color="checkpoint", markers=True)
    fig.add_hline(y=1.0, line={"dash": "dot", "color": "gray"}, annotation_text="chance (a random k-dim subspace)")
    fig.update_layout(title="does the update write into the base's principal directions? "
                            "‖U0_kᵀU_t‖²_F / k, as a multiple of chance (k / m)",
                      yaxis_title="overlap with the base's top-k ÷ chance", yaxis_rangemode="tozero")
    return fig


def sar_by_task(alignment: pd.DataFrame) -> go.Figure:
    """Iso-C's Subspace Alignment Ratio of each task against the summed task matrix, per layer."""
    rows = alignment.dropna(subset=["layer"])
    if rows.empty:
        return _empty("no alignment with a summed task matrix (needs two or more tasks)")
    mean = rows.groupby(["checkpoint", "layer"], as_index=False)["sar"].mean().sort_values("layer")
    fig = px.line(mean, x="layer", y="sar", color="checkpoint", markers=True)
    fig.update_layout(title="Subspace Alignment Ratio with the summed task matrix (Iso-C)", yaxis_range=[0, 1.02])
    return fig


# ---------------------------------------------------------------- training dynamics (overlap)

REFERENCE_FLAGS = {"previous": "previous", "first": "from_first", "last": "to_last"}


def against_reference(pairs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The pairs comparing each checkpoint with its previous, the first or the last one; ``step`` = the other end."""
    rows = pairs[pairs[REFERENCE_FLAGS[reference]].astype(bool)]
    return rows.assign(step=rows["step_a"] if reference == "last" else rows["step_b"])


def overlap_over_steps(rows: pd.DataFrame, reference: str) -> go.Figure:
    """Overlap vs step, one line per layer, one panel per kind, with the chance level dotted."""
    rows = rows.dropna(subset=["overlap"])
    if rows.empty:
        return _empty("no overlaps for these filters")
    mean = rows.groupby(["kind", "layer", "step"], dropna=False, as_index=False).agg(
        overlap=("overlap", "mean"), chance=("chance", "mean"))
    order = [str(x) for x in sorted(mean["layer"].dropna().unique())] + ["—"]
    mean["layer"] = mean["layer"].astype("string").fillna("—")
    fig = px.line(mean.sort_values("step"), x="step", y="overlap", color="layer", facet_col="kind",
                  facet_col_wrap=3, markers=True, range_y=[0, 1.02], category_orders={"layer": order},
                  color_discrete_sequence=px.colors.sequential.Viridis)
    _chance_line(fig, float(mean["chance"].mean()))
    fig.update_layout(title=f"Top-k subspace overlap with the {reference} checkpoint", height=480)
    return fig


def _chance_line(fig: go.Figure, chance: float) -> None:
    """A dotted line at the chance level across every panel, labelled once (``add_hline`` walks every trace
    per panel: seconds on a run's figure)."""
    panels = sorted(key.removeprefix("yaxis") for key in fig.layout.to_plotly_json() if key.startswith("yaxis"))
    fig.update_layout(shapes=[{"type": "line", "xref": f"x{n} domain", "yref": f"y{n}", "x0": 0, "x1": 1,
                               "y0": chance, "y1": chance, "line": {"dash": "dot", "color": "grey"}} for n in panels],
                      annotations=list(fig.layout.annotations) + [
                          {"text": f"chance ≈ {chance:.2g}", "xref": "paper", "yref": f"y{panels[0]}", "x": 1,
                           "y": chance, "xanchor": "right", "yanchor": "bottom", "showarrow": False,
                           "font": {"color": "grey"}}])


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
    """Checkpoint × checkpoint overlap of one matrix's subspaces (symmetric; blank where not computed)."""
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
    never = per[per["step"].isna()]
    fig = px.bar(per, x="layer", y="step", color="of", barmode="group", hover_data=["settled", "matrices"])
    if not never.empty:
        fig.add_trace(go.Scatter(x=never["layer"], y=[0] * len(never), mode="markers", name="not settled",
                                 marker={"symbol": "x", "size": 12, "color": "black"},
                                 text=never["of"], hovertemplate="layer %{x}: %{text} never settled"))
    fig.update_xaxes(type="category")
    what = "stays ≥ the threshold with the previous checkpoint" if column == "settled_step" else \
        "reaches Q-GaLore's leading-vector threshold"
    fig.update_layout(title=f"Step from which every matrix of a layer {what}", yaxis_title="step")
    return fig


def spectrum_over_training(spectrum: pd.DataFrame) -> go.Figure:
    """One matrix's singular values at every checkpoint, coloured from early (dark) to late (light)."""
    if spectrum.empty:
        return _empty("no spectra stored for this matrix")
    rows = spectrum.sort_values("step")
    steps = rows["step"].astype(float).to_numpy()
    span = (steps - steps.min()) / (np.ptp(steps) or 1)
    colors = px.colors.sample_colorscale("Viridis", list(span))
    fig = go.Figure()
    for (step, sigma), color in zip(rows[["step", "sigma"]].itertuples(index=False), colors):
        sigma = np.asarray(sigma)
        fig.add_trace(go.Scatter(x=np.arange(1, sigma.size + 1), y=sigma, mode="lines", name=f"step {step}",
                                 line={"color": color}))
    fig.update_layout(title=f"{rows['tensor'].iloc[0]}: singular values over training",
                      xaxis_title="index i", yaxis_title="σ_i", yaxis_type="log")
    return fig


def welore_over_steps(welore: pd.DataFrame, share: float) -> go.Figure:
    """WeLore: the fraction of min-max normalised σ below τ over training, per kind, with the LRC line."""
    if welore.empty:
        return _empty("no WeLore values for these filters")
    mean = welore.groupby(["kind", "step"], as_index=False)["fraction_below"].mean()
    fig = px.line(mean.sort_values("step"), x="step", y="fraction_below", color="kind", markers=True,
                  range_y=[0, 1])
    fig.add_hline(y=share, line_dash="dot", line_color="grey", annotation_text="low-rank component above")
    fig.update_layout(title="Share of normalised singular values below τ (heavier tail → higher)")
    return fig


# ---------------------------------------------------------------- activation patching

VERDICT_COLORS = {"faithful": "#2a9d8f", "illusory": "#e76f51", "inconclusive": "#adb5bd"}
COMPONENT_ORDER = ["activation", "full", "row", "null"]


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
    labels = {"activation": "whole activation", "full": "direction v", "row": "v_row (read downstream)",
              "null": "v_null (not read)"}
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
        go.Bar(x=["v_row", "v_null"], y=parts["norm"], name="norm in v (‖v‖ = 1)"),
        go.Bar(x=["v_row", "v_null"], y=parts["separation"], name="base↔source difference / spread on the data"),
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
