"""Update sparsity: which entries a fine-tune changed, under three definitions, and how fine-tunes overlap."""

import streamlit as st

from subspace_atlas import charts
from common import csv_download, existing_store, show, table, table_or_stop
from links import choose

store = existing_store()
st.title("Update sparsity")
st.caption("Which parameters a fine-tune actually changed (Mukherjee et al., *RL finetunes small subnetworks*), "
           "under three definitions side by side — bf16 storage can hide small updates (*The Path Not Taken*).")
matrices = table_or_stop(store, "sparsity", "matrices", "sparsity results",
                         "subspace-atlas sparsity --base BASE TUNED …")

left, mid, right = st.columns([3, 2, 3])
bases = sorted(matrices["base"].unique())
base = choose(left.selectbox, "Base", bases, key="sparsity_base", url="base",
              help="Fine-tunes are compared with this checkpoint.")
definition = choose(mid.radio, "Unchanged when", list(charts.SPARSITY_DEFINITIONS), horizontal=True,
                    key="sparsity_definition", url="definition",
                    help="\n\n".join(f"**{k}**: {v}" for k, v in charts.SPARSITY_DEFINITIONS.items()))
of_base = matrices[matrices["base"] == base]
kinds = sorted(of_base["kind"].unique())
chosen_kinds = choose(right.multiselect, "Kinds", kinds, default=kinds, key=f"sparsity_kinds:{base}", url="kinds")
view = of_base[of_base["kind"].isin(chosen_kinds)]
if view.empty:
    st.warning("No matrices match these filters.")
    st.stop()
st.caption(f"**{definition}**: {charts.SPARSITY_DEFINITIONS[definition]}. Stored dtypes: "
           f"{', '.join(sorted(view['dtype'].unique()))}.")
finals = charts.in_step_order(view[view["run"].isna()])
everything = charts.in_step_order(view)

compare, heat, steps, overlap_tab, rank, raw = st.tabs(["Compare fine-tunes", "Layer × kind", "Over training",
                                                         "Overlap vs chance", "Update rank", "Table"],
                                                        key="tab", bind="query-params")
with compare:
    show(charts.sparsity_by_checkpoint(view[view["checkpoint"].isin(finals or everything)]), key="sparsity_compare")
    st.caption("How to read this: the share of each fine-tune's entries left unchanged, one bar per definition; RL "
               "fine-tunes update only 5–30 % of parameters (Mukherjee et al. 2025, *RL finetunes small "
               "subnetworks*); exact counts bit-equal entries, so in bf16 also updates too small to survive "
               "rounding (*The Path Not Taken*), and atol or ulp bars above it add entries changed only a little.")
with heat:
    ckpt = choose(st.selectbox, "Checkpoint", finals or everything, key=f"sparsity_heat_checkpoint:{base}",
                  url="heat_checkpoint")
    show(charts.sparsity_heatmap(view[view["checkpoint"] == ckpt], definition,
                                 f"unchanged share per layer and kind in {ckpt} ({definition})"),
         key="sparsity_heatmap")
    st.caption("How to read this: the share of each layer's entries of each kind left unchanged (by entries, under "
               "the chosen definition); dark cells were barely touched, pale ones rewritten (Mukherjee et al. "
               "2025).")
with steps:
    show(charts.sparsity_over_steps(view, definition), key="sparsity_steps")
    st.caption("How to read this: the whole-model unchanged share against training step, one line per run: how "
               "much of the model a run leaves alone as it trains (Mukherjee et al. 2025 measure it at the end).")
with overlap_tab:
    overlap = table(store, "sparsity", "overlap")
    mine = overlap[(overlap["base"] == base) & overlap["kind"].isin(chosen_kinds)] if overlap is not None else None
    if mine is None or mine.empty:
        st.info("No pairs of fine-tunes of this base are stored (give two or more checkpoints without --no-overlap).")
    else:
        st.caption(f"Changed-masks by the **{mine['mask'].iloc[0]}** definition (the `--mask` they were computed with).")
        show(charts.overlap_vs_chance(mine), key="sparsity_overlap")
        st.caption("How to read this: one point per matrix and pair of fine-tunes, the Jaccard of their changed "
                   "entries against what independent masks would give; points above the dashed diagonal share "
                   "more of a subnetwork than chance, as Mukherjee et al. 2025 found across seeds, data and "
                   "algorithms.")
with rank:
    show(charts.update_rank_by_layer(view[view["checkpoint"].isin(finals or everything)]), key="sparsity_rank")
    st.caption("How to read this: the numerical rank of ΔW over min(m, n) per layer; near 1 the update is "
               "full-rank even where it is sparse, as Mukherjee et al. 2025 found for RL (a LoRA update's rank is "
               "its r).")
with raw:
    st.dataframe(view, hide_index=True)
    csv_download(view, "sparsity", key="sparsity_csv")
