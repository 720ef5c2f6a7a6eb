"""linalg.singular_values against NumPy's LAPACK SVD and planted ground truths (device choice: test_context).

Tolerances. ``gram`` takes eigenvalues of WᵀW accumulated in float64: an eigenvalue of the Gram
matrix is accurate to ≈ ε64·σmax² ≈ 2e-16·σmax² in absolute terms, so σ = √λ is accurate to
≈ √(ε64)·σmax ≈ 1.5e-8·σmax at worst (the worst case is a σ near zero; large σ are far better).
1e-6·σmax leaves a 60× margin over that bound yet is tight enough to catch a float32 Gram matrix
(√ε32 ≈ 3e-4·σmax), a missing block, a wrong side, a wrong order or a batch mix-up.
``svd`` run in float64 is backward stable (error ≈ ε64·σmax), so the same 1e-6·σmax applies.
``svd`` run in float32 (its default) is only as good as an fp32 LAPACK SVD, whose error bound is
p(m, n)·ε32·σmax with ε32 ≈ 1.2e-7 and p a low-degree polynomial of the size; measured up to
2.7e-6·σmax on a 40×300 Gaussian. Those cases use 2e-5·σmax (≈ 170 ε32) and say so.
``gram32`` is the Gram method in float32: the same √ε argument gives ≈ √(ε32)·σmax ≈ 3.5e-4·σmax for a σ
near zero, so 2e-3·σmax; σ above a tenth of σmax are relatively accurate to ≈ ε32 times a small factor,
checked at 2e-5 relative (which a float16 product or a missing block would fail).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subspace_atlas import linalg
from subspace_atlas.errors import AtlasError

pytestmark = pytest.mark.unit

TOL = 1e-6        # × σmax, float64 paths (see module docstring)
TOL_FP32 = 2e-5   # × σmax, svd in float32 (see module docstring)
TOL_GRAM32 = 2e-3  # × σmax, gram32 at worst (a σ near zero); large σ: 2e-5 relative

SHAPES = [(300, 40), (40, 300), (64, 64)]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
def device(request) -> torch.device:
    """Every numerical test runs on the CPU, and on the GPU where there is one."""
    return torch.device(request.param)


def reference(a: np.ndarray) -> np.ndarray:
    """NumPy/LAPACK singular values in float64, descending; batched over leading axes."""
    return np.linalg.svd(np.asarray(a, dtype=np.float64), compute_uv=False)


def assert_close(got: torch.Tensor, want: np.ndarray, tol: float) -> None:
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.float64 and got.device.type == "cpu"
    got_np = got.numpy()
    assert got_np.shape == want.shape
    scale = want.max(axis=-1, keepdims=True)                 # σmax per matrix
    err = np.abs(got_np - want) / scale
    assert err.max() <= tol, f"max error {err.max():.3g}·σmax > {tol:g}·σmax"


def random_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))   # Haar-distributed


def planted(rng: np.random.Generator, sigma: np.ndarray, m: int, n: int) -> np.ndarray:
    """W = U diag(σ) Vᵀ with random orthogonal U (m×m), V (n×n); len(σ) = min(m, n)."""
    k = min(m, n)
    u = random_orthogonal(rng, m)[:, :k]
    v = random_orthogonal(rng, n)[:, :k]
    return (u * sigma) @ v.T


# --------------------------------------------------------------------------- Gaussian matrices

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("method,dtype", [("gram", torch.float32), ("svd", torch.float64)])
def test_single_matrix_matches_numpy(shape, method, dtype, device):
    a = np.random.default_rng(1).standard_normal(shape)
    got = linalg.singular_values(torch.from_numpy(a), method, dtype, device=device)
    assert got.shape == (min(shape),)
    assert_close(got, reference(a), TOL)
    assert np.all(np.diff(got.numpy()) <= 0), "not descending"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("method,dtype", [("gram", torch.float32), ("svd", torch.float64)])
def test_batch_matches_numpy_per_matrix(shape, method, dtype, device):
    rng = np.random.default_rng(2)
    # different scales per matrix: a batch mix-up or a shared normalisation would show
    a = rng.standard_normal((4, *shape)) * np.array([1.0, 10.0, 0.1, 3.0])[:, None, None]
    got = linalg.singular_values(torch.from_numpy(a), method, dtype, device=device)
    assert got.shape == (4, min(shape))
    assert_close(got, reference(a), TOL)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_svd_float32_default_matches_numpy_to_fp32_accuracy(shape, device):
    a = np.random.default_rng(3).standard_normal((2, *shape))
    got = linalg.singular_values(torch.from_numpy(a), "svd", device=device)   # default dtype float32
    assert_close(got, reference(a), TOL_FP32)


def test_gram_block_accumulation_over_many_row_blocks(monkeypatch, device):
    """Force blocks of a few rows: the Gram matrix must still be the sum over all of them."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 302, 37))              # 302 = 43·7 + 1: the last block is one row
    cols, count = 37, 3
    monkeypatch.setattr(linalg, "_BLOCK_BYTES", 8 * cols * count * 7)   # 7 rows per block
    got = linalg.singular_values(torch.from_numpy(a), "gram", device=device)
    assert_close(got, reference(a), TOL)
    wide = np.swapaxes(a, -1, -2).copy()               # 37 × 301: transposed inside, same σ
    assert_close(linalg.singular_values(torch.from_numpy(wide), "gram", device=device), reference(a), TOL)


