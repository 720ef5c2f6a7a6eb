"""MoE 3-D weights: fused experts, their per-expert twins and routers (per-head attention: ``test_heads``).

Tiny Mixtral and Qwen3-MoE models come from transformers' own config classes (random weights). Their
``state_dict()`` is the Transformers 5 fused layout; ``save_pretrained`` writes the per-expert layout
the released checkpoints use. Every reference is independent of subspace_atlas: the matrix the model
itself multiplies by (its own ``linear(…).chunk(2, dim=-1)``), and ``torch.linalg.svdvals``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from subspace_atlas.checkpoints import TensorInfo, open_checkpoints, select_matrices
from subspace_atlas.cli import main
from subspace_atlas.naming import KINDS, classify, expert
from subspace_atlas.store import Store

pytestmark = pytest.mark.integration
EXPERTS = 4
KEY = ["layer", "kind", "expert"]


def _mixtral() -> torch.nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    return MixtralForCausalLM(MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=EXPERTS, num_experts_per_tok=2))


def _qwen3_moe() -> torch.nn.Module:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(1)
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=20, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=EXPERTS, num_experts_per_tok=2,
        tie_word_embeddings=False))


MODELS = {"mixtral": _mixtral, "qwen3_moe": _qwen3_moe}


def _gpt_oss() -> torch.nn.Module:
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(2)
    return GptOssForCausalLM(GptOssConfig(
        vocab_size=64, hidden_size=32, intermediate_size=20, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=EXPERTS, num_experts_per_tok=2))


def _llama4() -> torch.nn.Module:
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    torch.manual_seed(3)
    return Llama4ForCausalLM(Llama4TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=20, intermediate_size_mlp=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=EXPERTS,
        num_experts_per_tok=1, interleave_moe_layer_step=1))


TRANSPOSED = {"gpt_oss": (_gpt_oss, "mlp"), "llama4": (_llama4, "feed_forward")}


def _write_fused(state: dict[str, torch.Tensor], folder: Path) -> Path:
    """The model's parameters as it holds them (fused 3-D experts), as an HF folder."""
    folder.mkdir(parents=True)
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return folder


