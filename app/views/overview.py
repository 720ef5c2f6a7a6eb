"""Overview: what the store holds — analyses, checkpoints, when and on which device."""

import streamlit as st

import charts
from common import current_store, jobs

store = current_store()
st.title("Subspace Atlas")
st.caption(f"Store: `{store.root}`")

stored = jobs(store)
if stored.empty:
    st.info("This store is empty. Compute something with `subspace-atlas spectra CKPT --store "
            f"{store.root}` and reload.")
    st.stop()

cols = st.columns(4)
cols[0].metric("analyses", stored["analysis"].nunique())
cols[1].metric("checkpoints", stored["checkpoint"].nunique())
cols[2].metric("jobs", len(stored))
cols[3].metric("matrices analysed", int(stored["matrices"].sum()))

st.plotly_chart(charts.jobs_timeline(stored), key="jobs_chart")
st.subheader("Stored jobs")
shown = ["analysis", "checkpoint", "run", "step", "matrices", "device", "device_name", "wall_s", "created",
         "fingerprint"]
st.dataframe(stored[[c for c in shown if c in stored]], hide_index=True)
