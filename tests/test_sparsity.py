"""Update sparsity against planted masks, NumPy's ulp arithmetic, simulation and the CLI end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import toy_checkpoints as toy
from subspace_atlas import cli
from subspace_atlas.analysis import sparsity
from subspace_atlas.checkpoints import TensorInfo
from subspace_atlas.context import ComputeContext
from subspace_atlas.pairs import PairedMatrix
from subspace_atlas.specs.sparsity import Params
from subspace_atlas.store import Store

pytestmark = pytest.mark.unit
NAME = "model.layers.0.mlp.up_proj.weight"


def run(base: torch.Tensor, tuned: list[torch.Tensor], params=Params(), pairs=()):
    info = TensorInfo(NAME, tuple(base.shape), str(base.dtype).removeprefix("torch."))
    item = PairedMatrix(info, "key", lambda: base, [(k, lambda t=t: t) for k, t in enumerate(tuned)])
    return sparsity.compute([item], params, ComputeContext(workers=1), pairs=pairs)


# ---------------------------------------------------------------- ulp arithmetic


@pytest.mark.parametrize("np_dtype,torch_dtype", [(np.float16, torch.float16), (np.float32, torch.float32)])
def test_ulp_distance_counts_numpy_nextafter_steps(np_dtype, torch_dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(500) * 10.0 ** rng.integers(-3, 3, 500)).astype(np_dtype)
    a[:5] = [0.0, -0.0, np.finfo(np_dtype).tiny, -np.finfo(np_dtype).tiny, np.finfo(np_dtype).smallest_subnormal]
    steps = rng.integers(0, 6, a.size)
    toward = np.where(rng.random(a.size) < 0.5, np.inf, -np.inf).astype(np_dtype)
    b = a.copy()
    for i, k in enumerate(steps):
        for _ in range(k):
            b[i] = np.nextafter(b[i], toward[i])
    got = sparsity.ulp_distance(torch.from_numpy(a).to(torch_dtype), torch.from_numpy(b).to(torch_dtype))
    # ±0 are two bit patterns but one value: NumPy steps over them as one, and so do we.
    np.testing.assert_array_equal(got.numpy(), steps)


def test_ulp_distance_in_bfloat16_matches_its_spacing_from_frexp():
    # bf16 keeps 8 significant bits: the spacing at x in [2^(e-1), 2^e) is 2^(e-8). Stay inside one binade.
    rng = np.random.default_rng(1)
    mant = rng.uniform(0.55, 0.9, 400)
    exp = rng.integers(-20, 20, 400)
    a = np.ldexp(mant, exp) * np.where(rng.random(400) < 0.5, 1, -1)
    a = torch.tensor(a, dtype=torch.bfloat16).double().numpy()  # representable in bf16
    _, e = np.frexp(a)
    k = rng.integers(0, 5, 400)
    b = a + np.sign(a) * k * np.ldexp(1.0, e - 8)
    got = sparsity.ulp_distance(torch.tensor(a, dtype=torch.bfloat16), torch.tensor(b, dtype=torch.bfloat16))
    np.testing.assert_array_equal(got.numpy(), k)


def test_ulp_distance_refuses_mixed_dtypes():
    with pytest.raises(Exception, match="one float dtype"):
        sparsity.ulp_distance(torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16))


# ---------------------------------------------------------------- planted masks


def bump(t: torch.Tensor, idx: np.ndarray, ulps: int) -> torch.Tensor:
    """Move the entries at ``idx`` by ``ulps`` representable values (toward +inf), via nextafter."""
    out = t.clone().view(-1)
    for _ in range(ulps):
        out[idx] = torch.nextafter(out[idx], torch.full_like(out[idx], float("inf")))
    return out.view(t.shape)


@pytest.mark.parametrize("block", [1 << 22, 100])  # whole matrix at once, or many row blocks
def test_planted_changes_counted_exactly_under_each_definition(monkeypatch, block):
    monkeypatch.setattr(sparsity, "_BLOCK_ELEMENTS", block)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 80, generator=gen).to(torch.bfloat16)
    n = base.numel()
    idx = np.random.default_rng(0).permutation(n)
    one, three, big = idx[:100], idx[100:150], idx[150:180]
    tuned = bump(bump(base, one, 1), three, 3).view(-1).clone()
    tuned[big] += 1.0
    tuned = tuned.view(base.shape)
    row = run(base, [tuned], Params(ulps=1))["matrices"].iloc[0]
    assert row["dtype"] == "bfloat16" and row["numel"] == n
    assert row["unchanged_exact"] == pytest.approx((n - 180) / n)
    assert row["unchanged_ulp"] == pytest.approx((n - 80) / n)  # 1-ulp moves count as unchanged
    assert row["unchanged_atol"] == pytest.approx((n - 180) / n)  # a bf16 ulp near 1 is ~0.008 ≫ 1e-5
    assert row["changed"] == 180
    row3 = run(base, [tuned], Params(ulps=3, mask="ulp"))["matrices"].iloc[0]
    assert row3["unchanged_ulp"] == pytest.approx((n - 30) / n) and row3["changed"] == 30
    assert row["norm_update"] == pytest.approx(float(np.linalg.norm(tuned.float().numpy() - base.float().numpy())))


def test_atol_sees_through_float32_noise_that_exact_counts():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(40, 50, generator=gen)
    tuned = base.clone().view(-1)
    tuned[:200] += 3e-6  # below atol, but above a float32 ulp for |x| < 16: the bits change
    tuned[200:260] += 1e-2
    row = run(base, [tuned.view(base.shape)])["matrices"].iloc[0]
    n = base.numel()
    assert row["unchanged_exact"] == pytest.approx((n - 260) / n)
    assert row["unchanged_atol"] == pytest.approx((n - 60) / n)


def test_update_rank_of_a_planted_rank_three_update():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(60, 45, generator=gen)
    delta = torch.randn(60, 3, generator=gen) @ torch.randn(3, 45, generator=gen)
    row = run(base, [base + delta])["matrices"].iloc[0]
    assert row["update_rank"] == 3 and row["rank_ratio"] == pytest.approx(3 / 45)
    assert row["update_rank"] == np.linalg.matrix_rank((base + delta - base).numpy())
    assert "update_rank" not in run(base, [base + delta], Params(rank=False))["matrices"]


def test_row_and_column_concentration():
    base = torch.zeros(10, 20)
    tuned = base.clone()
    tuned[3, :] = 1.0  # one whole row changed
    row = run(base, [tuned], Params(rank=False))["matrices"].iloc[0]
    assert row["rows_touched"] == pytest.approx(0.1) and row["cols_touched"] == pytest.approx(1.0)
    assert row["row_gini"] == pytest.approx(0.9) and row["col_gini"] == pytest.approx(0.0)


def test_gini_against_its_definition():
    x = np.array([0, 0, 1, 3, 6], dtype=float)
    mean_abs_diff = np.abs(x[:, None] - x[None, :]).mean()
    assert sparsity.gini(torch.tensor(x)) == pytest.approx(mean_abs_diff / (2 * x.mean()))


# ---------------------------------------------------------------- overlap between fine-tunes


def test_overlap_of_planted_masks_and_chance():
    base = torch.zeros(100, 100)
    a, b = base.clone().view(-1), base.clone().view(-1)
    a[:300] = 1.0
    b[200:600] = 1.0  # 100 shared
    tables = run(base, [a.view(100, 100), b.view(100, 100)], Params(rank=False), pairs=[(0, 1)])
    o = tables["overlap"].iloc[0]
    assert (o["changed_a"], o["changed_b"], o["intersection"], o["union"]) == (300, 400, 100, 600)
    assert o["jaccard"] == pytest.approx(100 / 600) and o["overlap_coef"] == pytest.approx(100 / 300)
    assert o["jaccard_chance"] == pytest.approx(0.03 * 0.04 / (0.03 + 0.04 - 0.0012))
    assert o["overlap_coef_chance"] == pytest.approx(0.04)


@pytest.mark.parametrize("p,q", [(0.05, 0.3), (0.2, 0.2), (0.6, 0.9)])
def test_chance_jaccard_matches_simulation(p, q):
    rng = np.random.default_rng(0)
    sims = []
    for _ in range(20):
        a, b = rng.random(200_000) < p, rng.random(200_000) < q
        sims.append((a & b).sum() / (a | b).sum())
    assert sparsity.chance_jaccard(p, q) == pytest.approx(np.mean(sims), rel=0.01)


# ---------------------------------------------------------------- CLI


def nudged(state: dict, seed: int, frac: float = 0.1) -> dict:
    """A copy where a random ``frac`` of each matrix's entries change by a visible amount."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if t.dim() == 2:
            mask = torch.rand(t.shape, generator=gen) < frac
            t = torch.where(mask, (t.float() + 0.5).to(t.dtype), t)
        out[name] = t
    return out


