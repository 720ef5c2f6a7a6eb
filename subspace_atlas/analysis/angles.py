"""Task subspaces: principal angles between what different fine-tunes of one base changed.

Per matrix and task t: the task vector ΔW_t = W_t − W0 and its top-k left (U) and right (V) singular
subspaces, k by ``--k`` or by the energy fraction ``--energy`` (k never exceeds ΔW_t's numerical rank;
both are reported). A LoRA task is never formed: ΔW = s·BA = (Q_B R_B)(s)(Q_A R_A)ᵀ, so its singular
triplets come from the r × r core s·R_B R_Aᵀ, and U, V span B's columns and A's rows.

* ``tasks`` (one job per task): k, rank, energy captured; how much of the update lies in the base's own
  top-k singular subspace (``overlap_with_base_top`` = ‖U0_kᵀ U_t‖²_F / k, chance k / m;
  ``base_top_energy`` = ‖U0_kᵀ ΔW_t‖_F / ‖ΔW_t‖_F).
* ``pairs`` (one job per two tasks): all principal angles (cos θ_i = σ_i(U_aᵀ U_b)), the normalised
  overlap ‖U_aᵀ U_b‖²_F / min(k_a, k_b), the mean angle in degrees, and Task-Singular-Vectors
  interference ‖(UᵀU − I) Σ (VᵀV − I)‖₁ of the two tasks' stacked top-k triplets.
* ``alignment`` (one job per set of tasks): Iso-C's Subspace Alignment Ratio of each task against the
  summed task matrix, SAR_t = ‖U_k U_kᵀ ΔW_t‖_F / ‖ΔW_t‖_F, with k where √(cumsum σ² / Σσ²) of ΣΔ first
  reaches ``sar_energy`` (0.95), beside the task's ``overlap_with_base_top``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch

from subspace_atlas.adapters import LoraUpdate
from subspace_atlas.pairs import PairedMatrix, empty_table, map_pairs
from subspace_atlas.specs.angles import TABLES, Params
from subspace_atlas.svdcache import SvdCache


@dataclass
class TaskSvd:
    """The (numerically nonzero) singular triplets of one task's ΔW, descending, float64."""

    u: torch.Tensor  # m × rank
    s: torch.Tensor  # rank
    v: torch.Tensor  # n × rank
    factored: bool


def task_svd(update: torch.Tensor | LoraUpdate, rtol: float) -> TaskSvd:
    """Singular triplets of ΔW; a LoRA update through its r × r core, never forming m × n."""
    if isinstance(update, LoraUpdate):
        qb, rb = torch.linalg.qr(update.left.double())
        qa, ra = torch.linalg.qr(update.right.double().T)
        p, s, qh = torch.linalg.svd(update.scale * rb @ ra.T)
        u, v, factored = qb @ p, qa @ qh.T, True
    else:
        u, s, vh = torch.linalg.svd(update.double(), full_matrices=False)
        v, factored = vh.T, False
    keep = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    return TaskSvd(u[:, :keep], s[:keep], v[:, :keep], factored)


def choose_k(s: torch.Tensor, params: Params) -> int:
    """k for one task: ``params.k`` or the energy rule, never more than the rank."""
    if s.numel() == 0:
        return 0
    if params.energy > 0:
        cum = torch.cumsum(s**2, 0) / (s**2).sum()
        return min(int((cum < params.energy - 1e-12).sum()) + 1, s.numel())
    return min(params.k, s.numel())


def principal_angles(qa: torch.Tensor, qb: torch.Tensor) -> np.ndarray:
    """Principal angles (radians, ascending) between the spans of two orthonormal bases."""
    if qa.shape[1] == 0 or qb.shape[1] == 0:
        return np.array([])
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(0, 1)
    return np.sort(np.arccos(cos.numpy()))


def compute(items: Iterable[PairedMatrix], params: Params, device: torch.device | None = None,
            batch_bytes: int = 0, workers: int | None = None, cache: SvdCache | None = None,
            progress: Callable[[int], None] = lambda n: None, pairs: Iterable[tuple[int, int]] = (),
            group: list[int] | None = None) -> dict[str, pd.DataFrame]:
    """``tasks`` rows carry ``job``; ``pairs`` rows ``a``, ``b``; ``alignment`` rows ``job`` (a group member)."""
    device = device or torch.device("cpu")
    cache = cache or SvdCache(None)
    pairs = list(pairs)
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    work = partial(_matrix, params=params, cache=cache, pairs=pairs, group=group or [])
    for out in map_pairs(work, items, device, workers, progress):
        for name, found in out.items():
            rows[name] += found
    keys = {"tasks": ("job",), "pairs": ("a", "b"), "alignment": ("job",)}
    return {name: pd.DataFrame(found) if found else empty_table(*keys[name]) for name, found in rows.items()}


def sides(params) -> list[str]:
    """The sides ``params.side`` asks for: left, right, or both."""
    return ["left", "right"] if params.side == "both" else [params.side]


