"""Synthetic result stores at the scale researchers make, written through the real ``Store.write``.

Nothing here decomposes a matrix. Each job's tables are generated with NumPy (vectorised over a
checkpoint's matrices), labelled by the package's own ``jobs.label`` / ``jobs.label_run`` (so the label
columns and their dtypes are exactly the real ones) and written one job at a time with
``Store.write(analysis, fingerprint, tables, provenance)``: memory stays near one job's tables.

Values are realistic, not random noise: singular values are a Marchenko–Pastur bulk (quantiles of the MP
law for the matrix's aspect ratio) with a power-law tail of exponent alpha ≈ 2–6 that drifts over training;
the per-matrix metrics (sigma_max, stable rank, norms, effective rank, log alpha norm, …) are computed from
those σ (the power-law fit's alpha/xmin/KS are the generating ones, as a fit is 0.1–0.3 s per 4096-wide
matrix; ``check_fit`` compares them with the real fit); the Marchenko–Pastur fields come from the real
``esd.fit_marchenko_pastur``. Overlaps lie in [chance, 1], decay with the step distance, and equal the mean
cos² of their 16 principal angles; ``previous``/``from_first``/``to_last`` follow the checkpoint order; the
convergence rows use the real ``overlap.settled_step``/``qgalore_step`` on those overlaps.

``reference_store`` runs the real analyses (spectra, overlap, intruders) once on tiny Llama-named
checkpoints; ``check_schema`` compares every table a builder writes with that reference (Arrow types
and pandas dtypes) and fails on any difference, so a change in what the analyses write shows up here.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd


FORMAT = 1  # bump when the generated content changes: cached stores are rebuilt
START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # "created" of the first job


# ---------------------------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class Matrix:
    name: str
    rows: int
    cols: int

    @property
    def n(self) -> int:
        return min(self.rows, self.cols)


def processing_order(items: list[tuple[str, tuple[int, ...]]]) -> list[Matrix]:
    """2-D tensors in the order a job writes them: names sorted, then grouped by shape (first seen first)."""
    mats = [Matrix(name, *shape) for name, shape in sorted(items) if len(shape) == 2]
    order = {shape: k for k, shape in enumerate(dict.fromkeys((m.rows, m.cols) for m in mats))}
    return sorted(mats, key=lambda m: order[(m.rows, m.cols)])


def llama_matrices() -> list[Matrix]:
    """Llama-2-7B: 32 layers × q,k,v,o,gate,up,down + embed_tokens + lm_head = 226 matrices."""
    from _synth import LLAMA2_7B, tensor_list  # imports torch: only where a store is built

    return processing_order(tensor_list(LLAMA2_7B))


def minilm_matrices() -> list[Matrix]:
    """A fine-tuned all-MiniLM-L6-v2 classifier (BERT names): 41 matrices, σ count up to 384."""
    items = [("bert.embeddings.word_embeddings.weight", (30522, 384)),
             ("bert.embeddings.position_embeddings.weight", (512, 384)),
             ("bert.embeddings.token_type_embeddings.weight", (2, 384)),
             ("bert.pooler.dense.weight", (384, 384)), ("classifier.weight", (2, 384))]
    for i in range(6):
        p = f"bert.encoder.layer.{i}."
        items += [(p + f"attention.self.{w}.weight", (384, 384)) for w in ("query", "key", "value")]
        items += [(p + "attention.output.dense.weight", (384, 384)), (p + "intermediate.dense.weight", (1536, 384)),
                  (p + "output.dense.weight", (384, 1536))]
    return processing_order(items)


# ---------------------------------------------------------------------------------------------- store specs

@dataclass(frozen=True)
class Spec:
    """One synthetic store: what it holds and how it is named."""

    name: str
    kind: str  # "spectra" | "overlap" | "sweep"
    checkpoints: int  # per run
    runs: int = 1
    model: str = "llama7b"  # "llama7b" | "minilm"
    intruders: bool = False  # also intruders jobs of every run checkpoint vs the base
    reference: tuple[str, ...] = ("all",)  # overlap: which pairs (the 1.6 M rows: every two)
    seed: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"format": FORMAT}


def specs_for(sizes: list[int], sweep_runs: int = 10, sweep_steps: int = 100) -> list[Spec]:
    """The stores of a bench run: spectra of N 7B checkpoints, the overlap of a run of N, a sweep of jobs."""
    out = [Spec(f"spectra-7b-{n}", "spectra", n, intruders=n > 1) for n in sizes]
    out += [Spec(f"overlap-7b-run{n}", "overlap", n) for n in sizes if n >= 3]
    out.append(Spec(f"sweep-{sweep_runs * sweep_steps}", "sweep", sweep_steps, runs=sweep_runs, model="minilm"))
    return out


def matrices_of(spec: Spec) -> list[Matrix]:
    return llama_matrices() if spec.model == "llama7b" else minilm_matrices()


@dataclass(frozen=True)
class Ckpt:
    """What ``labels.label`` reads from a Checkpoint (name, path, run, step, tied embeddings), plus an identity."""

    name: str
    path: Path
    run: str | None
    step: int | None
    identity: str

    def tied_embeddings(self) -> tuple[str, ...]:
        """No tied embedding: the synthetic stores' Llama-2-7B and MiniLM shapes have none."""
        return ()


