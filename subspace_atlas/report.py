"""Self-contained HTML reports for offline sharing: one file, plotly.js inlined once, no network needed.

``store_report(store, only)`` renders the overview and each registered analysis's ``report`` sections (its
page's main figures at the app's default choices, one section per run, base or model); ``html(title,
sections)`` renders any figures, e.g. the ones a page of the app is showing with its filters. Needs plotly (the ``app`` extra), not torch or Streamlit.
"""

from __future__ import annotations

import html as escape
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

import subspace_atlas
from subspace_atlas import analysis, charts
from subspace_atlas.errors import AtlasError
from subspace_atlas.specs import load
from subspace_atlas.store import Store

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
.meta, .note { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f5f5f5; } nav a { margin-right: 1rem; }
"""


@dataclass
class Section:
    """A heading, a line of explanation, figures and (optionally) a small table."""

    title: str
    figures: list[go.Figure] = field(default_factory=list)
    note: str = ""
    table: pd.DataFrame | None = None


def html(title: str, sections: Sequence[Section], source: str = "") -> str:
    """One standalone HTML page: plotly.js once in the head, then every section's figures and table."""
    body, links = [], []
    for k, section in enumerate(sections):
        anchor = f"s{k}"
        links.append(f'<a href="#{anchor}">{escape.escape(section.title)}</a>')
        body.append(f'<h2 id="{anchor}">{escape.escape(section.title)}</h2>')
        if section.note:
            body.append(f'<p class="note">{escape.escape(section.note)}</p>')
        for j, figure in enumerate(section.figures):
            body.append(pio.to_html(figure, full_html=False, include_plotlyjs=False, div_id=f"{anchor}-fig{j}",
                                    config={"displaylogo": False}))
        if section.table is not None and not section.table.empty:
            body.append(section.table.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0))
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"Subspace Atlas {subspace_atlas.__version__} · {made}" + (f" · {escape.escape(source)}" if source else "")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape.escape(title)}</title>", f"<style>{_STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body>",
        f"<h1>{escape.escape(title)}</h1>", f'<p class="meta">{meta}</p>',
        f"<nav>{' '.join(links)}</nav>" if len(links) > 1 else "", *body, "</body></html>"])


def _overview(store: Store) -> list[Section]:
    jobs = store.jobs()
    jobs = jobs[jobs["analysis"] != "zoo"]
    summary = (jobs.groupby("analysis").agg(jobs=("fingerprint", "size"), compute_s=("wall_s", "sum"),
                                            devices=("device", lambda d: ", ".join(sorted(set(map(str, d))))))
               .reset_index())
    sections = [Section("What the store holds", note=f"Store: {store.root}", table=summary)]
    zoo = store.table_if_stored("zoo", "runs")
    if zoo is not None:
        curves = store.table_if_stored("zoo", "curves")
        figures = [charts.zoo_accuracy(zoo)] + ([charts.loss_curves(curves)] if curves is not None else [])
        sections.append(Section("Demo zoo", figures, "The runs the demo's analyses look at, and how well they learned."))
    return sections


def spectra_sections(store: Store) -> list[Section]:
    matrices = store.table_if_stored("spectra", "matrices")
    if matrices is None:
        return []
    sections = []
    for run, group in matrices.groupby(matrices["run"].fillna(""), sort=True):
        last = group.sort_values(["step", "checkpoint"], na_position="first")["checkpoint"].iloc[-1]
        figures = [charts.metric_by_layer(group, "alpha"), charts.layer_kind_heatmap(group[group["checkpoint"] == last],
                                                                                    "alpha")]
        if run:
            figures.append(charts.metric_over_steps(group, "alpha"))
        table = (group.groupby("checkpoint")[["alpha", "stable_rank", "effective_rank", "log_spectral_norm"]]
                 .median().reset_index())
        sections.append(Section(f"Spectra: {run or 'single checkpoints'}", figures,
                                f"Power-law alpha per layer; the heatmap is {last}. Table: medians per checkpoint.",
                                table))
    return sections


def intruders_sections(store: Store) -> list[Section]:
    summary = store.table_if_stored("intruders", "summary")
    if summary is None:
        return []
    left = summary[summary["side"] == "left"] if "left" in set(summary["side"]) else summary
    epsilon = 0.5 if 0.5 in set(left["epsilon"]) else sorted(left["epsilon"].unique())[0]
    at_eps = left[left["epsilon"] == epsilon]
    counts = at_eps.groupby("checkpoint")["n_intruders"].sum().sort_values(ascending=False)
    finals = charts.in_step_order(at_eps[at_eps["run"].isna()]) or list(counts.index[:6])
    most = counts.index[0]
    figures = [charts.intruders_vs_epsilon(left[left["checkpoint"].isin(finals)]),
               charts.intruder_heatmap(at_eps[at_eps["checkpoint"] == most],
                                       f"intruders per layer and kind in {most} (ε = {epsilon:g})")]
    if at_eps["run"].notna().any():
        figures.append(charts.intruders_over_steps(at_eps))
    table = counts.rename("intruders").reset_index()
    return [Section("Intruder dimensions", figures, f"Left singular vectors, ε = {epsilon:g}; "
                    "table: intruders per checkpoint over every matrix.", table)]


