"""``sparsity``: which entries a fine-tune changed, and their overlap between fine-tunes (compute:
``analysis.sparsity``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.checkpoints import select_matrices
from subspace_atlas.specs import Column, Page, PairedAnalysis, Table, checkpoint_labels, cross_labels

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

_RANK = "--rank (the default)"
SCHEMAS = {
    "matrices": Table("one per matrix", (
        *checkpoint_labels(base=True),
        Column("rows", "int64", "m"),
        Column("cols", "int64", "n"),
        Column("dtype", "string", "the stored dtype base and fine-tune share"),
        Column("numel", "int64", "entries, m·n"),
        Column("unchanged_exact", "float64", "share of entries bit-for-bit equal in the stored dtype"),
        Column("unchanged_atol", "float64", "share with |Δ| ≤ `--atol`, computed in float32"),
        Column("unchanged_ulp", "float64", "share at most `--ulps` representable values apart in the stored dtype"),
        Column("changed", "int64", "entries changed under `--mask`"),
        Column("rows_touched", "float64", "share of rows holding a changed entry"),
        Column("cols_touched", "float64", "share of columns holding a changed entry"),
        Column("row_gini", "float64", "Gini coefficient of the changed entries per row (0: even); NaN: none changed"),
        Column("col_gini", "float64", "the same per column"),
        Column("norm_base", "float64", "‖W0‖_F"),
        Column("norm_update", "float64", "‖ΔW‖_F, ΔW in float32"),
        Column("rel_update", "float64", "‖ΔW‖_F / ‖W0‖_F"),
        Column("update_rank", "int64", "numerical rank of ΔW (float32 σ above rank_tol); null if ΔW is not finite",
               _RANK),
        Column("rank_ratio", "float64", "update_rank / min(m, n)", _RANK),
        Column("rank_tol", "float64", "the σ threshold used: rtol · σmax (rtol `--rank-rtol`, 0: max(m, n)·eps32)",
               _RANK),
    )),
    "overlap": Table("one per matrix and two fine-tunes a, b of the base (a cross job)", (
        *cross_labels(base=True),
        Column("mask", "string", "which definition of changed the masks use (`--mask`)"),
        Column("numel", "int64", "entries, m·n"),
        Column("changed_a", "int64", "entries a changed"),
        Column("changed_b", "int64", "entries b changed"),
        Column("intersection", "int64", "entries both changed"),
        Column("union", "int64", "entries either changed"),
        Column("jaccard", "float64", "intersection / union"),
        Column("overlap_coef", "float64", "intersection / min(changed_a, changed_b)"),
        Column("jaccard_chance", "float64", "Jaccard of independent masks of densities p, q: pq / (p + q − pq)"),
        Column("overlap_coef_chance", "float64", "overlap coefficient of such masks: max(p, q)"),
    )),
}


SPEC = PairedAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    schemas=SCHEMAS,
    compute="subspace_atlas.analysis.sparsity:compute", cross_tables=CROSS_TABLES, same_dtype=SAME_DTYPE,
    page=Page("views/sparsity.py", "Sparsity", ":material/grain:"), report="subspace_atlas.report:sparsity_sections")
