"""Figures for the app: pure functions from DataFrames to plotly figures, testable without Streamlit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

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


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def layer_kind_heatmap(matrices: pd.DataFrame, metric: str) -> go.Figure:
    """Layer × kind heatmap of one metric (mean when several matrices share a cell)."""
    rows = matrices.dropna(subset=["layer"])
    if rows.empty or rows[metric].isna().all():
        return _empty(f"no per-layer values of {metric}")
    grid = rows.pivot_table(index="kind", columns="layer", values=metric, aggfunc="mean")
    fig = px.imshow(grid, aspect="auto", color_continuous_scale="Viridis",
                    labels={"x": "layer", "y": "kind", "color": metric}, text_auto=".2f")
    fig.update_xaxes(type="category")
    fig.update_layout(title=f"{metric} by layer and kind", margin={"t": 50})
    return fig


def metric_by_layer(matrices: pd.DataFrame, metric: str) -> go.Figure:
    """One line per checkpoint and kind: the metric across layers."""
    rows = matrices.dropna(subset=["layer", metric]).sort_values("layer")
    if rows.empty:
        return _empty(f"no per-layer values of {metric}")
    fig = px.line(rows, x="layer", y=metric, color="checkpoint", line_dash="kind", markers=True,
                  hover_data=["tensor"])
    fig.update_layout(title=f"{metric} across layers", legend_title_text="checkpoint, kind")
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


def singular_value_curves(values: pd.DataFrame) -> go.Figure:
    """σ_i against rank i (log y), one line per checkpoint: how the whole spectrum compares."""
    if values.empty:
        return _empty("no singular values")
    fig = px.line(values, x="index", y="sigma", color="checkpoint", log_y=True)
    fig.update_layout(title="singular values by rank", xaxis_title="rank i", yaxis_title="σ_i")
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
