"""Correlation traps: each matrix against its entry-shuffled copy (WeightWatcher's randomize=True), per layer × kind,
and one matrix's eigenvalue density beside its shuffled copy's."""

import streamlit as st

from subspace_atlas import charts
from subspace_atlas.charts_randomization import RANDOMIZATION_METRICS, distance_and_traps, esd_vs_shuffled
from common import csv_download, existing_store, show, table, table_or_stop
from links import choose

store = existing_store()
st.title("Correlation traps")
matrices = table_or_stop(store, "randomization", "matrices", "randomised spectra", "subspace-atlas randomization CKPT")

left, mid, right = st.columns([3, 2, 2])
ckpt = choose(left.selectbox, "Checkpoint", charts.in_step_order(matrices), key="rand_checkpoint", url="checkpoint")
one = matrices[matrices["checkpoint"] == ckpt]
kinds = sorted(one["kind"].unique())
chosen_kinds = choose(mid.multiselect, "Kinds", kinds, default=kinds, key="rand_kinds", url="kinds")
metric = choose(right.selectbox, "Metric", list(RANDOMIZATION_METRICS), key="rand_metric", url="metric",
                help="\n\n".join(f"**{k}**: {v}" for k, v in RANDOMIZATION_METRICS.items()))
view = one[one["kind"].isin(chosen_kinds)]
if view.empty:
    st.warning("No matrices match these filters.")
    st.stop()

show(charts.layer_kind_heatmap(view, metric), key="rand_heatmap")
st.caption(f"How to read this: {RANDOMIZATION_METRICS[metric]}.")
show(distance_and_traps(view), key="rand_by_layer")
st.caption("How to read this: a high rand_distance means W holds structure that shuffling its entries destroys; "
           "a trap bar means a few outsized entries survive the shuffle and stand out of its noise bulk.")

tensor = choose(st.selectbox, "Matrix", view.sort_values("num_traps", ascending=False)["tensor"].tolist(),
                key="rand_tensor", url="matrix", help="Matrices with the most traps first.")
row = view[view["tensor"] == tensor].iloc[0]
values = table(store, "randomization", "values", tensor=tensor, checkpoint=ckpt)
traps = table(store, "randomization", "traps", tensor=tensor, checkpoint=ckpt)
show(esd_vs_shuffled(values, row, traps), key="rand_esd")
st.caption("How to read this: the shuffled copy (purple) is W's noise baseline; W's eigenvalues right of the orange "
           "line are correlations shuffling destroys, crosses right of the red line are traps it keeps.")

st.dataframe(view, hide_index=True)
csv_download(view, "randomization", key="rand_csv")
