"""Update sparsity: which entries a fine-tune (RL or SFT) changed, how low-rank the change is, and
whether two fine-tunes changed the same entries.

Reference: Mukherjee et al., "Reinforcement Learning Finetunes Small Subnetworks in Large Language
Models" (their count: Δ = tuned − base in the stored dtype, unchanged when exactly 0; update rank
``matrix_rank(Δ.float())``). The counter-view, "The Path Not Taken" (arXiv 2511.08567), is that bf16
storage hides small updates; so an entry is unchanged in three senses, side by side:

* ``exact``: bit-for-bit equal in the stored dtype (the paper's count);
* ``atol``: |tuned − base| ≤ atol, computed in float32 (default 1e-5, the paper's tolerance);
* ``ulp``: at most ``ulps`` representable values apart in the stored dtype (the distance between
  the two bit patterns read as ordered integers; 0 ulps = exact, up to ±0).

Per matrix also: the numerical rank of ΔW (float32 singular values above rank_rtol·σmax, default
max(m, n)·eps32 like NumPy and PyTorch), how many rows and columns hold a change and how unevenly
(Gini of the per-row and per-column counts). Between every two fine-tunes of one base (a cross
table): Jaccard and overlap coefficient of their changed-masks beside what independent masks of
the same densities give by chance: J = pq / (p + q − pq), overlap coefficient = max(p, q).
Memory: one base/tuned matrix pair plus one boolean mask per fine-tune of that matrix, all on ``context.device``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import numpy as np
import pandas as pd
import torch

from subspace_atlas import linalg
from subspace_atlas.context import ComputeContext
from subspace_atlas.errors import AtlasError
from subspace_atlas.pairs import PairedMatrix, empty_table, map_pairs
from subspace_atlas.specs.sparsity import DEFINITIONS, NAME, Params

_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable values of their (shared) dtype lie between a and b, entry by entry.

    Bit patterns of IEEE floats, read as sign-magnitude integers and mapped to two's complement,
    are ordered like the floats, so the distance is the difference of the mapped integers.
    """
    if a.dtype != b.dtype or a.dtype not in _INT_VIEW:
        raise AtlasError(f"ulp distance needs two tensors of one float dtype, got {a.dtype} and {b.dtype}")
    return (_ordered(a) - _ordered(b)).abs()


def _ordered(t: torch.Tensor) -> torch.Tensor:
    # 16-bit patterns and their differences fit in int32 (half the memory of int64).
    wide = torch.int32 if t.element_size() <= 2 else torch.int64
    bits = t.contiguous().view(_INT_VIEW[t.dtype]).to(wide)
    lowest = -(1 << (8 * t.element_size() - 1))  # the bit pattern of -0.0
    return torch.where(bits < 0, lowest - bits, bits)


def chance_jaccard(p: float, q: float) -> float:
    """Expected Jaccard of two independent random masks with densities p and q (large-N limit)."""
    union = p + q - p * q
    return p * q / union if union > 0 else float("nan")


def gini(counts: torch.Tensor) -> float:
    """Gini coefficient of non-negative counts: 0 when even, → 1 when all in one place; NaN when all zero."""
    x = np.sort(counts.double().cpu().numpy())
    total = x.sum()
    if total == 0:
        return float("nan")
    n = x.size
    return float(2 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1) / n)


def compute(items: Iterable[PairedMatrix], params: Params, context: ComputeContext = ComputeContext(),
            progress: Callable[[int], None] = lambda n: None,
            pairs: Iterable[tuple[int, int]] = ()) -> dict[str, pd.DataFrame]:
    """Per (matrix, fine-tune) rows with a ``job`` index; per (matrix, fine-tune pair) rows with ``a``, ``b``;
    the comparisons and the update rank on ``context.device``."""
    device = context.torch_device()
    pairs = list(pairs)
    rows: list[dict] = []
    overlaps: list[dict] = []
    work = partial(_matrix, params=params, device=device, pairs=pairs)
    for mine, cross in map_pairs(work, items, device, context.workers, progress):
        rows += mine
        overlaps += cross
    matrices = pd.DataFrame(rows) if rows else empty_table("job")
    overlap = pd.DataFrame(overlaps) if overlaps else empty_table("a", "b")
    if "update_rank" in matrices:
        matrices["update_rank"] = matrices["update_rank"].astype("Int64")
    return {"matrices": matrices, "overlap": overlap}


