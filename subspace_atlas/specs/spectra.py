"""``spectra``: singular-value spectra and WeightWatcher metrics (compute: ``analysis.spectra``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.checkpoints import select_matrices
from subspace_atlas.options import METHODS
from subspace_atlas.specs import SCAN_MODELS, CheckpointAnalysis, Page

NAME = "spectra"
TABLES = ("matrices", "values")
SCHEMA_VERSION = 1
DESCRIPTION = "singular-value spectra and WeightWatcher metrics of every 2-D weight matrix"


@dataclass(frozen=True)
class Params:
    method: str = field(default="gram", metadata={
        "choices": METHODS,
        "help": "gram: eigenvalues of the float64 Gram matrix (default); gram32: the same in float32, "
                "about 2.5× faster on a CPU (σ to ~1e-6 of σ_max); svd: torch svdvals"})
    svd_dtype: str = field(default="float32", metadata={
        "choices": ("float32", "float64"), "help": "precision of --method svd"})
    evals_thresh: float = field(default=1e-5, metadata={
        "help": "eigenvalues at or below this are left out of the power-law fit (WeightWatcher's 1e-5)"})
    min_evals: int = field(default=20, metadata={
        "help": "fewer eigenvalues above the threshold than this: no power-law fit"})


select = select_matrices


SPEC = CheckpointAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    compute="subspace_atlas.analysis.spectra:compute", scan=SCAN_MODELS,
    page=Page("views/spectra.py", "Spectra", ":material/ssid_chart:"), report="subspace_atlas.report:spectra_sections")
