"""``overlap``: how weight, update, step and gradient subspaces move over a training run (compute:
``analysis.overlap``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from subspace_atlas.checkpoints import select_matrices
from subspace_atlas.errors import AtlasError
from subspace_atlas.specs import (SCAN_RUNS, Column, Page, RunAnalysis, Table, checkpoint_labels, cross_labels,
                                  matrix_labels)

NAME = "overlap"
TABLES = ("pairs", "subspaces", "convergence", "welore", "spectrum")
RUN = True  # one job per run: its checkpoints in step order
SCHEMA_VERSION = 1
DESCRIPTION = "training dynamics: how weight, update, step and gradient subspaces move over a run"
KINDS = ("weights", "updates", "steps", "gradients")
REFERENCES = ("previous", "first", "last", "all")
SIDES = ("left", "right", "both")
LOSSES = ("auto", "causal", "masked")


@dataclass(frozen=True)
class Params:
    k: int = field(default=16, metadata={"help": "top singular vectors per subspace (unless --energy)"})
    energy: float = field(default=0.0, metadata={
        "help": "if > 0: per matrix, the fewest vectors holding this fraction of ‖M‖²_F (overrides --k)"})
    of: tuple = field(default=("weights", "updates", "steps"), metadata={
        "choices": KINDS, "help": "what to decompose: W_t, W_t − W_0, W_t − W_t−1, gradients (needs --data)"})
    reference: tuple = field(default=("previous", "first", "last"), metadata={
        "choices": REFERENCES, "help": "which checkpoints each is compared with (all: every two)"})
    side: str = field(default="both", metadata={"choices": SIDES, "help": "left (column) / right (row) subspaces"})
    tol: float = field(default=1e-4, metadata={
        "help": "randomized top-k stops once its bound on 1 − overlap with the exact subspace is below this"})
    settle: float = field(default=0.9, metadata={
        "help": "overlap with the previous checkpoint from which on a subspace counts as settled"})
    lead_threshold: float = field(default=0.4, metadata={"help": "Q-GaLore: mean |cos| of the leading vectors"})
    lead_window: int = field(default=5, metadata={"help": "Q-GaLore: refreshes averaged (its queue length)"})
    welore: bool = field(default=True, metadata={"help": "WeLore's view: all singular values of every W_t"})
    welore_tau: tuple = field(default=(0.0225, 0.076, 0.135, 0.21), metadata={
        "help": "thresholds on min-max normalised σ (WeLore's LLaMA-2-7B values for 10/30/50/70 %)"})
    lrc_share: float = field(default=0.5, metadata={
        "help": "a matrix with at least this fraction of normalised σ below τ counts as low-rank"})
    data: str = field(default="", metadata={"help": "text file for gradients (a fixed batch is cut from it)"})
    loss: str = field(default="auto", metadata={
        "choices": LOSSES, "help": "gradient loss: causal-LM or masked-LM (auto: from the model's config)"})
    batch: int = field(default=8, metadata={"help": "gradient batch: sequences"})
    seq_len: int = field(default=128, metadata={"help": "gradient batch: tokens per sequence"})
    seed: int = field(default=0, metadata={"help": "seed of the randomized top-k and of masked-LM masking"})

    def __post_init__(self) -> None:
        if self.k < 1 or self.batch < 1 or self.seq_len < 2 or self.lead_window < 1:
            raise ValueError("k, batch and lead_window must be at least 1, seq_len at least 2")
        if not 0 <= self.energy <= 1 or not 0 < self.settle <= 1 or not 0 < self.lrc_share <= 1:
            raise ValueError("energy must lie in [0, 1], settle and lrc_share in (0, 1]")
        if not 0 < self.tol < 1:
            raise ValueError("tol must lie in (0, 1)")
        for values, allowed, name in ((self.of, KINDS, "of"), (self.reference, REFERENCES, "reference")):
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name} takes one or more of {', '.join(allowed)}")
        if self.side not in SIDES or self.loss not in LOSSES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}; loss one of {', '.join(LOSSES)}")


def job_inputs(params: Params) -> dict[str, str]:
    """What a job's result depends on beyond its checkpoints: the gradient text's content hash (a renamed
    file keeps its results)."""
    if "gradients" not in params.of:
        return {}
    if not params.data:
        raise AtlasError("overlap: --of gradients needs --data FILE, the text the fixed gradient batch is cut from")
    file = Path(params.data).expanduser()
    if not file.is_file():
        raise AtlasError(f"--data {params.data}: no such text file")
    return {"data": hashlib.sha256(file.read_bytes()).hexdigest()[:20]}


select = select_matrices

# M_t: what is decomposed at checkpoint t (W_t, W_t − W_0, W_t − W_t−1 or the gradient); Q: its top-k basis.
_OF = Column("of", "string", "what was decomposed: weights, updates, steps or gradients (`--of`)")
_SIDE = Column("side", "string", "left (column) or right (row) subspaces (`--side`)")
_FINITE = "the matrix is finite at that checkpoint"
SCHEMAS = {
    "pairs": Table("one per matrix, two checkpoints a < b compared (`--reference`), of and side", (
        *cross_labels(run=True), _OF, _SIDE,
        Column("previous", "bool", "a is b's previous checkpoint"),
        Column("from_first", "bool", "a is the run's first checkpoint"),
        Column("to_last", "bool", "b is the run's last checkpoint"),
        Column("k", "int64", "min(k_a, k_b)"),
        Column("k_a", "int64", "a's subspace dimension"),
        Column("k_b", "int64", "b's subspace dimension"),
        Column("overlap", "float64", "‖Q_aᵀQ_b‖²_F / k: 1 same subspace, 0 orthogonal"),
        Column("chance", "float64", "that overlap for random subspaces: max(k_a, k_b) / dimension"),
        Column("angles", "list<float64>", "every principal angle (cos θ_i = σ_i(Q_aᵀQ_b)), degrees, ascending"),
        Column("mean_angle_deg", "float64", "their mean, degrees"),
        Column("lead_cos", "float64", "|cos| of the two leading vectors (Q-GaLore's signal)"),
    )),
    "subspaces": Table("one per matrix, checkpoint and of", (
        *checkpoint_labels(), _OF,
        Column("finite", "bool", "false: the matrix has NaN/Inf here, no subspace (the columns below are null)"),
        Column("k", "int64", "the subspace's dimension (`--k`, or the `--energy` rule)", _FINITE),
        Column("norm", "float64", "‖M_t‖_F", _FINITE),
        Column("energy_captured", "float64", "share of ‖M_t‖²_F in the top k", _FINITE),
        Column("sigma_top", "list<float64>", "the top k singular values", _FINITE),
        Column("method", "string", "randomized (block Krylov) or exact (a full SVD)", _FINITE),
        Column("iterations", "int64", "Krylov iterations run (also before a fall-back to exact)", _FINITE),
        Column("error_bound", "float64", "Wedin's bound on 1 − overlap with the exact top k (0: exact)", _FINITE),
    )),
    "convergence": Table("one per matrix, of and side", (
        Column("run", "string", "the run's name"), *matrix_labels(), _OF, _SIDE,
        Column("checkpoints", "int64", "checkpoints with a subspace"),
        Column("settle", "float64", "the threshold (`--settle`)"),
        Column("settled_step", "int64", "the step from which every overlap with the previous checkpoint stays "
                                        "≥ settle; null: never"),
        Column("final_overlap", "float64", "the last overlap with the previous checkpoint"),
        Column("min_overlap", "float64", "the smallest one"),
        Column("qgalore_step", "int64", "the first step where the mean lead_cos of the last `--lead-window` reaches "
                                        "`--lead-threshold`; null: never"),
    )),
    "welore": Table("one per matrix, checkpoint and τ (none with `--no-welore`)", (
        *checkpoint_labels(),
        Column("tau", "float64", "the threshold τ (`--welore-tau`)"),
        Column("fraction_below", "float64", "share of min-max normalised σ, (σ − σmin)/(σmax − σmin), below τ"),
        Column("lrc_share", "float64", "`--lrc-share`"),
        Column("low_rank", "bool", "fraction_below ≥ lrc_share: a WeLore low-rank component"),
    )),
    "spectrum": Table("one per matrix and checkpoint (none with `--no-welore`)", (
        *checkpoint_labels(),
        Column("sigma", "list<float64>", "every singular value of W_t, descending"),
    )),
}


SPEC = RunAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    schemas=SCHEMAS, first={"pairs": ("previous", "from_first", "to_last")},  # the pairs the page draws first
    compute="subspace_atlas.analysis.overlap:compute", job_inputs=job_inputs,
    prepare="subspace_atlas.probes.gradients:attach_gradients", scan=SCAN_RUNS,
    page=Page("views/overlap.py", "Training dynamics", ":material/timeline:"),
    report="subspace_atlas.report:overlap_sections")