@pytest.mark.integration
def test_cli_computes_each_fine_tune_and_each_new_pair_once(tmp_path, capsys, llama_state):
    base = toy.write_hf_folder(tmp_path / "base", llama_state)
    a = toy.write_safetensors(tmp_path / "rl-a.safetensors", nudged(llama_state, 1))
    b = toy.write_safetensors(tmp_path / "rl-b.safetensors", nudged(llama_state, 2))
    store = tmp_path / "store"
    assert cli.main(["sparsity", "--base", str(base), str(a), str(b), "--store", str(store), "--no-rank"]) == 0
    s = Store(store)
    m = s.table("sparsity", "matrices")
    assert set(m["checkpoint"]) == {"rl-a", "rl-b"} and set(m["dtype"]) == {"float32", "bfloat16", "float16"}
    assert m["unchanged_exact"].between(0.85, 0.95).all() and "update_rank" not in m
    o = s.table("sparsity", "overlap")
    assert set(zip(o["checkpoint_a"], o["checkpoint_b"])) == {("rl-a", "rl-b")}
    assert (o["jaccard"] - o["jaccard_chance"]).abs().max() < 0.05  # independent masks: chance level
    c = toy.write_safetensors(tmp_path / "rl-c.safetensors", nudged(llama_state, 3))
    capsys.readouterr()
    assert cli.main(["sparsity", "--base", str(base), str(a), str(b), str(c), "--store", str(store),
                     "--no-rank"]) == 0
    assert "computed 3 job(s)" in capsys.readouterr().out  # rl-c, and its pairs with rl-a and rl-b
    assert len(s.table("sparsity", "overlap").drop_duplicates(["checkpoint_a", "checkpoint_b"])) == 3


@pytest.mark.integration
def test_cli_refuses_dtype_mismatch_and_adapters(tmp_path, capsys, llama_state):
    base = toy.write_hf_folder(tmp_path / "base", llama_state)
    cast = {k: v.float() for k, v in llama_state.items()}
    path = toy.write_safetensors(tmp_path / "cast.safetensors", cast)
    assert cli.main(["sparsity", "--base", str(base), str(path), "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "stored as float32" in err and "bfloat16" in err
    adapter = toy.write_lora_adapter(tmp_path / "adapter", {"model.layers.0.self_attn.q_proj":
                                                           (torch.ones(2, 32), torch.ones(32, 2))}, rank=2, alpha=4)
    assert cli.main(["sparsity", "--base", str(base), str(adapter), "--store", str(tmp_path / "s")]) == 2
    assert "merge the adapter" in capsys.readouterr().err
    reshaped = dict(llama_state)
    reshaped["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(16, 64)
    path = toy.write_safetensors(tmp_path / "reshaped.safetensors", reshaped)
    assert cli.main(["sparsity", "--base", str(base), str(path), "--store", str(tmp_path / "s")]) == 2
    assert "[16, 64]" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
