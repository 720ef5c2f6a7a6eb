"""spectra.metrics and spectra.compute on matrices with planted spectra, against the metric
definitions (WeightWatcher's) computed directly here and NumPy's SVD."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from subspace_atlas import linalg
from subspace_atlas.analysis import esd, spectra
from subspace_atlas.checkpoints import TensorInfo
from subspace_atlas.context import ComputeContext
from subspace_atlas.specs.spectra import Params, select

pytestmark = pytest.mark.unit

PARAMS = Params()


def random_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def planted(rng: np.random.Generator, sigma: np.ndarray, m: int, n: int) -> np.ndarray:
    """W = U diag(σ) Vᵀ with random orthogonal U, V; len(σ) = min(m, n)."""
    k = min(m, n)
    return (random_orthogonal(rng, m)[:, :k] * sigma) @ random_orthogonal(rng, n)[:, :k].T


def sigma_of(w: np.ndarray, params: Params = PARAMS) -> np.ndarray:
    """Our σ of one matrix, through compute (the path real checkpoints take)."""
    info = TensorInfo("w", tuple(w.shape), "float64")
    out = spectra.compute([(info, torch.from_numpy(w))], params)
    return out["values"]["sigma"].to_numpy()


def definitions(sigma: np.ndarray, alpha: float) -> dict[str, float]:
    """WeightWatcher's metrics from σ by their definitions, given the fitted alpha."""
    sigma = np.asarray(sigma, dtype=np.float64)
    lam = sigma**2
    p = sigma / sigma.sum()
    p = p[p > 0]
    return {
        "log_norm": math.log10(lam.sum()),
        "log_spectral_norm": math.log10(lam.max()),
        "stable_rank": lam.sum() / lam.max(),
        "effective_rank": math.exp(-float(np.sum(p * np.log(p)))),
        "alpha_weighted": alpha * math.log10(lam.max()),
        "log_alpha_norm": math.log10(float(np.sum(lam**alpha))),
        "sigma_max": float(sigma.max()),
    }


def assert_metrics_match(row: dict, sigma: np.ndarray, rel: float = 1e-10) -> None:
    want = definitions(sigma, row["alpha"])
    for key, value in want.items():
        assert row[key] == pytest.approx(value, rel=rel), key


# --------------------------------------------------------------------------- metrics, planted spectra

@pytest.mark.parametrize("m,n", [(120, 80), (80, 120), (100, 100)])
def test_metrics_on_planted_power_law_spectrum(m, n):
    rng = np.random.default_rng(1)
    k = min(m, n)
    sigma = np.sort(np.sqrt(1.0 + rng.pareto(2.0, k)))[::-1]   # λ = σ² has a power-law tail
    w = planted(rng, sigma, m, n)
    got_sigma = sigma_of(w)
    np.testing.assert_allclose(got_sigma, sigma, rtol=1e-9)
    row = spectra.metrics(got_sigma, m, n, PARAMS)
    assert math.isfinite(row["alpha"])
    assert_metrics_match(row, sigma, rel=1e-8)   # σ from a decomposition: 1e-9 relative
    assert row["n_evals"] == k
    assert row["xmax"] == pytest.approx(sigma[0] ** 2, rel=1e-8)
    # alpha is the power-law fit of λ = σ², WeightWatcher's definition (see test_esd for that fit)
    assert row["alpha"] == pytest.approx(esd.fit_power_law(sigma**2).alpha, rel=1e-6)


def test_metrics_ignore_the_order_of_sigma():
    rng = np.random.default_rng(2)
    sigma = np.sqrt(1.0 + rng.pareto(2.5, 60))
    row = spectra.metrics(rng.permutation(sigma), 60, 90, PARAMS)
    assert_metrics_match(row, sigma)
    assert row["sigma_max"] == sigma.max()


