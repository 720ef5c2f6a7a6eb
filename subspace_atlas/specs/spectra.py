"""``spectra``: singular-value spectra and WeightWatcher metrics (compute: ``analysis.spectra``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.checkpoints import select_matrices
from subspace_atlas.options import METHODS
from subspace_atlas.specs import SCAN_MODELS, CheckpointAnalysis, Column, Page, Table, checkpoint_labels

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

# σ: the matrix's singular values; λ = σ², eigenvalues of WᵀW (not divided by N). NaN where nonfinite > 0.
SCHEMAS = {
    "matrices": Table("one per matrix", (
        *checkpoint_labels(),
        Column("rows", "int64", "m, the matrix's first dimension"),
        Column("cols", "int64", "n, its second dimension"),
        Column("dtype", "string", "the stored dtype (bfloat16, float32, …)"),
        Column("nonfinite", "int64", "NaN/Inf entries; above 0 the metrics are NaN and no values are stored"),
        Column("n_evals", "int64", "how many eigenvalues: min(m, n)"),
        Column("sigma_max", "float64", "the largest singular value"),
        Column("alpha", "float64", "power-law exponent of the tail of λ (WeightWatcher's MLE fit); NaN: no fit"),
        Column("alpha_weighted", "float64", "alpha · log10 λmax"),
        Column("log_norm", "float64", "log10 Σλ (squared Frobenius norm)"),
        Column("log_spectral_norm", "float64", "log10 λmax"),
        Column("stable_rank", "float64", "Σλ / λmax"),
        Column("log_alpha_norm", "float64", "log10 Σλ^alpha"),
        Column("effective_rank", "float64", "exp(entropy of σ/Σσ) (Roy & Vetterli)"),
        Column("xmin", "float64", "the power-law fit's lower cut-off in λ (the smallest KS distance's)"),
        Column("xmax", "float64", "the largest λ in the fit"),
        Column("ks_distance", "float64", "Kolmogorov–Smirnov distance of the fit"),
        Column("n_tail", "int64", "eigenvalues in the fitted tail (λ ≥ xmin); 0: no fit"),
        Column("alpha_sigma", "float64", "the fit's standard error, (alpha − 1) / √n_tail"),
        Column("mp_noise_sigma", "float64", "Marchenko–Pastur noise level s from the median eigenvalue"),
        Column("mp_bulk_max", "float64", "the bulk edge λ+ = N s² (1 + √β)²"),
        Column("mp_softrank", "float64", "λ+ / λmax"),
        Column("num_spikes", "int64", "eigenvalues above λ+"),
        Column("alpha_warning", "string", "over-trained (alpha < 2), under-trained (alpha > 6), "
                                          "non-finite values, or empty"),
    )),
    "values": Table("one per singular value of each matrix with finite entries", (
        *checkpoint_labels(),
        Column("index", "int64", "rank, 0 = largest"),
        Column("sigma", "float64", "the singular value"),
    )),
}


SPEC = CheckpointAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    schemas=SCHEMAS,
    compute="subspace_atlas.analysis.spectra:compute", scan=SCAN_MODELS,
    page=Page("views/spectra.py", "Spectra", ":material/ssid_chart:"), report="subspace_atlas.report:spectra_sections")