# --------------------------------------------------------------------------- low-precision inputs

@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("method,dtype,tol", [("gram", torch.float32, TOL),
                                              ("svd", torch.float64, TOL),
                                              ("svd", torch.float32, TOL_FP32)])
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_low_precision_inputs_match_numpy_on_upcast_values(in_dtype, method, dtype, tol, batched, device):
    rng = np.random.default_rng(5)
    shape = (3, 120, 50) if batched else (50, 120)
    t = torch.from_numpy(rng.standard_normal(shape)).to(in_dtype)
    want = reference(t.to(torch.float64).numpy())     # the same values, exactly upcast
    got = linalg.singular_values(t, method, dtype, device=device)
    assert_close(got, want, tol)


# --------------------------------------------------------------------------- structured matrices

@pytest.mark.parametrize("method,dtype", [("gram", torch.float32), ("svd", torch.float64)])
def test_exactly_rank_deficient(method, dtype, device):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((50, 3)) @ rng.standard_normal((3, 50))   # rank 3
    got = linalg.singular_values(torch.from_numpy(a), method, dtype, device=device).numpy()
    want = reference(a)
    smax = want[0]
    assert np.all(got >= 0)
    assert np.all(got[3:] <= TOL * smax), f"zero σ recovered as {got[3:].max() / smax:.3g}·σmax"
    np.testing.assert_allclose(got[:3], want[:3], rtol=0, atol=TOL * smax)
    assert got[2] > 1e-3 * smax   # the three real ones are real


@pytest.mark.parametrize("method,dtype", [("gram", torch.float32), ("svd", torch.float64)])
def test_diagonal_with_planted_sigma_over_eight_decades(method, dtype, device):
    rng = np.random.default_rng(7)
    sigma = np.logspace(-4, 4, 40)                     # σmin/σmax = 1e-8
    d = np.zeros((60, 40))
    d[np.arange(40), np.arange(40)] = rng.permutation(sigma) * rng.choice([-1.0, 1.0], 40)
    got = linalg.singular_values(torch.from_numpy(d), method, dtype, device=device).numpy()
    want = np.sort(sigma)[::-1]
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL * want[0])
    # above the Gram method's √ε floor the large ones are relatively exact too
    big = want > 1e-3 * want[0]
    np.testing.assert_allclose(got[big], want[big], rtol=1e-9)


