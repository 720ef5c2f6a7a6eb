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
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

from subspace_atlas import linalg
from subspace_atlas.analysis.esd import fit_marchenko_pastur, fit_power_law
from subspace_atlas.checkpoints import TensorInfo
from subspace_atlas.context import ComputeContext
from subspace_atlas.parallel import thread_pool
from subspace_atlas.specs.spectra import Params

# WeightWatcher's reading of alpha (their README): below 2 over-trained, above 6 under-trained.
ALPHA_LOW, ALPHA_HIGH = 2.0, 6.0


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
            context: ComputeContext = ComputeContext()) -> dict[str, pd.DataFrame]:
    """Spectra of a stream of matrices on ``context.device``; same-shaped neighbours are decomposed together
    up to ``context.batch_bytes``.

    On a GPU, matrices are decomposed one batch at a time while ``context.workers`` CPU threads (default:
    torch's thread count) fit the spectra. On a CPU, ``workers`` matrices are decomposed at once, each on one
    thread: LAPACK parallelises a 384 × 384 eigenproblem poorly (measured 6 ms on one thread, 12 ms on
    two), so spreading matrices over cores beats spreading one matrix. Up to 8 batches per worker
    queue up, so one long matrix does not idle the other workers, but never more than
    ``_INFLIGHT_BYTES`` (or one batch) at once, so memory stays near the largest matrix.
    A matrix with NaN/Inf gets a row with ``nonfinite`` > 0 and NaN metrics, and no singular values.
    """
    device, batch_bytes = context.torch_device(), context.batch_bytes
    workers = context.workers or torch.get_num_threads()
    done = _on_cpu(stream, params, batch_bytes, workers) if device.type == "cpu" else \
        _on_gpu(stream, params, device, batch_bytes, workers)
    rows = [row for batch_rows, _ in done for row in batch_rows]
    values = [frame for _, frames in done for frame in frames]
    value_table = (pd.concat(values, ignore_index=True) if values
                   else pd.DataFrame({"tensor": pd.Series(dtype=str), "index": pd.Series(dtype="int64"),
                                      "sigma": pd.Series(dtype="float64")}))
    return {"matrices": pd.DataFrame(rows), "values": value_table}


_INFLIGHT_BYTES = 64 << 20  # bytes of matrices being decomposed at once; a larger one runs alone
_Done = list[tuple[list[dict], list[pd.DataFrame]]]


def _on_cpu(stream: Iterable[tuple[TensorInfo, torch.Tensor]], params: Params, batch_bytes: int,
            workers: int) -> _Done:
    """Each worker thread decomposes and fits whole batches, on one BLAS thread each; a ``splittable``
    matrix's Gram products are spread over all of them."""
    cpu = torch.device("cpu")
    done: _Done = []
    pending: deque = deque()
    inflight = 0
    with linalg.single_threaded(workers > 1), thread_pool(workers) as pool:
        for batch in _batches(stream, batch_bytes):
            size = sum(t.numel() * t.element_size() for _, t in batch)
            while pending and (len(pending) >= 8 * workers or inflight + size > _INFLIGHT_BYTES):
                future, held = pending.popleft()
                done.append(future.result())
                inflight -= held
            split = workers > 1 and params.method != "svd" and linalg.splittable(batch[0][0].shape)
            pending.append((_split(pool, batch, params) if split else pool.submit(_decompose, batch, params, cpu),
                            size))
            inflight += size
            del batch
        done += [future.result() for future, _ in pending]
    return done


def _split(pool: ThreadPoolExecutor, batch: list[tuple[TensorInfo, torch.Tensor]], params: Params) -> Future:
    """One task per row block of the batch's Gram matrices, then one that sums them in order, solves and fits.

    The pool starts tasks in the order they were submitted, so by the time the last task runs every
    block task has started: its wait cannot deadlock the pool.
    """
    cpu, dtype = torch.device("cpu"), linalg.gram_dtype(params.method)
    tall = linalg.tall(_stack(batch, cpu))
    blocks = [pool.submit(linalg.block_gram, tall[:, rows], cpu, dtype) for rows in linalg.row_blocks(tall, dtype)]

    def join() -> tuple[list[dict], list[pd.DataFrame]]:
        gram = linalg.gram_sum(block.result() for block in blocks)
        return _solved([info for info, _ in batch], gram, _bad(gram, batch), params)
    return pool.submit(join)


