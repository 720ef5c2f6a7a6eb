"""Read what a caller asks for from a store: one scan over every job's files, filters and columns pushed down.

The files come from the jobs' manifests (only completed jobs are read). A ``where`` filter first skips
whole jobs by the constant columns their manifests record (a checkpoint's job among 1,000 is found without
opening the other 999), then goes to ``pyarrow.dataset`` as a predicate: row groups whose statistics rule
it out are not read, rows that fail it are not converted, and only the asked-for columns are decoded. Local
folders and fsspec URLs (s3://, gs://, memory://) go through the same path.

Why pyarrow.dataset and not DuckDB: which files a read opens decides its time, and the manifest pruning
above does that (one checkpoint of 1,000 jobs: 0.08 s here, DuckDB over every job's file 0.30 s); on the
files kept, DuckDB decodes up to 2.8× faster, but every dashboard read is below 0.2 s either way
(bench/query_engines.py). pyarrow is already the store's dependency, takes the store's fsspec filesystem
as it is and returns the Arrow tables the pages draw; docs/store.md has the numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from subspace_atlas.errors import AtlasError

if TYPE_CHECKING:
    from subspace_atlas.store import Manifest, Store

JOB_COLUMN = "_job"  # in merged files: the fingerprint of the job each row belongs to
FILE_COLUMN = "_file"  # while scanning: the file a row comes from
_RETRIES = 5  # a file can vanish between listing and reading while ``compact`` swaps it for a merged one


def scan(store: Store, analysis: str, table: str, *, where: dict[str, object] | None = None,
         columns: Iterable[str] | None = None, predicate: ds.Expression | None = None,
         catalog: list[Manifest] | None = None) -> pa.Table | None:
    """The stored rows of ``analysis/table`` that match ``where`` (column → value, or a list of values: any of
    them; None matches null) and ``predicate`` (a pyarrow expression, e.g. for ranges), with only ``columns`` (default: all).

    None when no stored job wrote that table (or none of their files reads). A file that does not read is
    left out and named in ``store.unreadable``; the rest is returned. ``catalog``: the analysis's manifests as a
    caller already read them (a reader's cache); read afresh if a file they name has gone.
    """
    where = dict(where or {})

    def read(manifests: list[Manifest]) -> pa.Table | None:
        return _scan(store, analysis, table, manifests, where, columns, predicate)

    return _retrying(store, analysis, table, read, catalog)


def _retrying(store: Store, analysis: str, table: str, read: Callable[[list[Manifest]], object],
              catalog: list[Manifest] | None = None):
    """``read(manifests of the completed jobs that wrote table)``, again with a fresh catalog when a file vanished
    under it (``compact`` swapped it for a merged one); None when no job wrote the table."""
    for attempt in range(_RETRIES):
        known = catalog if attempt == 0 and catalog is not None else store.catalog(analysis)
        manifests = [m for m in known if m.file(table)]
        if not manifests:
            return None
        try:
            return read(manifests)
        except FileNotFoundError:
            if attempt == _RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _scan(store: Store, analysis: str, table: str, manifests: list[Manifest], where: dict[str, object],
          columns: Iterable[str] | None, extra: ds.Expression | None) -> pa.Table | None:
    wanted = [m for m in manifests if _may_match(m.constants(table), where)]
    readers: dict[str, list[str]] = {}  # file → the jobs whose manifests name it
    for m in wanted or manifests[:1]:  # none wanted: one file, for the schema
        readers.setdefault(m.file(table), []).append(m.fingerprint)
    fragments, schemas = [], []
    for fragment in _fragments(store, analysis, table, sorted(readers)):
        try:
            schemas.append(fragment.physical_schema)
            fragments.append(fragment)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as err:  # truncated or corrupt: skipped and named, never a crash
            _unreadable(store, fragment, readers, err)
    if not fragments:
        return None
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    known = [c for c in schema.names if c != JOB_COLUMN]
    schema = schema.append(pa.field(FILE_COLUMN, pa.string()))
    dataset = ds.FileSystemDataset(fragments, schema=schema, format=_FORMAT, filesystem=fragments[0].filesystem)
    chosen = known if columns is None else list(dict.fromkeys(columns))
    missing = [c for c in chosen if c not in known]
    if missing:
        raise AtlasError(f"{store.root}: {analysis}/{table} has no column(s) {', '.join(missing)}")
    terms = [t for t in (_expression(where, schema), extra) if t is not None]
    if not wanted:  # nothing can match: an empty table with the right columns
        terms.append(pc.scalar(False))
    elif JOB_COLUMN in schema.names:  # a merged file may hold rows of jobs since rewritten, deleted or not yet moved
        terms.append(_alive({f: jobs for f, jobs in readers.items() if f.startswith("compact-")}))
    expression = _all(terms)
    try:
        return dataset.to_table(columns=chosen, filter=expression)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError):  # a corrupt page somewhere: read file by file, skip and name the bad
        tables = []
        for fragment in fragments:
            try:
                one = ds.FileSystemDataset([fragment], schema=schema, format=_FORMAT, filesystem=fragment.filesystem)
                tables.append(one.to_table(columns=chosen, filter=expression))
            except (pa.ArrowException, OSError) as err:
                _unreadable(store, fragment, readers, err)
        return pa.concat_tables(tables) if tables else None


def _unreadable(store: Store, fragment: ds.Fragment, readers: dict[str, list[str]], err: Exception) -> None:
    jobs = readers[fragment.path.rsplit("/", 1)[-1]]
    store.unreadable[fragment.path] = f"unreadable ({store.explain(err)}); job(s) {', '.join(jobs)} left out"


_FORMAT = ds.ParquetFileFormat()


def _fragments(store: Store, analysis: str, table: str, files: list[str]) -> list[ds.Fragment]:
    """One fragment per file, each carrying its file name as the constant column ``_file``."""
    filesystem = pafs.LocalFileSystem() if store.local else pafs.PyFileSystem(pafs.FSSpecHandler(store.fs))
    return [_FORMAT.make_fragment(store.table_path(analysis, table, f), filesystem,
                                  partition_expression=ds.field(FILE_COLUMN) == f) for f in files]


def _alive(readers: dict[str, list[str]]) -> ds.Expression:
    """Rows of a per-job part, or of a merged file for a job whose manifest names that very file."""
    alive = ds.field(JOB_COLUMN).is_null()
    for file, jobs in readers.items():
        alive = alive | ((ds.field(FILE_COLUMN) == file) & ds.field(JOB_COLUMN).isin(jobs))
    return alive


def _all(terms: list[ds.Expression]) -> ds.Expression | None:
    if not terms:
        return None
    expression = terms[0]
    for term in terms[1:]:
        expression = expression & term
    return expression


def _may_match(constants: dict, where: dict[str, object]) -> bool:
    """False only when a column this job holds constant (None: null in every row) has a value the filter excludes."""
    for column, value in where.items():
        if column in constants:
            allowed = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
            if constants[column] not in allowed:
                return False
    return True


def distinct(store: Store, analysis: str, table: str, column: str,
             catalog: list[Manifest] | None = None) -> list | None:
    """The values ``column`` takes in ``analysis/table`` (None for null), read off the manifests where a job holds
    it constant: only the other jobs' files are opened, for that one column. None when no job wrote the table.
    ``catalog`` as in ``scan``."""

    def read(manifests: list[Manifest]) -> list:
        values = {m.constants(table)[column] for m in manifests if column in m.constants(table)}
        unknown = [m for m in manifests if column not in m.constants(table)]
        if unknown:
            try:
                found = _scan(store, analysis, table, unknown, {}, [column], None)
            except AtlasError:  # no such column in these files: null in all their rows
                values.add(None)
            else:
                values |= set() if found is None else set(found.column(column).unique().to_pylist())
        return sorted(values, key=lambda v: (v is not None, "" if v is None else str(v)))

    return _retrying(store, analysis, table, read, catalog)


def _expression(where: dict[str, object], schema: pa.Schema) -> ds.Expression | None:
    """``where`` as a pyarrow predicate; a column the table lacks matches only a filter for null."""
    terms = []
    for column, value in where.items():
        if column not in schema.names:
            terms.append(pc.scalar(value is None))
            continue
        field = ds.field(column)
        if value is None:
            terms.append(field.is_null())
        elif isinstance(value, (list, tuple, set, frozenset)):
            values = list(value)
            term = field.isin([v for v in values if v is not None])
            terms.append(term | field.is_null() if None in values else term)
        else:
            terms.append(field == value)
    return _all(terms)
