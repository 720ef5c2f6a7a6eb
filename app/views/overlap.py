"""Training dynamics: how weight, update, step and gradient subspaces move over a run."""

import streamlit as st

from subspace_atlas import charts
from common import csv_download, existing_store, show, table, table_or_stop
from links import choose

store = existing_store()
st.title("Training dynamics")
st.caption("For every matrix and checkpoint of a run, the top-k singular subspaces of the weights W_t, the update "
           "W_t − W_0, the step W_t − W_t−1 and the gradient on a fixed batch; how much each overlaps with the "
           "previous, the first and the last checkpoint (1 = the same subspace, chance ≈ k / dim). GaLore's premise "
           "is that gradient subspaces move slowly; Q-GaLore's, that some layers settle early; WeLore's, that "
           "low-rank weights emerge unevenly across layers.")
# Every pair of a 50-checkpoint run is 1,225 pairs per matrix: the page reads only the pairs a chart draws.
# The convergence table (one row per matrix, kind of subspace and side) is the index of what is stored.
PAIR_COLUMNS = ["run", "checkpoint_a", "checkpoint_b", "step_a", "step_b", "tensor", "layer", "kind", "of", "side",
                "previous", "from_first", "to_last", "k", "k_a", "k_b", "overlap", "chance", "mean_angle_deg",
                "lead_cos"]
INDEX = ["run", "tensor", "layer", "kind", "of", "side"]
convergence = table(store, "overlap", "convergence")
index = convergence if convergence is not None else table_or_stop(
    store, "overlap", "pairs", "training-dynamics results", "subspace-atlas overlap RUN", INDEX + ["step_b"])

c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
runs = (index.groupby("run")["checkpoints"].max() if convergence is not None
        else index.groupby("run")["step_b"].nunique()).sort_values(ascending=False)  # the longest run first
run = choose(c1.selectbox, "Run", list(runs.index), key="overlap_run", url="run")
mine = index[index["run"] == run]
of = choose(c2.selectbox, "Subspaces of", sorted(mine["of"].unique(), key=["weights", "updates", "steps",
                                                                          "gradients"].index),
            key="overlap_of", url="of",
            help="weights W_t; updates W_t − W_0; steps W_t − W_t−1; gradients on a fixed batch")
side = choose(c3.selectbox, "Side", sorted(mine["side"].unique()), key="overlap_side", url="side",
              help="left: column (output) space U; right: row (input) space V")
reference = choose(c4.radio, "Compared with", ["previous", "first", "last"], key="overlap_reference", url="reference")
kinds = sorted(mine.loc[(mine["of"] == of) & (mine["side"] == side), "kind"].unique())
chosen = choose(st.multiselect, "Kinds", kinds, default=kinds, key=f"overlap_kinds:{run}", url="kinds")
# The pairs of all three references in one cached read: switching between them reads nothing more.
nearby = table(store, "overlap", "pairs", PAIR_COLUMNS, any_of=tuple(charts.REFERENCE_FLAGS.values()), run=run,
               of=of, side=side, kind=chosen)
versus = charts.against_reference(nearby, reference)
if versus.empty:
    st.warning("No pairs match these filters.")
    st.stop()

steps_tab, grid_tab, matrix_tab, settle_tab, spectrum_tab, raw_tab = st.tabs(
    ["Over training", "Layer × step", "Checkpoint × checkpoint", "Convergence", "Spectrum & WeLore", "Table"],
    key="tab", bind="query-params")
with steps_tab:
    show(charts.overlap_over_steps(versus, reference), key="overlap_steps")
    st.caption(f"How to read this: one line per layer (dark early, bright late), its top-k subspace's overlap with "
               f"the {reference} checkpoint against step; near 1 the subspace holds still, near the dotted chance "
               "line it is as unrelated as a random one (GaLore's premise that gradient subspaces move slowly; "
               "Zhao et al. 2024).")
with grid_tab:
    show(charts.overlap_layer_step(versus, reference), key="overlap_grid")
    st.caption("How to read this: the same overlap as a layer × step grid (mean over kinds); a bright row is a layer "
               "whose subspace holds still, a dark column a step where many moved at once (GaLore; Zhao et al. "
               "2024).")
with matrix_tab:
    tensor = choose(st.selectbox, "Matrix", sorted(versus["tensor"].unique(), key=charts.natural_key),
                    key=f"overlap_tensor:{run}", url="matrix")
    show(charts.checkpoint_overlap_matrix(table(store, "overlap", "pairs", PAIR_COLUMNS, run=run, of=of, side=side,
                                                tensor=tensor)), key="overlap_matrix")
    st.caption("How to read this: this matrix's overlap between every two checkpoints; a bright block on the "
               "diagonal is a stretch of training its subspace stayed put, which is what lets GaLore keep one "
               "projector between refreshes (Zhao et al. 2024); grey pairs were not computed.")
with settle_tab:
    if convergence is None:
        st.info("No convergence table stored.")
    else:
        conv = convergence[(convergence["run"] == run) & (convergence["of"] == of) & (convergence["side"] == side)
                           & convergence["kind"].isin(chosen)]
        threshold = float(conv["settle"].iloc[0]) if len(conv) else 0.9
        which = choose(st.radio, "Rule", ["settled_step", "qgalore_step"], horizontal=True, key="overlap_rule",
                       url="rule", format_func={"settled_step": f"overlap with previous stays ≥ {threshold:g}",
                                      "qgalore_step": "Q-GaLore: mean leading |cos| of 5 refreshes ≥ 0.4"}.get)
        show(charts.convergence_by_layer(conv, which), key="overlap_convergence")
        st.caption("How to read this: per layer, the step from which every matrix meets the chosen rule; short bars "
                   "are layers that settle early, whose projectors Q-GaLore refreshes less often (Zhang et al. "
                   "2024), crosses never settled within the run.")
with spectrum_tab:
    welore = table(store, "overlap", "welore", run=run)
    if welore is None or welore.empty:
        st.info("No spectra stored for this run (it was computed with --no-welore).")
    else:
        s1, s2 = st.columns(2)
        name = choose(s1.selectbox, "Matrix", sorted(welore["tensor"].unique(), key=charts.natural_key),
                      key=f"overlap_spectrum_tensor:{run}", url="spectrum_matrix")
        tau = choose(s2.selectbox, "WeLore τ", sorted(welore["tau"].unique()), key="overlap_tau", url="tau",
                     help="threshold on (σ − σmin) / (σmax − σmin); WeLore's LLaMA-2 values")
        show(charts.spectrum_over_training(table(store, "overlap", "spectrum", run=run, tensor=name)),
             key="overlap_spectrum")
        st.caption("How to read this: this matrix's singular values at each checkpoint (dark early, bright late, "
                   "log scale); a tail falling away from the leading values is low-rank structure emerging (WeLore; "
                   "Jaiswal et al. 2024).")
        shown = welore[(welore["tau"] == tau) & welore["kind"].isin(chosen)]
        show(charts.welore_over_steps(shown, float(welore["lrc_share"].iloc[0])), key="overlap_welore")
        st.caption("How to read this: per kind, the share of min–max normalised singular values below τ over "
                   "training; above the dotted line a kind's matrices are, on average, what WeLore counts as low-rank "
                   "components (Jaiswal et al. 2024).")
with raw_tab:
    st.caption(f"The pairs against the {reference} checkpoint shown above (the angles of each pair: "
               "`Store.table('overlap', 'pairs')`).")
    st.dataframe(versus, hide_index=True)
    csv_download(versus, "overlap", key="overlap_csv")
