"""Compute: launch a batch job (the ``subspace-atlas`` CLI in a subprocess) into the current store.

The app itself never decomposes a matrix; this page only starts the CLI and shows its output.
Hidden in read-only mode.
"""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import streamlit as st

from common import current_store
from links import choose

store = current_store()
st.title("Compute")
st.caption(f"Results go to `{store.root}`; " + ("what is already stored is skipped." if store.exists() else
                                                 "nothing is there yet: the first job creates the store."))
paths = st.text_area("Checkpoints (one path per line: a file, an HF folder, or a run folder)",
                     key="compute_paths")
device = choose(st.selectbox, "Device", ["auto", "cpu", "cuda"], key="compute_device", url="device")
cli = shutil.which("subspace-atlas", path=str(Path(sys.executable).parent)) or "subspace-atlas"
command = [cli, "spectra", *[p.strip() for p in paths.splitlines() if p.strip()],
           "--store", str(store.root), "--device", device]
st.code(shlex.join(command), language="bash")
if st.button("Compute spectra", type="primary", key="compute_go", disabled=not paths.strip()):
    with st.status("Running…", expanded=True) as status:
        done = subprocess.run(command, capture_output=True, text=True)
        st.code((done.stdout + done.stderr).strip() or "(no output)")
        status.update(label="Done" if done.returncode == 0 else f"Failed (exit {done.returncode})",
                      state="complete" if done.returncode == 0 else "error")
    if done.returncode == 0:
        st.cache_data.clear()