# Equal σ come back equal only up to rounding (~1e-16 relative): the power-law fit then sees a
# degenerate tail and reports alpha ~1e15 (WeightWatcher's WWFit gives the same number); log_alpha_norm
# must still come out finite (computed relative to λmax, so λ^alpha cannot overflow).
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("n", [30, 64])
def test_all_equal_sigma_has_full_effective_and_stable_rank(n):
    rng = np.random.default_rng(3)
    w = 2.5 * random_orthogonal(rng, n)              # every σ = 2.5
    got_sigma = sigma_of(w)
    np.testing.assert_allclose(got_sigma, 2.5, rtol=1e-12)
    row = spectra.metrics(got_sigma, n, n, PARAMS)
    assert row["effective_rank"] == pytest.approx(n, rel=1e-9)
    assert row["stable_rank"] == pytest.approx(n, rel=1e-9)
    assert row["log_norm"] == pytest.approx(math.log10(n * 6.25), rel=1e-12)
    assert row["log_spectral_norm"] == pytest.approx(math.log10(6.25), rel=1e-9)
    assert math.isfinite(row["log_alpha_norm"])


def test_rank_deficient_effective_rank_counts_the_nonzero_sigma():
    rng = np.random.default_rng(4)
    sigma = np.array([3.0, 3.0, 3.0] + [0.0] * 37)   # rank 3, equal weights
    w = planted(rng, sigma, 40, 40)
    row = spectra.metrics(sigma_of(w), 40, 40, PARAMS)
    assert row["effective_rank"] == pytest.approx(3.0, rel=1e-6)
    assert row["stable_rank"] == pytest.approx(3.0, rel=1e-9)
    exact = spectra.metrics(sigma, 40, 40, PARAMS)   # exact zeros: 0·log 0 = 0
    assert exact["effective_rank"] == pytest.approx(3.0, rel=1e-12)