def _identity(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def run_members(run: str, count: int, last_step: int, root: str) -> list[Ckpt]:
    """checkpoint-<step> folders of one run, evenly spaced up to ``last_step`` (HF Trainer naming)."""
    steps = [round(last_step * (i + 1) / count) for i in range(count)]
    return [Ckpt(f"{run}/checkpoint-{s}", Path(root) / run / f"checkpoint-{s}", run, s, _identity(run, s))
            for s in steps]


# ---------------------------------------------------------------------------------------------- spectra

@lru_cache(maxsize=64)
def mp_quantiles(beta: float, n: int) -> np.ndarray:
    """n quantiles (descending) of the Marchenko–Pastur law with ratio beta and unit variance."""
    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    u = np.linspace(1e-7, 1 - 1e-7, 20001)
    x = lo + (hi - lo) * (1 - np.cos(np.pi * u)) / 2  # dense near both edges
    density = np.sqrt(np.maximum((hi - x) * (x - lo), 0.0)) / (2 * np.pi * beta * x)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(x))])
    cdf /= cdf[-1]
    levels = 1.0 - (np.arange(n) + 0.5) / n
    return np.interp(levels, cdf, x)


@dataclass
class MatrixParams:
    """Per-matrix spectrum parameters of a run: entry noise, tail exponent at start and end, tail share."""

    noise: np.ndarray
    alpha0: np.ndarray
    alpha1: np.ndarray
    tail_share: np.ndarray

    @classmethod
    def draw(cls, mats: list[Matrix], rng: np.random.Generator, model: str) -> MatrixParams:
        m = len(mats)
        base_noise = 0.02 if model == "llama7b" else 0.04
        noise = base_noise * np.exp(rng.normal(0, 0.25, m))
        alpha0 = rng.uniform(3.2, 6.4, m)  # early in training: heavier tails come later
        alpha1 = np.clip(alpha0 - rng.uniform(0.4, 2.2, m), 1.8, None)
        tail_share = rng.uniform(0.02, 0.09, m)
        return cls(noise, alpha0, alpha1, tail_share)

    def at(self, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(noise, alpha, tail share) at a fraction of training, with a little checkpoint-to-checkpoint jitter."""
        alpha = self.alpha1 + (self.alpha0 - self.alpha1) * math.exp(-4 * fraction)
        alpha = alpha + rng.normal(0, 0.05, alpha.size)
        noise = self.noise * (1 + 0.05 * fraction) * np.exp(rng.normal(0, 0.005, alpha.size))
        return noise, alpha, self.tail_share


def singular_values(mats: list[Matrix], noise: np.ndarray, alpha: np.ndarray, tail_share: np.ndarray,
                    rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """σ (descending) of every matrix: an MP bulk of entry std ``noise`` with a power-law tail; and n_tail."""
    sigma: list[np.ndarray | None] = [None] * len(mats)
    n_tail = np.zeros(len(mats), dtype=np.int64)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault((m.rows, m.cols), []).append(i)
    for (rows, cols), idx in groups.items():
        n, big = min(rows, cols), max(rows, cols)
        beta = n / big
        bulk = mp_quantiles(round(beta, 12), n)
        edge = (1 + math.sqrt(beta)) ** 2
        ids = np.array(idx)
        tails = np.maximum(1, np.round(tail_share[ids] * n)).astype(np.int64)
        r = np.arange(1, n + 1, dtype=np.float64)
        with np.errstate(over="ignore", divide="ignore"):
            tail = edge * (r[None, :] / tails[:, None]) ** (-1.0 / (alpha[ids, None] - 1.0))
        lam = np.where(r[None, :] <= tails[:, None], tail, bulk[None, :])
        lam *= (big * noise[ids] ** 2)[:, None] * np.exp(rng.normal(0, 0.01, lam.shape))
        lam = -np.sort(-lam, axis=1)
        for j, i in enumerate(idx):
            sigma[i] = np.sqrt(lam[j])
            n_tail[i] = tails[j]
    return sigma, n_tail  # type: ignore[return-value]


def spectra_metrics(mats: list[Matrix], sigma: list[np.ndarray], alpha: np.ndarray, n_tail: np.ndarray,
                    dtype: str, rng: np.random.Generator) -> pd.DataFrame:
    """The ``matrices`` table as ``spectra.compute`` returns it (before labels), from the σ."""
    from subspace_atlas.analysis import spectra
    from subspace_atlas.analysis.esd import fit_marchenko_pastur

    params = declaration("spectra").Params()
    rows = []
    for i, (m, s) in enumerate(zip(mats, sigma)):
        if s.size < params.min_evals:  # no power-law fit: the real function is cheap here
            rows.append({"tensor": m.name, "rows": m.rows, "cols": m.cols, "dtype": dtype, "nonfinite": 0}
                        | spectra.metrics(s, m.rows, m.cols, params))
            continue
        lam = s**2
        lam_max, lam_sum = float(lam[0]), float(lam.sum())
        a = float(alpha[i] + rng.normal(0, 0.08))
        tail = int(n_tail[i])
        p = s / s.sum()
        mp = fit_marchenko_pastur(lam, m.rows, m.cols)
        row = {
            "tensor": m.name, "rows": m.rows, "cols": m.cols, "dtype": dtype, "nonfinite": 0,
            "n_evals": int(lam.size), "sigma_max": float(s[0]), "alpha": a,
            "alpha_weighted": a * math.log10(lam_max), "log_norm": math.log10(lam_sum),
            "log_spectral_norm": math.log10(lam_max), "stable_rank": lam_sum / lam_max,
            "log_alpha_norm": a * math.log10(lam_max) + float(np.log10(np.sum((lam / lam_max) ** a))),
            "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
            "xmin": float(lam[tail - 1]), "xmax": lam_max, "ks_distance": float(rng.uniform(0.02, 0.11)),
            "n_tail": tail, "alpha_sigma": (a - 1.0) / math.sqrt(tail),
            "mp_noise_sigma": mp.noise_sigma, "mp_bulk_max": mp.bulk_max, "mp_softrank": mp.softrank,
            "num_spikes": mp.num_spikes,
            "alpha_warning": ("over-trained" if a < spectra.ALPHA_LOW else
                              "under-trained" if a > spectra.ALPHA_HIGH else ""),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def values_table(mats: list[Matrix], sigma: list[np.ndarray]) -> pd.DataFrame:
    """The ``values`` table: every σ of every matrix, descending, with its index."""
    counts = np.array([s.size for s in sigma])
    names = np.repeat(np.array([m.name for m in mats], dtype=object), counts)
    return pd.DataFrame({"tensor": pd.array(names, dtype="str"),
                         "index": np.concatenate([np.arange(c, dtype=np.int64) for c in counts]),
                         "sigma": np.concatenate(sigma)})


# ---------------------------------------------------------------------------------------------- intruders

def intruders_tables(mats: list[Matrix], sigma: list[np.ndarray], base_sigma: list[np.ndarray], fraction: float,
                     rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """One full fine-tune's intruder tables (left side, the paper's k = 10, PEFT's ε sweep), unlabelled."""
    from subspace_atlas.analysis import intruders

    params = declaration("intruders").Params()
    k, eps, lam = params.top_k, np.array(params.epsilon), params.mitigation_lambda
    m = len(mats)
    names = np.array([x.name for x in mats], dtype=object)
    n = np.array([x.n for x in mats])
    # max |cos| of each top-k vector with the base: high for most, an intruder (< 0.5) more often late.
    max_cos = np.clip(0.97 - 0.035 * np.arange(k)[None, :] + rng.normal(0, 0.04, (m, k)), 0.5, 0.999)
    intrude = rng.random((m, k)) < (0.01 + 0.12 * fraction) * (0.6 + 0.8 * rng.random((m, 1)))
    max_cos = np.where(intrude, rng.uniform(0.08, 0.48, (m, k)), max_cos)
    best = np.where(intrude, (rng.random((m, k)) * (n[:, None] - k)).astype(np.int64) + k,
                    np.clip(np.arange(k)[None, :] + rng.integers(-1, 2, (m, k)), 0, None))
    top = np.stack([s[:k] for s in sigma])
    base_at_best = np.stack([b[best[i]] for i, b in enumerate(base_sigma)])
    is_intruder = max_cos < eps[0]

    vectors = pd.DataFrame({"tensor": pd.array(np.repeat(names, k), dtype="str"), "side": "left",
                            "index": np.tile(np.arange(k, dtype=np.int64), m), "sigma": top.ravel(),
                            "max_cos": max_cos.ravel(), "best_match_index": best.ravel(),
                            "best_match_sigma": base_at_best.ravel(), "is_intruder": is_intruder.ravel()})
    counts = (max_cos[:, :, None] < eps[None, None, :]).sum(axis=1)
    summary = pd.DataFrame({"tensor": pd.array(np.repeat(names, eps.size), dtype="str"), "side": "left",
                            "epsilon": np.tile(eps, m), "top_k": k, "n_intruders": counts.ravel().astype(np.int64)})
    width = params.similarity_top
    cos = np.abs(rng.normal(0, 0.06, (m, k, width)))
    cos = np.minimum(cos, max_cos[:, :, None] * 0.98)
    hit = best < width
    mi, ki = np.nonzero(hit)
    cos[mi, ki, best[mi, ki]] = max_cos[mi, ki]
    similarity = pd.DataFrame({"tensor": pd.array(np.repeat(names, k * width), dtype="str"), "side": "left",
                               "index": np.tile(np.repeat(np.arange(k, dtype=np.int64), width), m),
                               "base_index": np.tile(np.arange(width, dtype=np.int64), m * k),
                               "cos": cos.astype(np.float32).ravel()})
    norm_base = np.array([math.sqrt(float(np.sum(b**2))) for b in base_sigma])
    norm_tuned = np.array([math.sqrt(float(np.sum(s**2))) for s in sigma])
    rel = (0.01 + 0.06 * fraction) * np.exp(rng.normal(0, 0.3, m))
    norm_update = rel * norm_base
    energy = np.sum(np.where(is_intruder, top**2, 0.0), axis=1)
    along = rng.uniform(0.05, 0.5, (m, k)) * norm_update[:, None]
    proj = np.sum(np.where(is_intruder, top * along, 0.0), axis=1)
    moved_sq = norm_update**2 - 2 * (1 - lam) * proj + (1 - lam) ** 2 * energy
    matrices = pd.DataFrame({
        "tensor": pd.array(names, dtype="str"), "rows": np.array([x.rows for x in mats], dtype=np.int64),
        "cols": np.array([x.cols for x in mats], dtype=np.int64), "method": "svd",
        "lora_rank": pd.array([pd.NA] * m, dtype="Int64"), "norm_base": norm_base, "norm_tuned": norm_tuned,
        "norm_update": norm_update, "rel_update": norm_update / norm_base,
        "n_intruders": is_intruder.sum(axis=1).astype(np.int64), "intruder_energy": energy,
        "intruder_update_proj": proj, "mitigation_lambda": lam,
        "mitigation_shift": (1 - lam) * np.sqrt(energy) / norm_tuned,
        "mitigated_update_ratio": np.sqrt(np.maximum(moved_sq, 0.0)) / norm_update})
    keep = params.spectrum_top
    values = pd.DataFrame({"tensor": pd.array(np.repeat(names, 2 * keep), dtype="str"),
                           "which": np.tile(np.repeat(np.array(["base", "tuned"], dtype=object), keep), m),
                           "index": np.tile(np.arange(keep, dtype=np.int64), 2 * m),
                           "sigma": np.concatenate([np.concatenate([b[:keep], s[:keep]])
                                                    for b, s in zip(base_sigma, sigma)])})
    values["which"] = values["which"].astype("str")
    return {"vectors": vectors, "summary": summary, "matrices": matrices, "similarity": similarity,
            "values": values}


# ---------------------------------------------------------------------------------------------- overlap

def _object_rows(values: np.ndarray) -> np.ndarray:
    """A 2-D array as a 1-D object array of its rows (a list column without a Python list per row)."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def overlap_pairs(mats: list[Matrix], steps: list[int], params, rng: np.random.Generator) -> pd.DataFrame:
    """The ``pairs`` table as ``overlap.compute`` returns it (``a``, ``b`` positions), rows in stored order."""
    from subspace_atlas.analysis.overlap import reference_pairs

    k = params.k
    n_ckpt, m = len(steps), len(mats)
    ofs, sides = list(params.of), (["left", "right"] if params.side == "both" else [params.side])
    span = max(steps[-1] - steps[0], 1)
    blocks = []
    for o, of in enumerate(ofs):
        valid = list(range(n_ckpt)) if of == "weights" else list(range(1, n_ckpt))
        chosen = sorted(reference_pairs(valid, params.reference))
        if not chosen:
            continue
        consecutive = set(zip(valid, valid[1:]))
        pa_ = np.array([a for a, _ in chosen]), np.array([b for _, b in chosen])
        for s, _side in enumerate(sides):
            for mi in range(m):
                blocks.append((o, s, mi, pa_[0], pa_[1], valid[0], valid[-1], consecutive))
    a = np.concatenate([blk[3] for blk in blocks])
    b = np.concatenate([blk[4] for blk in blocks])
    sizes = np.array([blk[3].size for blk in blocks])
    o_idx = np.repeat([blk[0] for blk in blocks], sizes)
    s_idx = np.repeat([blk[1] for blk in blocks], sizes)
    m_idx = np.repeat([blk[2] for blk in blocks], sizes)
    first = np.repeat([blk[5] for blk in blocks], sizes)
    last = np.repeat([blk[6] for blk in blocks], sizes)
    order = np.lexsort((s_idx, o_idx, m_idx, b, a))  # stored order: by pair, then matrix, of, side
    a, b, o_idx, s_idx, m_idx, first, last = (x[order] for x in (a, b, o_idx, s_idx, m_idx, first, last))
    rows_n = a.size

    dims = np.array([[x.rows, x.cols] for x in mats])
    dim = dims[m_idx, s_idx if len(sides) == 2 else (0 if sides[0] == "left" else 1)]
    chance = k / dim
    # Per series (matrix, of, side): how far the subspace drifts and how fast.
    series = (m_idx * len(ofs) + o_idx) * len(sides) + s_idx
    n_series = m * len(ofs) * len(sides)
    floor = np.empty(n_series)
    tau = np.empty(n_series)
    for o, of in enumerate(ofs):
        sel = np.arange(n_series).reshape(m, len(ofs), len(sides))[:, o, :].ravel()
        lo, hi, t_lo, t_hi = {"weights": (0.55, 0.95, 0.05, 0.6), "updates": (0.2, 0.75, 0.02, 0.3),
                              "steps": (0.15, 0.6, 0.01, 0.08), "gradients": (0.1, 0.5, 0.01, 0.05)}[of]
        floor[sel] = rng.uniform(lo, hi, sel.size)
        tau[sel] = rng.uniform(t_lo, t_hi, sel.size)
    steps_arr = np.asarray(steps, dtype=np.float64)
    distance = (steps_arr[b] - steps_arr[a]) / span
    decay = np.exp(-distance / tau[series])
    is_step = np.isin(o_idx, [i for i, of in enumerate(ofs) if of in ("steps", "gradients")])
    target = np.where(is_step, chance + (floor[series] - chance) * decay, floor[series] + (1 - floor[series]) * decay)
    target = np.clip(target * np.exp(rng.normal(0, 0.03, rows_n)), chance * 0.8, 0.995)
    spread = 0.9 * np.minimum(target, 1 - target)
    cos2 = np.clip(target[:, None] + spread[:, None] * np.linspace(1, -1, k)[None, :], 0.0, 1.0)
    angles = np.degrees(np.arccos(np.sqrt(cos2)))
    lead = np.sqrt(cos2[:, 0]) * np.where(is_step, rng.uniform(0.2, 1.0, rows_n), rng.uniform(0.75, 1.0, rows_n))
    frame = pd.DataFrame({
        "a": a, "b": b, "tensor": pd.array(np.array([x.name for x in mats], dtype=object)[m_idx], dtype="str"),
        "of": pd.array(np.array(ofs, dtype=object)[o_idx], dtype="str"),
        "side": pd.array(np.array(sides, dtype=object)[s_idx], dtype="str"),
        "previous": b == a + 1, "from_first": a == first, "to_last": b == last,  # every position is valid
        "k": np.int64(k), "k_a": np.int64(k), "k_b": np.int64(k), "overlap": cos2.mean(axis=1), "chance": chance,
        "angles": _object_rows(angles), "mean_angle_deg": angles.mean(axis=1), "lead_cos": lead})
    return frame


def overlap_convergence(pairs: pd.DataFrame, mats: list[Matrix], steps: list[int], params) -> pd.DataFrame:
    """``convergence`` rows from the consecutive overlaps, with the real settled/Q-GaLore rules."""
    from subspace_atlas.analysis.overlap import qgalore_step, settled_step

    consecutive = pairs[pairs["previous"]].sort_values(["tensor", "of", "side", "b"], kind="stable")
    by_series = {key: part for key, part in consecutive.groupby(["tensor", "of", "side"], sort=False)}
    sides = ["left", "right"] if params.side == "both" else [params.side]
    rows = []
    for mat in mats:
        for of in params.of:
            for side in sides:
                part = by_series.get((mat.name, of, side))
                if part is None or part.empty:
                    continue
                overlaps, lead = part["overlap"].tolist(), part["lead_cos"].tolist()
                at = [steps[b] for b in part["b"]]
                rows.append({"tensor": mat.name, "of": of, "side": side, "checkpoints": len(overlaps) + 1,
                             "settle": params.settle, "settled_step": settled_step(overlaps, at, params.settle),
                             "final_overlap": overlaps[-1], "min_overlap": min(overlaps),
                             "qgalore_step": qgalore_step(lead, at, params.lead_threshold, params.lead_window)})
    frame = pd.DataFrame(rows)
    for column in ("settled_step", "qgalore_step"):
        frame[column] = frame[column].astype("Int64")
    return frame


def overlap_per_checkpoint(mats: list[Matrix], sigmas: Iterator[list[np.ndarray]], params,
                           rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """``subspaces``, ``welore`` and ``spectrum`` (rows carry ``job``), in stored order (job, matrix, …)."""
    k, taus = params.k, np.array(params.welore_tau)
    names = np.array([x.name for x in mats], dtype=object)
    m = len(mats)
    subspaces, welore, spectrum = [], [], []
    for t, sigma in enumerate(sigmas):
        norms = np.array([math.sqrt(float(np.sum(s**2))) for s in sigma])
        tops = np.stack([s[:k] for s in sigma])
        parts = [("weights", norms, tops)]
        if t > 0:
            upd = norms * 0.03 * math.sqrt(t) * np.exp(rng.normal(0, 0.2, m))
            stp = norms * 0.01 * np.exp(rng.normal(0, 0.2, m))
            for of, size, share in (("updates", upd, rng.uniform(0.3, 0.75, m)),
                                    ("steps", stp, rng.uniform(0.04, 0.2, m))):
                profile = (np.arange(1, k + 1) ** -0.6)[None, :]
                profile = profile / np.sqrt((profile**2).sum(axis=1, keepdims=True))
                parts.append((of, size, profile * (size * np.sqrt(share))[:, None]))
        wanted = [p for p in parts if p[0] in params.of]
        tables = []
        for of, size, top in wanted:
            energy = (top**2).sum(axis=1) / size**2
            tables.append(pd.DataFrame({
                "job": np.int64(t), "tensor": pd.array(names, dtype="str"), "of": of, "finite": True,
                "k": np.int64(k), "norm": size, "energy_captured": energy, "sigma_top": _object_rows(top),
                "method": "randomized", "iterations": rng.integers(2, 9, m).astype(np.int64),
                "error_bound": rng.uniform(1e-6, params.tol, m), "_m": np.arange(m)}))
        frame = pd.concat(tables, ignore_index=True).sort_values("_m", kind="stable").drop(columns="_m")
        frame["of"] = frame["of"].astype("str")
        frame["method"] = frame["method"].astype("str")
        subspaces.append(frame.reset_index(drop=True))
        if params.welore:
            fractions = np.empty((m, taus.size))
            for i, s in enumerate(sigma):
                scaled = (s - s.min()) / (s.max() - s.min())
                fractions[i] = (scaled[:, None] < taus[None, :]).mean(axis=0)
            welore.append(pd.DataFrame({
                "job": np.int64(t), "tensor": pd.array(np.repeat(names, taus.size), dtype="str"),
                "tau": np.tile(taus, m), "fraction_below": fractions.ravel(), "lrc_share": params.lrc_share,
                "low_rank": fractions.ravel() >= params.lrc_share}))
            column = np.empty(m, dtype=object)
            column[:] = sigma
            spectrum.append(pd.DataFrame({"job": np.int64(t), "tensor": pd.array(names, dtype="str"),
                                          "sigma": column}))
    out = {"subspaces": pd.concat(subspaces, ignore_index=True)}
    if params.welore:
        out["welore"] = pd.concat(welore, ignore_index=True)
        out["spectrum"] = pd.concat(spectrum, ignore_index=True)
    return out


# ---------------------------------------------------------------------------------------------- provenance

def _versions() -> dict[str, str]:
    import subspace_atlas

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return {"subspace_atlas": subspace_atlas.__version__, "torch": v("torch"), "numpy": np.__version__,
            "pandas": pd.__version__, "safetensors": v("safetensors"), "python": platform.python_version()}


@dataclass(frozen=True)
class Device:
    device: str
    name: str
    threads: int


GPU = Device("cuda", "NVIDIA H100 80GB HBM3", 16)
CPU_NODE = Device("cpu", "Intel(R) Xeon(R) Platinum 8480+ (32 threads)", 32)


def provenance(params: object, ckpt: Ckpt, device: Device, wall: float, matrices: int, created: datetime,
               schema_version: int, base: Ckpt | None = None, group: list[Ckpt] | None = None) -> dict:
    """The manifest's provenance as ``jobs._provenance`` writes it."""
    inputs = {"checkpoint": ckpt.name, "path": str(ckpt.path), "identity": ckpt.identity, "step": ckpt.step,
              "run": ckpt.run, "tensors": ""}
    if base is not None:
        inputs |= {"base": base.name, "base_path": str(base.path), "base_identity": base.identity}
    if group:
        inputs |= {"group": [c.name for c in group]}
    return {"params": dataclasses.asdict(params), "inputs": inputs, "versions": _versions(),
            "device": device.device, "device_name": device.name, "threads": device.threads,
            "matrices": matrices, "wall_s": round(wall, 4), "created": created.isoformat(timespec="seconds"),
            "schema_version": schema_version}


# ---------------------------------------------------------------------------------------------- builders

def fast_label(frame: pd.DataFrame, ckpt: Ckpt, base: Ckpt | None = None) -> pd.DataFrame:
    """``jobs.label`` without its per-row Python loops (2.7 s of a 925 k-row values table): same columns,
    same dtypes, same values; ``checked_labeller`` verifies that against the real one before use."""
    from subspace_atlas.naming import classify

    front = {} if base is None else {"base": base.name}
    front |= {"checkpoint": ckpt.name, "checkpoint_path": str(ckpt.path), "run": ckpt.run,
              "step": pd.array([ckpt.step] * len(frame), dtype="Int64")}
    out = pd.DataFrame(front, index=frame.index)
    if "tensor" in frame:
        codes, names = pd.factorize(frame["tensor"])
        labels = [classify(name) for name in names]
        out["tensor"] = frame["tensor"]
        out["layer"] = pd.array([lab[0] for lab in labels], dtype="Int64").take(codes)
        out["kind"] = pd.array(np.array([lab[1] for lab in labels], dtype=object)[codes], dtype="str")
    return pd.concat([out, frame.drop(columns=[c for c in out.columns if c in frame])], axis=1)


def labellers():
    """The package's ``label`` and ``label_run``: in ``subspace_atlas.labels``, or ``jobs`` in older code."""
    try:
        from subspace_atlas import labels
    except ImportError:
        from subspace_atlas import jobs as labels
    return labels.label, labels.label_run


def checked_labeller(sample: pd.DataFrame, ckpt: Ckpt, base: Ckpt | None = None):
    """``fast_label`` if it labels ``sample`` exactly as ``jobs.label`` does, else the real ``jobs.label``."""
    label, _ = labellers()
    try:
        pd.testing.assert_frame_equal(fast_label(sample, ckpt, base), label(sample, ckpt, base))
        return fast_label
    except AssertionError as err:
        print(f"  note: jobs.label changed ({str(err).splitlines()[0]}); using it (slower)")
        return label


Log = Callable[[str], None]


class Writer:
    """Writes jobs with ``Store.write``; checks each table's schema once against the reference store."""

    def __init__(self, root: Path, reference: Path | None, log: Log):
        from subspace_atlas.store import Store

        self.store, self.reference, self.log = Store(root), reference, log
        self.checked: set[tuple[str, str, str]] = set()
        self.jobs = 0

    def write(self, analysis: str, fp: str, tables: dict[str, pd.DataFrame], prov: dict) -> None:
        first = getattr(getattr(declaration(analysis), "SPEC", None), "first", None)  # rows' stored order, as
        self.store.write(analysis, fp, tables, prov, **({"first": first} if first else {}))  # write_job does
        self.jobs += 1
        if self.reference is None:
            return
        for name, frame in tables.items():
            variant = str(frame["run"].dtype) if "run" in frame else "-"
            if (analysis, name, variant) not in self.checked:
                check_schema(self.store, self.reference, analysis, name, fp)
                self.checked.add((analysis, name, variant))


def declaration(analysis: str):
    """The module declaring an analysis's NAME, TABLES and SCHEMA_VERSION: ``specs.<name>`` where the code
    has it, else ``analysis.<name>`` (older code, e.g. the legacy writer)."""
    import importlib

    try:
        return importlib.import_module(f"subspace_atlas.specs.{analysis}")
    except ImportError:
        return importlib.import_module(f"subspace_atlas.analysis.{analysis}")


def build_spectra(spec: Spec, writer: Writer, log: Log) -> None:
    """spectra jobs, one per checkpoint (and intruders jobs vs the base when the spec asks)."""
    from subspace_atlas.analysis import intruders, spectra
    from subspace_atlas.store import fingerprint

    mats = matrices_of(spec)
    rng = np.random.default_rng(spec.seed)
    per_matrix = MatrixParams.draw(mats, rng, spec.model)
    dtype, device = ("bfloat16", GPU) if spec.model == "llama7b" else ("float32", CPU_NODE)
    base = Ckpt("Llama-2-7b-hf", Path("/models/Llama-2-7b-hf"), None, None, _identity("base", spec.seed))
    if spec.checkpoints == 1:
        members = [base]
    else:
        members = [c for r in range(spec.runs)
                   for c in run_members(_run_name(spec, r), spec.checkpoints, 5000, "/data/runs")]
    base_sigma = None
    if spec.intruders:
        base_sigma, _ = singular_values(mats, *per_matrix.at(0.0, np.random.default_rng([spec.seed, 10**6])),
                                        rng=np.random.default_rng([spec.seed, 10**6 + 1]))
    sp_params, in_params = declaration("spectra").Params(), declaration("intruders").Params()
    sp_spec, in_spec = declaration("spectra"), declaration("intruders")
    labeller = None
    t0 = time.perf_counter()
    for j, ckpt in enumerate(members):
        run_index, position = divmod(j, spec.checkpoints)
        fraction = (position + 1) / spec.checkpoints if ckpt.run else 0.0
        crng = np.random.default_rng([spec.seed, run_index, position])
        if ckpt.run and spec.runs > 1:  # every run of a sweep has its own matrices' parameters
            per_matrix = _run_params(spec, run_index, mats)
        noise, alpha, share = per_matrix.at(fraction, crng)
        sigma, n_tail = singular_values(mats, noise, alpha, share, crng)
        tables = {"matrices": spectra_metrics(mats, sigma, alpha, n_tail, dtype, crng),
                  "values": values_table(mats, sigma)}
        if labeller is None:
            labeller = checked_labeller(tables["values"].head(5000), ckpt)
        tables = {name: labeller(frame, ckpt) for name, frame in tables.items()}
        inputs = {"checkpoint": ckpt.identity, "tensors": "", "name": ckpt.name, "step": ckpt.step, "run": ckpt.run}
        fp = fingerprint(sp_spec.NAME, sp_params, inputs, sp_spec.SCHEMA_VERSION)
        created = START + timedelta(minutes=2 * j)
        wall = (52.5 if spec.model == "llama7b" else 1.2) * float(np.exp(crng.normal(0, 0.1)))
        writer.write(sp_spec.NAME, fp, tables,
                     provenance(sp_params, ckpt, device, wall, len(mats), created, sp_spec.SCHEMA_VERSION))
        if spec.intruders and ckpt.run:
            found = intruders_tables(mats, sigma, base_sigma, fraction, crng)
            found = {name: labeller(frame, ckpt, base) for name, frame in found.items()}
            inputs |= {"base": base.identity, "base_name": base.name}
            fp = fingerprint(in_spec.NAME, in_params, inputs, in_spec.SCHEMA_VERSION)
            writer.write(in_spec.NAME, fp, found,
                         provenance(in_params, ckpt, device, wall * 1.7, len(mats), created + timedelta(minutes=1),
                                    in_spec.SCHEMA_VERSION, base=base))
        if (j + 1) % max(1, len(members) // 10) == 0 or j + 1 == len(members):
            log(f"  {spec.name}: {j + 1}/{len(members)} checkpoints ({time.perf_counter() - t0:.1f} s)")


def _run_name(spec: Spec, r: int) -> str:
    if spec.runs == 1:
        return "llama2-7b-ft" if spec.model == "llama7b" else "minilm-ft"
    lrs = ("1e-05", "3e-05", "1e-04", "3e-04", "1e-03")
    return f"lr{lrs[r % len(lrs)]}-seed{r // len(lrs)}"


@lru_cache(maxsize=4)
def _run_params_cached(seed: int, run_index: int, model: str, count: int) -> MatrixParams:
    mats = minilm_matrices() if model == "minilm" else llama_matrices()
    return MatrixParams.draw(mats[:count], np.random.default_rng([seed, 7, run_index]), model)


def _run_params(spec: Spec, run_index: int, mats: list[Matrix]) -> MatrixParams:
    return _run_params_cached(spec.seed, run_index, spec.model, len(mats))


def build_overlap(spec: Spec, writer: Writer, log: Log) -> None:
    """One overlap job over a run of ``spec.checkpoints`` checkpoints (all five tables), as ``_run_runs`` writes."""
    from subspace_atlas.analysis import overlap
    from subspace_atlas.store import fingerprint

    _, label_run = labellers()
    ov_spec = declaration("overlap")

    mats = matrices_of(spec)
    params = declaration("overlap").Params(reference=spec.reference)
    rng = np.random.default_rng(spec.seed)
    per_matrix = MatrixParams.draw(mats, rng, spec.model)
    run = _run_name(spec, 0)
    members = run_members(run, spec.checkpoints, 5000, "/data/runs")
    steps = [c.step for c in members]
    t0 = time.perf_counter()

    def sigmas() -> Iterator[list[np.ndarray]]:
        for position in range(len(members)):
            crng = np.random.default_rng([spec.seed, 0, position])  # the same σ as the spectra store's run
            noise, alpha, share = per_matrix.at((position + 1) / len(members), crng)
            yield singular_values(mats, noise, alpha, share, crng)[0]

    tables = {"pairs": overlap_pairs(mats, steps, params, rng)}
    log(f"  {spec.name}: pairs {len(tables['pairs']):,} rows ({time.perf_counter() - t0:.1f} s)")
    tables |= overlap_per_checkpoint(mats, sigmas(), params, rng)
    tables["convergence"] = overlap_convergence(tables["pairs"], mats, steps, params)
    ordered = {name: tables[name] for name in ov_spec.TABLES if name in tables}
    labelled = label_run(ordered, members)
    del tables, ordered
    log(f"  {spec.name}: labelled ({time.perf_counter() - t0:.1f} s)")
    inputs = {"run": run, "members": [[c.identity, c.name, c.step] for c in members], "tensors": ""}
    fp = fingerprint(ov_spec.NAME, params, inputs, ov_spec.SCHEMA_VERSION)
    prov = provenance(params, members[0], GPU, 40.0 * len(members), len(mats) * len(members), START,
                      ov_spec.SCHEMA_VERSION, group=members)
    writer.write(ov_spec.NAME, fp, labelled, prov)
    log(f"  {spec.name}: written ({time.perf_counter() - t0:.1f} s)")


def build(spec: Spec, root: Path, reference: Path | None, log: Log = print) -> dict:
    """Build one store into ``root`` (a fresh folder); return its row counts, files and bytes."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    writer = Writer(root, reference, log)
    t0 = time.perf_counter()
    if spec.kind in ("spectra", "sweep"):
        build_spectra(spec, writer, log)
    elif spec.kind == "overlap":
        build_overlap(spec, writer, log)
    else:
        raise ValueError(spec.kind)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "jobs": writer.jobs, **disk_usage(root), "rows": row_counts(root)}


def disk_usage(root: Path) -> dict:
    files = [p for p in root.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def row_counts(root: Path) -> dict[str, int]:
    """Rows per analysis/table, summed over the manifests (no table is read)."""
    out: dict[str, int] = {}
    for path in glob.glob(str(root / "*" / "_jobs" / "*.json")):
        manifest = json.loads(Path(path).read_text())
        for table, n in manifest.get("tables", {}).items():
            key = f"{manifest['analysis']}/{table}"
            out[key] = out.get(key, 0) + int(n)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------- reference

def _package_digest() -> str:
    import subspace_atlas

    package = Path(subspace_atlas.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def reference_store(folder: Path, log: Log = print) -> Path:
    """Run the real spectra, overlap and intruders on tiny Llama-named checkpoints into ``folder/store``.

    Reused while the package's sources are unchanged. A base checkpoint, a run of three (checkpoint-10/20/30);
    spectra of all four; overlap of the run (default params and ``--reference all``); intruders of the run
    and of one loose checkpoint vs the base (a run column that is null or a string, as in real stores).
    """
    import torch
    from _synth import LlamaShape, tensor_list
    from safetensors.torch import save_file

    from subspace_atlas.cli import main

    marker = folder / "reference.json"
    stamp = {"package": _package_digest(), "format": FORMAT}
    store = folder / "store"
    if marker.exists() and json.loads(marker.read_text()) == stamp and store.exists():
        return store
    if folder.exists():
        shutil.rmtree(folder)
    tiny = LlamaShape(hidden=64, intermediate=96, layers=2, vocab=80, heads=4, kv_heads=4)

    def write(path: Path, seed: int, base: dict | None = None) -> dict:
        path.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(seed)
        state = {}
        for name, shape in tensor_list(tiny):
            if len(shape) == 1:
                state[name] = torch.ones(shape)
                continue
            fresh = torch.randn(*shape, generator=gen) * 0.02
            state[name] = fresh if base is None else base[name] + 0.2 * fresh
        save_file(state, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
        return state

    base = write(folder / "ckpts" / "base", 0)
    for i, step in enumerate((10, 20, 30)):
        write(folder / "ckpts" / "run" / f"checkpoint-{step}", i + 1, base)
    write(folder / "ckpts" / "loose", 9, base)
    old = os.environ.get("SUBSPACE_ATLAS_CACHE")
    os.environ["SUBSPACE_ATLAS_CACHE"] = str(folder / "svd-cache")
    try:
        c = folder / "ckpts"
        commands = [["spectra", str(c / "base"), str(c / "run")],
                    ["overlap", str(c / "run")],
                    ["overlap", str(c / "run"), "--reference", "all"],
                    ["intruders", str(c / "run"), str(c / "loose"), "--base", str(c / "base")]]
        for command in commands:
            if main([*command, "--store", str(store), "--device", "cpu"]) != 0:
                raise RuntimeError(f"reference run failed: subspace-atlas {' '.join(command)}")
    finally:
        if old is None:
            os.environ.pop("SUBSPACE_ATLAS_CACHE", None)
        else:
            os.environ["SUBSPACE_ATLAS_CACHE"] = old
    marker.write_text(json.dumps(stamp))
    log(f"reference store (the real analyses on tiny checkpoints): {store}")
    return store


def _schema(path: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """A Parquet file's Arrow fields and the pandas dtypes its metadata records."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    pandas_meta = json.loads(schema.metadata[b"pandas"]) if b"pandas" in schema.metadata else {"columns": []}
    fields = [(f.name, str(f.type)) for f in schema]
    dtypes = [(c["name"], c["pandas_type"], c["numpy_type"]) for c in pandas_meta["columns"]]
    return fields, dtypes


def _files(store, analysis: str, table: str, fp: str | None = None) -> list[str]:
    """The Parquet files of a table (of one job when ``fp`` is given), for any store layout."""
    base = Path(store.root) / analysis / table
    pattern = f"part-{fp}*.parquet" if fp else "*.parquet"
    return sorted(str(p) for p in base.glob(pattern))


def check_schema(store, reference: Path, analysis: str, table: str, fp: str) -> None:
    """Fail unless the job's file of ``table`` has the schema of some real file of that table."""
    from subspace_atlas.store import Store

    mine = _files(store, analysis, table, fp)
    real = _files(Store(reference), analysis, table)
    if not mine or not real:
        raise RuntimeError(f"schema check {analysis}/{table}: files missing (mine {mine[:1]}, reference {real[:1]})")
    got = _schema(mine[-1])
    candidates = [_schema(p) for p in real]
    if got in candidates:
        return
    want = candidates[0]
    diff = [f"{a} != {b}" for a, b in zip(got[0] + got[1], want[0] + want[1]) if a != b]
    diff += [f"columns: {len(got[0])} vs {len(want[0])}"] if len(got[0]) != len(want[0]) else []
    raise RuntimeError(f"schema of synthetic {analysis}/{table} differs from the real one: {'; '.join(diff[:8])}")


def check_fit(count: int = 3, seed: int = 0) -> list[tuple[str, float, float]]:
    """(matrix, generating alpha, alpha of the real power-law fit) for a few synthetic 7B spectra."""
    from subspace_atlas.analysis import spectra

    mats = llama_matrices()
    rng = np.random.default_rng(seed)
    chosen = [mats[i] for i in rng.choice(len(mats), count, replace=False)]
    per_matrix = MatrixParams.draw(chosen, rng, "llama7b")
    noise, alpha, share = per_matrix.at(0.5, rng)
    sigma, _ = singular_values(chosen, noise, alpha, share, rng)
    return [(m.name, float(a), float(spectra.metrics(s, m.rows, m.cols, declaration("spectra").Params())["alpha"]))
            for m, a, s in zip(chosen, alpha, sigma)]
