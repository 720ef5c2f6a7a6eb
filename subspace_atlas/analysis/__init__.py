"""The analysis registry: name → module. CLI subcommands and job planning are generated from it.

Each module declares ``NAME``, ``DESCRIPTION``, ``TABLES``, ``SCHEMA_VERSION``, a frozen ``Params``
dataclass with the reference paper's defaults, and a pure ``compute`` returning named tidy tables.
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {
    "spectra": "subspace_atlas.analysis.spectra",
    "intruders": "subspace_atlas.analysis.intruders",
    "sparsity": "subspace_atlas.analysis.sparsity",
    "angles": "subspace_atlas.analysis.angles",
    "overlap": "subspace_atlas.analysis.overlap",
}


def get(name: str) -> ModuleType:
    """The analysis module registered under ``name``."""
    return importlib.import_module(MODULES[name])
