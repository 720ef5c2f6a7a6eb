"""``angles``: principal angles between fine-tunes' updates, alignment with the base (compute:
``analysis.angles``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.checkpoints import select_matrices
from subspace_atlas.specs import SCAN_ADAPTER_FINALS, Page, PairedAnalysis

NAME = "angles"
TABLES = ("tasks", "pairs", "alignment")
CROSS_TABLES = ("pairs",)
GROUP_TABLES = ("alignment",)
SCHEMA_VERSION = 1
PAIRED = True
DESCRIPTION = "task subspaces: principal angles between fine-tunes' updates, alignment with the base (needs --base)"
SIDES = ("left", "right", "both")
# The checkpoints of this analysis are tasks: its tables also name them so.
LABEL_ALIASES = {"checkpoint": "task", "checkpoint_a": "task_a", "checkpoint_b": "task_b"}


@dataclass(frozen=True)
class Params:
    k: int = field(default=16, metadata={"help": "top singular vectors per task update (unless --energy)"})
    energy: float = field(default=0.0, metadata={
        "help": "if > 0: per task, the fewest vectors holding this fraction of ‖ΔW‖²_F (overrides --k)"})
    side: str = field(default="both", metadata={"choices": SIDES, "help": "left (column) / right (row) subspaces"})
    sar_energy: float = field(default=0.95, metadata={
        "help": "Iso-C's k for the summed task matrix: where sqrt(cumsum σ²/Σσ²) first reaches this"})
    rank_rtol: float = field(default=1e-6, metadata={
        "help": "singular values of ΔW below this times the largest count as zero (rank, and k's cap)"})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if not 0 <= self.energy <= 1 or not 0 < self.sar_energy <= 1:
            raise ValueError("energy and sar_energy must lie in [0, 1] and (0, 1]")
        if self.side not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}")


select = select_matrices


SPEC = PairedAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    compute="subspace_atlas.analysis.angles:compute", cross_tables=CROSS_TABLES, group_tables=GROUP_TABLES,
    label_aliases=LABEL_ALIASES, scan=SCAN_ADAPTER_FINALS,
    page=Page("views/angles.py", "Task angles", ":material/architecture:"),
    report="subspace_atlas.report:angles_sections")
