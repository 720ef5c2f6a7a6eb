"""The only place that decomposes matrices (SVD, eigenvalues, QR, principal angles, norms): precision, batching.

No other module calls ``torch.linalg``, ``numpy.linalg`` or ``scipy.linalg`` (``tests/test_context.py``
checks), so how a matrix is decomposed, and on which device, is decided here.

Singular values come from one of two methods, both batched over same-shaped matrices:

* ``gram`` (default): eigenvalues of the smaller Gram matrix (WᵀW or WWᵀ) accumulated in float64 over
  row blocks. Absolute error ≈ 1e-8·σmax at worst (measured 3e-14·σmax on MiniLM's embedding), i.e.
  below an fp32 SVD's own rounding, for about half the time of an SVD and memory of one block plus
  the min(m, n)² Gram matrix. The eigenvalues of WᵀW are exactly the ESD that WeightWatcher fits.
* ``svd``: ``torch.linalg.svdvals`` in float32 (or float64 when asked) on the whole matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from subspace_atlas.errors import AtlasError
from subspace_atlas.options import METHODS

# What a decomposition raises on input it cannot take (LAPACK did not converge): one job's failure, not a bug.
ERRORS = (torch.linalg.LinAlgError, np.linalg.LinAlgError)

_BLOCK_BYTES = 32 << 20  # float64 bytes per block when accumulating a Gram matrix


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``t`` on ``device`` in ``dtype``, copied across in its stored dtype and converted there.

    ``t.to(device=cuda, dtype=float64)`` converts on the CPU before the copy: the CPU does the work and
    four times a bf16 matrix's bytes cross the bus. Measured on a Llama-2-7B-shaped checkpoint on an
    H100, that conversion was half of ``spectra --device cuda``.
    """
    return t.to(device).to(dtype)


@contextmanager
def single_threaded(enabled: bool = True) -> Iterator[None]:
    """Run torch and NumPy's BLAS on one thread inside (a pool of workers supplies the parallelism),
    restoring both after.

    LAPACK parallelises a small decomposition poorly (a 384 × 384 eigenproblem: 6 ms on one thread,
    12 ms on two), so on a CPU spreading matrices over cores beats spreading one matrix.
    """
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    if not enabled:
        yield
        return
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):  # only BLAS: limiting OpenMP too slows torch's side
            yield
    finally:
        torch.set_num_threads(previous)


def singular_values(mats: torch.Tensor, method: str = "gram", dtype: torch.dtype = torch.float32,
                    device: torch.device | None = None) -> torch.Tensor:
    """Singular values, descending, of a matrix ``(m, n)`` or a batch ``(B, m, n)``, as float64 on CPU.

    ``dtype`` is the precision of the ``svd`` method; ``gram`` works in float64 (σ agree with an SVD to
    ~1e-12 relative to σ_max), ``gram32`` in float32 (about 2.5× faster on a CPU, ~1e-6). A matrix holding
    NaN or Inf gets NaN singular values.
    """
    if method not in METHODS:
        raise AtlasError(f"unknown SVD method {method!r} (expected one of {', '.join(METHODS)})")
    device = device or mats.device
    single = mats.dim() == 2
    batch = mats.unsqueeze(0) if single else mats
    if method == "svd":
        values = _where_finite(to_device(batch, device, dtype), torch.linalg.svdvals)
    else:
        values = _gram_singular_values(batch, device, gram_dtype(method))
    values = values.to("cpu", torch.float64)
    return values[0] if single else values


