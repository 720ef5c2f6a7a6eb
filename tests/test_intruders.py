"""Intruder dimensions against planted ground truth, NumPy, and PEFT's own implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import toy_checkpoints as toy
from subspace_atlas.adapters import LoraUpdate
from subspace_atlas.analysis import intruders
from subspace_atlas.checkpoints import TensorInfo
from subspace_atlas.context import ComputeContext
from subspace_atlas.pairs import PairedMatrix
from subspace_atlas.specs.intruders import Params

pytestmark = pytest.mark.unit
NAME = "layers.0.mlp.up_proj.weight"


def run_one(w0: torch.Tensor, tuned, params=Params(), **kw) -> dict:
    info = TensorInfo(NAME, tuple(w0.shape), "float64")
    item = PairedMatrix(info, "key", lambda: w0, [(0, lambda: tuned)])
    return intruders.compute([item], params, ComputeContext(workers=1), **kw)


def numpy_reference(w0: np.ndarray, w: np.ndarray, k: int = 10):
    """The paper's rule in plain NumPy: top-k left vectors of W against ALL left vectors of W0."""
    u0, s0, _ = np.linalg.svd(w0, full_matrices=False)
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    cos = np.abs(u[:, :k].T @ u0)
    return u, s, vh, cos.max(axis=1), cos.argmax(axis=1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_planted_intruders_exact_count_rank_and_match(dtype):
    w0, w, expected = toy.planted_intruders()
    tables = run_one(w0, w, Params(svd_dtype=dtype))
    vec = tables["vectors"].set_index("index")
    assert list(vec.index[vec["is_intruder"]]) == [2, 5, 8]
    for rank, (cos, match) in expected.items():
        assert vec.loc[rank, "max_cos"] == pytest.approx(cos, abs=1e-5)
        if match is not None:
            assert vec.loc[rank, "best_match_index"] == match
    # rank 0 is base vector 40: a top-k-only comparison of the base would call it an intruder.
    assert vec.loc[0, "best_match_sigma"] == pytest.approx(np.linspace(10, 1, 48)[40], rel=1e-5)
    summary = tables["summary"].set_index("epsilon")["n_intruders"]
    assert summary[0.5] == 3 and summary[0.2] == 2 and summary[0.1] == 2 and summary[0.9] == 3


def test_right_side_is_the_left_side_of_the_transpose():
    w0, w, _ = toy.planted_intruders()
    both = run_one(w0.T.contiguous(), w.T.contiguous(), Params(side="both", svd_dtype="float64"))
    right = both["vectors"][both["vectors"]["side"] == "right"]
    assert list(right.loc[right["is_intruder"], "index"]) == [2, 5, 8]
    left = both["vectors"][both["vectors"]["side"] == "left"]
    assert not left["is_intruder"].any()  # V0 is square: every right vector of W0ᵀ is matched


def test_mitigation_quantities_match_the_matrix_built_by_hand():
    w0, w, _ = toy.planted_intruders()
    params = Params(svd_dtype="float64", mitigation_lambda=0.6)
    row = run_one(w0, w, params)["matrices"].iloc[0]
    u, s, vh, max_cos, _ = numpy_reference(w0.numpy(), w.numpy())
    idx = np.where(max_cos < 0.5)[0]
    w_mit = w.numpy() + (0.6 - 1) * (u[:, idx] * s[idx]) @ vh[idx]
    # The mitigated matrix's spectrum is W's with the intruders' σ scaled by λ.
    np.testing.assert_allclose(np.sort(np.linalg.svd(w_mit, compute_uv=False))[::-1],
                               np.sort(np.where(np.isin(np.arange(s.size), idx), 0.6 * s, s))[::-1], rtol=1e-10)
    delta = w.numpy() - w0.numpy()
    assert row["n_intruders"] == 3
    assert row["mitigation_shift"] == pytest.approx(np.linalg.norm(w_mit - w.numpy()) / np.linalg.norm(w.numpy()))
    assert row["mitigated_update_ratio"] == pytest.approx(np.linalg.norm(w_mit - w0.numpy()) / np.linalg.norm(delta))
    assert row["rel_update"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(w0.numpy()))


def test_update_along_each_vector_gives_the_update_left_at_any_epsilon():
    """u_jᵀΔW v_j per tested vector: with it the mitigation's ‖W′ − W0‖ follows at an ε the job did not mark."""
    w0, w, _ = toy.planted_intruders()
    vectors = run_one(w0, w, Params(svd_dtype="float64"))["vectors"].set_index("index")
    u, s, vh, max_cos, _ = numpy_reference(w0.numpy(), w.numpy())
    delta = w.numpy() - w0.numpy()
    along = np.einsum("ij,ij->j", u[:, :10], delta @ vh[:10].T)
    np.testing.assert_allclose(vectors["update_along"].to_numpy(), along, rtol=1e-9, atol=1e-12)
    idx = np.where(max_cos < 0.9)[0]  # another ε than the job's first (0.5)
    w_mit = w.numpy() + (0.6 - 1) * (u[:, idx] * s[idx]) @ vh[idx]
    proj, energy = float(np.sum(s[idx] * along[idx])), float(np.sum(s[idx] ** 2))
    moved = np.sqrt(np.linalg.norm(delta) ** 2 - 2 * 0.4 * proj + 0.4**2 * energy)
    assert moved == pytest.approx(np.linalg.norm(w_mit - w0.numpy()), rel=1e-9)


def test_factored_lora_path_matches_numpy_on_the_merged_matrix(monkeypatch):
    monkeypatch.setattr(intruders, "FACTORED_MIN_DIM", 0)
    gen = np.random.default_rng(3)
    rows, cols, r = 180, 140, 6
    w0 = torch.tensor(gen.standard_normal((rows, cols)) * np.linspace(2, 0.2, cols))
    left, right = torch.tensor(gen.standard_normal((rows, r))), torch.tensor(gen.standard_normal((r, cols)))
    update = LoraUpdate(left, right, scale=0.8)
    params = Params(svd_dtype="float64", side="both", spectrum_top=20)
    tables = run_one(w0, update, params)
    matrix = tables["matrices"].iloc[0]
    assert matrix["method"] == "factored" and matrix["lora_rank"] == r
    w = (w0 + 0.8 * left @ right).numpy()
    u, s, vh, max_cos, best = numpy_reference(w0.numpy(), w)
    vec = tables["vectors"]
    lv = vec[vec["side"] == "left"]
    np.testing.assert_allclose(lv["sigma"], s[:10], rtol=1e-10)
    np.testing.assert_allclose(lv["max_cos"], max_cos, atol=1e-8)
    np.testing.assert_array_equal(lv["best_match_index"], best)
    _, _, vh0 = np.linalg.svd(w0.numpy(), full_matrices=False)
    right_cos = np.abs(vh[:10] @ vh0.T).max(axis=1)
    np.testing.assert_allclose(vec.loc[vec["side"] == "right", "max_cos"], right_cos, atol=1e-8)
    tuned = tables["values"].query("which == 'tuned'")["sigma"]
    np.testing.assert_allclose(tuned, s[:20], rtol=1e-10)
    assert matrix["norm_tuned"] == pytest.approx(np.linalg.norm(w), rel=1e-10)
    assert matrix["norm_update"] == pytest.approx(np.linalg.norm(w - w0.numpy()), rel=1e-10)
    # And the dense path (merge, then a full SVD) gives the same table.
    monkeypatch.setattr(intruders, "FACTORED_MIN_DIM", 10**9)
    dense = run_one(w0, update, params)
    assert dense["matrices"].iloc[0]["method"] == "svd"
    np.testing.assert_allclose(dense["vectors"]["max_cos"], vec["max_cos"], atol=1e-8)
    for col in ("norm_tuned", "norm_update", "mitigation_shift", "mitigated_update_ratio", "intruder_energy"):
        assert dense["matrices"].iloc[0][col] == pytest.approx(matrix[col], rel=1e-8, abs=1e-12)


def test_similarity_table_is_the_top_k_by_top_n_block():
    w0, w, _ = toy.planted_intruders()
    sim = run_one(w0, w, Params(svd_dtype="float64", similarity_top=12))["similarity"]
    u, _, _, _, _ = numpy_reference(w0.numpy(), w.numpy())
    u0 = np.linalg.svd(w0.numpy(), full_matrices=False)[0]
    grid = sim.pivot(index="index", columns="base_index", values="cos").to_numpy()
    np.testing.assert_allclose(grid, np.abs(u[:, :10].T @ u0[:, :12]), atol=1e-6)


def test_params_reject_nonsense():
    with pytest.raises(ValueError):
        Params(epsilon=(0.5, 1.5))
    with pytest.raises(ValueError):
        Params(top_k=0)
