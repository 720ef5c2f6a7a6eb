"""Compare: two checkpoints A and B (a base and a fine-tune, or two steps of a run) across every analysis."""

import pandas as pd
import streamlit as st

from subspace_atlas import charts
from common import existing_store, jobs, show, table
from links import choose

ANALYSES = ("spectra", "intruders", "sparsity", "angles")  # what this page draws

store = existing_store()
st.title("Compare two checkpoints")
catalog = jobs(store)
catalog = catalog[catalog["analysis"].isin(ANALYSES)] if not catalog.empty else catalog
pair = None if catalog.empty else charts.default_pair(catalog)
if pair is None:
    st.info(f"Nothing to compare in `{store.root}`: it needs analyses of two checkpoints or more, e.g. "
            f"`subspace-atlas spectra CKPT_A CKPT_B --store {store.root}`.")
    st.stop()

bases = catalog["base"].dropna().unique() if "base" in catalog else []
named = pd.concat([catalog[["checkpoint"] + [c for c in ("run", "step") if c in catalog]],
                   pd.DataFrame({"checkpoint": bases})])
checkpoints = charts.in_step_order(named)
left, mid, right = st.columns([3, 3, 2])
a = choose(left.selectbox, "A", checkpoints, index=checkpoints.index(pair[0]), key="compare_a", url="a",
           help="The reference: a base model, or an earlier checkpoint.")
b = choose(mid.selectbox, "B", checkpoints, index=checkpoints.index(pair[1]), key="compare_b", url="b",
           help="Compared with A: a fine-tune of it, or a later checkpoint.")
metric = choose(right.selectbox, "Metric", list(charts.SPECTRA_METRICS), key="compare_metric", url="metric",
                help="\n\n".join(f"**{k}**: {v}" for k, v in charts.SPECTRA_METRICS.items()))
if a == b:
    st.warning("A and B are the same checkpoint: choose two.")
    st.stop()


def missing(text: str) -> None:
    """One grey line: what would fill the section."""
    st.markdown(f":grey[{text}]")


def of_pair(frame: pd.DataFrame | None) -> pd.DataFrame:
    """Rows of a base-and-fine-tune table that pair A and B (A as the base first, else B)."""
    if frame is None:
        return pd.DataFrame()
    forward = frame[(frame["base"] == a) & (frame["checkpoint"] == b)]
    return forward if not forward.empty else frame[(frame["base"] == b) & (frame["checkpoint"] == a)]


st.subheader("Spectra: metric deltas per layer × kind")
matrices = table(store, "spectra", "matrices", ["checkpoint", "tensor", "layer", "kind", metric], checkpoint=[a, b])
have = set() if matrices is None else set(matrices["checkpoint"])
if have != {a, b}:
    lacking = {which: name for which, name in (("A", a), ("B", b)) if name not in have}
    missing(f"no spectra job for {' and '.join(lacking.values())} (no metric deltas or overlaid spectra): run "
            f"`subspace-atlas spectra {' '.join(f'{which}_FOLDER' for which in lacking)} --store {store.root}`.")
else:
    deltas = charts.metric_deltas(matrices, metric, a, b)
    show(charts.delta_heatmap(deltas, metric, a, b), key="compare_deltas")
    st.caption(f"How to read this: red cells grew from A to B, blue ones shrank, white stayed put; "
               f"{metric} is {charts.SPECTRA_METRICS[metric]} (WeightWatcher). A lone large jump in alpha over "
               "spectra that coincide below is usually the power-law fit's xmin moving (Spectra → Eigenvalue "
               "density shows the fit).")

    st.subheader("Spectra overlaid")
    ranked = deltas.assign(size=deltas["delta"].abs()).sort_values(["size", "tensor"], ascending=[False, True],
                                                                    na_position="last")
    change = dict(zip(ranked["tensor"], ranked["delta"]))
    tensor = choose(st.selectbox, f"Matrix (largest change in {metric} first)", list(change),
                    key=f"compare_matrix:{a}:{b}", url="matrix", format_func=lambda t: f"{t} (Δ {change[t]:+.3g})")
    if tensor is None:
        missing(f"no matrix of {b} pairs with one of {a} by name.")
    else:
        tensor_a = ranked.loc[ranked["tensor"] == tensor, "tensor_a"].iloc[0]
        values = table(store, "spectra", "values", ["checkpoint", "tensor", "index", "sigma"], checkpoint=[a, b],
                       tensor=sorted({tensor, tensor_a}))
        values = values[((values["checkpoint"] == a) & (values["tensor"] == tensor_a))
                        | ((values["checkpoint"] == b) & (values["tensor"] == tensor))]
        show(charts.singular_values_pair(values, a, b, tensor), key="compare_spectra")
        st.caption("How to read this: B above A at the first ranks means the update added energy along a few "
                   "directions (a low-rank update's mark); a parallel shift is a rescaling of the whole matrix.")

