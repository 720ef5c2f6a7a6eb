"""Subspace Atlas dashboard: ``streamlit run app/main.py [-- --store DIR]``.

Reads a result store only (never computes an SVD). Opens on the committed demo store unless
``--store`` or ``$SUBSPACE_ATLAS_STORE`` says otherwise; ``SUBSPACE_ATLAS_READONLY=1`` for hosting.
"""

import streamlit as st

from common import configured_store, read_only

st.set_page_config(page_title="Subspace Atlas", layout="wide")

if not read_only():
    st.sidebar.text_input("Store folder", value=str(configured_store()), key="store_root",
                          help="A Subspace Atlas result store (e.g. what `subspace-atlas spectra --store DIR` wrote).")

pages = [
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("views/spectra.py", title="Spectra", icon=":material/ssid_chart:"),
    st.Page("views/intruders.py", title="Intruders", icon=":material/call_split:"),
    st.Page("views/sparsity.py", title="Sparsity", icon=":material/grain:"),
    st.Page("views/angles.py", title="Task angles", icon=":material/architecture:"),
    st.Page("views/overlap.py", title="Training dynamics", icon=":material/timeline:"),
    st.Page("views/patching.py", title="Activation patching", icon=":material/swap_horiz:"),
]
if not read_only():
    pages.append(st.Page("views/compute.py", title="Compute", icon=":material/play_arrow:"))
st.navigation(pages).run()