def sparsity_sections(store: Store) -> list[Section]:
    matrices = store.table_if_stored("sparsity", "matrices")
    if matrices is None:
        return []
    definition = next(iter(charts.SPARSITY_DEFINITIONS))
    sections = []
    for base, view in matrices.groupby("base"):
        finals = charts.in_step_order(view[view["run"].isna()]) or charts.in_step_order(view)
        figures = [charts.sparsity_by_checkpoint(view[view["checkpoint"].isin(finals)]),
                   charts.update_rank_by_layer(view[view["checkpoint"].isin(finals)])]
        if view["run"].notna().any():
            figures.append(charts.sparsity_over_steps(view, definition))
        sections.append(Section(f"Update sparsity against {base}", figures,
                                f"Unchanged when: {definition} ({charts.SPARSITY_DEFINITIONS[definition]})."))
    return sections


def angles_sections(store: Store) -> list[Section]:
    pairs = store.table_if_stored("angles", "pairs")
    if pairs is None:
        return []
    sections = []
    for base, view in pairs.groupby("base"):
        side = "left" if "left" in set(view["side"]) else view["side"].iloc[0]
        view = view[view["side"] == side]
        sections.append(Section(f"Task subspaces of fine-tunes of {base}",
                                [charts.task_overlap_matrix(view), charts.overlap_by_layer(view)],
                                f"{side} subspaces; overlap 1 = the same subspace, 0 = orthogonal."))
    return sections


def overlap_sections(store: Store) -> list[Section]:
    # Only the pairs the figures draw (each checkpoint against the previous one), not every pair of a long run.
    pairs = store.table_if_stored("overlap", "pairs", where={"previous": True, "side": "left"},
                                  columns=["run", "step_a", "step_b", "tensor", "layer", "kind", "of", "side",
                                           "previous", "overlap", "chance"])
    if pairs is None:
        return []
    convergence = store.table_if_stored("overlap", "convergence")
    sections = []
    for run, mine in pairs.groupby("run"):
        of = next(o for o in ("weights", "updates", "steps", "gradients") if o in set(mine["of"]))
        view = mine[mine["of"] == of]
        versus = charts.against_reference(view, "previous")
        figures = [charts.overlap_over_steps(versus, "previous"), charts.overlap_layer_step(versus, "previous")]
        if convergence is not None:
            conv = convergence[(convergence["run"] == run) & (convergence["side"] == "left")
                               & (convergence["of"] == of)]
            if not conv.empty:
                figures.append(charts.convergence_by_layer(conv))
        sections.append(Section(f"Training dynamics: {run}", figures,
                                f"Top-k left subspaces of the {of}, each checkpoint against the previous one."))
    return sections


def patching_sections(store: Store) -> list[Section]:
    effects = store.table_if_stored("patching", "effects")
    if effects is None:
        return []
    sections = []
    for (model, site), mine in effects.groupby(["model", "site"]):
        method = "das" if "das" in set(mine["method"]) else sorted(mine["method"].unique())[0]
        verdicts = (mine.drop_duplicates(["layer", "method"])[["layer", "method", "verdict", "row_share"]]
                    .sort_values(["layer", "method"]))
        sections.append(Section(f"Activation patching: {model}, {site}",
                                [charts.verdict_grid(mine), charts.effect_across_layers(mine[mine["method"] == method])],
                                f"Verdict per layer and method; effect across layers for {method}.", verdicts))
    return sections


def pages() -> dict[str, Callable[[Store], list[Section]]]:
    """Report page name → its sections: the overview, then every registered analysis with a ``report``."""
    return {"overview": _overview} | {spec.name: load(spec.report) for spec in analysis.SPECS.values() if spec.report}


def store_report(store: Store, only: Sequence[str] | None = None) -> str:
    """The whole store (or the named pages) as one HTML report; a page with nothing stored is left out."""
    known = pages()
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise AtlasError(f"report: unknown page(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if not store.analyses():
        raise AtlasError(f"{store.root}: empty store, nothing to report")
    sections = [s for name in (only or known) for s in known[name](store)]
    if not sections:
        raise AtlasError(f"{store.root}: no results stored for {', '.join(only or known)}")
    return html("Subspace Atlas report", sections, source=str(store.root))
