"""``intruders``: intruder dimensions a fine-tune brings in (compute: ``analysis.intruders``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.checkpoints import select_matrices
from subspace_atlas.specs import SCAN_ADAPTERS, Page, PairedAnalysis

NAME = "intruders"
TABLES = ("vectors", "summary", "matrices", "similarity", "values")
SCHEMA_VERSION = 1
PAIRED = True  # compares each checkpoint with a --base
DESCRIPTION = "intruder dimensions: new high-ranking singular vectors a fine-tune brings in (needs --base)"
SIDES = ("left", "right", "both")


@dataclass(frozen=True)
class Params:
    top_k: int = field(default=10, metadata={"help": "how many of W's top singular vectors are tested"})
    epsilon: tuple[float, ...] = field(default=(0.5, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9), metadata={
        "help": "intruder threshold(s) on max |cos|: the first marks is_intruder and drives mitigation; "
                "each gets a summary row (a sweep)"})
    side: str = field(default="left", metadata={
        "choices": SIDES, "help": "compare left singular vectors (the paper's), right ones, or both"})
    mitigation_lambda: float = field(default=0.75, metadata={
        "help": "PEFT's mitigation: intruder singular values scaled by this"})
    svd_dtype: str = field(default="float32", metadata={
        "choices": ("float32", "float64"), "help": "precision of the SVDs (float32 like PEFT and the paper)"})
    similarity_top: int = field(default=32, metadata={
        "help": "base vectors kept per tested vector in the similarity table (|Uᵀ U0|, top-k × top-N)"})
    spectrum_top: int = field(default=64, metadata={
        "help": "leading singular values of W and W0 kept for plots"})

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1")
        if not self.epsilon or not all(0 < e <= 1 for e in self.epsilon):
            raise ValueError("epsilon values must lie in (0, 1]")
        if self.side not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}")


select = select_matrices


SPEC = PairedAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    compute="subspace_atlas.analysis.intruders:compute", validate="subspace_atlas.analysis.intruders:validate",
    scan=SCAN_ADAPTERS, page=Page("views/intruders.py", "Intruders", ":material/call_split:"),
    report="subspace_atlas.report:intruders_sections")
