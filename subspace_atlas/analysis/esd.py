"""Fits to an empirical spectral density (eigenvalues λ = σ² of WᵀW): power-law tail and Marchenko–Pastur bulk.

Pure NumPy/SciPy on a vector of eigenvalues; no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import integrate, optimize

_BLOCK_ELEMENTS = 1 << 20  # candidates × eigenvalues evaluated at once in the KS scan (8 MB per temporary)


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float
    xmin: float
    xmax: float
    ks_distance: float
    n_tail: int
    alpha_sigma: float


NO_FIT = PowerLawFit(math.nan, math.nan, math.nan, math.nan, 0, math.nan)


def fit_power_law(evals: np.ndarray, thresh: float = 1e-5, min_evals: int = 20) -> PowerLawFit:
    """Power-law tail fit, WeightWatcher's definition (Clauset–Shalizi–Newman, continuous).

    Eigenvalues ≤ ``thresh`` are dropped. Every eigenvalue but the largest is a candidate xmin; for each,
    alpha = 1 + n / Σ ln(λ_i / xmin) over the n eigenvalues ≥ xmin, and the KS distance is
    max |1 − (λ/xmin)^(1−alpha) − i/n| over the tail (i = 0 … n−1 in sorted order). The candidate with
    the smallest distance wins (the first, on ties). Fewer than ``min_evals`` eigenvalues: no fit.
    """
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[np.isfinite(x) & (x > thresh)]
    total = x.size
    if total < max(min_evals, 2):
        return NO_FIT
    logs = np.log(x)
    n = total - np.arange(total - 1, dtype=np.float64)            # tail sizes per candidate
    tail_log_sums = np.cumsum(logs[::-1])[::-1][:-1]              # Σ_{j ≥ i} ln λ_j
    # Σ ln(λ_j / xmin) is exactly 0 when the whole tail equals xmin (xmin == λmax, the data are
    # sorted); the difference of cumulative sums would leave rounding noise there and a junk alpha ~1e15.
    log_ratio_sums = np.where(x[:-1] == x[-1], 0.0, tail_log_sums - n * logs[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + n / log_ratio_sums
    distances = np.ones(total - 1)
    block = max(1, _BLOCK_ELEMENTS // total)
    j = np.arange(total)
    for start in range(0, total - 1, block):
        i = np.arange(start, min(start + block, total - 1))
        a = alphas[i][:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            model = 1.0 - np.exp((1.0 - a) * (logs[None, :] - logs[i][:, None]))
            empirical = (j[None, :] - i[:, None]) / n[i][:, None]
            gap = np.where(j[None, :] >= i[:, None], np.abs(model - empirical), 0.0)
        d = gap.max(axis=1)
        ok = np.isfinite(alphas[i]) & (alphas[i] > 1.0) & np.isfinite(d)
        distances[i] = np.where(ok, d, 1.0)
    best = int(np.argmin(distances))
    alpha = float(alphas[best])
    if not (np.isfinite(alpha) and alpha > 1.0):
        return NO_FIT
    tail = int(n[best])
    return PowerLawFit(alpha, float(x[best]), float(x[-1]), float(distances[best]), tail,
                       (alpha - 1.0) / math.sqrt(tail))


@dataclass(frozen=True)
class MarchenkoPasturFit:
    noise_sigma: float   # estimated entry standard deviation s of the noise bulk
    bulk_max: float      # bulk edge λ+ = N s² (1 + √β)²
    num_spikes: int      # eigenvalues above the bulk edge
    softrank: float      # λ+ / λmax (WeightWatcher's mp_softrank)


def fit_marchenko_pastur(evals: np.ndarray, rows: int, cols: int) -> MarchenkoPasturFit:
    """Marchenko–Pastur bulk by median matching (Gavish & Donoho 2014).

    Model: W = noise (iid entries, std s) + a few spikes. With N = max(rows, cols), β = min/max, the
    eigenvalues of WᵀW/N fill [s²(1−√β)², s²(1+√β)²] and their median is s²·μ_β, μ_β the MP median.
    A few spikes barely move the median, so s² = median(λ) / (N μ_β); spikes are eigenvalues above
    the bulk edge λ+ = N s² (1+√β)².
    """
    lam = np.asarray(evals, dtype=np.float64)
    lam = lam[np.isfinite(lam)]
    big, small = max(rows, cols), min(rows, cols)
    if lam.size == 0 or small < 2 or float(np.max(lam)) <= 0:
        return MarchenkoPasturFit(math.nan, math.nan, 0, math.nan)
    beta = small / big
    s2 = float(np.median(lam)) / (big * mp_median(beta))
    edge = big * s2 * (1.0 + math.sqrt(beta)) ** 2
    return MarchenkoPasturFit(math.sqrt(s2), edge, int(np.sum(lam > edge)), edge / float(np.max(lam)))


@lru_cache(maxsize=4096)
def mp_median(beta: float) -> float:
    """Median of the Marchenko–Pastur law with ratio ``beta`` ∈ (0, 1] and unit variance."""
    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(x: float) -> float:
        return math.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * math.pi * beta * x)

    def cdf_minus_half(t: float) -> float:
        return integrate.quad(density, lo, t, limit=200)[0] - 0.5

    return float(optimize.brentq(cdf_minus_half, lo + 1e-12, hi, xtol=1e-12))
