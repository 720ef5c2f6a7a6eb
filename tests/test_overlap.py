"""Subspace overlap over training, checked against SciPy's principal angles, NumPy's SVD and planted truths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

torch = pytest.importorskip("torch")

import toy_checkpoints as toy  # noqa: E402
from subspace_atlas import cli  # noqa: E402
from subspace_atlas.analysis import overlap  # noqa: E402
from subspace_atlas.linalg import TopSvd, top_svd  # noqa: E402
from subspace_atlas.specs.overlap import Params  # noqa: E402
from subspace_atlas.store import Store  # noqa: E402


def basis(q: np.ndarray) -> TopSvd:
    """A TopSvd whose left and right subspaces are both the columns of ``q``."""
    t = torch.from_numpy(q).float()
    return TopSvd(t, torch.ones(q.shape[1], dtype=torch.float64), t, "exact", 0, 0.0)


def orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


def planted(m: int, n: int, sigma: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u, v = orthonormal(rng, m, sigma.size), orthonormal(rng, n, sigma.size)
    return torch.from_numpy((u * sigma) @ v.T).float(), u, v


def overlap_of(q1: np.ndarray, q2: np.ndarray) -> float:
    return float(np.square(q1.T @ q2).sum()) / min(q1.shape[1], q2.shape[1])


# ---------------------------------------------------------------- principal angles


@pytest.mark.unit
@pytest.mark.parametrize("n,ka,kb", [(50, 8, 8), (40, 5, 9), (30, 12, 3)])
def test_angles_match_scipy_subspace_angles(n, ka, kb):
    rng = np.random.default_rng(n)
    qa, qb = orthonormal(rng, n, ka), orthonormal(rng, n, kb)
    pair = overlap.subspace_pair(basis(qa), basis(qb), "left")
    reference = np.sort(np.degrees(scipy.linalg.subspace_angles(qa, qb)))
    np.testing.assert_allclose(pair["angles"], reference, atol=1e-3)
    # overlap = mean cos² over the min(ka, kb) principal angles
    assert pair["overlap"] == pytest.approx(np.mean(np.cos(np.radians(reference)) ** 2), abs=1e-5)
    assert pair["chance"] == max(ka, kb) / n


@pytest.mark.unit
def test_planted_rotation_by_known_angles():
    n, k = 40, 4
    theta = np.radians([5.0, 20.0, 45.0, 80.0])
    eye = np.eye(n)
    qa = eye[:, :k]
    qb = np.cos(theta) * eye[:, :k] + np.sin(theta) * eye[:, k:2 * k]
    pair = overlap.subspace_pair(basis(qa), basis(qb), "left")
    np.testing.assert_allclose(pair["angles"], np.degrees(theta), atol=1e-3)
    assert pair["overlap"] == pytest.approx(np.mean(np.cos(theta) ** 2), abs=1e-6)
    assert pair["lead_cos"] == pytest.approx(math.cos(theta[0]), abs=1e-6)


@pytest.mark.unit
def test_invariant_to_sign_and_rotation_within_the_subspace():
    rng = np.random.default_rng(3)
    qa, qb = orthonormal(rng, 60, 6), orthonormal(rng, 60, 6)
    rotation = orthonormal(rng, 6, 6)
    signs = np.where(rng.random(6) < 0.5, -1.0, 1.0)
    plain = overlap.subspace_pair(basis(qa), basis(qb), "left")
    moved = overlap.subspace_pair(basis(qa @ rotation), basis(qb * signs), "left")
    assert moved["overlap"] == pytest.approx(plain["overlap"], abs=1e-6)
    np.testing.assert_allclose(moved["angles"], plain["angles"], atol=1e-3)
    # Q-GaLore's leading-vector signal ignores the SVD's arbitrary sign
    flipped = overlap.subspace_pair(basis(qa), basis(-qa), "left")
    assert flipped["lead_cos"] == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- randomized top-k


@pytest.mark.unit
@pytest.mark.parametrize("decay", [0.3, 1.0])
@pytest.mark.parametrize("k", [8, 32])
def test_randomized_top_k_matches_the_exact_subspace(decay, k):
    m, n = 900, 700
    sigma = np.arange(1, 701, dtype=float) ** -decay
    mat, u, v = planted(m, n, sigma, seed=k)
    found = top_svd(mat, k)
    assert found.method == "randomized"
    exact_u, exact_s, exact_vh = np.linalg.svd(mat.double().numpy(), full_matrices=False)
    for q, ref in ((found.u.numpy(), exact_u[:, :k]), (found.v.numpy(), exact_vh[:k].T)):
        assert overlap_of(q, ref) >= 0.999
        assert 1 - overlap_of(q, ref) <= found.bound + 1e-6  # the reported bound holds
    np.testing.assert_allclose(found.s.numpy(), exact_s[:k], rtol=1e-4)


@pytest.mark.unit
def test_a_random_matrix_still_matches_the_exact_subspace():
    mat = torch.randn(600, 500, generator=torch.Generator().manual_seed(0))
    found = top_svd(mat, 8)  # Krylov usually resolves the Marchenko–Pastur edge; if not, the exact SVD
    exact_u = np.linalg.svd(mat.double().numpy(), full_matrices=False)[0]
    assert 1 - overlap_of(found.u.numpy(), exact_u[:, :8]) <= max(found.bound, 1e-6)


@pytest.mark.unit
def test_no_gap_at_k_falls_back_to_the_exact_svd():
    sigma = np.array([10.0, 9.0, 8.0, 7.0] + [1.0] * 8 + [0.1] * 300)  # σ_5 … σ_12 equal: k = 8 splits a plateau
    mat, _, _ = planted(900, 700, sigma)
    found = top_svd(mat, 8)
    assert found.method == "exact" and found.bound == 0.0 and found.iterations < 40
    np.testing.assert_allclose(found.s.numpy(), sigma[:8], rtol=1e-4)


@pytest.mark.unit
def test_energy_picks_the_fewest_vectors_holding_that_share():
    sigma = np.array([10.0, 6.0, 3.0, 1.0] + [0.1] * 96)
    mat, _, _ = planted(300, 200, sigma)
    share = np.cumsum(sigma**2) / np.sum(sigma**2)
    for energy in (0.5, 0.9, 0.99, 0.999):
        found = overlap.top_subspace(mat, Params(k=2, energy=energy))
        assert found.s.numel() == int(np.searchsorted(share, energy - 1e-12) + 1)


# ---------------------------------------------------------------- convergence, WeLore


@pytest.mark.unit
def test_settled_and_qgalore_steps():
    steps = [10, 20, 30, 40, 50, 60]
    assert overlap.settled_step([0.5, 0.95, 0.8, 0.92, 0.97, 0.99], steps, 0.9) == 40
    assert overlap.settled_step([0.95, 0.95, 0.5], steps[:3], 0.9) is None
    assert overlap.settled_step([0.95] * 3, steps[:3], 0.9) == 10
    lead = [0.1, 0.2, 0.5, 0.6, 0.7, 0.9]  # mean of the last 3 first ≥ 0.4 at the 4th refresh
    assert overlap.qgalore_step(lead, steps, 0.4, 3) == 40
    assert overlap.qgalore_step(lead[:2], steps[:2], 0.0, 3) is None  # never a full window


@pytest.mark.unit
def test_welore_fraction_is_the_share_of_min_max_normalised_values_below_tau():
    sigma = np.array([10.0, 5.0, 2.0, 1.2, 1.1, 1.0])
    scaled = (sigma - 1.0) / 9.0
    got = overlap.welore_fractions(sigma, (0.05, 0.15, 0.6))
    assert got == {tau: float(np.mean(scaled < tau)) for tau in (0.05, 0.15, 0.6)}
    assert got[0.05] == 3 / 6


@pytest.mark.unit
def test_reference_pairs():
    got = overlap.reference_pairs([0, 1, 3, 4], ("previous", "first", "last"))
    assert set(got) == {(0, 1), (1, 3), (3, 4), (0, 3), (0, 4), (1, 4)}
    assert got[(0, 4)] == {"first", "last"}
    assert len(overlap.reference_pairs([0, 1, 2, 3], ("all",))) == 6


# ---------------------------------------------------------------- a run, end to end


def random_walk_run(root, steps=(0, 10, 20, 30), seed=0) -> dict[int, dict[str, torch.Tensor]]:
    """A run folder whose weights drift along a planted low-rank direction plus noise, saved per step."""
    gen = torch.Generator().manual_seed(seed)
    state = toy.llama_state(seed)
    direction = {n: torch.randn(t.shape[0], 2, generator=gen) @ torch.randn(2, t.shape[1], generator=gen)
                 for n, t in state.items() if t.dim() == 2}
    saved = {}
    for i, step in enumerate(steps):
        now = {n: (t.float() + 0.2 * i * direction[n] + 0.01 * torch.randn(t.shape, generator=gen)).to(t.dtype)
               if n in direction else t for n, t in state.items()}
        toy.write_hf_folder(root / f"checkpoint-{step}", now)
        saved[step] = now
    return saved


def reference_top(mat: torch.Tensor, k: int, side: str) -> np.ndarray:
    u, _, vh = np.linalg.svd(mat.double().numpy(), full_matrices=False)
    return u[:, :k] if side == "left" else vh[:k].T


@pytest.mark.integration
def test_run_overlaps_match_numpy_and_a_rerun_computes_nothing(tmp_path, capsys):
    saved = random_walk_run(tmp_path / "run")
    store = tmp_path / "store"
    args = ["overlap", str(tmp_path / "run"), "--store", str(store), "--k", "3", "--reference", "all"]
    assert cli.main(args) == 0
    pairs = Store(store).table("overlap", "pairs")
    steps = sorted(saved)
    assert set(pairs["of"]) == {"weights", "updates", "steps"}
    assert (pairs["run"] == "run").all()
    checked = 0
    for row in pairs.sample(40, random_state=0).itertuples():
        a, b = saved[row.step_a][row.tensor].double(), saved[row.step_b][row.tensor].double()
        first = saved[steps[0]][row.tensor].double()
        prev_b = saved[steps[steps.index(row.step_b) - 1]][row.tensor].double()
        prev_a = saved[steps[max(steps.index(row.step_a) - 1, 0)]][row.tensor].double()
        mats = {"weights": (a, b), "updates": (a - first, b - first), "steps": (a - prev_a, b - prev_b)}[row.of]
        qa, qb = (reference_top(m, 3, row.side) for m in mats)
        angles = np.sort(np.degrees(scipy.linalg.subspace_angles(qa, qb)))
        assert row.overlap == pytest.approx(overlap_of(qa, qb), abs=2e-3), row
        np.testing.assert_allclose(row.angles, angles, atol=0.5)
        checked += 1
    assert checked == 40
    # no update at the first checkpoint, so its update/step subspaces do not exist
    assert not ((pairs["of"] != "weights") & (pairs["step_a"] == 0)).any()
    conv = Store(store).table("overlap", "convergence")
    assert {"settled_step", "qgalore_step", "layer", "kind"} <= set(conv.columns)
    welore = Store(store).table("overlap", "welore")
    sigma = np.linalg.svd(saved[20]["model.layers.0.mlp.down_proj.weight"].double().numpy(), compute_uv=False)
    row = welore[(welore.step == 20) & (welore.tensor == "model.layers.0.mlp.down_proj.weight") & (welore.tau == 0.135)]
    assert float(row.fraction_below.iloc[0]) == overlap.welore_fractions(sigma, (0.135,))[0.135]
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "computed nothing" in capsys.readouterr().out


@pytest.mark.integration
def test_start_checkpoint_goes_first_and_errors_are_clear(tmp_path, capsys, llama_state):
    random_walk_run(tmp_path / "run", steps=(10, 20))
    start = toy.write_hf_folder(tmp_path / "base", llama_state)
    store = tmp_path / "store"
    assert cli.main(["overlap", str(tmp_path / "run"), "--start", str(start), "--store", str(store),
                     "--of", "updates", "--k", "2"]) == 0
    pairs = Store(store).table("overlap", "pairs")
    assert sorted(set(pairs["step_a"])) == [10] and sorted(set(pairs["step_b"])) == [20]
    subspaces = Store(store).table("overlap", "subspaces")
    assert sorted(set(subspaces["step"])) == [10, 20]  # updates from the start at step 0 exist from step 10
    capsys.readouterr()
    lonely = toy.write_hf_folder(tmp_path / "lonely" / "checkpoint-5", llama_state)
    assert cli.main(["overlap", str(lonely), "--store", str(store)]) == 2
    assert "at least two" in capsys.readouterr().err
    other = dict(llama_state)
    other["model.layers.0.mlp.down_proj.weight"] = torch.zeros(7, 3)
    toy.write_hf_folder(tmp_path / "bad" / "checkpoint-1", llama_state)
    toy.write_hf_folder(tmp_path / "bad" / "checkpoint-2", other)
    before = sorted(p.name for p in (store / "overlap" / "pairs").iterdir())
    assert cli.main(["overlap", str(tmp_path / "bad"), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-1" in err and "down_proj" in err and "one run" in err
    assert sorted(p.name for p in (store / "overlap" / "pairs").iterdir()) == before
    assert cli.main(["overlap", str(tmp_path / "run"), "--of", "gradients", "--store", str(store)]) == 2
    assert "--data" in capsys.readouterr().err


@pytest.mark.integration
def test_a_grown_run_reuses_cached_subspaces(tmp_path, monkeypatch):
    random_walk_run(tmp_path / "run", steps=(0, 10, 20))
    store = tmp_path / "store"
    assert cli.main(["overlap", str(tmp_path / "run"), "--store", str(store), "--of", "weights"]) == 0
    random_walk_run(tmp_path / "more", steps=(0, 10, 20, 30))  # same seed: the first three are identical
    calls = []
    real = overlap.top_subspace
    monkeypatch.setattr(overlap, "top_subspace", lambda mat, params, device=None: calls.append(1) or real(mat, params,
                                                                                                         device))
    assert cli.main(["overlap", str(tmp_path / "more"), "--store", str(store), "--of", "weights"]) == 0
    matrices = len([t for t in toy.llama_state().values() if t.dim() == 2])
    assert len(calls) == matrices  # only step 30's matrices were decomposed
