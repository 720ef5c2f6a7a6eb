"""``intruders``: intruder dimensions a fine-tune brings in (compute: ``analysis.intruders``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.checkpoints import select_matrices
from subspace_atlas.specs import SCAN_ADAPTERS, Column, Page, PairedAnalysis, Table, checkpoint_labels

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

# W0: the base matrix, W = W0 + ΔW the fine-tune's; u_j: W's j-th singular vector (left, or right on side right).
_SIDE = Column("side", "string", "left or right singular vectors (`--side`)")
SCHEMAS = {
    "vectors": Table("one per matrix, side and tested vector (W's top-k)", (
        *checkpoint_labels(base=True), _SIDE,
        Column("index", "int64", "j, the vector's rank in W, 0 = largest"),
        Column("sigma", "float64", "W's j-th singular value"),
        Column("max_cos", "float64", "max over all of W0's singular vectors of |cos| with u_j"),
        Column("best_match_index", "int64", "the rank in W0 of that best match"),
        Column("best_match_sigma", "float64", "its singular value in W0"),
        Column("is_intruder", "bool", "max_cos below the first `--epsilon`"),
        Column("update_along", "float64", "u_jᵀ ΔW v_j: how much of the update lies along W's j-th singular pair "
               "(the mitigation's update left, at any ε)", when="in jobs stored since it was added; older ones lack it"),
    )),
    "summary": Table("one per matrix, side and ε", (
        *checkpoint_labels(base=True), _SIDE,
        Column("epsilon", "float64", "the threshold ε on max_cos"),
        Column("top_k", "int64", "how many of W's top vectors were tested (`--top-k`)"),
        Column("n_intruders", "int64", "tested vectors with max_cos < ε"),
    )),
    "matrices": Table("one per matrix", (
        *checkpoint_labels(base=True),
        Column("rows", "int64", "m"),
        Column("cols", "int64", "n"),
        Column("method", "string", "svd (W decomposed) or factored (LoRA: from W0's SVD and the factors)"),
        Column("lora_rank", "int64", "the adapter's rank r; null for a full checkpoint"),
        Column("norm_base", "float64", "‖W0‖_F"),
        Column("norm_tuned", "float64", "‖W‖_F"),
        Column("norm_update", "float64", "‖ΔW‖_F"),
        Column("rel_update", "float64", "‖ΔW‖_F / ‖W0‖_F"),
        Column("n_intruders", "int64", "intruders at the first ε (left side when both)"),
        Column("intruder_energy", "float64", "Σ σ_j² over those intruders"),
        Column("intruder_update_proj", "float64", "Σ σ_j · u_jᵀ ΔW v_j over those intruders"),
        Column("mitigation_lambda", "float64", "λ, what W′ scales the intruders' σ by (`--mitigation-lambda`)"),
        Column("mitigation_shift", "float64", "‖W′ − W‖_F / ‖W‖_F = (1 − λ)·√intruder_energy / ‖W‖_F"),
        Column("mitigated_update_ratio", "float64", "‖W′ − W0‖_F / ‖ΔW‖_F: how much of the update is left"),
    )),
    "similarity": Table("one per matrix, side, tested vector and base vector among W0's top `--similarity-top`", (
        *checkpoint_labels(base=True), _SIDE,
        Column("index", "int64", "j, the tested vector's rank in W"),
        Column("base_index", "int64", "i, the base vector's rank in W0"),
        Column("cos", "float32", "|cos| between u_j and W0's i-th vector"),
    )),
    "values": Table("one per leading singular value (`--spectrum-top`) of W0 and of W", (
        *checkpoint_labels(base=True),
        Column("which", "string", "base (W0) or tuned (W)"),
        Column("index", "int64", "rank, 0 = largest"),
        Column("sigma", "float64", "the singular value"),
    )),
}


SPEC = PairedAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    schemas=SCHEMAS,
    compute="subspace_atlas.analysis.intruders:compute", validate="subspace_atlas.analysis.intruders:validate",
    scan=SCAN_ADAPTERS, page=Page("views/intruders.py", "Intruders", ":material/call_split:"),
    report="subspace_atlas.report:intruders_sections")