def _spectra(path: Path, store: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    assert main(["spectra", str(path), "--store", str(store), "--device", "cpu"]) == 0
    where = {"checkpoint": path.name}
    return Store(store).table("spectra", "matrices", where), Store(store).table("spectra", "values", where)


def _expected_count(state: dict[str, torch.Tensor]) -> int:
    """2-D weights, plus one matrix per expert of each 3-D tensor (two for a fused gate_up)."""
    count = 0
    for name, tensor in state.items():
        if tensor.dim() == 2:
            count += 1
        elif tensor.dim() == 3:
            count += tensor.shape[0] * (2 if name.endswith("gate_up_proj") else 1)
    return count


def _sigmas(values: pd.DataFrame, tensor: str) -> torch.Tensor:
    rows = values[values["tensor"] == tensor].sort_values("index")
    return torch.tensor(rows["sigma"].to_numpy(), dtype=torch.float64)


def _as_used(model: torch.nn.Module, layer: int, expert: int) -> dict[str, torch.Tensor]:
    """One expert's gate, up and down matrices, recovered the way the model's forward applies them."""
    experts = model.model.layers[layer].mlp.experts
    with torch.no_grad():
        eye = torch.eye(experts.gate_up_proj.shape[-1], dtype=torch.float64)
        gate, up = torch.nn.functional.linear(eye, experts.gate_up_proj[expert].double()).chunk(2, dim=-1)
    return {"gate": gate.T, "up": up.T, "down": experts.down_proj[expert].detach().double()}


@pytest.mark.parametrize("arch", MODELS)
def test_every_fused_expert_is_a_matrix_with_the_models_own_spectrum(tmp_path, arch):
    model = MODELS[arch]()
    state = model.state_dict()
    assert any(t.dim() == 3 for t in state.values())  # the fused layout this test is about
    matrices, values = _spectra(_write_fused(state, tmp_path / arch), tmp_path / "S")
    assert len(matrices) == _expected_count(state)
    experts = matrices[matrices["expert"].notna()]
    assert set(experts["kind"]) == {"gate", "up", "down"}
    assert experts.groupby(["layer", "kind"]).size().eq(EXPERTS).all()
    assert set(matrices.loc[matrices["tensor"].str.endswith("mlp.gate.weight"), "kind"]) == {"router"}
    assert matrices.loc[matrices["expert"].isna(), "kind"].ne("other").all()
    assert "head" not in matrices  # no per-head attention tensors: no head column
    for kind, reference in _as_used(model, 1, 2).items():
        [tensor] = experts.loc[(experts["layer"] == 1) & (experts["expert"] == 2) & (experts["kind"] == kind), "tensor"]
        torch.testing.assert_close(_sigmas(values, tensor), torch.linalg.svdvals(reference), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", MODELS)
def test_fused_experts_equal_the_same_experts_stored_per_expert(tmp_path, arch):
    model = MODELS[arch]()
    fused = _write_fused(model.state_dict(), tmp_path / "fused")
    model.save_pretrained(tmp_path / "split")  # transformers writes one 2-D tensor per expert and projection
    split_names = open_checkpoints(tmp_path / "split")[0].tensors_by_name()
    assert not any(len(i.shape) == 3 for i in split_names.values())
    tables = [_spectra(path, tmp_path / "S") for path in (fused, tmp_path / "split")]
    routed = [m[m["expert"].notna() | m["kind"].eq("router")] for m, _ in tables]
    assert len(routed[0]) == len(routed[1]) == 2 * (3 * EXPERTS + 1)
    pairs = routed[0].merge(routed[1], on=KEY, suffixes=("_fused", "_split"), validate="one_to_one")
    assert len(pairs) == len(routed[0])
    for row in pairs.itertuples():
        torch.testing.assert_close(_sigmas(tables[0][1], row.tensor_fused), _sigmas(tables[1][1], row.tensor_split))


def _columns_as_used(experts: torch.nn.Module) -> tuple[list[int], list[int]]:
    """Which columns of an expert's ``[H, 2I]`` gate_up matrix make its gate and which its up, as the model
    splits them: probed through gpt-oss's own ``_apply_gate`` (a zero gate silences an output whatever its
    up), or Llama 4's ``gate_up.chunk(2, dim=-1)`` (``Llama4TextExperts.forward``)."""
    width = experts.gate_up_proj.shape[-1]
    if not hasattr(experts, "_apply_gate"):
        return list(range(width // 2)), list(range(width // 2, width))
    eye = torch.eye(width)
    with torch.no_grad():
        gates = [int(column) for column in experts._apply_gate(eye).ne(0).T.float().argmax(dim=1)]
        opened = eye[gates].sum(dim=0)
        moved = (experts._apply_gate(opened + eye) - experts._apply_gate(opened)).abs().gt(1e-3)  # not rounding
    ups = [next(j for j in moved[:, k].nonzero().flatten().tolist() if j not in gates) for k in range(width // 2)]
    return gates, ups


@pytest.mark.parametrize("arch", TRANSPOSED)
def test_transposed_gate_up_is_split_where_its_model_type_splits_it(tmp_path, arch):
    build, block = TRANSPOSED[arch]
    model = build()
    model.save_pretrained(tmp_path / arch)  # stays fused [E, H, 2I]; config.json names the model type
    ckpt = open_checkpoints(tmp_path / arch)[0]
    assert ckpt.tensors_by_name()[f"model.layers.1.{block}.experts.gate_up_proj"].shape == (EXPERTS, 32, 40)
    matrices, values = _spectra(tmp_path / arch, tmp_path / "S")
    experts = matrices[matrices["expert"].notna()]
    assert set(experts["kind"]) == {"gate", "up", "down"}
    assert experts.groupby(["layer", "kind"]).size().eq(EXPERTS).all()
    fused = getattr(model.model.layers[1], block).experts
    gates, ups = _columns_as_used(fused)
    names = experts[experts["layer"] == 1].set_index(["expert", "kind"])["tensor"]
    for e in range(EXPERTS):
        stored = fused.gate_up_proj[e].detach()
        for kind, columns in (("gate", gates), ("up", ups)):
            name = names[(e, kind)]
            torch.testing.assert_close(ckpt.load(name), stored[:, columns], rtol=0, atol=0)
            torch.testing.assert_close(_sigmas(values, name), torch.linalg.svdvals(stored[:, columns].double()),
                                       rtol=1e-4, atol=1e-6)
    (tmp_path / arch / "config.json").write_text('{"model_type": "unknown_moe"}')  # halves unknown: kept whole
    matrices, _ = _spectra(tmp_path / arch, tmp_path / "S2")
    experts = matrices[matrices["expert"].notna()]
    assert experts.groupby("kind").size().to_dict() == {"down": 2 * EXPERTS, "gate_up": 2 * EXPERTS}


def test_intruders_between_fused_moe_checkpoints_report_each_expert(tmp_path):
    state = _mixtral().state_dict()
    base = _write_fused(state, tmp_path / "base")
    _write_fused(_perturbed(state, 2), tmp_path / "tuned")
    assert main(["intruders", str(tmp_path / "tuned"), "--base", str(base), "--store", str(tmp_path / "S"),
                 "--device", "cpu"]) == 0
    summary = Store(tmp_path / "S").table("intruders", "matrices")
    experts = summary[summary["expert"].notna()]
    assert len(experts) == 2 * 3 * EXPERTS  # two layers of gate, up and down per expert
    assert set(experts["expert"]) == set(range(EXPERTS))
    assert set(summary.loc[summary["expert"].isna(), "kind"]) >= {"q", "k", "v", "o", "router"}


def test_tensors_option_picks_experts_by_their_own_names(tmp_path):
    path = _write_fused(_mixtral().state_dict(), tmp_path / "mixtral")
    assert main(["spectra", str(path), "--tensors", r"layers\.1\..*experts.*\[2\]", "--store", str(tmp_path / "S"),
                 "--device", "cpu"]) == 0
    matrices = Store(tmp_path / "S").table("spectra", "matrices")
    assert sorted(matrices["kind"]) == ["down", "gate", "up"] and set(matrices["expert"]) == {2}


def test_a_pickled_checkpoint_cuts_the_same_matrices(tmp_path):
    state = {k: v.detach().clone() for k, v in _qwen3_moe().state_dict().items()}
    torch.save(state, tmp_path / "model.pt")
    pickled = open_checkpoints(tmp_path / "model.pt")[0]
    stored = open_checkpoints(_write_fused(state, tmp_path / "st"))[0]
    names = sorted(n for n, info in stored.tensors_by_name().items() if info.view is not None)
    assert names == sorted(n for n, info in pickled.tensors_by_name().items() if info.view is not None)
    assert len(names) == 2 * 3 * EXPERTS
    for name in names:
        torch.testing.assert_close(pickled.load(name), stored.load(name), rtol=0, atol=0)


def _perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A fine-tune stand-in: the experts moved by a tenth of their spread, everything else as it was."""
    torch.manual_seed(seed)
    return {k: v + 0.1 * v.std() * torch.randn_like(v) if "experts" in k else v for k, v in state.items()}


@pytest.mark.parametrize(("analysis", "table"), [("sparsity", "matrices"), ("angles", "tasks"),
                                                 ("overlap", "pairs")])
def test_other_analyses_take_fused_experts_as_they_are(tmp_path, analysis, table):
    state = _mixtral().state_dict()
    run = tmp_path / "run"
    for step, seed in ((1, None), (2, 5), (3, 6)):
        _write_fused(state if seed is None else _perturbed(state, seed), run / f"checkpoint-{step}")
    inputs = [str(run)] if analysis == "overlap" else [str(run / "checkpoint-2"), str(run / "checkpoint-3"),
                                                      "--base", str(run / "checkpoint-1")]
    assert main([analysis, *inputs, "--store", str(tmp_path / "S"), "--device", "cpu"]) == 0
    rows = Store(tmp_path / "S").table(analysis, table)
    experts = rows[rows["expert"].notna()]
    assert set(experts["expert"]) == set(range(EXPERTS)) and set(experts["kind"]) == {"gate", "up", "down"}
    assert experts["tensor"].nunique() == 2 * 3 * EXPERTS


def test_select_cuts_known_3d_tensors_and_skips_the_rest():
    infos = [TensorInfo("layers.0.mlp.experts.gate_up_proj", (2, 8, 5), "bfloat16"),
             TensorInfo("layers.0.mlp.experts.down_proj", (2, 5, 4), "bfloat16"),
             TensorInfo("layers.0.mlp.experts.ids", (2, 5, 4), "int64"),
             TensorInfo("conv.weight", (4, 3, 3), "float32"),
             TensorInfo("gpt_oss.mlp.experts.gate_up_proj", (2, 5, 8), "float32"),
             TensorInfo("gpt_oss.mlp.experts.down_proj", (2, 4, 5), "float32"),
             TensorInfo("oss.mlp.experts.gate_up_proj", (1, 5, 8), "float32", halves="interleaved"),
             TensorInfo("oss.mlp.experts.down_proj", (1, 4, 5), "float32"),
             TensorInfo("oss.mlp.experts.down_proj_bias", (1, 5), "float32")]
    taken, skipped = select_matrices(infos)
    assert [(i.name, i.shape) for i in taken] == [
        ("layers.0.mlp.experts.gate_up_proj[0].gate", (4, 5)), ("layers.0.mlp.experts.gate_up_proj[0].up", (4, 5)),
        ("layers.0.mlp.experts.gate_up_proj[1].gate", (4, 5)), ("layers.0.mlp.experts.gate_up_proj[1].up", (4, 5)),
        ("layers.0.mlp.experts.down_proj[0]", (5, 4)), ("layers.0.mlp.experts.down_proj[1]", (5, 4)),
        # the transposed layout: halves interleaved or not depending on the model, so kept whole
        ("gpt_oss.mlp.experts.gate_up_proj[0]", (5, 8)), ("gpt_oss.mlp.experts.gate_up_proj[1]", (5, 8)),
        ("gpt_oss.mlp.experts.down_proj[0]", (4, 5)), ("gpt_oss.mlp.experts.down_proj[1]", (4, 5)),
        # … split when the model type says how (here gpt-oss's interleaved columns)
        ("oss.mlp.experts.gate_up_proj[0].gate", (5, 4)), ("oss.mlp.experts.gate_up_proj[0].up", (5, 4)),
        ("oss.mlp.experts.down_proj[0]", (4, 5))]
    assert [(i.name, i.shape) for i in skipped] == [("layers.0.mlp.experts.ids", (2, 5, 4)), ("conv.weight", (4, 3, 3)),
                                                    ("oss.mlp.experts.down_proj_bias[0]", (5,))]


NAMES = {  # name → (layer, kind, expert)
    "model.layers.0.mlp.experts.gate_up_proj[3].gate": (0, "gate", 3),
    "model.layers.0.mlp.experts.gate_up_proj[3].up": (0, "up", 3),
    "model.layers.0.mlp.experts.gate_up_proj[3]": (0, "gate_up", 3),
    "model.layers.1.mlp.experts.down_proj[12]": (1, "down", 12),
    "model.layers.2.block_sparse_moe.experts.7.w1.weight": (2, "gate", 7),
    "model.layers.2.block_sparse_moe.experts.7.w3.weight": (2, "up", 7),
    "model.layers.2.block_sparse_moe.experts.7.w2.weight": (2, "down", 7),
    "model.layers.0.mlp.experts.5.gate_proj.weight": (0, "gate", 5),
    "model.layers.0.mlp.experts.5.down_proj.weight": (0, "down", 5),
    "model.layers.0.mlp.gate.weight": (0, "router", None),
    "model.layers.0.block_sparse_moe.gate.weight": (0, "router", None),
    "model.layers.3.mlp.router.weight": (3, "router", None),
    "language_model.model.layers.3.feed_forward.router.weight": (3, "router", None),
    "model.layers.0.mlp.shared_expert_gate.weight": (0, "router", None),
    "model.layers.0.mlp.shared_expert.up_proj.weight": (0, "up", None),
    "model.layers.0.mlp.shared_experts.down_proj.weight": (0, "down", None),
    "model.layers.0.mlp.gate_proj.weight": (0, "gate", None),  # dense MLPs are untouched
    "blocks.1.attn.W_Q[heads]": (1, "q", None),
    "blocks.1.attn._W_K[heads]": (1, "k", None),
    "blocks.1.attn.W_O[heads]": (1, "o", None),
}


@pytest.mark.parametrize("name", NAMES)
def test_expert_router_and_head_names(name):
    layer, kind, index = NAMES[name]
    assert classify(name) == (layer, kind) and expert(name) == index and kind in KINDS


def test_scan_finds_an_moe_checkpoint_like_any_other(tmp_path):
    """A folder holding a fused-expert model and a dense one: scan plans and stores both, experts expanded."""
    import toy_checkpoints as toy

    root = tmp_path / "models"
    _write_fused(_mixtral().state_dict(), root / "mixtral")
    toy.write_hf_folder(root / "dense", toy.llama_state())
    assert main(["scan", str(root), "--store", str(tmp_path / "S"), "--analyses", "spectra", "--device", "cpu"]) == 0
    matrices = Store(tmp_path / "S").table("spectra", "matrices")
    assert set(matrices["checkpoint"]) == {"mixtral", "dense"}
    experts = matrices[matrices["expert"].notna()]
    assert set(experts["checkpoint"]) == {"mixtral"} and experts.groupby(["layer", "kind"]).size().eq(EXPERTS).all()
