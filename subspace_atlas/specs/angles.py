"""``angles``: principal angles between fine-tunes' updates, alignment with the base (compute:
``analysis.angles``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.checkpoints import select_matrices
from subspace_atlas.specs import (SCAN_ADAPTER_FINALS, Column, Page, PairedAnalysis, Table, checkpoint_labels,
                                  cross_labels, with_aliases)

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

# ΔW_t = W_t − W0, task t's update; U_t (V_t): its top-k left (right) singular vectors; U0_k: the base's top k.
_SIDE = Column("side", "string", "left (column, U) or right (row, V) subspaces (`--side`)")
_BASE_OVERLAP = Column("overlap_with_base_top", "float64", "‖U0_kᵀU_t‖²_F / k (V on the right): how much of the "
                                                           "task's subspace lies in the base's own top k")
SCHEMAS = {
    "tasks": Table("one per matrix, task and side", (
        *with_aliases(checkpoint_labels(base=True), LABEL_ALIASES), _SIDE,
        Column("k_requested", "int64", "`--k`"),
        Column("k", "int64", "the k used: `--k` or the `--energy` rule, at most rank"),
        Column("rank", "int64", "numerical rank of ΔW_t (σ > `--rank-rtol`·σmax)"),
        Column("factored", "bool", "ΔW_t taken from LoRA factors, never formed"),
        Column("norm_update", "float64", "‖ΔW_t‖_F"),
        Column("energy_captured", "float64", "share of ‖ΔW_t‖²_F in its top k"),
        _BASE_OVERLAP,
        Column("overlap_chance", "float64", "that overlap for a random subspace: k / m"),
        Column("base_top_energy", "float64", "‖U0_kᵀΔW_t‖_F / ‖ΔW_t‖_F (right side: ‖ΔW_t V0_k‖_F / ‖ΔW_t‖_F)"),
    )),
    "pairs": Table("one per matrix, two tasks a, b and side (a cross job)", (
        *with_aliases(cross_labels(base=True), LABEL_ALIASES), _SIDE,
        Column("k_a", "int64", "task a's k"),
        Column("k_b", "int64", "task b's k"),
        Column("k", "int64", "min(k_a, k_b)"),
        Column("overlap", "float64", "‖Q_aᵀQ_b‖²_F / k: 1 same subspace, 0 orthogonal"),
        Column("mean_angle_deg", "float64", "mean principal angle, degrees"),
        Column("min_angle_deg", "float64", "smallest principal angle, degrees"),
        Column("angles", "list<float64>", "every principal angle (cos θ_i = σ_i(Q_aᵀQ_b)), degrees, ascending"),
        Column("interference", "float64", "Task-Singular-Vectors interference ‖(UᵀU − I) Σ (VᵀV − I)‖₁ of the "
                                          "stacked top-k triplets"),
    )),
    "alignment": Table("one per matrix, task of the set and side (a group job: all tasks at once)", (
        *with_aliases(checkpoint_labels(base=True), LABEL_ALIASES), _SIDE,
        Column("k", "int64", "top k of the summed update ΣΔW_t: where √(cumsum σ²/Σσ²) reaches `--sar-energy`"),
        Column("tasks", "int64", "how many tasks are summed"),
        Column("sar", "float64", "Iso-C's Subspace Alignment Ratio ‖U_kU_kᵀΔW_t‖_F / ‖ΔW_t‖_F"),
        _BASE_OVERLAP,
        Column("group", "string", "the set's checkpoints, joined by ' + '"),
    )),
}


SPEC = PairedAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    schemas=SCHEMAS,
    compute="subspace_atlas.analysis.angles:compute", cross_tables=CROSS_TABLES, group_tables=GROUP_TABLES,
    label_aliases=LABEL_ALIASES, scan=SCAN_ADAPTER_FINALS,
    page=Page("views/angles.py", "Task angles", ":material/architecture:"),
    report="subspace_atlas.report:angles_sections")
