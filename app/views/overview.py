"""Overview: what the store holds — analyses, checkpoints, when and on which device — and the demo zoo."""

import streamlit as st

from subspace_atlas import charts
from common import existing_store, jobs, show, table

store = existing_store()
st.title("Subspace Atlas")
st.caption(f"Store: `{store.root}`")

stored = jobs(store)
if stored.empty:
    st.info("This store is empty. Compute something with `subspace-atlas spectra CKPT --store "
            f"{store.root}` and reload.")
    st.stop()

analysed = stored[stored["analysis"] != "zoo"]
cols = st.columns(4)
cols[0].metric("analyses", analysed["analysis"].nunique())
cols[1].metric("checkpoints", analysed["checkpoint"].nunique())
cols[2].metric("jobs", len(analysed))
cols[3].metric("matrices analysed", int(analysed["matrices"].sum()) if "matrices" in analysed else 0)

zoo = table(store, "zoo", "runs")
if zoo is not None:
    st.subheader("Demo zoo")
    st.markdown("Real runs made on a 2-core CPU by `subspace-atlas demo`, starting from the pretrained "
                "all-MiniLM-L6-v2 (fine-tunes) or from scratch (the GPT-2 pretraining run). Final metrics:")
    show(charts.zoo_accuracy(zoo), key="zoo_accuracy")
    curves = table(store, "zoo", "curves")
    if curves is not None and not curves.empty:
        show(charts.loss_curves(curves), key="zoo_curves")
    shown = ["run", "task", "method", "rank", "train_accuracy", "heldout_accuracy", "chance_accuracy",
             "train_loss", "heldout_loss", "checkpoints", "seconds", "description"]
    st.dataframe(zoo[[c for c in shown if c in zoo]], hide_index=True, key="zoo_table")

st.subheader("Stored jobs")
show(charts.stored_jobs(analysed), key="jobs_chart")
shown = ["analysis", "checkpoint", "run", "step", "matrices", "device", "device_name", "wall_s", "created",
         "fingerprint"]
st.dataframe(analysed[[c for c in shown if c in analysed]], hide_index=True, key="jobs_table")
