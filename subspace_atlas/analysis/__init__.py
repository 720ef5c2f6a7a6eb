"""The analysis registry: name → spec. CLI subcommands, job planning and scan are generated from it.

A spec (``subspace_atlas.specs.<name>``) declares what an analysis is without importing torch; its
compute lives in ``subspace_atlas.analysis.<name>``: a pure ``compute`` returning named tidy tables,
imported only when one of its jobs runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SPECS: dict[str, ModuleType] = {name: importlib.import_module(f"subspace_atlas.specs.{name}")
                                for name in ("spectra", "intruders", "sparsity", "angles", "overlap")}


def compute_module(name: str) -> ModuleType:
    """The compute of analysis ``name`` (it imports torch)."""
    return importlib.import_module(f"{__name__}.{name}")
