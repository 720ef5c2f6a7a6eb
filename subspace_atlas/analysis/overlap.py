"""Training dynamics: how the top-k subspaces of weights, updates, step updates and gradients move over a run.

Per matrix and checkpoint t of an ordered run, the top-k left (column) and right (row) singular
subspaces of ``weights`` W_t, ``updates`` W_t − W_0 (W_0: the run's first checkpoint, or ``--start``),
``steps`` W_t − W_t−1 and ``gradients`` (∇W at t on a fixed batch, from ``probes.gradients``). k by
``--k`` or, per matrix, by the energy fraction ``--energy``. Top-k comes from ``linalg.top_svd``:
randomized block Krylov stopped by Wedin's bound (1 − overlap ≤ ``tol`` against the exact
subspace), an exact SVD where that is cheaper or the spectrum is too flat to converge.

* ``pairs``: per two checkpoints (the previous, the first and the last of each; every two with
  ``--reference all``), side and kind: principal angles (cos θ_i = σ_i(Q_aᵀQ_b)), the normalised
  overlap ‖Q_aᵀQ_b‖²_F / min(k_a, k_b) beside its chance level max(k_a, k_b) / dim, and Q-GaLore's
  signal ``lead_cos`` = |⟨q_a1, q_b1⟩| (sign-invariant) for the leading vectors.
* ``subspaces``: per checkpoint: k, the energy it captures, top singular values, how top-k was found.
* ``convergence``: per matrix, kind and side: ``settled_step``, the step from which every overlap with
  the previous checkpoint stays ≥ ``settle`` (null: never); ``qgalore_step``, where the mean
  ``lead_cos`` of the last ``lead_window`` refreshes first reaches ``lead_threshold`` (Q-GaLore's rule
  for lengthening the projector's refresh gap: 5 and 0.4).
* ``welore`` and ``spectrum``: WeLore's view of W_t: min-max normalised singular values
  s' = (σ − σmin)/(σmax − σmin), the fraction below each τ, and whether that makes the matrix a
  low-rank component (fraction ≥ ``lrc_share``); the full spectrum for plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial

import numpy as np
import pandas as pd
import torch

from subspace_atlas import linalg
from subspace_atlas.analysis.angles import sides
from subspace_atlas.context import ComputeContext
from subspace_atlas.linalg import TopSvd
from subspace_atlas.pairs import empty_table
from subspace_atlas.parallel import map_matrices
from subspace_atlas.runners.run import RunMatrix
from subspace_atlas.specs.overlap import TABLES, Params
from subspace_atlas.svdcache import SvdCache

INFLIGHT_BYTES = 256 << 20  # stored bytes of matrices being decomposed at once (a larger one runs alone)


def top_subspace(mat: torch.Tensor, params: Params, device: torch.device | None = None) -> TopSvd:
    """The top-k triplets of ``mat``; with ``energy``, k doubles until the top holds that share of ‖M‖²_F."""
    if params.energy <= 0:
        return linalg.top_svd(mat, params.k, params.tol, seed=params.seed, device=device)
    total = float(mat.double().square().sum())
    k, most = params.k, min(mat.shape)
    while True:
        found = linalg.top_svd(mat, k, params.tol, seed=params.seed, device=device)
        share = torch.cumsum(found.s**2, 0) / total if total > 0 else torch.ones_like(found.s)
        if share[-1] >= params.energy - 1e-12 or k >= most:
            needed = min(int((share < params.energy - 1e-12).sum()) + 1, found.s.numel())
            if needed == found.s.numel():
                return found
            return linalg.top_svd(mat, needed, params.tol, seed=params.seed, device=device)
        k = min(2 * k, most)


def subspace_pair(a: TopSvd, b: TopSvd, side: str) -> dict[str, object]:
    """Principal angles, normalised overlap, chance level and leading-vector |cos| of two top-k subspaces."""
    qa, qb = (a.u, b.u) if side == "left" else (a.v, b.v)
    qa, qb = qa.double(), qb.double()
    cross = qa.T @ qb
    angles = np.degrees(linalg.principal_angles(qa, qb))
    k = min(qa.shape[1], qb.shape[1])
    return {"k": k, "k_a": qa.shape[1], "k_b": qb.shape[1],
            "overlap": float(cross.square().sum()) / k,
            "chance": max(qa.shape[1], qb.shape[1]) / qa.shape[0],
            "angles": angles.tolist(), "mean_angle_deg": float(angles.mean()),
            "lead_cos": float(abs(cross[0, 0]))}


def subspace_row(t: int, name: str, of: str, top: TopSvd, norm2: float) -> dict[str, object]:
    """A ``subspaces`` row: one top-k subspace, the energy it holds and how it was found."""
    return {"job": t, "tensor": name, "of": of, "finite": True, "k": top.s.numel(), "norm": math.sqrt(norm2),
            "energy_captured": float((top.s**2).sum()) / norm2 if norm2 > 0 else math.nan,
            "sigma_top": top.s.tolist(), "method": top.method, "iterations": top.iterations,
            "error_bound": top.bound}


def convergence_row(name: str, of: str, side: str, checkpoints: int, overlaps: list[float], lead: list[float],
                    at: list[int], params: Params) -> dict[str, object]:
    """A ``convergence`` row from the overlaps (and leading |cos|) of consecutive checkpoints ending at ``at``."""
    return {"tensor": name, "of": of, "side": side, "checkpoints": checkpoints, "settle": params.settle,
            "settled_step": settled_step(overlaps, at, params.settle),
            "final_overlap": overlaps[-1], "min_overlap": min(overlaps),
            "qgalore_step": qgalore_step(lead, at, params.lead_threshold, params.lead_window)}


def frames(rows: dict[str, list[dict]]) -> dict[str, pd.DataFrame]:
    """The tables from their rows; an empty one keeps its key columns, steps stay integers (or null)."""
    keys = {"pairs": ("a", "b"), "convergence": (), "subspaces": ("job",), "welore": ("job",), "spectrum": ("job",)}
    tables = {name: pd.DataFrame(found) if found else empty_table(*keys[name]) for name, found in rows.items()}
    if "convergence" in tables:
        for column in ("settled_step", "qgalore_step"):  # a step, or none reached
            if column in tables["convergence"]:
                tables["convergence"][column] = tables["convergence"][column].astype("Int64")
    return tables


def reference_pairs(valid: list[int], references: Iterable[str]) -> dict[tuple[int, int], set[str]]:
    """Which checkpoint pairs (a < b, positions in the run) to compare, and which references each serves."""
    refs, out = set(references), {}
    if len(valid) < 2:
        return out

    def add(a: int, b: int, why: str) -> None:
        out.setdefault((a, b), set()).add(why)

    for i, b in enumerate(valid[1:], 1):
        if "previous" in refs:
            add(valid[i - 1], b, "previous")
        if "first" in refs:
            add(valid[0], b, "first")
    if "last" in refs:
        for a in valid[:-1]:
            add(a, valid[-1], "last")
    if "all" in refs:
        for i, a in enumerate(valid):
            for b in valid[i + 1:]:
                out.setdefault((a, b), set())
    return out


def settled_step(overlaps: list[float], steps: list[int], threshold: float) -> int | None:
    """The step from which every later consecutive overlap stays ≥ threshold (None: the last one is below)."""
    settled = None
    for value, step in zip(reversed(overlaps), reversed(steps)):
        if not value >= threshold:
            break
        settled = step
    return settled


def qgalore_step(lead: list[float], steps: list[int], threshold: float, window: int) -> int | None:
    """The first step at which the mean leading-vector |cos| over the last ``window`` refreshes ≥ threshold."""
    for i in range(window - 1, len(lead)):
        if float(np.mean(lead[i - window + 1:i + 1])) >= threshold:
            return steps[i]
    return None


def welore_fractions(sigma: np.ndarray, taus: Iterable[float]) -> dict[float, float]:
    """WeLore: the share of min-max normalised singular values below each τ."""
    sigma = np.asarray(sigma, dtype=np.float64)
    spread = sigma.max() - sigma.min()
    scaled = (sigma - sigma.min()) / spread if spread > 0 else np.zeros_like(sigma)
    return {tau: float((scaled < tau).mean()) for tau in taus}


def compute(items: Iterable[RunMatrix], params: Params, context: ComputeContext = ComputeContext(), *,
            steps: list[int], progress: Callable[[int], None] = lambda n: None) -> dict[str, pd.DataFrame]:
    """Tables of one run, decomposed on ``context.device``; ``subspaces``/``welore``/``spectrum`` rows carry
    ``job`` (a checkpoint's position in the run), ``pairs`` rows ``a`` and ``b``; ``steps`` orders the run (a
    checkpoint's step, else its position)."""
    device = context.torch_device()
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    work = partial(_matrix, params=params, steps=steps, device=device, cache=context.svd_cache())
    for out in map_matrices(work, items, lambda i: 3 * i.info.nbytes, lambda i: len(i.loaders), device,
                            context.workers, INFLIGHT_BYTES, progress):
        for name, found in out.items():
            rows[name] += found
    return frames(rows)


def _cached_top(cache: SvdCache, key: str, params: Params, matrix: Callable[[], torch.Tensor],
                device: torch.device) -> tuple[TopSvd, float]:
    """``top_subspace`` and ‖M‖²_F of a matrix named by its content key, cached across runs and commands."""
    key = SvdCache.key(key, params.k, params.energy, params.tol, params.seed, "top-k block-krylov")
    found = cache.get_tensors(key, ("U", "S", "V", "meta"))
    if found is not None:
        iterations, bound, exact, norm2 = found["meta"].tolist()
        top = TopSvd(found["U"], found["S"], found["V"], "exact" if exact else "randomized", int(iterations), bound)
        return top, norm2
    mat = matrix()
    top, norm2 = top_subspace(mat, params, device), float(mat.double().square().sum())
    meta = torch.tensor([top.iterations, top.bound, float(top.method == "exact"), norm2], dtype=torch.float64)
    cache.put_tensors(key, {"U": top.u, "S": top.s, "V": top.v, "meta": meta})
    return top, norm2


def _matrix(item: RunMatrix, params: Params, steps: list[int], device: torch.device,
            cache: SvdCache) -> dict[str, list[dict]]:
    name = item.info.name
    out: dict[str, list[dict]] = {t: [] for t in TABLES}
    tops: dict[str, dict[int, tuple[TopSvd, float]]] = {of: {} for of in params.of}
    first = previous = None
    first_key = ""
    for t, load in enumerate(item.loaders):
        w = load().float()
        if not bool(torch.isfinite(w).all()):  # no subspace; neighbours are compared across it
            out["subspaces"].append({"job": t, "tensor": name, "of": "weights", "finite": False})
            previous = None
            continue
        if first is None:
            first, first_key = w, item.keys[t]
        wanted = {"weights": (item.keys[t], lambda: w)}
        if first is not w:
            wanted["updates"] = (f"{item.keys[t]}-minus-{first_key}", lambda: w - first)
            if previous is not None:
                wanted["steps"] = (f"{item.keys[t]}-minus-{item.keys[t - 1]}", lambda: w - previous)
        for of, (key, matrix) in wanted.items():
            if of in params.of:
                tops[of][t] = _cached_top(cache, key, params, matrix, device)
        if params.welore:
            sigma = linalg.singular_values(w, "gram", device=device).numpy()
            out["spectrum"].append({"job": t, "tensor": name, "sigma": sigma.tolist()})
            for tau, share in welore_fractions(sigma, params.welore_tau).items():
                out["welore"].append({"job": t, "tensor": name, "tau": tau, "fraction_below": share,
                                      "lrc_share": params.lrc_share, "low_rank": share >= params.lrc_share})
        previous = w
    if item.gradients is not None and "gradients" in params.of:
        tops["gradients"] = {t: g for t, g in enumerate(item.gradients) if g is not None}
    for of, found in tops.items():
        out["subspaces"] += [subspace_row(t, name, of, top, norm2) for t, (top, norm2) in found.items()]
        order = sorted(found)
        consecutive = list(zip(order, order[1:]))
        chosen = reference_pairs(order, params.reference)
        for side in sides(params):
            done = {(a, b): subspace_pair(found[a][0], found[b][0], side) for a, b in {*chosen, *consecutive}}
            for a, b in sorted(chosen):
                out["pairs"].append({"a": a, "b": b, "tensor": name, "of": of, "side": side,
                                     "previous": (a, b) in consecutive, "from_first": a == order[0],
                                     "to_last": b == order[-1], **done[a, b]})
            if consecutive:
                out["convergence"].append(convergence_row(
                    name, of, side, len(order), [done[pair]["overlap"] for pair in consecutive],
                    [done[pair]["lead_cos"] for pair in consecutive], [steps[b] for _, b in consecutive], params))
    return out
