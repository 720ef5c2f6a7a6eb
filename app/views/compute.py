"""Compute: launch a batch job (the ``subspace-atlas`` CLI in a background subprocess) into a store.

The app itself never decomposes a matrix: this page builds the CLI's arguments from the choices, starts
``python -m subspace_atlas.cli …`` with its output going to a log file, and shows that log while the job runs
(the page stays usable). It never writes into the committed demo store unless told to. Hidden in read-only mode.
"""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import streamlit as st

from common import DEMO_STORE, current_store, read_only
from links import choose
from subspace_atlas import analysis
from subspace_atlas.specs import PairedAnalysis, RunAnalysis
from subspace_atlas.store import Store

JOB = "compute_job"  # session state: the running or last job (its process, log file, command, store)
USER_STORE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "subspace-atlas" / "store"


def _is_demo(store: Store) -> bool:
    return store.local and Path(store.root).resolve() == DEMO_STORE.resolve()


def _launch(command: list[str], target: str) -> None:
    """Start ``command`` in the background, its output (stdout and stderr) going to a fresh log file (the
    previous job's log goes)."""
    if JOB in st.session_state:
        shutil.rmtree(st.session_state[JOB]["log"].parent, ignore_errors=True)
    log = Path(tempfile.mkdtemp(prefix="subspace-atlas-compute-")) / "job.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    st.session_state[JOB] = {"process": process, "log": log, "command": command, "store": target, "seen": False}


def _stop() -> None:
    job = st.session_state.get(JOB)
    if job and job["process"].poll() is None:
        job["process"].terminate()
        job["stopped"] = True


def _open_store(root: str) -> None:
    st.session_state["store_root"] = root  # the sidebar's store box: every page now reads the job's store


def _lines(log: Path) -> list[str]:
    try:
        return log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return []


def _error_line(lines: list[str]) -> str | None:
    """The CLI's one ``subspace-atlas[ CMD]: error: …`` line (argparse's too), the last if several."""
    return next((line for line in reversed(lines) if line.startswith("subspace-atlas") and ": error: " in line), None)


def _progress() -> None:
    """The job's state and its log's tail; reruns by itself every second while the job runs."""
    job = st.session_state.get(JOB)
    if job is None:
        return
    code, lines = job["process"].poll(), _lines(job["log"])
    st.caption(f"`{shlex.join(job['command'][1:])}` → `{job['store']}`")
    if code is None:
        st.info("Running… (this page and the others stay usable)", icon=":material/hourglass_top:")
        st.button("Stop", key="compute_stop", on_click=_stop, icon=":material/stop:")
    elif code == 0:
        st.success(lines[-1] if lines else "Done.", icon=":material/check_circle:")
        st.button("Open this store", key="compute_open", on_click=_open_store, args=(job["store"],),
                  disabled=st.session_state.get("store_root") == job["store"])
    elif job.get("stopped"):
        st.warning("Stopped. Finished jobs are stored; the one in flight is not.", icon=":material/stop_circle:")
    else:
        st.error(_error_line(lines) or f"Failed (exit {code}): {lines[-1] if lines else 'no output'}")
    if lines:
        st.text("\n".join(lines[-20:]))
    if code is not None and not job["seen"]:  # finished since the last full run: refresh the page once
        job["seen"] = True
        if code == 0:
            st.cache_data.clear()
        st.rerun()


if read_only():  # main.py already leaves the page out; never launch work in hosted mode
    st.stop()

st.title("Compute")
session_store = current_store()
default_target = str(USER_STORE) if _is_demo(session_store) else session_store.root
target = st.text_input("Store to write to", value=default_target, key="compute_store").strip() or default_target
if _is_demo(session_store):
    st.info(f"This session reads the committed demo store, so results go to your own store, `{USER_STORE}`, "
            "unless you name another. Open it afterwards to see them.", icon=":material/info:")
st.caption(f"Results go to `{target}`; what is already stored there is skipped; a folder not there yet is created.")

specs = {spec.name: spec for spec in analysis.batch_specs()}  # every registered analysis over checkpoints
name = choose(st.selectbox, "Analysis", list(specs), key="compute_analysis", url="analysis")
spec = specs[name]
st.caption(spec.description)
paired, run = isinstance(spec, PairedAnalysis), isinstance(spec, RunAnalysis)
paths = st.text_area("Checkpoints (one path per line)", key="compute_paths",
                     placeholder="a run folder of checkpoints" if run else
                     "a file, an HF folder or a run folder" + (", or a PEFT LoRA adapter folder" if paired else ""))
base = st.text_input("Base checkpoint (the pretrained model the fine-tunes start from)",
                     key="compute_base").strip() if paired else ""
start = st.text_input("Start checkpoint (optional: put first at step 0, e.g. the pretrained base)",
                      key="compute_start").strip() if run else ""
device = choose(st.selectbox, "Device", ["auto", "cpu", "cuda"], key="compute_device", url="device")
extra = st.text_input("More flags (optional)", key="compute_flags", placeholder="--tensors 'attn' --force",
                      help=f"Any flags of `subspace-atlas {spec.command} --help`.")
try:
    flags = shlex.split(extra)
except ValueError as err:
    flags = None
    st.error(f"More flags: {err}")

checkpoints = [p.strip() for p in paths.splitlines() if p.strip()]
command = [sys.executable, "-m", "subspace_atlas.cli", spec.command, *checkpoints,
           *(["--base", base] if base else []), *(["--start", start] if start else []),
           "--store", target, "--device", device, *(flags or [])]
st.code(shlex.join(["subspace-atlas", *command[3:]]), language="bash")
running = JOB in st.session_state and st.session_state[JOB]["process"].poll() is None
missing = not checkpoints or (paired and not base) or flags is None
if st.button(f"Compute {name}", type="primary", key="compute_go", disabled=missing or running,
             help="A job is running: stop it or wait." if running else None):
    _launch(command, target)
    st.rerun()  # drawn again with the job: its button disabled, its progress below
st.fragment(_progress, run_every=1.0 if running else None)()
