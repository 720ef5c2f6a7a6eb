"""Singular-value spectra of every 2-D weight matrix, with WeightWatcher's metrics.

Per matrix, from σ (all singular values) and λ = σ² (eigenvalues of WᵀW, not normalised by N):
alpha (power-law tail, see ``esd.fit_power_law``), alpha_weighted = alpha·log10 λmax,
log_norm = log10 Σλ, log_spectral_norm = log10 λmax, stable_rank = Σλ / λmax,
log_alpha_norm = log10 Σλ^alpha, effective_rank = exp(H(σ/Σσ)) (Roy & Vetterli), and a
Marchenko–Pastur bulk fit (noise level, bulk edge, spikes above it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from subspace_atlas import linalg
from subspace_atlas.analysis.esd import fit_marchenko_pastur, fit_power_law
from subspace_atlas.checkpoints import TensorInfo, select_matrices
from subspace_atlas.parallel import thread_pool

NAME = "spectra"
TABLES = ("matrices", "values")
SCHEMA_VERSION = 1
DESCRIPTION = "singular-value spectra and WeightWatcher metrics of every 2-D weight matrix"

# WeightWatcher's reading of alpha (their README): below 2 over-trained, above 6 under-trained.
ALPHA_LOW, ALPHA_HIGH = 2.0, 6.0


@dataclass(frozen=True)
class Params:
    method: str = field(default="gram", metadata={
        "choices": linalg.METHODS,
        "help": "gram: eigenvalues of the float64 Gram matrix (default); gram32: the same in float32, "
                "about 2.5× faster on a CPU (σ to ~1e-6 of σ_max); svd: torch svdvals"})
    svd_dtype: str = field(default="float32", metadata={
        "choices": ("float32", "float64"), "help": "precision of --method svd"})
    evals_thresh: float = field(default=1e-5, metadata={
        "help": "eigenvalues at or below this are left out of the power-law fit (WeightWatcher's 1e-5)"})
    min_evals: int = field(default=20, metadata={
        "help": "fewer eigenvalues above the threshold than this: no power-law fit"})


def metrics(sigma: np.ndarray, rows: int, cols: int, params: Params) -> dict[str, float | int | str]:
    """Every per-matrix metric from the singular values (any order)."""
    sigma = np.sort(np.asarray(sigma, dtype=np.float64))[::-1]
    lam = sigma**2
    lam_max, lam_sum = float(lam[0]), float(lam.sum())
    fit = fit_power_law(lam, params.evals_thresh, params.min_evals)
    mp = fit_marchenko_pastur(lam, rows, cols)
    p = sigma[sigma > 0] / sigma.sum() if sigma.sum() > 0 else np.array([1.0])
    with np.errstate(divide="ignore"):
        log10_max = math.log10(lam_max) if lam_max > 0 else -math.inf
        row = {
            "n_evals": int(lam.size),
            "sigma_max": float(sigma[0]),
            "alpha": fit.alpha,
            "alpha_weighted": fit.alpha * log10_max,
            "log_norm": math.log10(lam_sum) if lam_sum > 0 else -math.inf,
            "log_spectral_norm": log10_max,
            "stable_rank": lam_sum / lam_max if lam_max > 0 else math.nan,
            "log_alpha_norm": _log_alpha_norm(lam, fit.alpha) if fit.n_tail else math.nan,
            "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
            "xmin": fit.xmin,
            "xmax": fit.xmax,
            "ks_distance": fit.ks_distance,
            "n_tail": fit.n_tail,
            "alpha_sigma": fit.alpha_sigma,
            "mp_noise_sigma": mp.noise_sigma,
            "mp_bulk_max": mp.bulk_max,
            "mp_softrank": mp.softrank,
            "num_spikes": mp.num_spikes,
        }
    row["alpha_warning"] = ("over-trained" if fit.alpha < ALPHA_LOW else
                            "under-trained" if fit.alpha > ALPHA_HIGH else "")
    return row


def _log_alpha_norm(lam: np.ndarray, alpha: float) -> float:
    """log10 Σλ^alpha, as alpha·log10 λmax + log10 Σ(λ/λmax)^alpha so a huge alpha cannot overflow."""
    lam_max = float(lam.max())
    return alpha * math.log10(lam_max) + float(np.log10(np.sum((lam[lam > 0] / lam_max) ** alpha)))


def compute(stream: Iterable[tuple[TensorInfo, torch.Tensor]], params: Params,
            device: torch.device | None = None, batch_bytes: int = 0,
            workers: int | None = None) -> dict[str, pd.DataFrame]:
    """Spectra of a stream of matrices; same-shaped neighbours are decomposed together up to ``batch_bytes``.

    On a CPU, ``workers`` matrices (default: torch's thread count) are decomposed at once, each on one
    thread: LAPACK parallelises a 384 × 384 eigenproblem poorly (measured 6 ms on one thread, 12 ms on
    two), so spreading matrices over cores beats spreading one matrix. Up to 8 batches per worker
    queue up, so one long matrix does not idle the other workers, but never more than
    ``_INFLIGHT_BYTES`` (or one batch) at once, so memory stays near the largest matrix.
    A matrix with NaN/Inf gets a row with ``nonfinite`` > 0 and NaN metrics, and no singular values.
    """
    device = device or torch.device("cpu")
    workers = workers or (torch.get_num_threads() if device.type == "cpu" else 1)
    done: list[tuple[list[dict], list[pd.DataFrame]]] = []
    pending: deque = deque()
    inflight = 0
    with linalg.single_threaded(workers > 1), thread_pool(workers) as pool:
        for batch in _batches(stream, batch_bytes):
            size = sum(t.numel() * t.element_size() for _, t in batch)
            while pending and (len(pending) >= 8 * workers or inflight + size > _INFLIGHT_BYTES):
                future, held = pending.popleft()
                done.append(future.result())
                inflight -= held
            pending.append((pool.submit(_decompose, batch, params, device), size))
            inflight += size
            del batch
        done += [future.result() for future, _ in pending]
    rows = [row for batch_rows, _ in done for row in batch_rows]
    values = [frame for _, frames in done for frame in frames]
    value_table = (pd.concat(values, ignore_index=True) if values
                   else pd.DataFrame({"tensor": pd.Series(dtype=str), "index": pd.Series(dtype="int64"),
                                      "sigma": pd.Series(dtype="float64")}))
    return {"matrices": pd.DataFrame(rows), "values": value_table}


_INFLIGHT_BYTES = 64 << 20  # bytes of matrices being decomposed at once; a larger one runs alone


def _decompose(batch: list[tuple[TensorInfo, torch.Tensor]], params: Params,
               device: torch.device) -> tuple[list[dict], list[pd.DataFrame]]:
    """Singular values and metrics of one batch of same-shaped matrices: (matrix rows, value tables)."""
    mats = [t for _, t in batch]
    stacked = mats[0].unsqueeze(0) if len(mats) == 1 else torch.stack([m.to(device) for m in mats])
    out = linalg.singular_values(stacked, params.method, getattr(torch, params.svd_dtype), device).numpy()
    # NaN/Inf anywhere in W reaches its singular values (every Gram entry it touches, and the
    # diagonal through its square), so the entries are counted only for a matrix whose σ are not finite.
    bad = [0 if np.isfinite(sigma).all() else _nonfinite(m) for m, sigma in zip(mats, out)]
    sigmas = {k: sigma for k, sigma in enumerate(out) if bad[k] == 0}
    rows, values = [], []
    for k, (info, _) in enumerate(batch):
        m, n = info.shape
        row = {"tensor": info.name, "rows": m, "cols": n, "dtype": info.dtype, "nonfinite": bad[k]}
        if k in sigmas:
            row.update(metrics(sigmas[k], m, n, params))
            values.append(pd.DataFrame({"tensor": info.name, "index": np.arange(sigmas[k].size),
                                        "sigma": sigmas[k]}))
        else:
            row["alpha_warning"] = "non-finite values"
        rows.append(row)
    return rows, values


def _nonfinite(matrix: torch.Tensor, block_elements: int = 1 << 22) -> int:
    """How many NaN/Inf entries a matrix holds, checked in row blocks.

    ``torch.isfinite`` on a whole bf16 matrix upcasts it (measured: +316 MB for a 32000 × 2048 bf16
    embedding); blocks keep that temporary small.
    """
    rows = max(1, block_elements // max(1, matrix.shape[-1]))
    return sum(int(block.numel() - torch.isfinite(block).sum()) for block in matrix.split(rows, dim=0))


def _batches(stream: Iterable[tuple[TensorInfo, torch.Tensor]],
             batch_bytes: int) -> Iterator[list[tuple[TensorInfo, torch.Tensor]]]:
    """Group consecutive same-shaped matrices while their fp32 size stays within ``batch_bytes``.

    A batch that cannot grow is handed on at once rather than after looking at the next matrix, so
    without batching no matrix is held beyond its own turn (memory stays near one matrix).
    """
    batch: list[tuple[TensorInfo, torch.Tensor]] = []
    for info, tensor in stream:
        if batch and info.shape != batch[0][0].shape:
            yield batch
            batch = []
        batch.append((info, tensor))
        if 4 * tensor.numel() * (len(batch) + 1) > batch_bytes:
            yield batch
            batch = []
    if batch:
        yield batch


select = select_matrices
