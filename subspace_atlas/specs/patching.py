"""``patch``: the subspace activation-patching illusion test, its names and ``Params`` (compute:
``probes.patching``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.specs import Page, ProbeAnalysis

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


SPEC = ProbeAnalysis(
    name=NAME, description=DESCRIPTION, params=Params, tables=TABLES, schema_version=SCHEMA_VERSION,
    compute="subspace_atlas.probes.patching:run_jobs", command_name="patch", tasks=TASKS, model_tasks=("ioi",),
    sweep=("site", "layer", "method"), page=Page("views/patching.py", "Activation patching", ":material/swap_horiz:"),
    report="subspace_atlas.report:patching_sections")
