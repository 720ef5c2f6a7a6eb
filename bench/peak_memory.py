"""Peak memory of ``subspace-atlas spectra`` on a ≥ 2 GB sharded bf16 Llama-shaped checkpoint.

    .venv/bin/python bench/peak_memory.py [--out DIR] [--method gram] [--what-if FIXES] [--trace] [--tensors RE]

1. Writes (once; reused when identical) a TinyLlama-1.1B-shaped checkpoint: hidden 2048, intermediate
   5632, vocab 32000, 22 layers, 4 KV heads, untied lm_head, bf16, HF names, 2 shards plus
   ``model.safetensors.index.json``. Random N(0, 0.02²) weights, generated and written one tensor at
   a time (the writer never holds more than one tensor).
2. Runs ``subspace-atlas spectra DIR --store TMP --force --device cpu`` in a child process and reports
   its wall time and peak RSS (kernel ``VmHWM`` / ``getrusage(RUSAGE_CHILDREN).ru_maxrss``), with an
   RSS timeline split into anonymous memory (tensors, Gram matrices, heap) and file-backed pages
   (the memory-mapped safetensors pages the process has touched).
3. To attribute the peak to a step it also measures, each in its own child process: the imports
   alone, and a read-only pass that streams every matrix through ``Checkpoint.stream`` exactly as
   a job does but computes nothing.

Options: ``--what-if mallopt,inflight128`` adds a run with proposed fixes patched in at runtime
(``bench/_whatif_cli.py``); ``--trace`` adds a run under ``bench/_memtrace.py`` that labels RSS
samples with the phase and matrix in progress (approximate now that compute uses worker threads).

Target: peak RSS < 1 GB (checked as < 1024 MiB; the GB figure is printed too).
Results go to stdout and ``bench/out/peak_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT, cli_path, peak_of, print_machine, run_child  # noqa: E402
from _synth import TINYLLAMA, evict_page_cache, write_checkpoint  # noqa: E402

TARGET_MIB = 1024

READ_ONLY = """
import sys, time
from subspace_atlas.checkpoints import open_checkpoints
from subspace_atlas.specs import spectra
t0 = time.perf_counter()
n = b = 0
for ck in open_checkpoints(sys.argv[1]):
    taken, _ = spectra.select(ck.tensors())
    for name, t in ck.stream([i.name for i in taken]):
        x = t.clone()  # touch every byte (a memory-mapped tensor would otherwise read nothing)
        n += 1; b += t.numel() * t.element_size()
        del x, t
