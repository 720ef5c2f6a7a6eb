"""Task-subspace angles against planted subspaces, SciPy, direct NumPy constructions and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import toy_checkpoints as toy
from subspace_atlas import cli
from subspace_atlas.adapters import LoraUpdate
from subspace_atlas.analysis import angles
from subspace_atlas.checkpoints import TensorInfo
from subspace_atlas.context import ComputeContext
from subspace_atlas.pairs import PairedMatrix
from subspace_atlas.specs.angles import Params
from subspace_atlas.store import Store

pytestmark = pytest.mark.unit
NAME = "layers.0.self_attn.q_proj.weight"


def run(w0: torch.Tensor, updates: list, params=Params(), pairs=((0, 1),), group=(0, 1)):
    info = TensorInfo(NAME, tuple(w0.shape), "float64")
    tuned = [(k, (lambda u=u: u if isinstance(u, LoraUpdate) else w0 + u)) for k, u in enumerate(updates)]
    item = PairedMatrix(info, "key", lambda: w0, tuned)
    return angles.compute([item], params, ComputeContext(workers=1), pairs=list(pairs), group=list(group))


def planted(m=60, n=50, k=4, thetas=(0.0, 0.3, 0.9, 1.4), seed=0):
    """Two rank-k updates whose left subspaces meet at exactly ``thetas``; right subspaces shared."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((m, 2 * k)))
    qa, perp = q[:, :k], q[:, k:]
    qb = qa * np.cos(thetas) + perp * np.sin(thetas)
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    sa, sb = np.array([5.0, 4.0, 3.0, 2.0]), np.array([3.5, 3.0, 2.5, 1.5])
    return qa @ np.diag(sa) @ v.T, qb @ np.diag(sb) @ v.T, qa, qb, v


def test_planted_principal_angles_recovered_and_match_scipy():
    da, db, qa, qb, _ = planted()
    w0 = torch.tensor(np.random.default_rng(1).standard_normal((60, 50)))
    pairs = run(w0, [torch.tensor(da), torch.tensor(db)], Params(k=4))["pairs"]
    left = pairs[pairs["side"] == "left"].iloc[0]
    np.testing.assert_allclose(np.radians(left["angles"]), [0.0, 0.3, 0.9, 1.4], atol=1e-5)
    np.testing.assert_allclose(np.sort(np.radians(left["angles"])), np.sort(scipy.linalg.subspace_angles(qa, qb)),
                               atol=1e-6)
    assert left["overlap"] == pytest.approx(np.mean(np.cos([0.0, 0.3, 0.9, 1.4]) ** 2), abs=1e-8)
    right = pairs[pairs["side"] == "right"].iloc[0]
    np.testing.assert_allclose(right["angles"], 0.0, atol=1e-3)  # same row space
    assert right["overlap"] == pytest.approx(1.0)


def test_invariant_to_sign_and_to_rotations_within_the_subspace():
    da, db, qa, qb, v = planted()
    w0 = torch.zeros(60, 50, dtype=torch.float64)
    rot, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((4, 4)))
    one = run(w0, [torch.tensor(da), torch.tensor(db)], Params(k=4))["pairs"]
    # -ΔW_a, and ΔW_b written with a rotated basis of the same subspace and another spectrum.
    other = run(w0, [torch.tensor(-da), torch.tensor((qb @ rot) @ np.diag([9.0, 7, 5, 3]) @ v.T)],
                Params(k=4))["pairs"]
    np.testing.assert_allclose(np.stack(one["angles"]), np.stack(other["angles"]), atol=1e-4)  # degrees


def test_k_larger_than_the_rank_is_capped_and_reported():
    da, db, *_ = planted()
    w0 = torch.zeros(60, 50, dtype=torch.float64)
    tables = run(w0, [torch.tensor(da), torch.tensor(db)], Params(k=16))
    tasks = tables["tasks"]
    assert set(tasks["k"]) == {4} and set(tasks["rank"]) == {4} and set(tasks["k_requested"]) == {16}
    assert set(tables["pairs"]["k"]) == {4} and all(len(a) == 4 for a in tables["pairs"]["angles"])


def test_energy_rule_picks_the_fewest_vectors():
    da, db, *_ = planted()
    w0 = torch.zeros(60, 50, dtype=torch.float64)
    tasks = run(w0, [torch.tensor(da), torch.tensor(db)], Params(energy=0.6))["tasks"]
    s2 = np.array([25.0, 16, 9, 4])
    expected = int(np.searchsorted(np.cumsum(s2) / s2.sum(), 0.6) + 1)
    assert tasks.loc[tasks["job"] == 0, "k"].iloc[0] == expected


