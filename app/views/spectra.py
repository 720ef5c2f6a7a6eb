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

heat, lines, steps, density, raw = st.tabs(["Layer × kind", "Across layers", "Over training",
                                            "Eigenvalue density", "Table"])
with heat:
    one = choose(st.selectbox, "Checkpoint", charts.in_step_order(view), key="spectra_heat_checkpoint",
                 url="heat_checkpoint")
    show(charts.layer_kind_heatmap(view[view["checkpoint"] == one], metric), key="heatmap")
with lines:
    show(charts.metric_by_layer(view, metric), key="by_layer")
with steps:
    show(charts.metric_over_steps(view, metric), key="over_steps")
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
    show(charts.singular_value_curves(compare[compare["checkpoint"].isin(chosen)],
                                      order=[c for c in checkpoints if c in set(chosen)]), key="sv_curves")
with raw:
    st.dataframe(view, hide_index=True)
    csv_download(view, "spectra", key="spectra_csv")