def _matrix(item: PairedMatrix, params: Params, device: torch.device,
            pairs: list[tuple[int, int]]) -> tuple[list[dict], list[dict]]:
    base = item.load_base().to(device)
    wanted = {k for pair in pairs for k in pair}
    masks: dict[int, torch.Tensor] = {}
    rows = []
    for job, load in item.tuned:
        tuned = load()
        if not isinstance(tuned, torch.Tensor):
            raise AtlasError(f"{item.info.name}: {NAME} needs stored weights, not an adapter's factors")
        tuned = tuned.to(device)
        row, changed = _compare(base, tuned, params)
        rows.append({"job": job, "tensor": item.info.name, **row})
        if job in wanted:
            masks[job] = changed
        del tuned
    numel = base.numel()
    overlaps = []
    for a, b in pairs:
        if a not in masks or b not in masks:
            continue
        ma, mb = masks[a], masks[b]
        na, nb = int(ma.sum()), int(mb.sum())
        both = int((ma & mb).sum())
        union = na + nb - both
        p, q = na / numel, nb / numel
        overlaps.append({
            "a": a, "b": b, "tensor": item.info.name, "mask": params.mask, "numel": numel, "changed_a": na,
            "changed_b": nb, "intersection": both, "union": union,
            "jaccard": both / union if union else float("nan"),
            "overlap_coef": both / min(na, nb) if min(na, nb) else float("nan"),
            "jaccard_chance": chance_jaccard(p, q), "overlap_coef_chance": max(p, q) if min(na, nb) else float("nan"),
        })
    return rows, overlaps


_BLOCK_ELEMENTS = 1 << 22  # entries compared at once: bounds the float32 / integer temporaries


def _compare(base: torch.Tensor, tuned: torch.Tensor, params: Params) -> tuple[dict, torch.Tensor]:
    """One matrix's row, and its changed-mask under ``params.mask``, in row blocks.

    Temporaries (float32 differences, ulp distances) exist for one block at a time; what stays is the
    boolean mask. Only the update rank needs all of ΔW in float32 at once.
    """
    numel = base.numel()
    unchanged = dict.fromkeys(DEFINITIONS, 0)
    changed = torch.empty(base.shape, dtype=torch.bool, device=base.device)
    update_sq = base_sq = 0.0
    step = max(1, _BLOCK_ELEMENTS // max(1, base.shape[1]))
    for start in range(0, base.shape[0], step):
        b, t = base[start:start + step], tuned[start:start + step]
        delta = t.float() - b.float()
        same = {"exact": t == b, "atol": delta.abs() <= params.atol, "ulp": ulp_distance(t, b) <= params.ulps}
        for name, mask in same.items():
            unchanged[name] += int(mask.sum())
        changed[start:start + step] = ~same[params.mask]
        update_sq += float(delta.double().square().sum())
        base_sq += float(b.double().square().sum())
    per_row, per_col = changed.sum(1), changed.sum(0)
    row = {
        "rows": base.shape[0], "cols": base.shape[1], "dtype": str(base.dtype).removeprefix("torch."),
        "numel": numel, **{f"unchanged_{name}": count / numel for name, count in unchanged.items()},
        "changed": int(per_row.sum()),
        "rows_touched": float((per_row > 0).float().mean()), "cols_touched": float((per_col > 0).float().mean()),
        "row_gini": gini(per_row), "col_gini": gini(per_col),
        "norm_base": base_sq ** 0.5, "norm_update": update_sq ** 0.5,
    }
    row["rel_update"] = row["norm_update"] / row["norm_base"] if row["norm_base"] > 0 else float("nan")
    if params.rank:
        row.update(_update_rank(tuned.float() - base.float(), params))
    return row, changed


def _update_rank(delta: torch.Tensor, params: Params) -> dict:
    """Numerical rank of ΔW from its float32 singular values, and the tolerance used."""
    if not bool(torch.isfinite(delta).all()):
        return {"update_rank": None, "rank_ratio": float("nan"), "rank_tol": float("nan")}
    sigma = linalg.svdvals(delta)
    top = float(sigma[0]) if sigma.numel() else 0.0
    rtol = params.rank_rtol or max(delta.shape) * torch.finfo(torch.float32).eps
    tol = rtol * top
    rank = int((sigma > tol).sum()) if top > 0 else 0
    return {"update_rank": rank, "rank_ratio": rank / min(delta.shape), "rank_tol": tol}

