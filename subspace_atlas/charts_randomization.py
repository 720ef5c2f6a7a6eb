"""Figures of the ``randomization`` analysis (correlation traps, ``rand_distance``): pure functions from its tables to
plotly figures, beside ``charts`` (needs plotly: the `app` extra)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from subspace_atlas import charts
from subspace_atlas.charts import _empty, _integer_ticks, _log_vline
from subspace_atlas.report import Section
from subspace_atlas.store import Store

# Column → its one-line meaning, in the order the app offers them (WeightWatcher's randomize=True columns).
RANDOMIZATION_METRICS: dict[str, str] = {
    "rand_distance": "Jensen–Shannon distance between the sorted eigenvalues of W and of W with its entries "
                     "shuffled: 0 when W looks like noise, larger the more structure shuffling destroys",
    "num_traps": "eigenvalues of the shuffled W above its Marchenko–Pastur edge: large entries (correlation traps) "
                 "that shuffling keeps, counted over every shuffled copy",
    "num_above_rand": "eigenvalues of W above the largest of its shuffled copies: structure shuffling destroys",
    "max_rand_eval": "largest eigenvalue of the shuffled copies",
    "ww_softrank": "largest shuffled eigenvalue / λmax of W: near 1 when shuffling leaves the top of the spectrum",
    "rand_mp_softrank": "Marchenko–Pastur edge / largest eigenvalue of the shuffled copies: below 1 when traps stand out",
}


def distance_and_traps(matrices: pd.DataFrame) -> go.Figure:
    """rand_distance per layer (a line per kind) above the correlation traps per layer (bars stacked by kind)."""
    rows = matrices.dropna(subset=["layer"]).sort_values("layer")
    if rows.empty:
        return _empty("no per-layer matrices")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("rand_distance (W vs shuffled W)", "correlation traps"))
    colours = dict(zip(sorted(rows["kind"].unique()), px.colors.qualitative.Plotly * 10))
    for kind, part in rows.groupby("kind", sort=True):
        mean = part.groupby("layer", as_index=False).agg(rand_distance=("rand_distance", "mean"),
                                                          num_traps=("num_traps", "sum"))
        style = {"color": colours[kind]}
        fig.add_trace(go.Scatter(x=mean["layer"], y=mean["rand_distance"], mode="lines+markers", name=kind,
                                 legendgroup=kind, line=style), row=1, col=1)
        fig.add_trace(go.Bar(x=mean["layer"], y=mean["num_traps"], name=kind, legendgroup=kind, showlegend=False,
                             marker=style), row=2, col=1)
    fig.update_layout(barmode="stack", title="randomisation by layer", margin={"t": 70})
    fig.update_yaxes(title="JS distance", row=1, col=1)
    fig.update_yaxes(title="traps", row=2, col=1)
    fig.update_xaxes(title="layer", row=2, col=1)
    return _integer_ticks(fig, rows["layer"])


def esd_vs_shuffled(values: pd.DataFrame, row: pd.Series, traps: pd.DataFrame | None = None,
                    bins: int = 60) -> go.Figure:
    """Log-binned densities of λ = σ² of W and of its shuffled copy, the largest shuffled eigenvalue, the trap
    threshold, and the trap eigenvalues as ticks on the axis."""
    lam = values["sigma"].to_numpy(float) ** 2
    rand = values["rand_sigma"].to_numpy(float) ** 2
    both = np.concatenate([lam[lam > 0], rand[rand > 0]])
    if both.size < 2 or both.min() == both.max():
        return _empty("too few distinct non-zero eigenvalues to draw a density")
    edges = np.logspace(np.log10(both.min()), np.log10(both.max()), bins + 1)
    edges[0], edges[-1] = both.min(), both.max()
    centers = np.sqrt(edges[:-1] * edges[1:])
    fig = go.Figure()
    lowest = np.inf  # the traps are drawn as ticks at the lowest density shown
    for name, x, colour in (("W", lam, "royalblue"), ("W shuffled", rand, "darkorchid")):
        counts, _ = np.histogram(x[x > 0], bins=edges)
        density = counts / (max(x.size, 1) * np.diff(edges))
        keep = density > 0
        if not keep.any():
            continue
        lowest = min(lowest, float(density[keep].min()))
        fig.add_trace(go.Scatter(x=centers[keep], y=density[keep], mode="markers+lines", name=name,
                                 line={"shape": "hvh", "color": colour}))
    for column, text, colour, top in (("max_rand_eval", "max shuffled λ", "orange", True),
                                      ("rand_trap_threshold", "trap threshold", "crimson", False)):
        value = row.get(column)
        if pd.notna(value) and np.isfinite(value) and value > 0:
            _log_vline(fig, float(value), text, colour, top)
    if traps is not None and len(traps):
        fig.add_trace(go.Scatter(x=traps["lambda"], y=np.full(len(traps), lowest), mode="markers", name="traps",
                                 marker={"symbol": "x", "color": "crimson", "size": 10}))
    fig.update_xaxes(type="log", title="eigenvalue λ = σ²", exponentformat="power", minorloglabels="complete")
    fig.update_yaxes(type="log", title="density", exponentformat="power", minorloglabels="complete")
    fig.update_layout(title=f"W against W shuffled: {row.get('tensor', '')}")
    return fig


REPORT_CHECKPOINTS = 6  # sections in the HTML report: one per checkpoint, in step order


def report_sections(store: Store) -> list[Section]:
    """The report's section: per checkpoint, rand_distance and traps by layer, and the traps per layer × kind."""
    matrices = store.table_if_stored("randomization", "matrices")
    if matrices is None:
        return []
    sections, order = [], charts.in_step_order(matrices)
    shown = "" if len(order) <= REPORT_CHECKPOINTS else (f" The report shows the first {REPORT_CHECKPOINTS} of "
                                                         f"{len(order)} checkpoints in step order; the app, every one.")
    for checkpoint in order[:REPORT_CHECKPOINTS]:
        one = matrices[matrices["checkpoint"] == checkpoint]
        table = (one.groupby("kind")[["rand_distance", "num_traps", "num_above_rand"]]
                 .agg({"rand_distance": "mean", "num_traps": "sum", "num_above_rand": "sum"}).reset_index())
        sections.append(Section(f"Correlation traps: {checkpoint}",
                                [distance_and_traps(one), charts.layer_kind_heatmap(one, "num_traps")],
                                "Each matrix against its entries shuffled (WeightWatcher's randomize=True): a high "
                                "rand_distance is structure shuffling destroys; traps are outsized entries it keeps. "
                                f"Table: per kind.{shown}", table))
    return sections