def test_effective_rank_of_a_geometric_spectrum():
    sigma = 0.5 ** np.arange(20)
    p = sigma / sigma.sum()
    want = math.exp(-sum(q * math.log(q) for q in p))
    assert spectra.metrics(sigma, 20, 20, PARAMS)["effective_rank"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("alpha", [1.5, 4.0, 8.0])
def test_alpha_recovered_and_warnings(alpha):
    # λ = σ² drawn from a Pareto law with the planted alpha (n = 3000, standard error ≤ 0.13)
    rng = np.random.default_rng(5)
    lam = (1.0 - rng.random(3000)) ** (-1.0 / (alpha - 1.0))
    row = spectra.metrics(np.sqrt(lam), 3000, 3000, PARAMS)
    assert row["alpha"] == pytest.approx(alpha, abs=0.3)
    assert_metrics_match(row, np.sqrt(lam))
    want = {1.5: "over-trained", 4.0: "", 8.0: "under-trained"}[alpha]
    assert row["alpha_warning"] == want


@pytest.mark.parametrize("alpha,warning", [
    (1.2, "over-trained"), (1.999, "over-trained"), (2.0, ""), (4.0, ""), (6.0, ""),
    (6.001, "under-trained"), (12.0, "under-trained"), (math.nan, ""),
])
def test_alpha_warning_thresholds(monkeypatch, alpha, warning):
    """WeightWatcher's reading: alpha < 2 over-trained, alpha > 6 under-trained, else nothing."""
    fake = esd.PowerLawFit(alpha, 1.0, 2.0, 0.1, 10 if math.isfinite(alpha) else 0, 0.1)
    monkeypatch.setattr(spectra, "fit_power_law", lambda *a, **k: fake)
    assert spectra.metrics(np.linspace(1, 2, 30), 30, 30, PARAMS)["alpha_warning"] == warning


def test_too_few_eigenvalues_give_nan_alpha_metrics_but_norms():
    sigma = np.array([3.0, 2.0, 1.0])                # 3 < min_evals
    row = spectra.metrics(sigma, 3, 10, PARAMS)
    assert math.isnan(row["alpha"]) and row["n_tail"] == 0
    assert math.isnan(row["alpha_weighted"]) and math.isnan(row["log_alpha_norm"])
    assert row["log_norm"] == pytest.approx(math.log10(14.0))
    assert row["stable_rank"] == pytest.approx(14.0 / 9.0)


def test_params_thresh_and_min_evals_reach_the_fit():
    sigma = np.sqrt(np.linspace(1.0, 30.0, 25))
    assert spectra.metrics(sigma, 25, 25, Params(min_evals=26))["n_tail"] == 0
    assert spectra.metrics(sigma, 25, 25, Params(min_evals=25))["n_tail"] > 0
    # a threshold of 10 leaves the 17 eigenvalues above it: too few for min_evals = 20 …
    assert spectra.metrics(sigma, 25, 25, Params(evals_thresh=10.0))["n_tail"] == 0
    # … enough for 17, and then the fit sees only those
    row = spectra.metrics(sigma, 25, 25, Params(evals_thresh=10.0, min_evals=17))
    assert row["xmin"] > 10.0
    assert row["alpha"] == pytest.approx(esd.fit_power_law(sigma[sigma**2 > 10.0] ** 2, min_evals=17).alpha,
                                         rel=1e-12)


# --------------------------------------------------------------------------- compute on a stream

def make_stream(mats: list[tuple[str, torch.Tensor]]):
    return [(TensorInfo(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")), t) for name, t in mats]


def stream_fixture():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((70, 50))
    b = planted(rng, np.linspace(5.0, 0.1, 50), 70, 50)          # same shape as a
    nan = rng.standard_normal((70, 50))
    nan[3, 4] = np.nan
    nan[10, 1] = np.inf
    c = rng.standard_normal((70, 50)) * 3.0                        # same shape, after the bad one
    d = rng.standard_normal((30, 90))                              # a different shape
    e = rng.standard_normal((30, 90))
    mats = [("a", torch.from_numpy(a).float()), ("b", torch.from_numpy(b).to(torch.bfloat16)),
            ("nan", torch.from_numpy(nan).float()), ("c", torch.from_numpy(c).float()),
            ("d", torch.from_numpy(d).to(torch.float16)), ("e", torch.from_numpy(e))]
    return mats


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("batch_bytes", [0, 1 << 30], ids=["unbatched", "batched"])
def test_compute_matches_numpy(method, batch_bytes, device):
    mats = stream_fixture()
    params = Params(method=method, svd_dtype="float64")
    out = spectra.compute(make_stream(mats), params, ComputeContext(device, batch_bytes))
    matrices, values = out["matrices"], out["values"]
    assert list(matrices["tensor"]) == [name for name, _ in mats]
    for name, t in mats:
        row = matrices.set_index("tensor").loc[name]
        assert (row["rows"], row["cols"]) == tuple(t.shape)
        assert row["dtype"] == str(t.dtype).removeprefix("torch.")
        if name == "nan":
            continue
        want = np.linalg.svd(t.to(torch.float64).numpy(), compute_uv=False)
        got = values.loc[values["tensor"] == name]
        assert len(got) == min(t.shape)
        assert list(got["index"]) == list(range(min(t.shape)))
        np.testing.assert_allclose(got["sigma"].to_numpy(), want, rtol=0, atol=1e-6 * want[0])
        assert np.all(np.diff(got["sigma"].to_numpy()) <= 0)
        assert row["nonfinite"] == 0
        assert row["log_norm"] == pytest.approx(math.log10(np.sum(want**2)), rel=1e-9)
        assert row["stable_rank"] == pytest.approx(np.sum(want**2) / want[0] ** 2, rel=1e-9)
        assert row["n_evals"] == min(t.shape)


@pytest.mark.parametrize("method", ["gram", "svd"])  # Gram matrices solved by the host threads, or σ from the device
@pytest.mark.parametrize("batch_bytes", [0, 1 << 30], ids=["unbatched", "batched"])
def test_gpu_schedule_gives_the_cpu_schedules_tables(batch_bytes, method):
    """The GPU's schedule (decompose in order on the caller's thread, fit on worker threads), run with the
    CPU as its device, gives what the CPU's schedule (workers decompose and fit) gives."""
    cpu, params = torch.device("cpu"), Params(method=method, svd_dtype="float64")
    gpu_way = spectra._on_gpu(make_stream(stream_fixture()), params, cpu, batch_bytes, 2)
    cpu_way = spectra._on_cpu(make_stream(stream_fixture()), params, batch_bytes, 2)
    for part, combine in ((0, lambda rows: pd.DataFrame([r for batch in rows for r in batch])),
                          (1, lambda frames: pd.concat([f for batch in frames for f in batch], ignore_index=True))):
        pd.testing.assert_frame_equal(combine([d[part] for d in gpu_way]), combine([d[part] for d in cpu_way]),
                                      rtol=1e-10)  # BLAS may split the sums over other thread counts


@pytest.mark.parametrize("method", ["gram", "gram32"])
def test_a_tall_matrix_split_over_workers_matches_numpy_and_its_unsplit_self_bit_for_bit(method):
    """An embedding-like matrix (far taller than wide) has its Gram products spread over the workers; the
    blocks depend on its shape alone, so one worker or four give the same bits, and NumPy agrees."""
    rng = np.random.default_rng(12)
    tall = rng.standard_normal((3000, 40)) * np.linspace(0.2, 3, 40)
    wide = rng.standard_normal((40, 2600))                       # transposed inside: split too
    nan = rng.standard_normal((2048, 32))
    nan[1500, 3] = np.nan                                        # in a late block
    mats = [("tall", torch.from_numpy(tall).float()), ("small", torch.from_numpy(rng.standard_normal((30, 20)))),
            ("wide", torch.from_numpy(wide).to(torch.bfloat16)), ("nan", torch.from_numpy(nan))]
    assert all(linalg.splittable(t.shape) for n, t in mats if n != "small")
    assert len(linalg.row_blocks(torch.zeros(1, 3000, 40), torch.float64)) == 12  # ⌈3000/16⌉ = 188 < 256 rows
    params = Params(method=method)
    one = spectra.compute(make_stream(mats), params, ComputeContext(workers=1))
    four = spectra.compute(make_stream(mats), params, ComputeContext(workers=4))
    pd.testing.assert_frame_equal(one["values"], four["values"], check_exact=True)
    pd.testing.assert_frame_equal(one["matrices"], four["matrices"], check_exact=True)
    rows = four["matrices"].set_index("tensor")
    assert rows.loc["nan", "nonfinite"] == 1 and "nan" not in set(four["values"]["tensor"])
    tol = 2e-3 if method == "gram32" else 1e-6  # × σmax, as in test_linalg
    for name, t in mats[:3]:
        want = np.linalg.svd(t.to(torch.float64).numpy(), compute_uv=False)
        got = four["values"].loc[four["values"]["tensor"] == name, "sigma"].to_numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * want[0])


def test_batched_and_unbatched_agree():
    mats = stream_fixture()
    one = spectra.compute(make_stream(mats), PARAMS, ComputeContext(batch_bytes=0))
    many = spectra.compute(make_stream(mats), PARAMS, ComputeContext(batch_bytes=1 << 30))
    pd.testing.assert_frame_equal(one["values"], many["values"], rtol=1e-10)
    pd.testing.assert_frame_equal(one["matrices"], many["matrices"], rtol=1e-8)


def test_non_finite_matrix_gets_nan_metrics_and_no_values():
    mats = stream_fixture()
    out = spectra.compute(make_stream(mats), PARAMS, ComputeContext(batch_bytes=1 << 30))
    matrices = out["matrices"].set_index("tensor")
    bad = matrices.loc["nan"]
    assert bad["nonfinite"] == 2
    for key in ("alpha", "log_norm", "log_spectral_norm", "stable_rank", "effective_rank", "sigma_max"):
        assert math.isnan(bad[key]), key
    assert bad["alpha_warning"] == "non-finite values"
    assert "nan" not in set(out["values"]["tensor"])
    good = matrices.drop(index="nan")
    assert (good["nonfinite"] == 0).all()
    assert np.isfinite(good[["log_norm", "log_spectral_norm", "stable_rank", "effective_rank"]].to_numpy()).all()
    assert np.isfinite(good["alpha"].to_numpy()).all()   # 50 and 30 eigenvalues ≥ min_evals = 20
    # values: min(m, n) rows for each good matrix, nothing for the bad one
    counts = out["values"].groupby("tensor").size().to_dict()
    assert counts == {"a": 50, "b": 50, "c": 50, "d": 30, "e": 30}


def test_all_matrices_non_finite():
    t = torch.full((5, 4), float("nan"))
    out = spectra.compute(make_stream([("x", t)]), PARAMS)
    assert out["matrices"].loc[0, "nonfinite"] == 20
    assert out["values"].empty and list(out["values"].columns) == ["tensor", "index", "sigma"]


def test_select_takes_2d_float_matrices_only():
    infos = [TensorInfo("w", (4, 3), "float32"), TensorInfo("bias", (4,), "float32"),
             TensorInfo("ids", (4, 3), "int64"), TensorInfo("empty", (0, 3), "float16"),
             TensorInfo("conv", (4, 3, 3, 3), "float32"), TensorInfo("h", (2, 2), "bfloat16")]
    taken, skipped = select(infos)
    assert [i.name for i in taken] == ["w", "h"]
    assert [i.name for i in skipped] == ["bias", "ids", "empty", "conv"]
