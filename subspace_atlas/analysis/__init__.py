"""The analysis registry: name → spec (``subspace_atlas.specs``). Everything that lists analyses loops over it.

The built-in specs are ``subspace_atlas.specs.<name>.SPEC``; a package adds its own with an entry point in
the ``subspace_atlas.analyses`` group naming a spec object (loaded when this module is first imported), and
code (a test, a notebook) with ``register(spec)``. Importing this module never imports torch: computes live in
``subspace_atlas.analysis.<name>`` (or wherever a spec's ``compute`` points) and load when a job runs.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from subspace_atlas import specs
from subspace_atlas.specs import Analysis, ProbeAnalysis

# The app's page order; any other module of ``subspace_atlas.specs`` (its ``SPEC``) follows, by name, so a new
# built-in analysis is its spec module, compute, page and test and nothing else.
BUILTIN = ("spectra", "intruders", "sparsity", "angles", "overlap", "patching")
ENTRY_POINTS = "subspace_atlas.analyses"

SPECS: dict[str, Analysis] = {}


def register(spec: Analysis) -> Analysis:
    """Add ``spec`` to the registry (replacing one of the same name); the CLI parser, ``scan``, the report and
    the app's navigation built afterwards include it."""
    if not isinstance(spec, Analysis):
        raise TypeError(f"{spec!r} is not an analysis spec (subspace_atlas.specs.Analysis)")
    SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove analysis ``name`` from the registry (what ``register`` added)."""
    del SPECS[name]


def batch_specs() -> list[Analysis]:
    """The specs whose jobs read weight matrices (every kind but probes): planned, scanned and run by ``jobs``."""
    return [spec for spec in SPECS.values() if not isinstance(spec, ProbeAnalysis)]


def _builtin() -> list[str]:
    others = sorted(m.name for m in pkgutil.iter_modules(specs.__path__) if m.name not in BUILTIN)
    return [*BUILTIN, *others]


for _name in _builtin():
    register(importlib.import_module(f"subspace_atlas.specs.{_name}").SPEC)
for _point in entry_points(group=ENTRY_POINTS):
    register(_point.load())
