"""Spectra: WeightWatcher-style metrics per matrix, the eigenvalue density of one matrix, and trends."""

import streamlit as st

from subspace_atlas import charts
from common import csv_download, distinct, existing_store, show, table, table_or_stop
from links import choose, slide

store = existing_store()
st.title("Singular-value spectra")

MODELS = "single checkpoints"
runs = distinct(store, "spectra", "matrices", "run") or []  # off the manifests: no job's rows are read for it
groups = ([MODELS] if None in runs else []) + sorted(r for r in runs if r is not None)
left, mid, right = st.columns([3, 2, 2])
group = choose(left.selectbox, "Group", groups, key="spectra_group", url="group",
               help="Checkpoints that are not part of a run, or one run's checkpoints over training.")
# Only the chosen group's jobs are read: one run of a 1,000-job sweep opens its own files, not all of them.
in_group = table_or_stop(store, "spectra", "matrices", "spectra", "subspace-atlas spectra CKPT",
                         run=None if group in (MODELS, None) else group)
checkpoints = charts.in_step_order(in_group)
chosen = choose(left.multiselect, "Checkpoints", checkpoints, default=checkpoints, key=f"spectra_checkpoints:{group}",
                url="checkpoints")
kinds = sorted(in_group["kind"].unique())
chosen_kinds = choose(mid.multiselect, "Kinds", kinds, default=kinds, key=f"spectra_kinds:{group}", url="kinds")
metric = choose(right.selectbox, "Metric", list(charts.SPECTRA_METRICS), key="spectra_metric", url="metric",
                help="\n\n".join(f"**{k}**: {v}" for k, v in charts.SPECTRA_METRICS.items()))
layers = in_group["layer"].dropna()
view = in_group[in_group["checkpoint"].isin(chosen) & in_group["kind"].isin(chosen_kinds)]
if len(layers) and layers.min() < layers.max():
    lo, hi = slide(st.slider, "Layers", int(layers.min()), int(layers.max()), (int(layers.min()), int(layers.max())),
                   key=f"spectra_layers:{group}", url="layers")
    view = view[view["layer"].isna() | view["layer"].between(lo, hi)]
st.caption(charts.SPECTRA_METRICS[metric])
if view.empty:
    st.warning("No matrices match these filters.")
    st.stop()

experts = view[view["expert"].notna()] if "expert" in view else view.iloc[:0]  # an MoE's per-expert matrices
labels = ["Layer × kind", *(["Experts"] if len(experts) else []), "Across layers", "Over training",
          "Eigenvalue density", "Table"]
tabs = dict(zip(labels, st.tabs(labels, key="tab", bind="query-params")))
heat, lines, steps, density, raw = (tabs[name] for name in labels if name != "Experts")
with heat:
    one = choose(st.selectbox, "Checkpoint", charts.in_step_order(view), key="spectra_heat_checkpoint",
                 url="heat_checkpoint")
    show(charts.layer_kind_heatmap(view[view["checkpoint"] == one], metric), key="heatmap")
    st.caption(f"How to read this: each cell is the mean {metric} of the matrices of that layer and kind in {one}; "
               "a row or column apart from the rest is a kind or depth unlike the others (WeightWatcher's per-layer "
               "metrics; Martin & Mahoney).")
if len(experts):
    with tabs["Experts"]:
        e1, e2 = st.columns(2)
        at = choose(e1.selectbox, "Checkpoint", charts.in_step_order(experts), key="spectra_expert_checkpoint",
                    url="expert_checkpoint")
        kind = choose(e2.selectbox, "Kind", sorted(experts["kind"].unique()), key="spectra_expert_kind",
                      url="expert_kind")
        mine = experts[experts["checkpoint"] == at]
        show(charts.expert_layer_heatmap(mine, metric, kind), key="experts_heatmap")
        st.caption(f"How to read this: one cell per expert and layer, the {metric} of that expert's {kind} matrix; "
                   "a lone bright or dark cell is an expert unlike its layer's others (per-matrix WeightWatcher "
                   "metrics, each expert a matrix of its own).")
        show(charts.spread_across_experts(mine, metric), key="experts_spread")
        st.caption(f"How to read this: per layer and kind, the median {metric} across experts, the bar reaching from "
                   "the lowest expert to the highest; a long bar is a layer whose experts learned unlike one another.")
with lines:
    show(charts.metric_by_layer(view, metric), key="by_layer")
    st.caption("How to read this: one panel per kind, one line per checkpoint (dark early, bright late); where the "
               "lines part is the depth at which the checkpoints' matrices differ (WeightWatcher; Martin & Mahoney).")
with steps:
    show(charts.metric_over_steps(view, metric), key="over_steps")
    st.caption("How to read this: each kind's mean against training step, one dash per run; alpha falling within "
               "WeightWatcher's 2–6 band means heavier eigenvalue tails, read as more correlations learned "
               "(Martin & Mahoney).")
with density:
    c1, c2 = st.columns(2)
    ckpt = choose(c1.selectbox, "Checkpoint", charts.in_step_order(view), key="spectra_esd_checkpoint",
                  url="esd_checkpoint")
    names = view.loc[view["checkpoint"] == ckpt, "tensor"].tolist()
    tensor = choose(c2.selectbox, "Matrix", names, key="spectra_esd_tensor", url="matrix")
    row = view[(view["checkpoint"] == ckpt) & (view["tensor"] == tensor)].iloc[0]
    # Only this matrix's singular values, at the chosen checkpoints: never the whole values table.
    compare = table(store, "spectra", "values", ["checkpoint", "index", "sigma"], tensor=tensor,
                    checkpoint=sorted(set(chosen) | {ckpt}))
    sigma = compare.loc[compare["checkpoint"] == ckpt, "sigma"].to_numpy()
    show(charts.esd_with_fit(sigma, row), key="esd")
    st.caption("How to read this: the density of the eigenvalues λ = σ² on log–log axes; right of xmin the dashed "
               "power law's slope is −alpha, and eigenvalues right of the grey Marchenko–Pastur bulk edge are "
               "spikes a random matrix would not have (WeightWatcher's ESD fit; Martin & Mahoney).")
    show(charts.singular_value_curves(compare[compare["checkpoint"].isin(chosen)],
                                      order=[c for c in checkpoints if c in set(chosen)]), key="sv_curves")
    st.caption("How to read this: this matrix's σᵢ by rank at each chosen checkpoint (log scale); lines that part "
               "only at the first ranks mean training moved a few directions, a parallel shift rescales them all "
               "(the spectrum behind WeightWatcher's ESD).")
with raw:
    st.dataframe(view, hide_index=True)
    csv_download(view, "spectra", key="spectra_csv")
