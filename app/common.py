"""What every page shares: which store to read, read-only mode, cached table reads, figures shown."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from subspace_atlas.errors import AtlasError
from subspace_atlas.store import Store

DEMO_STORE = Path(__file__).resolve().parent.parent / "data" / "demo-store"


def read_only() -> bool:
    """Hosted mode (``SUBSPACE_ATLAS_READONLY=1``): nothing launches work or reads outside the store."""
    return os.environ.get("SUBSPACE_ATLAS_READONLY", "").lower() in ("1", "true", "yes")


def configured_store() -> str:
    """``streamlit run app/main.py -- --store DIR|URL``, else ``$SUBSPACE_ATLAS_STORE``, else the demo store.

    A URL (``s3://bucket/prefix``, ``gs://…``) reads a shared store through fsspec.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return str(args.store or os.environ.get("SUBSPACE_ATLAS_STORE") or DEMO_STORE)


def current_store() -> Store:
    """The store this session reads; outside read-only mode the sidebar can point elsewhere."""
    root = (None if read_only() else st.session_state.get("store_root")) or configured_store()
    try:
        return Store(root)
    except AtlasError as err:
        st.error(str(err))
        st.stop()


@st.cache_data(show_spinner=False, ttl=10)
def _remote_version(root: str) -> tuple:
    return Store(root).version()


def version(store: Store) -> tuple:
    """What the store holds, as a cache key: listed afresh each run on a disk, at most every 10 s remotely."""
    return store.version() if store.local else _remote_version(store.root)


@st.cache_data(show_spinner=False, max_entries=64)
def _read(root: str, analysis: str, table: str, version: tuple, where: tuple = ()) -> pd.DataFrame | None:
    return Store(root).table_if_stored(analysis, table, dict(where))


@st.cache_data(show_spinner=False)
def _jobs(root: str, version: tuple) -> pd.DataFrame:
    return Store(root).jobs()


def table(store: Store, analysis: str, name: str, **where) -> pd.DataFrame | None:
    """A stored table (only rows whose columns equal ``where``), cached until a job is added; None if absent."""
    return _read(store.root, analysis, name, version(store), tuple(sorted(where.items())))


def jobs(store: Store) -> pd.DataFrame:
    """Stored jobs with their inputs flattened into columns."""
    frame = _jobs(store.root, version(store))
    if frame.empty:
        return frame
    inputs = pd.json_normalize(frame["inputs"].tolist())
    return pd.concat([frame.drop(columns=["inputs"]), inputs], axis=1)


def table_or_stop(store: Store, analysis: str, name: str, what: str, command: str) -> pd.DataFrame:
    """A stored table, or an explanation of how to compute it and the end of the page."""
    frame = table(store, analysis, name)
    if frame is None:
        st.info(f"No {what} in `{store.root}`. Compute them with `{command} --store {store.root}`.")
        st.stop()
    return frame


def show(fig, *, key: str, where=None):
    """Draw a plotly figure (in ``where``, a column or tab, else the page) and keep it for the HTML export."""
    drawn = (st if where is None else where).plotly_chart(fig, key=key)
    st.session_state.setdefault("_figures", []).append(fig)
    return drawn
