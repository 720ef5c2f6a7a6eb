"""The store's query layer (pyarrow.dataset, ``subspace_atlas.query``) against DuckDB on the same Parquet files.

Issue 16 asked for a choice between the two, measured. Both sides read the files the jobs' manifests name
(completed jobs only) and return a pandas DataFrame of the same rows; DuckDB is timed twice: over every
job's file (what a DuckDB layer without our manifest pruning reads) and over the files our pruning keeps.
Stores come from ``bench/store_scale.py --only build`` (default: ``bench/out/store-scale-final/stores``).
DuckDB is not a dependency: ``.venv/bin/pip install duckdb`` to run this.

    .venv/bin/python bench/query_engines.py [--stores DIR] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, load_average, machine  # noqa: E402

from subspace_atlas import query  # noqa: E402
from subspace_atlas.store import Store  # noqa: E402

PAIR_COLUMNS = ["checkpoint_a", "checkpoint_b", "step_a", "step_b", "tensor", "layer", "kind", "overlap", "chance"]


def queries(stores: Path) -> list[tuple[str, Store, str, str, dict, list[str] | None]]:
    """(label, store, analysis, table, where, columns): the reads the dashboard makes most."""
    found = []
    sweep, big, run = (Store(stores / name) for name in ("sweep-1000", "spectra-7b-50", "overlap-7b-run50"))
    if sweep.exists():
        one = sweep.table("spectra", "matrices", columns=["checkpoint"])["checkpoint"].iloc[517]
        found += [("sweep-1000: one checkpoint's σ of 1,000", sweep, "spectra", "values", {"checkpoint": one}, None),
                  ("sweep-1000: every job's metrics", sweep, "spectra", "matrices", {}, None)]
    if big.exists():
        one = big.table("spectra", "matrices", columns=["checkpoint"])["checkpoint"].iloc[-1]
        found += [("7B × 50: one checkpoint's σ, 3 columns", big, "spectra", "values", {"checkpoint": one},
                   ["tensor", "index", "sigma"])]
    if run.exists():
        tensor = run.table("overlap", "convergence", columns=["tensor"])["tensor"].iloc[40]
        found += [("7B run of 50: one matrix's pairs", run, "overlap", "pairs", {"tensor": tensor}, PAIR_COLUMNS),
                  ("7B run of 50: one matrix's spectra", run, "overlap", "spectrum", {"tensor": tensor}, None)]
    return found


def ours(store: Store, analysis: str, table: str, where: dict, columns: list[str] | None) -> pd.DataFrame:
    return store.table(analysis, table, where, columns)


def duckdb_read(store: Store, analysis: str, table: str, where: dict, columns: list[str] | None,
                pruned: bool) -> pd.DataFrame:
    """DuckDB over the manifests' files (all, or those our constant pruning keeps): the same rows."""
    import duckdb

    manifests = [m for m in store.catalog(analysis) if m.file(table)]
    if pruned:
        manifests = [m for m in manifests if query._may_match(m.constants(table), where)]
    files = sorted({store.table_path(analysis, table, m.file(table)) for m in manifests})
    chosen = ", ".join(f'"{c}"' for c in columns) if columns else "* EXCLUDE (_job)" if _merged(files) else "*"
    condition = " AND ".join(f'"{c}" = ?' for c in where) or "TRUE"
    sql = f"SELECT {chosen} FROM read_parquet(?, union_by_name = true) WHERE {condition}"
    return duckdb.sql(sql, params=[files, *where.values()]).to_arrow_table().to_pandas()


def _merged(files: list[str]) -> bool:
    return any(Path(f).name.startswith("compact-") for f in files)


def timed(read, reps: int) -> tuple[float, pd.DataFrame]:
    seconds, frame = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        frame = read()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=Path, default=OUT / "store-scale-final" / "stores")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    import duckdb

    about = ", ".join(f"{k}: {v}" for k, v in machine().items())
    print(f"{about}; load {load_average()}; duckdb {duckdb.__version__}; median of {args.reps}\n")
    print("| read | rows | pyarrow.dataset (ours) | DuckDB, every job's file | DuckDB, pruned files | DuckDB ÷ ours |")
    print("|---|---|---|---|---|---|")
    for label, store, analysis, table, where, columns in queries(args.stores):
        t_ours, a = timed(lambda: ours(store, analysis, table, where, columns), args.reps)
        t_all, b = timed(lambda: duckdb_read(store, analysis, table, where, columns, False), args.reps)
        t_pruned, c = timed(lambda: duckdb_read(store, analysis, table, where, columns, True), args.reps)
        key = [k for k in ("checkpoint", "checkpoint_a", "checkpoint_b", "tensor", "index") if k in a]
        for other in (b, c):  # the same rows, whatever order each engine returns them in
            pd.testing.assert_frame_equal(a.sort_values(key, ignore_index=True),
                                          other[a.columns].sort_values(key, ignore_index=True), check_dtype=False)
        print(f"| {label} | {len(a):,} | {t_ours:.3f} s | {t_all:.3f} s | {t_pruned:.3f} s | "
              f"{t_all / t_ours:.1f}× / {t_pruned / t_ours:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