print(f"read {n} matrices, {b/1e9:.2f} GB in {time.perf_counter()-t0:.2f} s")
"""

IMPORTS = "import torch, pandas, scipy, subspace_atlas.cli, subspace_atlas.jobs, subspace_atlas.analysis.spectra"


def _timeline(samples, lines: int = 30) -> list[str]:
    """A coarse RSS timeline: the largest sample in each of about ``lines`` equal time windows."""
    if not samples:
        return []
    every = max(1.0, samples[-1][0] / lines)
    buckets: dict[int, tuple] = {}
    for s in samples:
        k = int(s[0] // every)
        if k not in buckets or s[1] > buckets[k][1]:
            buckets[k] = s
    return [f"  t={t:6.1f}s  rss {rss / 1024:6.0f} MiB  anon {anon / 1024:6.0f} MiB  file-backed {file / 1024:6.0f} MiB"
            for t, rss, anon, file in (buckets[k] for k in sorted(buckets))]


def _report(label: str, res: dict) -> dict:
    peaks = peak_of(res["samples"])
    peak_mib = max(res["maxrss_kib"], res["vmhwm_kib"]) / 1024
    print(f"{label}: rc={res['rc']} wall {res['wall_s']:.1f} s  peak RSS {peak_mib:.0f} MiB "
          f"(ru_maxrss {res['maxrss_kib'] / 1024:.0f} MiB, VmHWM {res['vmhwm_kib'] / 1024:.0f} MiB; "
          f"sampled max anon {peaks['anon']:.0f} MiB, file-backed {peaks['file']:.0f} MiB)")
    if res["rc"] != 0:
        print(res["stderr"][-3000:])
    return {"label": label, "cmd": res["cmd"], "rc": res["rc"], "wall_s": round(res["wall_s"], 2),
            "peak_rss_mib": round(peak_mib, 1), "max_anon_mib": round(peaks["anon"], 1),
            "max_file_mib": round(peaks["file"], 1), "stdout": res["stdout"].strip()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT / "tinyllama-synth", help="checkpoint folder (git-ignored)")
    ap.add_argument("--method", default="gram", choices=("gram", "svd"))
    ap.add_argument("--cold", action="store_true", help="evict the files from the page cache before each run")
    ap.add_argument("--skip-diagnosis", action="store_true", help="skip the imports-only and read-only runs")
    ap.add_argument("--tensors", default="", help="pass --tensors REGEX to the CLI (a quicker partial run)")
    ap.add_argument("--trace", action="store_true",
                    help="also run once under bench/_memtrace.py to attribute the peak to a phase and matrix")
    ap.add_argument("--what-if", default="",
                    help="also run once through bench/_whatif_cli.py with these fixes (e.g. mallopt)")
    args = ap.parse_args()

    info = print_machine("peak memory: subspace-atlas spectra on a TinyLlama-shaped bf16 checkpoint")
    ck = write_checkpoint(args.out, TINYLLAMA, shards=2)
    shards = sorted(p.name for p in args.out.glob("*.safetensors"))
    print(f"checkpoint: {args.out}  {ck['bytes'] / 1e9:.2f} GB ({ck['bytes'] / 2**30:.2f} GiB), "
          f"{ck['params'] / 1e9:.2f} B params, {ck['tensors']} tensors, shards {shards}"
          + ("" if ck["reused"] else f", written in {ck['seconds']:.1f} s"))
    summary = {"machine": info, "checkpoint": ck, "shards": shards, "method": args.method, "runs": []}

    py = sys.executable
    if not args.skip_diagnosis:
        summary["runs"].append(_report("imports only", run_child([py, "-c", IMPORTS])))
        if args.cold:
            evict_page_cache(args.out)
        summary["runs"].append(_report("read-only stream of every matrix",
                                       run_child([py, "-c", READ_ONLY, str(args.out)])))
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        if args.cold:
            evict_page_cache(args.out)
        cli_args = ["spectra", str(args.out), "--store", tmp, "--force", "--device", "cpu", "--method", args.method]
        if args.tensors:
            cli_args += ["--tensors", args.tensors]
        cmd = [cli_path(), *cli_args]
        print("running: " + " ".join(cmd), flush=True)
        res = run_child(cmd, poll_s=0.05)
        full = _report(f"subspace-atlas spectra (--method {args.method})", res)
        full["timeline"] = _timeline(res["samples"])
        summary["runs"].append(full)
        print(full["stdout"])
        print("RSS timeline (largest sample per window):")
        print("\n".join(full["timeline"]))
        bench = Path(__file__).resolve().parent
        if args.trace:
            trace_json = OUT / "peak_memory_trace.json"
            r = run_child([py, str(bench / "_memtrace.py"), "--json", str(trace_json), "--", *cli_args], poll_s=0.05)
            extra = _report("same run under bench/_memtrace.py", r)
            if trace_json.exists():
                trace = json.loads(trace_json.read_text())
                extra["trace"] = trace
                print(f"  peak at t={trace['peak']['t']} s in phase {trace['peak']['phase']!r} on "
                      f"{trace['peak']['matrix']!r}: anon {trace['peak']['anon_mib']} MiB, "
                      f"file-backed {trace['peak']['file_mib']} MiB")
                for phase, p in trace["phases"].items():
                    print(f"   {phase:<46} max anon {p.get('max_anon_mib', 0):6.0f} MiB  "
                          f"time {p.get('seconds', float('nan')):8.2f} s")
            summary["runs"].append(extra)
        if args.what_if:
            r = run_child([py, str(bench / "_whatif_cli.py"), "--fixes", args.what_if, "--", *cli_args], poll_s=0.05)
            summary["runs"].append(_report(f"what-if: same run with fixes {args.what_if}", r))
            if r["stderr"].strip():
                print("  " + r["stderr"].strip()[-600:])

    peak = full["peak_rss_mib"]
    verdict = "PASS" if peak < TARGET_MIB and full["rc"] == 0 else "FAIL"
    scope = f" (--tensors {args.tensors!r}: a partial run)" if args.tensors else ""
    print(f"\nRESULT{scope}: peak RSS {peak:.0f} MiB ({peak * 2**20 / 1e9:.2f} GB) vs target < {TARGET_MIB} MiB: {verdict}; "
          f"wall {full['wall_s']:.1f} s for {ck['bytes'] / 1e9:.2f} GB")
    summary["verdict"] = verdict
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "peak_memory.json").write_text(json.dumps(summary, indent=1))
    return 0 if full["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
