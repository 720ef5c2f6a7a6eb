"""TransformerLens per-head attention: each head's matrix and the heads joined, named, labelled and paired.

References are computed here from the state dict alone (its slices, ``torch.cat`` and ``torch.linalg.svdvals``),
never through subspace_atlas.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from subspace_atlas.checkpoints import TensorInfo, open_checkpoints, select_matrices
from subspace_atlas.cli import main
from subspace_atlas.naming import classify, expert, head
from subspace_atlas.store import Store
from tests.toy_checkpoints import HIDDEN, llama_state, transformer_lens_state, write_safetensors

HEADS, D_HEAD, LAYERS = 3, 8, 2
KINDS = {"W_Q": "q", "W_K": "k", "W_V": "v", "W_O": "o"}


def _spectra(path: Path, store: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    assert main(["spectra", str(path), "--store", str(store), "--device", "cpu"]) == 0
    return Store(store).table("spectra", "matrices"), Store(store).table("spectra", "values")


def _sigmas(values: pd.DataFrame, tensor: str) -> torch.Tensor:
    rows = values[values["tensor"] == tensor].sort_values("index")
    return torch.tensor(rows["sigma"].to_numpy(), dtype=torch.float64)


def _joined(stored: torch.Tensor, w: str) -> torch.Tensor:
    """The heads side by side along ``d_head``: columns of ``[d_model, H·d_head]``, rows of W_O's transpose."""
    return torch.cat(list(stored), dim=0 if w == "W_O" else 1)


NAMES = {  # name → (layer, kind, head, expert)
    "blocks.1.attn.W_Q[head 0]": (1, "q", 0, None),
    "blocks.1.attn._W_K[head 11]": (1, "k", 11, None),
    "blocks.0.attn.W_V[head 2]": (0, "v", 2, None),
    "blocks.1.attn.W_O[head 5]": (1, "o", 5, None),
    "blocks.1.attn.W_Q[heads]": (1, "q", None, None),
    "blocks.1.attn.W_O[heads]": (1, "o", None, None),
    "model.layers.0.mlp.experts.down_proj[3]": (0, "down", None, 3),
    "model.layers.0.self_attn.q_proj.weight": (0, "q", None, None),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", NAMES)
def test_a_head_is_named_apart_from_an_expert(name):
    layer, kind, index, routed = NAMES[name]
    assert classify(name) == (layer, kind) and head(name) == index and expert(name) == routed


@pytest.mark.unit
def test_select_cuts_each_head_and_the_heads_joined():
    infos = [TensorInfo("blocks.0.attn.W_Q", (HEADS, HIDDEN, D_HEAD), "float32"),
             TensorInfo("blocks.0.attn.W_O", (HEADS, D_HEAD, HIDDEN), "bfloat16"),
             TensorInfo("blocks.0.attn.b_Q", (HEADS, D_HEAD), "float32")]  # a bias per head: not a matrix
    taken, skipped = select_matrices(infos)
    assert [i.name for i in skipped] == ["blocks.0.attn.b_Q"]
    assert [(i.name, i.shape) for i in taken] == [
        ("blocks.0.attn.W_Q[heads]", (HIDDEN, HEADS * D_HEAD)),
        *[(f"blocks.0.attn.W_Q[head {h}]", (HIDDEN, D_HEAD)) for h in range(HEADS)],
        ("blocks.0.attn.W_O[heads]", (HEADS * D_HEAD, HIDDEN)),
        *[(f"blocks.0.attn.W_O[head {h}]", (D_HEAD, HIDDEN)) for h in range(HEADS)]]


@pytest.mark.integration
def test_spectra_stores_each_head_and_the_heads_joined(tmp_path):
    state = transformer_lens_state(heads=HEADS, d_head=D_HEAD, layers=LAYERS)
    path = write_safetensors(tmp_path / "tl.safetensors", state)
    matrices, values = _spectra(path, tmp_path / "S")
    two_d = sum(t.dim() == 2 for t in state.values())
    assert len(matrices) == two_d + LAYERS * len(KINDS) * (HEADS + 1)
    assert "expert" not in matrices
    ckpt = open_checkpoints(path)[0]
    for layer in range(LAYERS):
        for w, kind in KINDS.items():
            stored = state[f"blocks.{layer}.attn.{w}"]
            rows = matrices[matrices["tensor"].str.startswith(f"blocks.{layer}.attn.{w}[")]
            assert set(rows["kind"]) == {kind} and set(rows["layer"]) == {layer}
            assert sorted(rows["head"].dropna()) == list(range(HEADS)) and rows["head"].isna().sum() == 1
            by_head = {(None if pd.isna(h) else int(h)): name for h, name in zip(rows["head"], rows["tensor"])}
            for h in range(HEADS):
                torch.testing.assert_close(ckpt.load(by_head[h]), stored[h], rtol=0, atol=0)
                torch.testing.assert_close(_sigmas(values, by_head[h]), torch.linalg.svdvals(stored[h].double()),
                                           rtol=1e-4, atol=1e-6)
            joined = _joined(stored, w)
            torch.testing.assert_close(ckpt.load(by_head[None]), joined, rtol=0, atol=0)
            torch.testing.assert_close(_sigmas(values, by_head[None]), torch.linalg.svdvals(joined.double()),
                                       rtol=1e-4, atol=1e-6)
    others = matrices[~matrices["tensor"].str.contains(r"\[")]
    assert others["head"].isna().all() and len(others) == two_d


@pytest.mark.integration
def test_a_model_without_per_head_tensors_has_no_head_column(tmp_path):
    matrices, _ = _spectra(write_safetensors(tmp_path / "llama.safetensors", llama_state()), tmp_path / "S")
    assert len(matrices) and "head" not in matrices and "expert" not in matrices


@pytest.mark.integration
@pytest.mark.parametrize(("analysis", "moved"), [("intruders", "norm_update"), ("sparsity", "changed")])
def test_paired_analyses_pair_each_head_with_the_same_head(tmp_path, analysis, moved):
    base = transformer_lens_state(heads=HEADS, d_head=D_HEAD, layers=LAYERS)
    tuned = {f"model.{name}": tensor.clone() for name, tensor in base.items()}  # a prefix, as fine-tunes add
    delta = torch.randn(HIDDEN, D_HEAD, generator=torch.Generator().manual_seed(9))
    tuned["model.blocks.1.attn.W_V"][1] += delta  # only head 1 of one W_V moves
    base_path = write_safetensors(tmp_path / "base.safetensors", base)
    tuned_path = write_safetensors(tmp_path / "tuned.safetensors", tuned)
    assert main([analysis, str(tuned_path), "--base", str(base_path), "--store", str(tmp_path / "S"),
                 "--device", "cpu"]) == 0
    rows = Store(tmp_path / "S").table(analysis, "matrices").set_index("tensor")
    heads = rows[rows.index.str.contains(r"\[head \d")]
    assert len(heads) == LAYERS * len(KINDS) * HEADS and set(heads["head"]) == set(range(HEADS))
    assert set(rows.index[rows[moved] > 0]) == {"blocks.1.attn.W_V[head 1]", "blocks.1.attn.W_V[heads]"}
    expected = delta.norm().item() if analysis == "intruders" else delta.numel()
    assert rows.loc["blocks.1.attn.W_V[head 1]", moved] == pytest.approx(expected, rel=1e-5)
    assert rows.loc["blocks.1.attn.W_V[heads]", moved] == pytest.approx(expected, rel=1e-5)
