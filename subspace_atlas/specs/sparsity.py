"""``sparsity``: which entries a fine-tune changed, and their overlap between fine-tunes (compute:
``analysis.sparsity``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.checkpoints import select_matrices
from subspace_atlas.specs import Page, PairedAnalysis

NAME = "sparsity"
TABLES = ("matrices", "overlap")
CROSS_TABLES = ("overlap",)  # rows compare two fine-tunes of the same base
SCHEMA_VERSION = 1
PAIRED = True
SAME_DTYPE = True  # an entry-by-entry comparison needs base and fine-tune in one dtype
DESCRIPTION = "update sparsity: which entries a fine-tune changed, update rank, overlap between fine-tunes"
DEFINITIONS = ("exact", "atol", "ulp")


@dataclass(frozen=True)
class Params:
    atol: float = field(default=1e-5, metadata={"help": "unchanged when |tuned − base| ≤ this, in float32"})
    ulps: int = field(default=1, metadata={"help": "unchanged when at most this many representable values apart"})
    mask: str = field(default="exact", metadata={
        "choices": DEFINITIONS, "help": "which 'changed' defines the masks compared between fine-tunes"})
    rank: bool = field(default=True, metadata={"help": "compute the numerical rank of ΔW (an SVD per matrix)"})
    rank_rtol: float = field(default=0.0, metadata={
        "help": "σ counted when > rank_rtol·σmax; 0 = max(m, n)·eps(float32), NumPy's and PyTorch's default"})

    def __post_init__(self) -> None:
        if self.atol < 0 or self.ulps < 0 or self.rank_rtol < 0:
            raise ValueError("atol, ulps and rank_rtol must be non-negative")
        if self.mask not in DEFINITIONS:
            raise ValueError(f"mask must be one of {', '.join(DEFINITIONS)}")


select = select_matrices


SPEC = PairedAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    compute="subspace_atlas.analysis.sparsity:compute", cross_tables=CROSS_TABLES, same_dtype=SAME_DTYPE,
    page=Page("views/sparsity.py", "Sparsity", ":material/grain:"), report="subspace_atlas.report:sparsity_sections")