def _gram_singular_values(batch: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """σ from eigenvalues of the min-side Gram matrix in ``dtype``, accumulated over row blocks."""
    return gram_sigma(gram(tall(batch), device, dtype))


def gram_dtype(method: str) -> torch.dtype:
    """The precision a Gram method works in."""
    return torch.float32 if method == "gram32" else torch.float64


def tall(batch: torch.Tensor) -> torch.Tensor:
    """The batch with rows ≥ cols (transposed if wide), so its Gram matrix is the smaller cols × cols."""
    return batch.transpose(-2, -1) if batch.shape[-2] < batch.shape[-1] else batch


def splittable(shape: tuple[int, ...]) -> bool:
    """A matrix far taller than wide, with a small Gram matrix (an embedding): worth spreading its Gram
    products over workers, since alone it is the longest task of a small model (MiniLM's embedding:
    a fifth of all the work, so on 16 cores it alone set the wall time)."""
    rows, cols = sorted(shape[-2:], reverse=True)
    return cols <= _SPLIT_MAX_COLS and rows >= _SPLIT_MIN_RATIO * cols


_SPLIT_MAX_COLS, _SPLIT_MIN_RATIO, _SPLIT_BLOCKS = 1024, 8, 16


def row_blocks(batch: torch.Tensor, dtype: torch.dtype) -> list[slice]:
    """The row blocks a tall batch's Gram matrix is summed over: ``_BLOCK_BYTES`` of ``dtype`` each, and
    for a ``splittable`` shape at most a 16th of the rows (≥ 256), so that it can be spread over workers.
    The blocks depend on the shape alone: split or not, the sum rounds the same."""
    count, rows, cols = batch.shape
    step = max(1, _BLOCK_BYTES // max(1, (torch.finfo(dtype).bits // 8) * cols * count))
    if splittable(batch.shape):
        step = min(step, max(256, -(-rows // _SPLIT_BLOCKS)))
    return [slice(start, start + step) for start in range(0, rows, step)]


def block_gram(block: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """XᵀX of every matrix in a tall block, in ``dtype`` on ``device``.

    On a CPU the product is NumPy's ``x.T @ x``, which BLAS computes as a symmetric rank-k update
    (syrk: one triangle, half a general product's arithmetic) and which releases the GIL, so worker
    threads run side by side.
    """
    block = to_device(block, device, dtype)
    if device.type != "cpu":
        return block.transpose(-2, -1) @ block
    out = torch.empty(block.shape[0], block.shape[-1], block.shape[-1], dtype=dtype)
    for g, x in zip(out.numpy(), block.numpy()):
        x = np.ascontiguousarray(x)
        np.matmul(x.T, x, out=g)
    return out


def gram(batch: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The Gram matrices of a tall batch, summed block by block in order (``gram_sum`` of the blocks).

    The batch crosses to ``device`` once, in its stored dtype; each block is converted there.
    """
    batch = batch.to(device)
    return gram_sum(block_gram(batch[:, rows], device, dtype) for rows in row_blocks(batch, dtype))


def gram_sum(blocks: Iterable[torch.Tensor]) -> torch.Tensor:
    """Block Gram matrices added up in the order given: the same rounding however the blocks were made.

    The sum accumulates in the first block's tensor (no copy of a Gram matrix per sum): pass blocks
    that nothing else reads afterwards, as ``block_gram`` makes them.
    """
    total = None
    for g in blocks:
        total = g if total is None else total.add_(g)
    return total


def gram_sigma(gram: torch.Tensor) -> torch.Tensor:
    """σ, descending, from a batch of Gram matrices (NaN for one holding NaN/Inf)."""
    evals = _where_finite(gram, torch.linalg.eigvalsh)  # ascending
    return evals.flip(-1).clamp_min(0).sqrt()


def _where_finite(batch: torch.Tensor, decompose) -> torch.Tensor:
    """``decompose`` each matrix of the batch; a matrix holding NaN/Inf gets all-NaN values instead.

    LAPACK refuses non-finite input ("failed to converge"); NaN/Inf in W always reaches its Gram
    matrix (through the diagonal), so checking the small Gram matrix is enough on that path.
    """
    finite = torch.isfinite(batch).flatten(1).all(1)
    if bool(finite.all()):
        return decompose(batch)
    out = torch.full(batch.shape[:1] + (min(batch.shape[-2:]),), float("nan"), dtype=batch.dtype,
                     device=batch.device)
    if bool(finite.any()):
        out[finite] = decompose(batch[finite])
    return out


def svd(mats: torch.Tensor, dtype: torch.dtype = torch.float32,
        device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``U, S, Vh`` of a matrix or a batch of same-shaped matrices, on ``device`` in ``dtype``.

    The result stays on ``device`` (callers reduce it there). A non-finite matrix is an error here:
    singular vectors of NaN have no meaning, and LAPACK would only say "failed to converge".
    """
    device = device or mats.device
    mats = to_device(mats, device, dtype)
    if not bool(torch.isfinite(mats).all()):
        raise AtlasError("matrix holds NaN or Inf values; its singular vectors are undefined")
    return torch.linalg.svd(mats, full_matrices=False)


def svdvals(mats: torch.Tensor) -> torch.Tensor:
    """Singular values, descending, of a matrix or a batch, where and in the dtype the matrices are."""
    return torch.linalg.svdvals(mats)


def qr(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reduced QR ``Q, R`` of a matrix, where and in the dtype it is."""
    return torch.linalg.qr(mat)


def frobenius(mat: torch.Tensor) -> float:
    """‖mat‖_F (the 2-norm of its entries), in the matrix's dtype."""
    return float(torch.linalg.norm(mat))


def factored_svd(left: torch.Tensor, right: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U, S, V`` of scale·left@right (left m × r, right r × n) in float64 without forming it: left = Q_B R_B
    and rightᵀ = Q_A R_A, so the triplets come from the r × r core scale·R_B R_Aᵀ; on ``left``'s device."""
    qb, rb = torch.linalg.qr(left.double())
    qa, ra = torch.linalg.qr(right.double().T)
    p, s, qh = torch.linalg.svd(scale * rb @ ra.T)
    return qb @ p, s, qa @ qh.T


def orthonormal(vectors: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis (d × r, float64) of the column span of ``vectors`` (d × n), numerically null
    directions (σ ≤ rtol·σmax) dropped."""
    if vectors.shape[1] == 0:
        return vectors.double()
    u, s, _ = torch.linalg.svd(vectors.double(), full_matrices=False)
    keep = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    return u[:, :keep]


def principal_angles(qa: torch.Tensor, qb: torch.Tensor) -> np.ndarray:
    """Principal angles (radians, ascending) between the spans of two orthonormal bases (cos θ_i = σ_i(Q_aᵀQ_b)),
    computed where the bases are."""
    if qa.shape[1] == 0 or qb.shape[1] == 0:
        return np.array([])
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(0, 1)
    return np.sort(np.arccos(cos.cpu().numpy()))


@dataclass(frozen=True)
class UpdatedSvd:
    """Top singular triplets of W0 + scale·L R, in coordinates of the bases ``[U0 P]`` and ``[V0 Q]``.

    ``x[:, j]`` holds u_j's coordinates: its first p entries are exactly U0ᵀu_j (P ⟂ U0), so how
    u_j aligns with every base vector is read off without forming u_j. Likewise ``y`` for v_j.
    """

    sigma: np.ndarray  # (k,) descending
    x: np.ndarray  # (p + rL, k)
    y: np.ndarray  # (p + rR, k)


def low_rank_update_svd(s0: torch.Tensor, u0: torch.Tensor, vh0: torch.Tensor, left: torch.Tensor,
                        right: torch.Tensor, scale: float, k: int, seed: int = 0) -> UpdatedSvd:
    """Top-k SVD of W = U0 diag(s0) Vh0 + scale·left@right without forming or decomposing W.

    With the base's thin SVD in hand, W = [U0 P] K [V0 Q]ᵀ where P, Q span what ``left`` and ``rightᵀ``
    add outside U0 and V0 (Brand's update), and K = diag(s0, 0) + scale·b aᵀ is a diagonal plus a
    rank-r matrix. Its top-k singular triplets come from Lanczos (ARPACK) on K's matvec, O((p + r)·r)
    per product, instead of an O(m·n·p) SVD of W; float64 throughout.
    """
    from scipy.sparse.linalg import LinearOperator, svds

    f64 = torch.float64
    u0, vh0, s0 = u0.to(f64), vh0.to(f64), s0.to(f64)
    left, right = left.to(f64), right.to(f64)
    b_in = u0.T @ left  # p × r
    a_in = vh0 @ right.T  # p × r
    b = torch.cat([b_in, _outside(left - u0 @ b_in, left)]).numpy()
    a = torch.cat([a_in, _outside(right.T - vh0.T @ a_in, right)]).numpy()
    d = s0.numpy()
    p, rows, cols = d.size, b.shape[0], a.shape[0]

    def matvec(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v).reshape(cols, -1)
        out = scale * (b @ (a.T @ v))
        out[:p] += d[:, None] * v[:p]
        return out

    def rmatvec(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v).reshape(rows, -1)
        out = scale * (a @ (b.T @ v))
        out[:p] += d[:, None] * v[:p]
        return out

    op = LinearOperator((rows, cols), matvec=matvec, rmatvec=rmatvec, matmat=matvec, rmatmat=rmatvec,
                        dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(min(rows, cols))
    x, sigma, yt = svds(op, k=k, tol=0, v0=start, solver="arpack")
    order = np.argsort(sigma)[::-1]
    return UpdatedSvd(sigma[order], x[:, order], yt[order].T)


def _outside(residual: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Coordinates of a residual (the part of ``factor`` outside the base) in an orthonormal basis of it.

    Returns the R of its QR (r × r), or nothing when the residual is only the rounding of an fp32 base
    (below 1e-6 of the factor: a square base spans everything).
    """
    if float(torch.linalg.norm(residual)) <= 1e-6 * float(torch.linalg.norm(factor)):
        return residual.new_zeros(0, residual.shape[1])
    return torch.linalg.qr(residual, mode="r")[1]


@dataclass(frozen=True)
class TopSvd:
    """The top-k singular triplets of a matrix and how they were found.

    ``bound`` is Wedin's a-posteriori bound on ‖sin Θ‖²_F / k between the returned subspaces and the
    exact top-k ones, i.e. on 1 − overlap (0 for an exact SVD).
    """

    u: torch.Tensor  # m × k, float32 on CPU
    s: torch.Tensor  # k, float64
    v: torch.Tensor  # n × k
    method: str  # "randomized" or "exact"
    iterations: int
    bound: float


def top_svd(mat: torch.Tensor, k: int, tol: float = 1e-4, block: int | None = None, max_iters: int = 40,
            seed: int = 0, device: torch.device | None = None) -> TopSvd:
    """Top-k singular triplets by randomized block Krylov (block Lanczos bidiagonalisation), stopped by an
    error bound rather than a fixed count.

    Each iteration multiplies W and Wᵀ by one block of ``block`` vectors (default max(k, 16)) and adds
    both to growing orthonormal Krylov bases U and V (fully re-orthogonalised); the Ritz triplets come
    from the small matrix Uᵀ W V. Their residual ‖Wᵀ U_k − V_k Σ_k‖_F (the other side's is 0 by
    construction) over the gap σ_k − σ_k+1 bounds how far the subspaces are from the exact ones
    (Wedin's theorem); iteration stops once that bound on 1 − overlap is below ``tol``. Krylov spaces
    converge with the square root of the gap that plain subspace iteration needs (Musco & Musco 2015):
    on slowly decaying spectra about half the products. A spectrum too flat at k to converge in time
    (judged from how fast the bound falls; e.g. a random matrix), a Krylov space grown to half the
    matrix, or a matrix narrow enough that it is cheaper, gets an exact SVD instead, so the result
    always matches the exact subspace to ``tol``. Float32 products, float64 for the small problems.
    """
    device = device or mat.device
    m, n = mat.shape
    k = max(1, min(k, m, n))
    b = block or max(k, 16)
    if 8 * b >= min(m, n):  # a thin SVD of something this narrow costs less than iterating
        return _exact_top(mat, k, device, 0)
    a = to_device(mat, device, torch.float32)
    if not bool(torch.isfinite(a).all()):
        raise AtlasError("matrix holds NaN or Inf values; its singular vectors are undefined")
    gen = torch.Generator(device=device).manual_seed(seed)
    v = torch.linalg.qr(torch.randn(n, b, generator=gen, device=device, dtype=torch.float32))[0]
    vs, avs, us, atus = [], [], [], []  # Krylov blocks V_j, W V_j, U_j, Wᵀ U_j
    bounds: list[float] = []
    it = 0
    for it in range(1, max_iters + 1):
        av = a @ v
        vs.append(v)
        avs.append(av)
        u = torch.linalg.qr(_orthogonal_to(us, av))[0]
        us.append(u)
        atus.append(a.T @ u)
        ub, vb = torch.cat(us, 1), torch.cat(vs, 1)
        p, s, qh = torch.linalg.svd((ub.T @ torch.cat(avs, 1)).double())  # Uᵀ W V: the Ritz triplets
        if s.numel() > k:
            resid = torch.cat(atus, 1).double() @ p[:, :k] - vb.double() @ (qh[:k].T * s[:k])
            gap = float(s[k - 1] - s[k])
            bound = float(resid.square().sum()) / gap**2 / k if gap > 0 else math.inf
            if bound <= tol:
                u_k = (ub.double() @ p[:, :k]).float()
                v_k = (vb.double() @ qh[:k].T).float()
                return TopSvd(u_k.cpu(), s[:k].cpu(), v_k.cpu(), "randomized", it, bound)
            bounds.append(bound)
            if len(bounds) >= 6:  # judged over the last 3 iterations: Krylov convergence is uneven early on
                rate = (bound / bounds[-4]) ** (1 / 3) if math.isfinite(bound) else math.inf
                if not rate < 1 or it + math.log(tol / bound) / math.log(rate) > max_iters:
                    break  # would not converge in time: a flat spectrum at k (e.g. a random matrix)
        if (it + 1) * b > min(m, n) // 2:
            break  # the Krylov space would hold half the matrix: the exact SVD is cheaper from here
        v = torch.linalg.qr(_orthogonal_to(vs, atus[-1]))[0]
    return _exact_top(a, k, device, it)


def _orthogonal_to(blocks: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``x`` with its components in the span of the orthonormal ``blocks`` removed (twice, for stability)."""
    if not blocks:
        return x
    q = torch.cat(blocks, 1)
    x = x - q @ (q.T @ x)
    return x - q @ (q.T @ x)


def _exact_top(mat: torch.Tensor, k: int, device: torch.device, iterations: int) -> TopSvd:
    u, s, vh = svd(mat, torch.float32, device)
    return TopSvd(u[:, :k].cpu(), s[:k].double().cpu(), vh[:k].T.cpu(), "exact", iterations, 0.0)
