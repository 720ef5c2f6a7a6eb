"""``patch``: the subspace activation-patching illusion test, its names and ``Params`` (compute:
``probes.patching``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.specs import Column, Page, ProbeAnalysis, Table

NAME = "patching"
TABLES = ("effects",)
SCHEMA_VERSION = 1
DESCRIPTION = "activation patching along a subspace: is it real or an illusion?"
SITES = ("mlp_hidden", "resid_post")
METHODS = ("das", "mean_diff", "probe", "gradient")
PLANTED = ("planted_faithful", "planted_illusory")  # the toy's known directions (--task toy only)
TASKS = ("ioi", "toy")
VERDICTS = ("faithful", "illusory", "inconclusive")


@dataclass(frozen=True)
class Params:
    site: str = field(default="mlp_hidden", metadata={"choices": SITES, "help": "where to patch (last token)"})
    layer: int = field(default=0, metadata={"help": "the block whose site is patched"})
    method: str = field(default="das", metadata={"choices": METHODS + PLANTED,
                                                 "help": "how the direction is found"})
    readers: tuple = field(default=(), metadata={
        "help": "resid_post: heads LAYER.HEAD whose W_Q row space counts as downstream (default: the 3 later "
                "heads attending most from the last token to the IO; none later: the answers' unembedding)"})
    train_pairs: int = field(default=200, metadata={"help": "pairs the direction is fitted on"})
    eval_pairs: int = field(default=200, metadata={"help": "held-out pairs (other names) effects are measured on"})
    das_epochs: int = field(default=30, metadata={"help": "DAS: epochs (the paper's 30)"})
    das_lr: float = field(default=0.1, metadata={"help": "DAS: Adam learning rate, decayed linearly to a tenth"})
    das_batch: int = field(default=20, metadata={"help": "DAS: pairs per step (the paper's 20)"})
    min_effect: float = field(default=10.0, metadata={"help": "FLDD % below which a direction is inconclusive"})
    faithful_share: float = field(default=0.6, metadata={"help": "row part's share of the effect for faithful"})
    illusory_share: float = field(default=0.4, metadata={"help": "row part's share at or below which: illusory"})
    seed: int = field(default=0, metadata={"help": "seed of the pairs and of DAS"})

    def __post_init__(self) -> None:
        if self.site not in SITES or self.method not in METHODS + PLANTED:
            raise ValueError(f"site must be one of {', '.join(SITES)}; method one of {', '.join(METHODS + PLANTED)}")
        if self.layer < 0 or self.train_pairs < 4 or self.eval_pairs < 4:
            raise ValueError("layer must be ≥ 0, train_pairs and eval_pairs ≥ 4")
        if not 0 <= self.illusory_share <= self.faithful_share <= 1:
            raise ValueError("need 0 ≤ illusory_share ≤ faithful_share ≤ 1")


# v: the unit direction found (or planted); its row part lies in the row space of what reads the site, its null
# part in that space's complement. LD = logit(IO) − logit(S), averaged over the held-out base prompts.
SCHEMAS = {
    "effects": Table("one per component patched (activation, full, row, null) of one site, layer and method", (
        Column("model", "string", "the model's name (toy-illusion for the toy)"),
        Column("model_path", "string", "where it was read from (empty for the toy)"),
        Column("task", "string", "ioi or toy"),
        Column("site", "string", "mlp_hidden or resid_post, at the last token"),
        Column("layer", "int64", "the block whose site is patched"),
        Column("method", "string", "how v was found: das, mean_diff, probe, gradient, or planted_*"),
        Column("readers", "string", "what reads the site: W_out (mlp_hidden), heads LAYER.HEAD (resid_post; "
                                    "empty: the answers' unembedding)"),
        Column("eval_pairs", "int64", "held-out prompt pairs the effects are measured on"),
        Column("component", "string", "what is patched: activation (all of it), full (v), row or null (v's parts)"),
        Column("logit_diff_base", "float64", "LD unpatched"),
        Column("logit_diff", "float64", "LD patched"),
        Column("fldd", "float64", "100·(1 − logit_diff / logit_diff_base): % of the preference removed"),
        Column("accuracy", "float64", "interchange accuracy: share of prompts now preferring the source's answer"),
        Column("norm", "float64", "the component's norm in v (1 for full; NaN on activation rows, as the next four)"),
        Column("variance_on_data", "float64", "variance of base and source activations along the component"),
        Column("variance_share", "float64", "that over the activations' total variance"),
        Column("paired_difference", "float64", "RMS of source − base along the component"),
        Column("separation", "float64", "paired_difference / √variance_on_data"),
        Column("verdict", "string", "faithful, illusory or inconclusive (same on every row of the job)"),
        Column("row_share", "float64", "row part's FLDD / full direction's FLDD"),
        Column("min_effect", "float64", "`--min-effect`: FLDD % below which the verdict is inconclusive"),
        Column("reader_rank", "int64", "dimension of the readers' row space"),
        Column("site_dim", "int64", "dimension of the site's activation"),
        Column("clean_accuracy", "float64", "share of held-out base prompts with LD > 0, unpatched"),
        Column("clean_top1", "float64", "share whose top token is the IO, unpatched"),
    )),
}

SPEC = ProbeAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    schemas=SCHEMAS,
    compute="subspace_atlas.probes.patching:run_jobs", command_name="patch", tasks=TASKS, model_tasks=("ioi",),
    sweep=("site", "layer", "method"), page=Page("views/patching.py", "Activation patching", ":material/swap_horiz:"),
    report="subspace_atlas.report:patching_sections")
