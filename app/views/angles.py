"""Task subspaces: principal angles between what different fine-tunes of one base changed."""

import streamlit as st

from subspace_atlas import charts
from common import csv_download, existing_store, show, table, table_or_stop
from links import choose

store = existing_store()
st.title("Task subspaces")
st.caption("Each fine-tune's update ΔW = W − W0 and its top-k singular subspaces; for every two tasks the principal "
           "angles between them (0° shared, 90° orthogonal), and how each update sits against the base's own "
           "principal directions and the tasks' sum (O-LoRA, TSV-Merge, Iso-C).")
pairs = table_or_stop(store, "angles", "pairs", "task angles", "subspace-atlas angles --base BASE TASK=CKPT …")
tasks = table(store, "angles", "tasks")
alignment = table(store, "angles", "alignment")

left, mid, right = st.columns([3, 2, 3])
base = choose(left.selectbox, "Base", sorted(pairs["base"].unique()), key="angles_base", url="base")
side = choose(mid.selectbox, "Side", sorted(pairs["side"].unique()), key="angles_side", url="side",
              help="left: column (output) subspaces, U; right: row (input) subspaces, V")
of_base = pairs[(pairs["base"] == base) & (pairs["side"] == side)]
kinds = sorted(of_base["kind"].unique())
chosen = choose(right.multiselect, "Kinds", kinds, default=kinds, key=f"angles_kinds:{base}", url="kinds")
view = of_base[of_base["kind"].isin(chosen)]
names = sorted(set(view["checkpoint_a"]) | set(view["checkpoint_b"]), key=charts.natural_key)
picked = choose(st.multiselect, "Tasks", names, default=names, key=f"angles_tasks:{base}", url="tasks")
view = view[view["checkpoint_a"].isin(picked) & view["checkpoint_b"].isin(picked)]
if view.empty:
    st.warning("No pairs of tasks match these filters.")
    st.stop()

grid, layers, one, aligned, raw = st.tabs(["Task × task", "By layer", "One pair", "Alignment", "Table"], key="tab",
                                          bind="query-params")
with grid:
    g1, g2 = st.columns([2, 3])
    value = choose(g1.radio, "Show", ["overlap", "mean_angle_deg"], horizontal=True, key="angles_value", url="show")
    layer_choices = ["whole model"] + [int(x) for x in sorted(view["layer"].dropna().unique())]
    layer = choose(g2.selectbox, "Layer", layer_choices, key="angles_layer", url="layer",
                   help="The mean over every selected matrix, or one layer's")
    show(charts.task_overlap_matrix(view if layer == "whole model" else view[view["layer"] == layer], value),
         key="angles_matrix")
    st.caption("How to read this: for every two tasks, how much their updates' top-k singular subspaces share, "
               "averaged over the selected matrices: overlap 1 (0°) the same subspace, 0 (90°) orthogonal; low "
               "cells off the diagonal are what O-LoRA's orthogonality aims for, tasks that interfere less when "
               "merged (principal angles).")
with layers:
    show(charts.overlap_by_layer(view), key="angles_layers")
    st.caption("How to read this: each pair of tasks' overlap ‖QaᵀQb‖² / k (Frobenius) across layers, mean over "
               "kinds; where a line rises, the two tasks write into the same directions (principal angles; O-LoRA "
               "keeps them apart).")
with one:
    c1, c2, c3 = st.columns(3)
    a = choose(c1.selectbox, "Task A", picked, key="angles_a", url="task_a")
    b = choose(c2.selectbox, "Task B", [t for t in picked if t != a], key="angles_b", url="task_b")
    rows = pairs[(pairs["base"] == base) & pairs["kind"].isin(chosen)
                 & (((pairs["checkpoint_a"] == a) & (pairs["checkpoint_b"] == b))
                    | ((pairs["checkpoint_a"] == b) & (pairs["checkpoint_b"] == a)))]
    tensor = choose(c3.selectbox, "Matrix", sorted(rows["tensor"].unique(), key=charts.natural_key),
                    key=f"angles_tensor:{a}:{b}", url="matrix")
    show(charts.angle_spectrum(rows[rows["tensor"] == tensor]), key="angles_spectrum")
    st.caption("How to read this: every principal angle between the two updates' subspaces of this matrix, "
               "smallest first; a few small angles then near 90° means they share a few directions and nothing "
               "else (principal angles, as `scipy.linalg.subspace_angles` computes them).")
with aligned:
    if tasks is not None:
        mine = tasks[(tasks["base"] == base) & (tasks["side"] == side) & tasks["kind"].isin(chosen)
                     & tasks["checkpoint"].isin(picked)]
        show(charts.base_alignment(mine), key="angles_base_alignment")
        st.caption("How to read this: how much of each update's top-k subspace lies in the base's own top-k, as a "
                   "multiple of a random subspace's share (dotted 1); above 1 the fine-tune writes along the base's "
                   "principal directions, the ones Sculpting Subspaces freezes to protect earlier tasks.")
    if alignment is not None:
        mine = alignment[(alignment["base"] == base) & (alignment["side"] == side) & alignment["kind"].isin(chosen)]
        groups = sorted(mine["group"].unique())
        if groups:
            chosen_group = choose(st.selectbox, "Set of tasks summed (Iso-C)", groups, key=f"angles_group:{base}",
                                  url="summed")
            show(charts.sar_by_task(mine[mine["group"] == chosen_group]), key="angles_sar")
            st.caption("How to read this: the share of each task's update (Frobenius norm) inside the summed task "
                       "matrix's leading subspace, per layer; near 1 a merge keeps the task, low means merging "
                       "drowns it (Iso-C's Subspace Alignment Ratio).")
with raw:
    st.dataframe(view.drop(columns=["angles"]), hide_index=True)
    csv_download(view, "angles", key="angles_csv")