side = choose(st.radio, "Side (intruders and angles)", ["left", "right"], horizontal=True, key="compare_side",
              url="side", help="left: columns of U (output directions); right: rows of Vᵀ (input directions)")

st.subheader("Intruder dimensions")
summary = of_pair(table(store, "intruders", "summary", ["base", "checkpoint", "layer", "kind", "side", "epsilon",
                                                        "top_k", "n_intruders"], base=[a, b], checkpoint=[a, b]))
summary = summary[summary["side"] == side] if not summary.empty else summary
if summary.empty:
    missing(f"no intruders job pairs {a} and {b} ({side} side): run "
            f"`subspace-atlas intruders --base A_FOLDER B_FOLDER --store {store.root}`.")
else:
    tuned, base = summary["checkpoint"].iloc[0], summary["base"].iloc[0]
    epsilons = sorted(summary["epsilon"].unique())
    epsilon = choose(st.selectbox, "ε", epsilons, index=epsilons.index(0.5) if 0.5 in epsilons else 0,
                     key="compare_epsilon", url="epsilon")
    show(charts.intruder_heatmap(summary[summary["epsilon"] == epsilon],
                                 f"intruders of {tuned} against {base}, per layer and kind (ε = {epsilon:g})"),
         key="compare_intruders")
    st.caption("How to read this: each cell counts the top-k singular vectors of the fine-tune whose largest |cos| "
               "with every base vector is below ε — directions the base never had (Shuttleworth et al.: many under "
               "low-rank LoRA, few under full fine-tuning).")

st.subheader("Update sparsity")
changed = of_pair(table(store, "sparsity", "matrices", ["base", "checkpoint", "layer", "kind", "numel", "dtype"]
                        + [f"unchanged_{d}" for d in charts.SPARSITY_DEFINITIONS], base=[a, b], checkpoint=[a, b]))
if changed.empty:
    missing(f"no sparsity job pairs {a} and {b}: run "
            f"`subspace-atlas sparsity --base A_FOLDER B_FOLDER --store {store.root}`.")
else:
    tuned, base = changed["checkpoint"].iloc[0], changed["base"].iloc[0]
    definition = choose(st.radio, "Unchanged when", list(charts.SPARSITY_DEFINITIONS), horizontal=True,
                        key="compare_definition", url="definition",
                        help="\n\n".join(f"**{k}**: {v}" for k, v in charts.SPARSITY_DEFINITIONS.items()))
    show(charts.sparsity_heatmap(changed, definition, f"share of {tuned} left unchanged from {base} ({definition})"),
         key="compare_sparsity")
    st.caption("How to read this: near 1 the update left the matrix's entries alone (a sparse update); RL fine-tunes "
               "change 5–30 % of parameters (Mukherjee et al.), and bf16 storage can hide small updates "
               f"(*The Path Not Taken*). Stored dtypes: {', '.join(sorted(changed['dtype'].unique()))}.")

st.subheader("Task angles")
angles = table(store, "angles", "pairs", ["base", "checkpoint_a", "checkpoint_b", "layer", "kind", "side", "overlap"],
               checkpoint_a=[a, b], checkpoint_b=[a, b], side=side)
angles = angles[angles["checkpoint_a"] != angles["checkpoint_b"]] if angles is not None else pd.DataFrame()
if angles.empty:
    missing(f"no angles job covers both {a} and {b} as tasks ({side} side): run "
            f"`subspace-atlas angles --base BASE_FOLDER A_FOLDER B_FOLDER --store {store.root}`.")
else:
    base = sorted(angles["base"].unique())[0]
    show(charts.pair_overlap_heatmap(angles[angles["base"] == base],
                                     f"overlap of the updates {a} − {base} and {b} − {base}, per layer and kind"),
         key="compare_angles")
    st.caption("How to read this: 1 = the two updates' top-k subspaces coincide, 0 = orthogonal (principal angles "
               "of 90°); low overlap is what O-LoRA and TSV-Merge aim for, so the tasks interfere less when merged.")
