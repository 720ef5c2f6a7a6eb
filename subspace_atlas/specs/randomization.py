"""``randomization``: WeightWatcher's correlation traps and ``rand_distance`` (compute: ``analysis.randomization``).

Each matrix is compared with copies of itself whose entries are shuffled (WeightWatcher 0.7.7,
``analyze(randomize=True)``: ``WeightWatcher.apply_random_esd``, ``random_eigenvalues`` and
``apply_mp_fit(random=True)`` in ``weightwatcher/weightwatcher.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.specs import SCAN_MODELS, CheckpointAnalysis, Column, Page, Table, checkpoint_labels

NAME = "randomization"
TABLES = ("matrices", "values", "traps")
SCHEMA_VERSION = 1
DESCRIPTION = ("correlation traps and rand_distance: every 2-D weight matrix against copies of it with its entries "
               "shuffled (WeightWatcher's randomize=True)")


@dataclass(frozen=True)
class Params:
    seed: int = field(default=0, metadata={
        "help": "seed of the shuffles; matrix NAME is shuffled by numpy.random.RandomState(seed + crc32(NAME)), "
                "so numpy.random.seed of that number before WeightWatcher's analyze(randomize=True) on that "
                "layer draws the same permutations"})
    replicas: int = field(default=5, metadata={
        "help": "shuffled copies pooled for max_rand_eval and the trap fit of a matrix with fewer than "
                "--replicas-below eigenvalues (WeightWatcher's apply_random_esd: 5)"})
    replicas_below: int = field(default=100, metadata={
        "help": "a matrix with min(m, n) below this gets --replicas shuffled copies, others one "
                "(WeightWatcher's apply_random_esd: 100)"})
    bandwidth: float = field(default=0.1, metadata={
        "help": "bandwidth of the linear-kernel density the Marchenko–Pastur law is fitted to "
                "(WeightWatcher's mp_fit: bw = 0.1)"})
    density_floor: float = field(default=0.01, metadata={
        "help": "grid points where that density is at or below this are left out of the fit "
                "(WeightWatcher's RMT_Util.resid_mp: THRESH = 0.01)"})


# λ = σ² (eigenvalues of WᵀW); shuffled: W's entries permuted; pooled: the `replicas` shuffled copies together.
SCHEMAS = {
    "matrices": Table("one per matrix", (
        *checkpoint_labels(),
        Column("rows", "int64", "m"),
        Column("cols", "int64", "n"),
        Column("dtype", "string", "the stored dtype"),
        Column("nonfinite", "int64", "NaN/Inf entries; above 0 the rest is NaN and nothing is in the other tables"),
        Column("n_evals", "int64", "eigenvalues per spectrum: min(m, n)"),
        Column("replicas", "int64", "shuffled copies pooled: `--replicas` if min(m, n) < `--replicas-below`, else 1"),
        Column("lambda_max", "float64", "W's largest λ"),
        Column("max_rand_eval", "float64", "the pooled copies' largest λ"),
        Column("num_above_rand", "int64", "W's eigenvalues above max_rand_eval"),
        Column("rand_distance", "float64", "Jensen–Shannon distance between W's sorted λ and one more shuffled "
                                           "copy's, each normalised to sum 1"),
        Column("ww_softrank", "float64", "that copy's largest λ / lambda_max"),
        Column("ww_maxdist", "float64", "lambda_max − that copy's largest λ"),
        Column("num_traps", "int64", "correlation traps: pooled eigenvalues above rand_trap_threshold"),
        Column("rand_sigma_mp", "float64", "σ of the Marchenko–Pastur law fitted to the pooled λ rescaled to mean 1"),
        Column("rand_mp_softrank", "float64", "the fit's bulk edge / the largest rescaled λ"),
        Column("rand_w_scale", "float64", "√(count / Σλ) of the pooled λ: the rescaling's square root"),
        Column("rand_bulk_max", "float64", "the fit's bulk edge λ+, in λ units"),
        Column("rand_bulk_min", "float64", "its lower edge λ−, in λ units"),
        Column("rand_trap_threshold", "float64", "λ+ plus a Tracy–Widom margin, in λ units: above it, a trap"),
    )),
    "values": Table("one per singular value of each matrix with finite entries", (
        *checkpoint_labels(),
        Column("index", "int64", "rank, 0 = largest"),
        Column("sigma", "float64", "W's singular value"),
        Column("rand_sigma", "float64", "the rand_distance copy's singular value of the same rank"),
    )),
    "traps": Table("one per correlation trap", (
        *checkpoint_labels(),
        Column("replica", "int64", "which pooled copy"),
        Column("index", "int64", "rank in that copy, 0 = largest"),
        Column("sigma", "float64", "its singular value"),
        Column("lambda", "float64", "its eigenvalue σ²"),
    )),
}


SPEC = CheckpointAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    schemas=SCHEMAS,
    compute="subspace_atlas.analysis.randomization:compute", scan=SCAN_MODELS,
    opt_in=True,  # a shuffled copy's eigenvalues and a grid fit per matrix: off by default, as WeightWatcher's randomize
    page=Page("views/randomization.py", "Correlation traps", ":material/scatter_plot:"),
    report="subspace_atlas.charts_randomization:report_sections")
