"""Subspace Atlas dashboard: ``streamlit run app/main.py [-- --store DIR|URL]``.

Reads a result store only (never computes an SVD). Opens on the committed demo store unless
``--store`` or ``$SUBSPACE_ATLAS_STORE`` says otherwise; ``SUBSPACE_ATLAS_READONLY=1`` for hosting.
With an ``[auth]`` section in ``.streamlit/secrets.toml`` every visitor logs in first (Streamlit's own
OIDC login); ``[atlas] allowed_emails`` narrows who may look.
"""

import streamlit as st

from common import configured_store, current_store, read_only
from hosting import export_buttons, signed_in
from links import typed
from subspace_atlas import analysis

st.set_page_config(page_title="Subspace Atlas", layout="wide")

if not signed_in():
    st.stop()
if not read_only():  # hosted, there is no box: a link's `store` is never read
    typed(st.sidebar.text_input, "Store", configured_store(), key="store_root", url="store",
          help="A Subspace Atlas result store: a folder or a URL such as s3://bucket/prefix "
               "(what `subspace-atlas spectra --store …` wrote). Kept in the page's link.")

pages = [
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    *(st.Page(spec.page.path, title=spec.page.title, icon=spec.page.icon)
      for spec in analysis.SPECS.values() if spec.page),  # every registered analysis's page, in registry order
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
]
if not read_only():
    pages.append(st.Page("views/compute.py", title="Compute", icon=":material/play_arrow:"))
page = st.navigation(pages)
st.session_state["_figures"] = []  # what the page shows, for its HTML export
st.session_state["_warned"] = set()  # unreadable files already named on this run of the page
page.run()
export_buttons(current_store(), page.title)