def _matrix(item: PairedMatrix, params: Params, cache: SvdCache, pairs: list[tuple[int, int]],
            group: list[int]) -> dict[str, list[dict]]:
    name = item.info.name
    w0 = item.load_base().double()
    u0, _, vh0 = cache.svd(item.cache_key, lambda: w0, torch.float64)
    base = {"left": u0, "right": vh0.T}
    updates: dict[int, torch.Tensor | LoraUpdate] = {}
    svds: dict[int, TaskSvd] = {}
    base_overlap: dict[tuple[int, str], float] = {}
    out: dict[str, list[dict]] = {t: [] for t in TABLES}
    for job, load in item.tuned:
        tuned = load()
        update = tuned if isinstance(tuned, LoraUpdate) else tuned.double() - w0
        updates[job] = update
        svds[job] = task_svd(update, params.rank_rtol)
        t = svds[job]
        k = choose_k(t.s, params)
        norm = float(torch.linalg.norm(t.s))
        for side in sides(params):
            q = (t.u if side == "left" else t.v)[:, :k]
            top = base[side][:, :k]
            energy = float(torch.linalg.norm(_project(update, top, side))) / norm if norm > 0 else math.nan
            base_overlap[job, side] = float((top.T @ q).square().sum()) / k if k else math.nan
            out["tasks"].append({
                "job": job, "tensor": name, "side": side, "k_requested": params.k, "k": k,
                "rank": t.s.numel(), "factored": t.factored, "norm_update": norm,
                "energy_captured": float((t.s[:k] ** 2).sum() / (t.s**2).sum()) if norm > 0 else math.nan,
                "overlap_with_base_top": base_overlap[job, side],
                "overlap_chance": k / top.shape[0] if k else math.nan,
                "base_top_energy": energy,
            })
    for a, b in pairs:
        if a in svds and b in svds:
            out["pairs"] += _pair(name, a, b, svds[a], svds[b], params)
    members = [j for j in group if j in updates]
    if members:
        out["alignment"] += [row | {"overlap_with_base_top": base_overlap[row["job"], row["side"]]}
                             for row in _alignment(name, members, updates, w0.shape, params)]
    return out


def _project(update: torch.Tensor | LoraUpdate, q: torch.Tensor, side: str) -> torch.Tensor:
    """Qᵀ ΔW (left) or ΔW Q (right), for a dense or a factored update."""
    if isinstance(update, LoraUpdate):
        left, right = update.left.double(), update.right.double()
        return update.scale * ((q.T @ left) @ right if side == "left" else left @ (right @ q))
    return q.T @ update if side == "left" else update @ q


def _pair(name: str, a: int, b: int, ta: TaskSvd, tb: TaskSvd, params: Params) -> list[dict]:
    ka, kb = choose_k(ta.s, params), choose_k(tb.s, params)
    rows = []
    for side in sides(params):
        qa = (ta.u if side == "left" else ta.v)[:, :ka]
        qb = (tb.u if side == "left" else tb.v)[:, :kb]
        angles = principal_angles(qa, qb)
        k = min(ka, kb)
        rows.append({
            "a": a, "b": b, "tensor": name, "side": side, "k_a": ka, "k_b": kb, "k": k,
            "overlap": float((qa.T @ qb).square().sum()) / k if k else math.nan,
            "mean_angle_deg": float(np.degrees(angles).mean()) if angles.size else math.nan,
            "min_angle_deg": float(np.degrees(angles).min()) if angles.size else math.nan,
            "angles": np.degrees(angles).tolist(),
            "interference": _interference(ta, tb, ka, kb),
        })
    return rows


def _interference(ta: TaskSvd, tb: TaskSvd, ka: int, kb: int) -> float:
    """TSV-Merge's ‖(UᵀU − I) Σ (VᵀV − I)‖₁ for the two tasks' stacked top-k triplets, from k × k blocks."""
    if not ka or not kb:
        return math.nan
    cu = ta.u[:, :ka].T @ tb.u[:, :kb]  # the off-diagonal block of UᵀU − I (within a task it is 0)
    cv = ta.v[:, :ka].T @ tb.v[:, :kb]
    sa, sb = ta.s[:ka], tb.s[:kb]
    # [[0, cu], [cuᵀ, 0]] · diag(sa, sb) · [[0, cv], [cvᵀ, 0]] = diag blocks cu·diag(sb)·cvᵀ and cuᵀ·diag(sa)·cv.
    return float(((cu * sb) @ cv.T).abs().sum() + ((cu.T * sa) @ cv).abs().sum())


def _alignment(name: str, members: list[int], updates: dict, shape: tuple[int, int], params: Params) -> list[dict]:
    total = torch.zeros(shape, dtype=torch.float64)
    dense = {}
    for j in members:
        u = updates[j]
        dense[j] = u.dense(torch.float64) if isinstance(u, LoraUpdate) else u
        total += dense[j]
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0:
        return []
    share = torch.sqrt(torch.cumsum(s**2, 0) / (s**2).sum())
    k = min(int((share < params.sar_energy - 1e-12).sum()) + 1, s.numel())
    rows = []
    for j in members:
        norm = float(torch.linalg.norm(dense[j]))
        for side in sides(params):
            q = u[:, :k] if side == "left" else vh[:k].T
            proj = q.T @ dense[j] if side == "left" else dense[j] @ q
            rows.append({"job": j, "tensor": name, "side": side, "k": k, "tasks": len(members),
                         "sar": float(torch.linalg.norm(proj)) / norm if norm > 0 else math.nan})
    return rows

