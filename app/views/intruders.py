"""Intruder dimensions: new high-ranking singular vectors a fine-tune brings in, compared across fine-tunes."""

import pandas as pd
import streamlit as st

from subspace_atlas import charts
from common import csv_download, existing_store, show, table, table_or_stop
from links import choose, slide

store = existing_store()
st.title("Intruder dimensions")
st.caption("A fine-tuned matrix's top-k left singular vector is an **intruder** when its largest |cos| with every "
           "singular vector of the base matrix is below ε (Shuttleworth et al., *LoRA vs Full Fine-tuning: an "
           "Illusion of Equivalence*; the rule PEFT ships).")
summary = table_or_stop(store, "intruders", "summary", "intruder results",
                        "subspace-atlas intruders --base BASE TUNED …")

left, mid, right = st.columns([2, 2, 3])
sides = sorted(summary["side"].unique())
side = choose(left.selectbox, "Side", sides, key="intruders_side", url="side",
              help="left: columns of U (the paper's choice); right: rows of Vᵀ")
epsilons = sorted(summary["epsilon"].unique())
epsilon = choose(mid.selectbox, "ε", epsilons, index=epsilons.index(0.5) if 0.5 in epsilons else 0,
                 key="intruders_epsilon", url="epsilon")
kinds = sorted(summary["kind"].unique())
chosen_kinds = choose(right.multiselect, "Kinds", kinds, default=kinds, key="intruders_kinds", url="kinds",
                      help="A LoRA adapter holds only the matrices it targets: to compare fine-tunes like with "
                           "like, keep the kinds every checkpoint has.")
view = summary[(summary["side"] == side) & summary["kind"].isin(chosen_kinds)]
if view.empty:
    st.warning("No matrices match these filters.")
    st.stop()
at_eps = view[view["epsilon"] == epsilon]
counts = at_eps.groupby("checkpoint")["n_intruders"].sum()
finals = charts.in_step_order(at_eps[at_eps["run"].isna()])
everything = charts.in_step_order(at_eps)
most_first = sorted(finals or everything, key=lambda c: -counts[c])  # ties in step order

heat, sweep, steps, one, raw = st.tabs(["Layer × kind", "Count vs ε", "Over training", "One matrix", "Table"],
                                       key="tab", bind="query-params")
with heat:
    ckpt = choose(st.selectbox, "Checkpoint (most intruders first)", most_first, key="intruders_heat_checkpoint",
                  url="heat_checkpoint", format_func=lambda c: f"{c} ({counts[c]} intruders)")
    show(charts.intruder_heatmap(at_eps[at_eps["checkpoint"] == ckpt],
                                 f"intruders per layer and kind in {ckpt} (ε = {epsilon:g})"), key="intruder_heatmap")
    st.caption("How to read this: each cell counts the top-k singular vectors of that layer's matrix whose largest "
               "|cos| with every base singular vector is below ε, directions the base never had; many under "
               "low-rank LoRA, few under full fine-tuning (Shuttleworth et al. 2024, *LoRA vs Full Fine-tuning: An "
               "Illusion of Equivalence*).")
with sweep:
    compare = choose(st.multiselect, "Fine-tunes", everything, default=finals or everything[:6],
                     key="intruders_compare", url="compare")
    show(charts.intruders_vs_epsilon(view[view["checkpoint"].isin(compare)]), key="intruders_sweep")
    st.caption("How to read this: total intruders over the selected matrices as the threshold ε rises (a higher ε "
               "calls more vectors intruders); a fine-tune whose line stays above another's at every ε has more "
               "new directions, whatever the threshold (Shuttleworth et al. 2024's sweep).")
with steps:
    show(charts.intruders_over_steps(at_eps), key="intruders_steps")
    st.caption("How to read this: total intruders at the chosen ε against training step, one line per run: when "
               "during fine-tuning the new directions appear and whether they keep coming (Shuttleworth et al. "
               "2024).")
with one:
    c1, c2, c3 = st.columns([2, 3, 1])
    ckpt = choose(c1.selectbox, "Checkpoint", most_first + [c for c in everything if c not in most_first],
                  key="intruders_one_checkpoint", url="checkpoint")
    in_ckpt = at_eps[at_eps["checkpoint"] == ckpt].sort_values(["n_intruders", "tensor"], ascending=[False, True])
    tensor = choose(c2.selectbox, "Matrix (most intruders first)", in_ckpt["tensor"].tolist(),
                    key=f"intruders_one_tensor:{ckpt}", url="matrix")
    lam = slide(c3.slider, "λ", 0.0, 1.0, 0.75, step=0.05, key="intruders_lambda", url="lambda",
                help="Mitigation: intruder singular values are scaled by λ (PEFT's default 0.75)")

    def one_matrix(name):
        return table(store, "intruders", name, checkpoint=ckpt, tensor=tensor)

    vectors = one_matrix("vectors")
    vectors = vectors[vectors["side"] == side].assign(is_intruder=lambda v: v["max_cos"] < epsilon)
    similarity = one_matrix("similarity")
    g1, g2 = st.columns(2)
    show(charts.similarity_matrix(similarity[similarity["side"] == side], vectors), key="similarity", where=g1)
    g1.caption("How to read this: |cos| of each top-k fine-tuned singular vector (row) with the base's leading ones "
               "(columns); a row with a bright cell has a match in the base, a ⚠ row has none at or above ε among "
               "all the base's vectors: an intruder (Shuttleworth et al. 2024).")
    show(charts.spectrum_with_intruders(one_matrix("values"), vectors, lam), key="intruder_spectrum", where=g2)
    g2.caption("How to read this: base (dotted) and fine-tuned singular values by rank, intruders crossed at their "
               "ranks; the dashed line is the spectrum after PEFT's mitigation scales the intruders' σ by λ "
               "(Shuttleworth et al. 2024).")
    matrix = one_matrix("matrices")
    if not matrix.empty:
        row = matrix.iloc[0]
        show(charts.mitigation_curve(row, vectors, lam), key="mitigation")
        st.caption("How to read this: for every λ, how far scaling the intruders' σ by λ moves W and, where stored, "
                   "how much of the update W − W0 it leaves; the dotted line is the chosen λ (PEFT's intruder "
                   "mitigation, λ = 0.75 by default; Shuttleworth et al. 2024).")
        update = "dense update" if pd.isna(row["lora_rank"]) else f"LoRA rank {int(row['lora_rank'])}"
        st.caption(f"‖ΔW‖ / ‖W0‖ = {row['rel_update']:.3g} · {row['rows']} × {row['cols']} · {update} · "
                   f"decomposed by {row['method']}")
    st.dataframe(vectors[["index", "sigma", "max_cos", "best_match_index", "best_match_sigma", "is_intruder"]],
                 hide_index=True)
with raw:
    st.dataframe(at_eps, hide_index=True)
    csv_download(view, "intruders", key="intruders_csv")
