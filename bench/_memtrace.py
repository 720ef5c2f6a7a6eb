"""Run ``subspace-atlas`` in-process with phase labels, sampling RSS to attribute memory and time.

    python bench/_memtrace.py [--pread] [--json OUT] -- spectra CKPT --store TMP --force ...

Instrumentation only (nothing in the package is edited): package functions are wrapped at runtime
so a sampler thread knows which phase and which matrix the main thread is in. ``--pread`` is a
what-if: it makes the checkpoint reader call ``safe_open(..., backend="pread")`` (safetensors ≥ 0.8)
instead of memory-mapping, to measure the proposed change.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

_state = {"phase": "startup", "matrix": ""}
_samples: list[tuple[float, int, int, str, str]] = []
_time_in: dict[str, float] = defaultdict(float)


def _rss() -> tuple[int, int]:
    anon = file = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            anon = int(line.split()[1])
        elif line.startswith("RssFile:"):
            file = int(line.split()[1])
    return anon, file


def _sampler(stop: threading.Event, t0: float) -> None:
    while not stop.is_set():
        anon, file = _rss()
        _samples.append((time.perf_counter() - t0, anon, file, _state["phase"], _state["matrix"]))
        stop.wait(0.01)


def _phase(name: str, fn):
    @functools.wraps(fn)
    def wrapped(*a, **k):
        prev = _state["phase"]
        _state["phase"] = name
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            _time_in[name] += time.perf_counter() - t
            _state["phase"] = prev
    return wrapped


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pread", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("cli", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cli_args = args.cli[1:] if args.cli and args.cli[0] == "--" else args.cli

    t0 = time.perf_counter()
    stop = threading.Event()
    threading.Thread(target=_sampler, args=(stop, t0), daemon=True).start()

    _state["phase"] = "imports"
    import safetensors
    import torch

    from subspace_atlas import cli, linalg
    from subspace_atlas.analysis import spectra
    from subspace_atlas.checkpoints import Checkpoint
    import subspace_atlas.checkpoints as ckmod
    from subspace_atlas.runners import checkpoint as checkpoint_runner
    from subspace_atlas.store import Store
    import_s = time.perf_counter() - t0

    if args.pread and hasattr(ckmod, "safe_open"):
        ckmod.safe_open = functools.partial(safetensors.safe_open, backend="pread")
    if hasattr(spectra, "_nonfinite"):
        spectra._nonfinite = _phase("non-finite check", spectra._nonfinite)

    Checkpoint.identity = _phase("plan: identity hash", Checkpoint.identity)
    Store.write = _phase("store.write (parquet)", Store.write)
    checkpoint_runner.label = _phase("label table", checkpoint_runner.label)
    spectra.metrics = _phase("metrics (power law, MP, norms)", spectra.metrics)
    linalg._gram_singular_values = _phase("gram: accumulate (bf16→f64 blocks, matmul)", linalg._gram_singular_values)
    torch.linalg.eigvalsh = _phase("gram: eigvalsh", torch.linalg.eigvalsh)
    torch.linalg.svdvals = _phase("svd: svdvals", torch.linalg.svdvals)
    torch.isfinite = _phase("non-finite check", torch.isfinite)

    batches = spectra._batches

    def traced_batches(stream, batch_bytes):
        it = batches(stream, batch_bytes)
        while True:
            _state["phase"] = "waiting for reader"
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                _time_in["waiting for reader"] += time.perf_counter() - t
            _state["matrix"] = ",".join(i.name for i, _ in batch)
            _state["phase"] = "compute (other)"
            yield batch
        _state["phase"] = "compute (other)"

    spectra._batches = traced_batches

    _state["phase"] = "cli"
    t_run = time.perf_counter()
    rc = cli.main(cli_args)
    run_s = time.perf_counter() - t_run
    stop.set()
    time.sleep(0.03)

    per_phase: dict[str, dict] = {}
    for _, anon, file, phase, _ in _samples:
        p = per_phase.setdefault(phase, {"max_anon_mib": 0.0, "max_file_mib": 0.0, "max_rss_mib": 0.0, "samples": 0})
        p["max_anon_mib"] = max(p["max_anon_mib"], anon / 1024)
        p["max_file_mib"] = max(p["max_file_mib"], file / 1024)
        p["max_rss_mib"] = max(p["max_rss_mib"], (anon + file) / 1024)
        p["samples"] += 1
    for phase, secs in _time_in.items():
        per_phase.setdefault(phase, {})["seconds"] = round(secs, 3)
    peak = max(_samples, key=lambda s: s[1] + s[2]) if _samples else None
    per_matrix: dict[str, float] = defaultdict(float)
    for _, anon, file, _, matrix in _samples:
        per_matrix[matrix] = max(per_matrix[matrix], anon / 1024)
    out = {
        "rc": rc, "pread": args.pread, "import_s": round(import_s, 2), "run_s": round(run_s, 2),
        "peak": None if peak is None else {"t": round(peak[0], 2), "anon_mib": round(peak[1] / 1024),
                                           "file_mib": round(peak[2] / 1024), "phase": peak[3], "matrix": peak[4]},
        "phases": per_phase,
        "top_matrices_by_anon": sorted(per_matrix.items(), key=lambda kv: -kv[1])[:5],
        "anon_start_end_mib": [round(_samples[0][1] / 1024), round(_samples[-1][1] / 1024)] if _samples else None,
    }
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
