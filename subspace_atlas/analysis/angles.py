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

Everything after loading runs on ``context.device``, in float64; decompositions go through ``linalg``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch

from subspace_atlas import linalg
from subspace_atlas.adapters import LoraUpdate
from subspace_atlas.context import ComputeContext
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
    """Singular triplets of ΔW where it is; a LoRA update through its r × r core, never forming m × n."""
    if isinstance(update, LoraUpdate):
        u, s, v = linalg.factored_svd(update.left, update.right, update.scale)
        factored = True
    else:
        u, s, vh = linalg.svd(update, torch.float64)
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


def compute(items: Iterable[PairedMatrix], params: Params, context: ComputeContext = ComputeContext(),
            progress: Callable[[int], None] = lambda n: None, pairs: Iterable[tuple[int, int]] = (),
            group: list[int] | None = None) -> dict[str, pd.DataFrame]:
    """``tasks`` rows carry ``job``; ``pairs`` rows ``a``, ``b``; ``alignment`` rows ``job`` (a group member)."""
    device = context.torch_device()
    pairs = list(pairs)
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    work = partial(_matrix, params=params, device=device, cache=context.svd_cache(), pairs=pairs, group=group or [])
    for out in map_pairs(work, items, device, context.workers, progress):
        for name, found in out.items():
            rows[name] += found
    keys = {"tasks": ("job",), "pairs": ("a", "b"), "alignment": ("job",)}
    return {name: pd.DataFrame(found) if found else empty_table(*keys[name]) for name, found in rows.items()}


def sides(params) -> list[str]:
    """The sides ``params.side`` asks for: left, right, or both."""
    return ["left", "right"] if params.side == "both" else [params.side]


def _matrix(item: PairedMatrix, params: Params, device: torch.device, cache: SvdCache,
            pairs: list[tuple[int, int]], group: list[int]) -> dict[str, list[dict]]:
    name = item.info.name
    w0 = linalg.to_device(item.load_base(), device, torch.float64)
    u0, _, vh0 = cache.svd(item.cache_key, lambda: w0, torch.float64, device)
    base = {"left": u0.to(device), "right": vh0.T.to(device)}
    updates: dict[int, torch.Tensor | LoraUpdate] = {}
    svds: dict[int, TaskSvd] = {}
    base_overlap: dict[tuple[int, str], float] = {}
    out: dict[str, list[dict]] = {t: [] for t in TABLES}
    for job, load in item.tuned:
        tuned = load()
        update = (LoraUpdate(tuned.left.to(device), tuned.right.to(device), tuned.scale)
                  if isinstance(tuned, LoraUpdate) else linalg.to_device(tuned, device, torch.float64) - w0)
        updates[job] = update
        svds[job] = task_svd(update, params.rank_rtol)
        t = svds[job]
        k = choose_k(t.s, params)
        norm = linalg.frobenius(t.s)
        for side in sides(params):
            q = (t.u if side == "left" else t.v)[:, :k]
            top = base[side][:, :k]
            energy = linalg.frobenius(_project(update, top, side)) / norm if norm > 0 else math.nan
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
                             for row in _alignment(name, members, updates, w0.shape, params, device)]
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
        angles = linalg.principal_angles(qa, qb)
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


def _alignment(name: str, members: list[int], updates: dict, shape: tuple[int, int], params: Params,
               device: torch.device) -> list[dict]:
    total = torch.zeros(shape, dtype=torch.float64, device=device)
    dense = {}
    for j in members:
        u = updates[j]
        dense[j] = u.dense(torch.float64) if isinstance(u, LoraUpdate) else u
        total += dense[j]
    u, s, vh = linalg.svd(total, torch.float64)
    if s.numel() == 0 or float(s[0]) == 0:
        return []
    share = torch.sqrt(torch.cumsum(s**2, 0) / (s**2).sum())
    k = min(int((share < params.sar_energy - 1e-12).sum()) + 1, s.numel())
    rows = []
    for j in members:
        norm = linalg.frobenius(dense[j])
        for side in sides(params):
            q = u[:, :k] if side == "left" else vh[:k].T
            proj = q.T @ dense[j] if side == "left" else dense[j] @ q
            rows.append({"job": j, "tensor": name, "side": side, "k": k, "tasks": len(members),
                         "sar": linalg.frobenius(proj) / norm if norm > 0 else math.nan})
    return rows