def _on_gpu(stream: Iterable[tuple[TensorInfo, torch.Tensor]], params: Params, device: torch.device,
            batch_bytes: int, workers: int) -> _Done:
    """The GPU decomposes batches in order on this thread while CPU threads fit the spectra already out.

    A matrix is dropped once its σ (or small Gram matrix) are on the host, so memory stays near one
    batch; the fits (≈ 0.1 s per 4096-wide spectrum) no longer wait behind the GPU nor it behind them.
    Eigenproblems up to ``_HOST_EIGEN_MAX`` wide go to the CPU threads too: on an H100 a 384 × 384
    one takes 3.5 ms in cuSOLVER, latency rather than work, against 0.1 ms for its Gram product.
    """
    futures = []
    with linalg.single_threaded(workers > 1), thread_pool(workers) as pool:
        for batch in _batches(stream, batch_bytes):
            infos = [info for info, _ in batch]
            if params.method != "svd" and min(infos[0].shape) <= _HOST_EIGEN_MAX:
                dtype = linalg.gram_dtype(params.method)
                gram = linalg.gram(linalg.tall(_stack(batch, device)), device, dtype)
                futures.append(pool.submit(_solved, infos, gram.cpu(), _bad(gram, batch), params))
            else:
                futures.append(pool.submit(_tables, infos, *_sigma(batch, params, device), params))
            del batch
        return [future.result() for future in futures]


_HOST_EIGEN_MAX = 512


def _stack(batch: list[tuple[TensorInfo, torch.Tensor]], device: torch.device) -> torch.Tensor:
    mats = [t for _, t in batch]
    return mats[0].unsqueeze(0) if len(mats) == 1 else torch.stack([m.to(device) for m in mats])


def _bad(gram: torch.Tensor, batch: list[tuple[TensorInfo, torch.Tensor]]) -> list[int]:
    """NaN/Inf entries per matrix, counted only where they reached its Gram matrix (they always do)."""
    return [0 if bool(torch.isfinite(g).all()) else _nonfinite(t) for g, (_, t) in zip(gram, batch)]


def _solved(infos: list[TensorInfo], gram: torch.Tensor, bad: list[int],
            params: Params) -> tuple[list[dict], list[pd.DataFrame]]:
    """The tables of a batch from its Gram matrices."""
    return _tables(infos, linalg.gram_sigma(gram).to(torch.float64).numpy(), bad, params)


def _decompose(batch: list[tuple[TensorInfo, torch.Tensor]], params: Params,
               device: torch.device) -> tuple[list[dict], list[pd.DataFrame]]:
    """Singular values and metrics of one batch of same-shaped matrices: (matrix rows, value tables)."""
    return _tables([info for info, _ in batch], *_sigma(batch, params, device), params)


def _sigma(batch: list[tuple[TensorInfo, torch.Tensor]], params: Params,
           device: torch.device) -> tuple[np.ndarray, list[int]]:
    """Singular values of a batch (one row per matrix) and each matrix's count of NaN/Inf entries."""
    out = linalg.singular_values(_stack(batch, device), params.method, getattr(torch, params.svd_dtype),
                                 device).numpy()
    # NaN/Inf anywhere in W reaches its singular values (every Gram entry it touches, and the
    # diagonal through its square), so the entries are counted only for a matrix whose σ are not finite.
    return out, [0 if np.isfinite(sigma).all() else _nonfinite(m) for (_, m), sigma in zip(batch, out)]


def _tables(infos: list[TensorInfo], out: np.ndarray, bad: list[int],
            params: Params) -> tuple[list[dict], list[pd.DataFrame]]:
    """Metric rows and singular-value tables from a batch's singular values (fits included)."""
    rows, values = [], []
    for k, info in enumerate(infos):
        m, n = info.shape
        row = {"tensor": info.name, "rows": m, "cols": n, "dtype": info.dtype, "nonfinite": bad[k]}
        if bad[k] == 0:
            row.update(metrics(out[k], m, n, params))
            values.append(pd.DataFrame({"tensor": info.name, "index": np.arange(out[k].size), "sigma": out[k]}))
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

