"""What every page shares: which store to read, read-only mode, cached table reads, figures shown."""

from __future__ import annotations

import argparse
import functools
import operator
import os
import sys
from pathlib import Path
from typing import NoReturn

import pandas as pd
import pyarrow.dataset as ds
import streamlit as st

from subspace_atlas import query
from subspace_atlas.errors import AtlasError
from subspace_atlas.store import Manifest, Store

FIGURE_CONFIG = {"displaylogo": False}  # plotly's toolbar, on every chart
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
        _fail(str(err))


def existing_store() -> Store:
    """The current store for a page that reads it; where nothing is there (a mistyped path), one "no such store"
    error and the end of the page, never "compute them" advice."""
    store = current_store()
    try:
        found = bool(version(store)) or store.exists()  # a store with jobs needs no second request
    except AtlasError as err:  # unreachable
        _fail(str(err))
    if not found:
        _fail(f"no such store: {store.root}")
    return store


def _fail(message: str) -> NoReturn:
    st.error(message)
    st.stop()


@st.cache_data(show_spinner=False, ttl=1)
def _local_version(root: str) -> str:
    return Store(root).version()


@st.cache_data(show_spinner=False, ttl=10)
def _remote_version(root: str) -> str:
    return Store(root).version()


def version(store: Store) -> str:
    """What the store holds, as a cache key: listed once per page run on a disk (≤ 1 s old), at most every 10 s
    remotely (listing an object store costs requests)."""
    return (_local_version if store.local else _remote_version)(store.root)


# Query results are cached once per server, shared by every session and never pickled (st.cache_resource),
# keyed by the store's version: a page asks for the slice it draws, and a second visitor gets it for free.
@st.cache_resource(show_spinner=False, max_entries=32)
def _catalog(root: str, analysis: str, version: str) -> tuple[list[Manifest], dict[str, str]]:
    """An analysis's manifests, read once per store version (a sweep's 1,000 of them take 0.1–0.2 s) and the
    manifests that did not read."""
    store = Store(root)
    return store.catalog(analysis), dict(store.unreadable)


def _reader(root: str, analysis: str, version: str) -> tuple[Store, list[Manifest]]:
    store = Store(root)
    catalog, unreadable = _catalog(root, analysis, version)
    store.unreadable.update(unreadable)
    return store, catalog


@st.cache_resource(show_spinner=False, max_entries=256)
def _read(root: str, analysis: str, table: str, version: str, where: tuple, columns: tuple | None,
          any_of: tuple[str, ...]) -> tuple[pd.DataFrame | None, list[str]]:
    store, catalog = _reader(root, analysis, version)
    either = functools.reduce(operator.or_, (ds.field(flag) == True for flag in any_of)) if any_of else None  # noqa: E712
    found = query.scan(store, analysis, table, where=dict(where), columns=list(columns) if columns else None,
                       predicate=either, catalog=catalog)
    return (None if found is None else found.to_pandas(),
            [f"{store.relative(path)}: {why}" for path, why in sorted(store.unreadable.items())])


@st.cache_resource(show_spinner=False, max_entries=256)
def _distinct(root: str, analysis: str, table: str, column: str, version: str) -> list | None:
    store, catalog = _reader(root, analysis, version)
    return query.distinct(store, analysis, table, column, catalog=catalog)


def distinct(store: Store, analysis: str, table: str, column: str) -> list | None:
    """The values a column takes (None for null; None when no job wrote the table), mostly read off the jobs'
    manifests: a page learns its choices (runs, checkpoints) without reading every job's rows."""
    return _distinct(store.root, analysis, table, column, version(store))


@st.cache_data(show_spinner=False, max_entries=16)
def _jobs(root: str, version: str) -> pd.DataFrame:
    return Store(root).jobs()


def table(store: Store, analysis: str, name: str, columns: list[str] | None = None, any_of: tuple[str, ...] = (),
          **where) -> pd.DataFrame | None:
    """Stored rows of a table whose columns equal ``where`` (a list: any of its values) and where any of the
    boolean columns ``any_of`` is true, only ``columns``; None if no job wrote the table. Read once per store
    version for every session."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple, set)) else v) for k, v in where.items()))
    found, unreadable = _read(store.root, analysis, name, version(store), key, tuple(columns) if columns else None,
                              tuple(any_of))
    for line in unreadable:  # named once per page, never a traceback; `subspace-atlas verify --repair` heals it
        if line not in st.session_state.setdefault("_warned", set()):
            st.session_state["_warned"].add(line)
            st.warning(f"Left out, does not read: {line}. Run `subspace-atlas verify --store … --repair`, "
                       "then rerun the job.", icon=":material/broken_image:")
    return None if found is None else found.copy(deep=False)  # a session's edits never reach the shared copy


def jobs(store: Store) -> pd.DataFrame:
    """Stored jobs with their inputs flattened into columns."""
    frame = _jobs(store.root, version(store))
    if frame.empty:
        return frame
    inputs = pd.json_normalize(frame["inputs"].tolist())
    return pd.concat([frame.drop(columns=["inputs"]), inputs], axis=1)


def table_or_stop(store: Store, analysis: str, name: str, what: str, command: str,
                  columns: list[str] | None = None, **where) -> pd.DataFrame:
    """A stored table (see ``table``), or an explanation of how to compute it and the end of the page."""
    frame = table(store, analysis, name, columns, **where)
    if frame is None:
        st.info(f"No {what} in `{store.root}`. Compute them with `{command} --store {store.root}`.")
        st.stop()
    return frame


def csv_download(frame: pd.DataFrame, name: str, key: str) -> None:
    """A CSV download of ``frame``, built only when clicked (never on every rerun)."""
    st.download_button("Download CSV", lambda: frame.to_csv(index=False).encode(), file_name=f"{name}.csv",
                       mime="text/csv", key=key, on_click="ignore")


def show(fig, *, key: str, where=None):
    """Draw a plotly figure (in ``where``, a column or tab, else the page) and keep it for the HTML export.
    Its toolbar's camera saves the figure as an SVG (vector, for papers) named after the chart."""
    drawn = (st if where is None else where).plotly_chart(fig, key=key, config=FIGURE_CONFIG | {
        "toImageButtonOptions": {"format": "svg", "filename": f"atlas-{key}"}})
    st.session_state.setdefault("_figures", []).append(fig)
    return drawn
