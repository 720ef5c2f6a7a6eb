"""Correlation traps and ``rand_distance``: each matrix against copies of it with its entries shuffled.

WeightWatcher 0.7.7, ``analyze(randomize=True)`` (``weightwatcher/weightwatcher.py``), read and re-derived:

* ``random_eigenvalues``: W (as float32, in its stored m × n layout) is flattened, shuffled with NumPy's
  global legacy RNG (``np.random.shuffle``) and reshaped; its eigenvalues λ = σ² (of WᵀW, not divided by N).
* ``apply_random_esd``: ``replicas`` (5) shuffled copies when min(m, n) < 100, else one, pooled:
  ``max_rand_eval`` is their largest λ. Then one FRESH shuffle for ``rand_distance`` = the Jensen–Shannon
  distance (natural log) between the sorted eigenvalues of W and of that copy, each read as a probability
  vector over rank (p_i = λ_(i) / Σλ; RMT_Util ``jensen_shannon_distance``), not as densities over λ;
  ``ww_softrank`` = max λ_rand / λmax and ``ww_maxdist`` = λmax − max λ_rand from the same copy.
* ``apply_mp_fit(random=True)`` → ``mp_fit``: the pooled shuffled λ are rescaled to mean 1 (λ̃ = λ·n/Σλ,
  ``rand_W_scale`` = √(n/Σλ)); a Marchenko–Pastur law of ratio Q = N/M (Q = 1: WeightWatcher's quarter-circle
  form on √λ̃) is fitted to their linear-kernel density by least squares over σ (RMT_Util
  ``fit_density_with_range``, ``resid_mp``); bulk edge λ+ = (σ(1 + 1/√Q))²; eigenvalues above
  λ+ + √(Q^-½ λ+^⅔ M^-⅔) (a Tracy–Widom margin) are the correlation traps (``rand_num_spikes`` =
  ``num_traps``), pooled over the replicas. Shuffling keeps an outsized entry but scatters every rank
  structure, so what stands out of the shuffled spectrum comes from a few large elements.

Per-matrix draws come from ``RandomState(seed + crc32(name))``, so a matrix's result does not depend on
what else was analysed, and seeding NumPy with that number reproduces WeightWatcher's draws exactly.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from scipy import optimize
from scipy.spatial.distance import jensenshannon

from subspace_atlas import linalg
from subspace_atlas.checkpoints import TensorInfo
from subspace_atlas.context import ComputeContext
from subspace_atlas.parallel import map_matrices
from subspace_atlas.specs.randomization import Params

_GRID_POINTS = 1000  # where the density is compared with the MP law (WeightWatcher's resid_mp)
_OUT_OF_BOUNDS = 1000.0  # residual per point of an MP law whose support misses the density's peak (resid_mp)


@dataclass(frozen=True)
class TrapFit:
    """A Marchenko–Pastur fit to a shuffled spectrum and the eigenvalues it leaves above its edge."""

    sigma_mp: float  # fitted σ, in units of the rescaled λ̃
    w_scale: float  # √(n / Σλ): λ̃ = w_scale² · λ
    bulk_max: float  # λ+, unscaled (λ units)
    bulk_min: float  # λ−, unscaled
    threshold: float  # λ+ plus the Tracy–Widom margin, unscaled: eigenvalues above it are traps
    mp_softrank: float  # λ+ / max λ


NO_FIT = TrapFit(math.nan, math.nan, math.nan, math.nan, math.inf, math.nan)


def matrix_seed(seed: int, name: str) -> int:
    """The seed of one matrix's shuffles: ``seed`` plus the CRC-32 of its name, stable across processes."""
    return (seed + zlib.crc32(name.encode())) % 2**32