def test_factored_lora_path_equals_the_dense_path():
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(70, 40, generator=gen, dtype=torch.float64)
    loras = [LoraUpdate(torch.randn(70, 6, generator=gen, dtype=torch.float64),
                        torch.randn(6, 40, generator=gen, dtype=torch.float64), 0.5) for _ in range(2)]
    params = Params(k=5)
    fact = run(w0, loras, params)
    dense = run(w0, [u.dense(torch.float64) for u in loras], params)
    assert fact["tasks"]["factored"].all() and not dense["tasks"]["factored"].any()
    np.testing.assert_allclose(np.stack(fact["pairs"]["angles"]), np.stack(dense["pairs"]["angles"]), atol=1e-6)
    for col in ("overlap", "interference"):
        np.testing.assert_allclose(fact["pairs"][col], dense["pairs"][col], rtol=1e-8)
    for col in ("overlap_with_base_top", "base_top_energy", "energy_captured"):
        np.testing.assert_allclose(fact["tasks"][col], dense["tasks"][col], rtol=1e-8)
    np.testing.assert_allclose(fact["alignment"]["sar"], dense["alignment"]["sar"], rtol=1e-8)


def test_sar_interference_and_base_alignment_against_numpy():
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((30, 20))
    da, db = rng.standard_normal((30, 20)) * 0.1, rng.standard_normal((30, 20)) * 0.1
    tables = run(torch.tensor(w0), [torch.tensor(da), torch.tensor(db)], Params(k=3, side="left"))
    total = da + db
    u, s, _ = np.linalg.svd(total)
    k = int(np.argmax(np.sqrt(np.cumsum(s**2) / np.sum(s**2)) >= 0.95)) + 1
    sar = [np.linalg.norm(u[:, :k].T @ d) / np.linalg.norm(d) for d in (da, db)]
    np.testing.assert_allclose(tables["alignment"].sort_values("job")["sar"], sar, rtol=1e-10)
    assert set(tables["alignment"]["k"]) == {k}
    ua, sa, vah = np.linalg.svd(da)
    ub, sb, vbh = np.linalg.svd(db)
    big_u = np.hstack([ua[:, :3], ub[:, :3]])
    big_v = np.hstack([vah[:3].T, vbh[:3].T])
    sigma = np.diag(np.concatenate([sa[:3], sb[:3]]))
    expected = np.abs((big_u.T @ big_u - np.eye(6)) @ sigma @ (big_v.T @ big_v - np.eye(6))).sum()
    assert tables["pairs"]["interference"].iloc[0] == pytest.approx(expected, rel=1e-10)
    u0 = np.linalg.svd(w0)[0][:, :3]
    task = tables["tasks"][tables["tasks"]["job"] == 0].iloc[0]
    assert task["overlap_with_base_top"] == pytest.approx(np.sum((u0.T @ ua[:, :3]) ** 2) / 3, rel=1e-8)
    assert task["base_top_energy"] == pytest.approx(np.linalg.norm(u0.T @ da) / np.linalg.norm(da), rel=1e-8)
    assert task["overlap_chance"] == pytest.approx(3 / 30)


@pytest.mark.integration
def test_cli_tasks_pairs_and_alignment_with_new_tasks_incremental(tmp_path, capsys, llama_state):
    base = toy.write_hf_folder(tmp_path / "base", llama_state)

    def task(seed):
        g = torch.Generator().manual_seed(seed)
        return {k: ((v.float() + 0.05 * torch.randn(v.shape, generator=g)).to(v.dtype) if v.dim() == 2 else v)
                for k, v in llama_state.items()}

    paths = {name: toy.write_safetensors(tmp_path / f"{name}.safetensors", task(i)) for i, name in
             enumerate(["math", "code", "chat"])}
    store = tmp_path / "store"
    assert cli.main(["angles", "--base", str(base), f"math={paths['math']}", f"code={paths['code']}",
                     "--store", str(store), "--k", "4", "--tensors", "q_proj|down_proj"]) == 0
    s = Store(store)
    assert set(s.table("angles", "tasks")["checkpoint"]) == {"math", "code"}
    pairs = s.table("angles", "pairs")
    assert set(zip(pairs["checkpoint_a"], pairs["checkpoint_b"])) == {("math", "code")}
    assert set(zip(pairs["task_a"], pairs["task_b"])) == {("math", "code")}
    required = {"base", "task", "tensor", "layer", "kind", "side", "k", "sar", "overlap_with_base_top"}
    assert required <= set(s.table("angles", "alignment").columns)
    assert {"base", "task_a", "task_b", "tensor", "layer", "kind", "side", "k", "overlap", "mean_angle_deg",
            "angles"} <= set(pairs.columns)
    assert set(pairs["side"]) == {"left", "right"} and set(pairs["kind"]) == {"q", "down"}
    assert set(s.table("angles", "alignment")["checkpoint"]) == {"math", "code"}
    assert set(s.table("angles", "alignment")["group"]) == {"math + code"}
    capsys.readouterr()
    assert cli.main(["angles", "--base", str(base), f"math={paths['math']}", f"code={paths['code']}",
                     f"chat={paths['chat']}", "--store", str(store), "--k", "4", "--tensors", "q_proj|down_proj"]) == 0
    assert "computed 4 job(s)" in capsys.readouterr().out  # chat, its two pairs, the new three-task alignment
    assert len(s.table("angles", "pairs").drop_duplicates(["checkpoint_a", "checkpoint_b"])) == 3
    assert set(s.table("angles", "alignment")["group"]) == {"math + code", "math + code + chat"}


def test_params_reject_nonsense():
    with pytest.raises(ValueError):
        Params(k=0)
    with pytest.raises(ValueError):
        Params(energy=1.5)
