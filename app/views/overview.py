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
    st.caption("How to read this: a held-out bar well above its black chance mark means the fine-tune learned its "
               "task, a train bar far above held-out that it memorised (the zoo's runs, `subspace-atlas demo`).")
    curves = table(store, "zoo", "curves")
    if curves is not None and not curves.empty:
        show(charts.loss_curves(curves), key="zoo_curves")
        st.caption("How to read this: held-out cross-entropy against training step, one line per run; falling then "
                   "flattening means the run trained, rising late that it overfits (the zoo's runs, `subspace-atlas "
                   "demo`).")
    shown = ["run", "task", "method", "rank", "train_accuracy", "heldout_accuracy", "chance_accuracy",
             "train_loss", "heldout_loss", "checkpoints", "seconds", "description"]
    st.dataframe(zoo[[c for c in shown if c in zoo]], hide_index=True, key="zoo_table")

st.subheader("Stored jobs")
show(charts.stored_jobs(analysed), key="jobs_chart")
st.caption("How to read this: one bar per analysis, its jobs split by the device they ran on; hover for the "
           "checkpoints, matrices and compute seconds behind it (the store's job manifests, the table below).")
shown = ["analysis", "checkpoint", "run", "step", "matrices", "device", "device_name", "wall_s", "created",
         "fingerprint"]
st.dataframe(analysed[[c for c in shown if c in analysed]], hide_index=True, key="jobs_table")
