"""The docs cannot drift from the code: the specs declare every stored column (checked against the demo store),
``docs/tables.md`` is what ``python -m subspace_atlas.docs`` writes now, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from subspace_atlas import query
from subspace_atlas.analysis import SPECS
from subspace_atlas.docs import COMMAND, TABLES_MD, render
from subspace_atlas.store import Store

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo-store"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
STORED = [(name, table) for name, spec in SPECS.items() for table in spec.tables
          if (DEMO / name / table).is_dir()]


def arrow_type(found: pa.DataType) -> str | None:
    """A stored column's type in the specs' words; None for a column null in every stored row (no type)."""
    if pa.types.is_null(found):
        return None
    if pa.types.is_string(found) or pa.types.is_large_string(found):
        return "string"
    if pa.types.is_list(found) or pa.types.is_large_list(found):
        return f"list<{arrow_type(found.value_type)}>"
    return {pa.int64(): "int64", pa.float64(): "float64", pa.float32(): "float32", pa.bool_(): "bool"}.get(found,
                                                                                                        str(found))


@pytest.mark.unit
@pytest.mark.parametrize("name", list(SPECS))
def test_every_table_has_a_schema(name):
    spec = SPECS[name]
    assert set(spec.schemas) == set(spec.tables), f"{name}: schemas must describe exactly {spec.tables}"
    for table, schema in spec.schemas.items():
        names = [c.name for c in schema.columns]
        assert len(names) == len(set(names)), f"{name}/{table}: a column declared twice"
        assert all(c.description and not c.description.endswith(".") for c in schema.columns), f"{name}/{table}"


@pytest.mark.integration
@pytest.mark.parametrize("name, table", STORED, ids=[f"{n}/{t}" for n, t in STORED])
def test_demo_store_holds_the_declared_columns(name, table):
    empty = query.scan(Store(DEMO), name, table, predicate=pc.scalar(False))  # every file's schema, no rows
    stored = {f.name: arrow_type(f.type) for f in empty.schema}
    declared = {c.name: c for c in SPECS[name].schemas[table].columns}
    undeclared = sorted(set(stored) - set(declared))
    missing = sorted(c for c, col in declared.items() if c not in stored and not col.when)
    assert not undeclared and not missing, f"{name}/{table}: stored but not declared {undeclared}, " \
                                           f"declared but not stored {missing}"
    wrong = {c: (stored[c], declared[c].type) for c in stored if stored[c] and stored[c] != declared[c].type}
    assert not wrong, f"{name}/{table}: (stored, declared) types differ: {wrong}"


@pytest.mark.integration
def test_demo_store_covers_every_builtin_table_but_randomization():
    """So the check above cannot pass by finding nothing to compare."""
    assert {n for n, _ in STORED} >= {"spectra", "intruders", "sparsity", "angles", "overlap", "patching"}


@pytest.mark.unit
def test_tables_page_is_current():
    assert TABLES_MD.read_text(encoding="utf-8") == render(), \
        f"docs/tables.md is out of date with the specs: regenerate it with `{COMMAND}`"


@pytest.mark.unit
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    targets = [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]
    broken = [t for t in targets if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files {broken}"