@pytest.mark.parametrize("method,dtype", [("gram", torch.float32), ("svd", torch.float64)])
@pytest.mark.parametrize("shape", [(64, 64), (80, 30)], ids=["square", "tall"])
def test_orthogonal_columns_have_unit_sigma(method, dtype, shape, device):
    q = random_orthogonal(np.random.default_rng(8), shape[0])[:, :shape[1]]
    got = linalg.singular_values(torch.from_numpy(q), method, dtype, device=device).numpy()
    np.testing.assert_allclose(got, np.ones(shape[1]), rtol=0, atol=TOL)


@pytest.mark.parametrize("method,dtype", [("gram", torch.float32), ("svd", torch.float64)])
@pytest.mark.parametrize("m,n", [(90, 60), (60, 90)])
def test_planted_inverse_sqrt_spectrum(method, dtype, m, n, device):
    rng = np.random.default_rng(9)
    k = min(m, n)
    sigma = np.arange(1, k + 1, dtype=np.float64) ** -0.5
    w = planted(rng, sigma, m, n)
    got = linalg.singular_values(torch.from_numpy(w), method, dtype, device=device).numpy()
    np.testing.assert_allclose(got, sigma, rtol=0, atol=TOL * sigma[0])


def test_unknown_method_is_an_atlas_error():
    with pytest.raises(AtlasError, match="unknown SVD method"):
        linalg.singular_values(torch.zeros(3, 3), "qr")


def test_explicit_cpu_device_gives_the_same_values():
    a = np.random.default_rng(10).standard_normal((2, 30, 20))
    got = linalg.singular_values(torch.from_numpy(a), "gram", device=torch.device("cpu"))
    assert_close(got, reference(a), TOL)


@pytest.mark.parametrize("method", ["gram", "gram32", "svd"])
def test_non_finite_matrices_get_nan_values_and_the_rest_are_exact(method, device):
    rng = np.random.default_rng(11)
    mats = rng.standard_normal((3, 40, 30))
    mats[1, 0, 0] = np.nan
    mats[2, 5, 7] = np.inf
    got = linalg.singular_values(torch.tensor(mats, dtype=torch.float32), method, device=device).numpy()
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all()
    ref = np.linalg.svd(mats[0].astype(np.float32).astype(np.float64), compute_uv=False)
    tol = {"gram32": TOL_GRAM32, "svd": TOL_FP32}.get(method, TOL)  # svd runs in float32 by default
    np.testing.assert_allclose(got[0], ref, atol=tol * ref[0])


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (64, 64), (4, 2000, 96)], ids=str)
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gram32_matches_numpy_within_float32_accuracy(shape, in_dtype, device):
    rng = np.random.default_rng(12)
    t = torch.from_numpy(rng.standard_normal(shape) * np.linspace(0.1, 3, shape[-1])).to(in_dtype)
    want = reference(t.to(torch.float64).numpy())
    got = linalg.singular_values(t, "gram32", device=device)
    assert_close(got, want, TOL_GRAM32)
    big = want > 0.1 * want.max(axis=-1, keepdims=True)
    np.testing.assert_allclose(got.numpy()[big], want[big], rtol=2e-5)
    # and the float64 Gram path is still ≥ 100× closer
    assert_close(linalg.singular_values(t, "gram", device=device), want, TOL)


def test_gram32_over_many_row_blocks_equals_one_block(monkeypatch, device):
    t = torch.from_numpy(np.random.default_rng(13).standard_normal((2, 500, 30))).float()
    whole = linalg.singular_values(t, "gram32", device=device)
    monkeypatch.setattr(linalg, "_BLOCK_BYTES", 4 * 30 * 2 * 7)  # 7 rows per block: 72 blocks
    np.testing.assert_allclose(linalg.singular_values(t, "gram32", device=device).numpy(), whole.numpy(), rtol=1e-5,
                               atol=1e-6 * float(whole.max()))