def shuffled(w: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """A copy of ``w`` with its entries permuted uniformly at random (row-major, as WeightWatcher shuffles)."""
    flat = w.flatten()
    rng.shuffle(flat)
    return flat.reshape(w.shape)


def rand_distance(lam: np.ndarray, rand_lam: np.ndarray) -> float:
    """WeightWatcher's ``rand_distance``: Jensen–Shannon distance (natural log) between the two sorted eigenvalue
    lists, each normalised to sum 1 and compared rank by rank."""
    return float(jensenshannon(np.sort(lam), np.sort(rand_lam)))


def linear_kde(x: np.ndarray, grid: np.ndarray, bandwidth: float, block: int = 128) -> np.ndarray:
    """Density of the samples ``x`` at ``grid`` with the linear (triangular) kernel (1 − |u|/h)/h."""
    out = np.empty(grid.size)
    for start in range(0, grid.size, block):
        g = grid[start:start + block, None]
        out[start:start + block] = np.clip(1.0 - np.abs(g - x[None, :]) / bandwidth, 0.0, None).sum(1)
    return out / (x.size * bandwidth)


def bulk_density(x: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """The law WeightWatcher fits, evaluated at ``x`` (0 outside its support).

    Q > 1: Marchenko–Pastur of the eigenvalues, Q·√((λ+ − x)(x − λ−)) / (2π σ² x), λ± = σ²(1 ± 1/√Q)².
    Q = 1: WeightWatcher's quarter circle of the singular values, √(4 − x²) / (π σ²): σ scales its height
    only; the support stays [0, 2] (λ̃ has mean 1, so that is the σ = 1 law).
    """
    if q == 1.0:
        inside = x <= 2.0
        return np.where(inside, np.sqrt(np.where(inside, 4.0 - x**2, 0.0)) / (math.pi * sigma**2), 0.0)
    lo, hi = (sigma * (1 - 1 / math.sqrt(q))) ** 2, (sigma * (1 + 1 / math.sqrt(q))) ** 2
    inside = (x >= lo) & (x <= hi) & (x > 0)
    safe = np.where(inside, x, 1.0)
    return np.where(inside, q * np.sqrt(np.abs((hi - safe) * (safe - lo))) / (2 * math.pi * sigma**2 * safe), 0.0)


def _misfit(sigma: np.ndarray | float, grid: np.ndarray, density: np.ndarray, q: float, peak: float) -> float:
    """Σ (law − density)² over the grid; a Q > 1 law whose support [λ−, λ+] does not hold the density's peak,
    or reaches past the grid, scores ``_OUT_OF_BOUNDS`` per point."""
    sigma = float(np.ravel(sigma)[0])
    if q != 1.0:
        lo, hi = (sigma * (1 - 1 / math.sqrt(q))) ** 2, (sigma * (1 + 1 / math.sqrt(q))) ** 2
        if hi < peak or hi > grid[-1] or lo > peak:
            return _OUT_OF_BOUNDS**2 * grid.size
    return float(np.sum((bulk_density(grid, q, sigma) - density) ** 2))


def fit_traps(rand_lam: np.ndarray, rows: int, cols: int, params: Params) -> TrapFit:
    """Marchenko–Pastur fit to pooled shuffled eigenvalues and the trap threshold above it (see the module text).

    σ is searched on WeightWatcher's grid, 0.05 to 2 times σ0 = √(λ̃max) / (1 + 1/√Q) in steps of 0.01·σ0,
    then polished by Nelder–Mead (``scipy.optimize.brute``'s default finish).
    """
    lam = np.asarray(rand_lam, dtype=np.float64)
    big, small = max(rows, cols), min(rows, cols)
    total = float(lam.sum())
    if lam.size == 0 or total <= 0 or not np.isfinite(total):
        return NO_FIT
    scale2 = lam.size / total
    scaled = scale2 * lam
    q = big / small
    x = np.sqrt(scaled) if q == 1.0 else scaled
    grid = np.linspace(0.0, float(x.max()) + 0.5, _GRID_POINTS)
    density = linear_kde(x, grid, params.bandwidth)
    keep = density > params.density_floor
    grid, density = grid[keep], density[keep]
    peak = float(grid[np.argmax(density)])
    sigma0 = math.sqrt(float(scaled.max())) / (1 + 1 / math.sqrt(q))
    found = optimize.brute(_misfit, (slice(0.05 * sigma0, 2.0 * sigma0, 0.01 * sigma0),),
                           args=(grid, density, q, peak), full_output=True)
    sigma = float(np.ravel(found[0])[0])
    bulk_max = (sigma * (1 + 1 / math.sqrt(q))) ** 2
    bulk_min = (sigma * (1 - 1 / math.sqrt(q))) ** 2
    margin = math.sqrt(bulk_max ** (2 / 3) * small ** (-2 / 3) / math.sqrt(q))
    return TrapFit(sigma, math.sqrt(scale2), bulk_max / scale2, bulk_min / scale2, (bulk_max + margin) / scale2,
                   bulk_max / float(scaled.max()))


def compute(stream: Iterable[tuple[TensorInfo, torch.Tensor]], params: Params,
            context: ComputeContext = ComputeContext()) -> dict[str, pd.DataFrame]:
    """Shuffled spectra of a stream of matrices: ``matrices`` (one row each), ``values`` (σ of W and of the
    ``rand_distance`` copy, rank by rank) and ``traps`` (the shuffled σ above the trap threshold).

    ``context.workers`` matrices are handled at once, each on one thread (``parallel.map_matrices``; default:
    torch's thread count on a CPU), while their float32 bytes and their shuffled copies' stay within
    ``_INFLIGHT_BYTES`` (a larger matrix runs alone). A matrix and its copies are decomposed together on
    ``context.device`` while they stay within ``context.batch_bytes`` (one at a time otherwise). A matrix with
    NaN/Inf gets a row with ``nonfinite`` > 0 and NaN metrics, and nothing in the other tables.
    """
    device = context.torch_device()
    rows, values, traps = [], [], []
    work = partial(_one, params=params, device=device, batch_bytes=context.batch_bytes)
    for row, value, trap in map_matrices(work, stream, lambda item: 3 * 4 * item[1].numel(), lambda item: 1,
                                         device, context.workers, _INFLIGHT_BYTES, lambda n: None):
        rows.append(row)
        values += value
        traps += trap
    return {"matrices": pd.DataFrame(rows, columns=_MATRIX_COLUMNS),
            "values": _frame(values, {"tensor": str, "index": "int64", "sigma": "float64", "rand_sigma": "float64"}),
            "traps": _frame(traps, {"tensor": str, "replica": "int64", "index": "int64", "sigma": "float64",
                                    "lambda": "float64"})}


_INFLIGHT_BYTES = 256 << 20  # float32 bytes of matrices (W, a shuffled copy, its flattening) being worked on at once


_MATRIX_COLUMNS = ["tensor", "rows", "cols", "dtype", "nonfinite", "n_evals", "replicas", "lambda_max",
                   "max_rand_eval", "num_above_rand", "rand_distance", "ww_softrank", "ww_maxdist", "num_traps",
                   "rand_sigma_mp", "rand_mp_softrank", "rand_w_scale", "rand_bulk_max", "rand_bulk_min",
                   "rand_trap_threshold"]


def _one(item: tuple[TensorInfo, torch.Tensor], params: Params, device: torch.device,
         batch_bytes: int) -> tuple[dict, list[pd.DataFrame], list[pd.DataFrame]]:
    """One matrix's row, value table and trap table."""
    info, tensor = item
    m, n = info.shape
    w = tensor.detach().to("cpu", torch.float32).numpy()  # WeightWatcher shuffles the float32 copy
    bad = int(w.size - np.count_nonzero(np.isfinite(w)))
    row = {"tensor": info.name, "rows": m, "cols": n, "dtype": info.dtype, "nonfinite": bad}
    if bad:
        return row, [], []
    copies = params.replicas if min(m, n) < params.replicas_below else 1
    rng = np.random.RandomState(matrix_seed(params.seed, info.name))
    # W, then the pooled copies, then the rand_distance copy: WeightWatcher's order of draws
    sigma = _singular_values(_with_shuffles(w, rng, copies + 1), device, batch_bytes)
    lam, pooled, rand_lam = sigma[0] ** 2, sigma[1:-1] ** 2, sigma[-1] ** 2
    lam_max, max_rand = float(lam.max()), float(pooled.max())
    fit = fit_traps(pooled.ravel(), m, n, params)
    row.update({
        "n_evals": int(lam.size),
        "replicas": copies,
        "lambda_max": lam_max,
        "max_rand_eval": max_rand,
        "num_above_rand": int(np.sum(lam > max_rand)),
        "rand_distance": rand_distance(lam, rand_lam) if lam_max > 0 else math.nan,
        "ww_softrank": float(rand_lam.max()) / lam_max if lam_max > 0 else math.nan,
        "ww_maxdist": lam_max - float(rand_lam.max()),
        "num_traps": int(np.sum(pooled > fit.threshold)),
        "rand_sigma_mp": fit.sigma_mp,
        "rand_mp_softrank": fit.mp_softrank,
        "rand_w_scale": fit.w_scale,
        "rand_bulk_max": fit.bulk_max,
        "rand_bulk_min": fit.bulk_min,
        "rand_trap_threshold": fit.threshold,
    })
    value = pd.DataFrame({"tensor": info.name, "index": np.arange(lam.size), "sigma": sigma[0],
                          "rand_sigma": sigma[-1]})
    replica, index = np.nonzero(pooled > fit.threshold)
    trap = pd.DataFrame({"tensor": info.name, "replica": replica.astype("int64"), "index": index.astype("int64"),
                         "sigma": sigma[1:-1][replica, index], "lambda": pooled[replica, index]})
    return row, [value], [trap] if len(trap) else []


def _with_shuffles(w: np.ndarray, rng: np.random.RandomState, count: int) -> Iterator[np.ndarray]:
    """``w`` and then ``count`` shuffled copies of it, drawn one at a time."""
    yield w
    for _ in range(count):
        yield shuffled(w, rng)


def _singular_values(mats: Iterator[np.ndarray], device: torch.device, batch_bytes: int) -> np.ndarray:
    """σ (descending, float64 Gram eigenvalues via ``linalg``) of same-shaped matrices, one row each, decomposed
    in groups of at most ``batch_bytes`` (at least one matrix per group)."""
    out, group, size = [], [], 0
    for mat in mats:
        if group and size + mat.nbytes > batch_bytes:
            out.append(linalg.singular_values(torch.from_numpy(np.stack(group)), "gram", device=device).numpy())
            group, size = [], 0
        group.append(mat)
        size += mat.nbytes
    out.append(linalg.singular_values(torch.from_numpy(np.stack(group)), "gram", device=device).numpy())
    return np.concatenate(out)


def _frame(parts: list[pd.DataFrame], dtypes: dict[str, object]) -> pd.DataFrame:
    """The parts stacked, or an empty table with the columns and dtypes they would have."""
    if parts:
        return pd.concat(parts, ignore_index=True)
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in dtypes.items()})
