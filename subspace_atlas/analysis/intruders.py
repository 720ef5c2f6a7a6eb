"""Intruder dimensions (Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of Equivalence").

For each matrix, the thin SVDs of the base W0 and the fine-tuned W = W0 + ΔW. Each of W's top-k
left singular vectors u_j is compared with EVERY left singular vector of W0: max_i |⟨u_j, u0_i⟩|.
u_j is an intruder when that maximum is below ε (PEFT's ``tuners/lora/intruders.py`` rule: k = 10,
ε = 0.5). Right singular vectors on request. Comparing with only W0's top vectors would invent
intruders, so the base side is always the full thin SVD (cached on disk, decomposed once).

A LoRA update ΔW = scale·BA on a large matrix is not merged and re-decomposed: the top singular
triplets of W come from the base SVD plus the rank-r factors (``linalg.low_rank_update_svd``).

Beyond the paper, PEFT's mitigation W' = W + (λ − 1)·Σ_intruders s_i u_i v_iᵀ is previewed: it
scales the intruders' singular values by λ and moves W by (1 − λ)·√Σ s_i² in Frobenius norm; the
``matrices`` table holds what the app needs to show that, and how far W' is from W0, for any λ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import numpy as np
import pandas as pd
import torch

from subspace_atlas import linalg
from subspace_atlas.adapters import LoraUpdate
from subspace_atlas.context import ComputeContext
from subspace_atlas.pairs import PairedMatrix, empty_table, map_pairs
from subspace_atlas.specs.intruders import TABLES, Params
from subspace_atlas.svdcache import SvdCache

# From this min(m, n) up, the factored LoRA update beats merging and a full SVD (measured on 2 CPU
# cores, r = 8/64, k = 10/64: 1024² about even, 2048² 2–6× faster, 4096² 12–18× faster).
FACTORED_MIN_DIM = 2048


def compute(items: Iterable[PairedMatrix], params: Params, context: ComputeContext = ComputeContext(),
            progress: Callable[[int], None] = lambda n: None) -> dict[str, pd.DataFrame]:
    """Intruder tables for every (matrix, job) pair; each row carries its ``job`` index.

    Matrices go to a pool of ``context.workers`` (torch's thread count on a CPU, each single-threaded; one
    on a GPU). Each loads and decomposes its base once for all jobs (through ``context``'s SVD cache); dense
    fine-tuned versions of one matrix are decomposed together on ``context.device`` in batches of up to
    ``context.batch_bytes`` (pays on a GPU).
    """
    device = context.torch_device()
    out: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    work = partial(_matrix, params=params, device=device, batch_bytes=context.batch_bytes,
                   cache=context.svd_cache())
    for tables in map_pairs(work, items, device, context.workers, progress):
        for name, frames in tables.items():
            out[name] += frames
    tables = {name: pd.concat(frames, ignore_index=True) if frames else empty_table("job") for name, frames in out.items()}
    if "lora_rank" in tables["matrices"]:
        tables["matrices"]["lora_rank"] = tables["matrices"]["lora_rank"].astype("Int64")
    return tables


def _matrix(item: PairedMatrix, params: Params, device: torch.device, batch_bytes: int,
            cache: SvdCache) -> dict[str, list[pd.DataFrame]]:
    dtype = getattr(torch, params.svd_dtype)
    base: list[torch.Tensor] = []  # W0, loaded at most once and only when needed

    def w0() -> torch.Tensor:
        if not base:
            base.append(linalg.to_device(item.load_base(), device, dtype))
        return base[0]

    u0, s0, vh0 = (linalg.to_device(t, device, dtype) for t in cache.svd(item.cache_key, w0, dtype, device))
    results: list[tuple[int, dict]] = []
    dense: list[tuple[int, torch.Tensor]] = []
    ranks: dict[int, int] = {}  # LoRA rank of the jobs whose update is an adapter
    for job, load in item.tuned:
        tuned = load()
        if isinstance(tuned, LoraUpdate):
            ranks[job] = tuned.rank
            if _factored_pays(tuned, params, s0.numel()):
                results.append((job, _factored(tuned, u0, s0, vh0, params)))
                continue
            tuned = w0() + tuned.dense(dtype).to(device)
        dense.append((job, tuned))
    for batch in _batches(dense, batch_bytes):
        jobs = [job for job, _ in batch]
        stacked = torch.stack([linalg.to_device(w, device, dtype) for _, w in batch])
        u, s, vh = linalg.svd(stacked, dtype, device)
        for b, job in enumerate(jobs):
            results.append((job, _dense(stacked[b], w0(), u[b], s[b], vh[b], u0, s0, vh0, params)
                                | {"rank": ranks.get(job)}))
        del stacked, u, s, vh
    return _tables(item, results, s0.cpu().double().numpy(), params)


def _factored_pays(update: LoraUpdate, params: Params, p: int) -> bool:
    wanted = max(params.top_k, params.spectrum_top)
    return p >= FACTORED_MIN_DIM and wanted + 2 <= p // 4


def _batches(dense: list[tuple[int, torch.Tensor]], batch_bytes: int) -> Iterable[list[tuple[int, torch.Tensor]]]:
    batch: list[tuple[int, torch.Tensor]] = []
    for entry in dense:
        batch.append(entry)
        if 4 * entry[1].numel() * (len(batch) + 1) > batch_bytes:
            yield batch
            batch = []
    if batch:
        yield batch


def _dense(w: torch.Tensor, w0: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor,
           u0: torch.Tensor, s0: torch.Tensor, vh0: torch.Tensor, params: Params) -> dict:
    """Everything the tables need from one full SVD of W."""
    k = min(params.top_k, s.numel())
    cos_left = (u[:, :k].T @ u0).abs() if params.side in ("left", "both") else None
    cos_right = (vh[:k] @ vh0.T).abs() if params.side in ("right", "both") else None
    delta = w - w0.to(w.dtype)
    top = max(k, min(params.spectrum_top, s.numel()))
    sigma = s[:top].double().cpu().numpy()
    # u_iᵀ ΔW v_i for i < k, for the mitigation's distance to W0.
    along = torch.einsum("mi,mn,in->i", u[:, :k], delta, vh[:k]).double().cpu().numpy()
    return {"method": "svd", "sigma": sigma, "cos_left": _np(cos_left), "cos_right": _np(cos_right),
            "along": along, "norm_tuned": linalg.frobenius(w.double()),
            "norm_update": linalg.frobenius(delta.double())}


def _factored(update: LoraUpdate, u0: torch.Tensor, s0: torch.Tensor, vh0: torch.Tensor, params: Params) -> dict:
    """The same quantities from the base SVD and the LoRA factors, never forming W."""
    p = s0.numel()
    k = min(params.top_k, p)
    top = max(k, min(params.spectrum_top, p))
    left, right, scale = update.left.double().cpu(), update.right.double().cpu(), update.scale
    res = linalg.low_rank_update_svd(s0.cpu(), u0.cpu(), vh0.cpu(), left, right, scale, top)
    x, y = res.x[:, :k], res.y[:, :k]
    d = s0.double().cpu().numpy()
    # u_iᵀ W0 v_i = x_iᵀ diag(s0) y_i (only the base coordinates meet W0); u_iᵀ W v_i = σ_i.
    along = res.sigma[:k] - np.einsum("pi,p,pi->i", x[:p], d, y[:p])
    b_in = (u0.double().cpu().T @ left).numpy()
    a_in = (vh0.double().cpu() @ right.T).numpy()
    cross = scale * float(np.sum(d[:, None] * b_in * a_in))  # tr(W0ᵀ ΔW)
    update_sq = scale**2 * float(torch.sum((left.T @ left) * (right @ right.T)))
    tuned_sq = float(np.sum(d**2)) + 2 * cross + update_sq
    return {"method": "factored", "sigma": res.sigma,
            "cos_left": np.abs(x[:p].T) if params.side in ("left", "both") else None,
            "cos_right": np.abs(y[:p].T) if params.side in ("right", "both") else None,
            "along": along, "norm_tuned": float(np.sqrt(max(tuned_sq, 0.0))),
            "norm_update": float(np.sqrt(max(update_sq, 0.0))), "rank": update.rank}


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.double().cpu().numpy()


def _tables(item: PairedMatrix, results: list[tuple[int, dict]], s0: np.ndarray,
            params: Params) -> dict[str, list[pd.DataFrame]]:
    name, (rows, cols) = item.info.name, item.info.shape
    eps0, lam = params.epsilon[0], params.mitigation_lambda
    out: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}
    norm_base = float(np.sqrt(np.sum(s0**2)))
    n_base = min(params.spectrum_top, s0.size)
    for job, r in sorted(results, key=lambda jr: jr[0]):
        sigma = r["sigma"]
        k = min(params.top_k, sigma.size)
        marked: np.ndarray | None = None
        for side in ("left", "right"):
            cos = r[f"cos_{side}"]
            if cos is None:
                continue
            best = cos.argmax(axis=1)
            max_cos = cos[np.arange(k), best]
            intruder = max_cos < eps0
            if marked is None:  # mitigation follows the left side when both are computed (as PEFT)
                marked = intruder
            out["vectors"].append(pd.DataFrame({
                "job": job, "tensor": name, "side": side, "index": np.arange(k), "sigma": sigma[:k],
                "max_cos": max_cos, "best_match_index": best, "best_match_sigma": s0[best],
                "is_intruder": intruder, "update_along": r["along"][:k]}))
            out["summary"].append(pd.DataFrame({
                "job": job, "tensor": name, "side": side, "epsilon": list(params.epsilon),
                "top_k": params.top_k, "n_intruders": [int((max_cos < e).sum()) for e in params.epsilon]}))
            n = min(params.similarity_top, cos.shape[1])
            out["similarity"].append(pd.DataFrame({
                "job": job, "tensor": name, "side": side, "index": np.repeat(np.arange(k), n),
                "base_index": np.tile(np.arange(n), k), "cos": cos[:, :n].astype(np.float32).ravel()}))
        energy = float(np.sum(sigma[:k][marked] ** 2))
        proj = float(np.sum(sigma[:k][marked] * r["along"][marked]))
        norm_update = r["norm_update"]
        moved_sq = norm_update**2 - 2 * (1 - lam) * proj + (1 - lam) ** 2 * energy
        out["matrices"].append(pd.DataFrame([{
            "job": job, "tensor": name, "rows": rows, "cols": cols, "method": r["method"], "lora_rank": r["rank"],
            "norm_base": norm_base, "norm_tuned": r["norm_tuned"], "norm_update": norm_update,
            "rel_update": norm_update / norm_base if norm_base > 0 else np.nan,
            "n_intruders": int(marked.sum()), "intruder_energy": energy, "intruder_update_proj": proj,
            "mitigation_lambda": lam,
            "mitigation_shift": (1 - lam) * np.sqrt(energy) / r["norm_tuned"] if r["norm_tuned"] > 0 else np.nan,
            "mitigated_update_ratio": np.sqrt(max(moved_sq, 0.0)) / norm_update if norm_update > 0 else np.nan,
        }]))
        values = np.concatenate([s0[:n_base], sigma[:n_base]])
        out["values"].append(pd.DataFrame({
            "job": job, "tensor": name, "which": ["base"] * n_base + ["tuned"] * min(n_base, sigma.size),
            "index": np.concatenate([np.arange(n_base), np.arange(min(n_base, sigma.size))]),
            "sigma": values[:n_base + min(n_base, sigma.size)]}))
    return out


def validate(matrices: pd.DataFrame) -> str | None:
    """Why one job's result looks like a wrong pairing (fine-tune of a different base), or None.

    A fine-tune moves a matrix by a fraction of its norm; two unrelated matrices of the same shape
    differ by about √2 of it. Half the matrices moved by more than their own norm is no fine-tune.
    (An adapter is checked against the base its config records instead: its update is what it is.)
    """
    moved = matrices.loc[matrices["lora_rank"].isna(), "rel_update"].dropna()
    if len(moved) and float(moved.median()) > 1.0:
        worst = matrices.loc[matrices["rel_update"].idxmax()]
        return (f"does not look like a fine-tune of the base: the median matrix moved by "
                f"{moved.median():.2f}× its base norm ({worst['tensor']}: {worst['rel_update']:.2f}×); "
                "check --base")
    return None

