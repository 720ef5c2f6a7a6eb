"""End-to-end GPU benchmark: ``subspace-atlas spectra --device cuda`` on a Llama-2-7B-shaped checkpoint.

    .venv/bin/python bench/gpu_llama7b.py            # on a GPU machine: 7B shape, --device cuda
    .venv/bin/python bench/gpu_llama7b.py --small    # quick check anywhere: tiny Llama shape, CPU

1. Writes (once; reused when identical) a Llama-2-7B-shaped bf16 checkpoint locally: hidden 4096,
   intermediate 11008, 32 layers, vocab 32000, 32 KV heads, untied lm_head, HF names, 2 shards +
   ``model.safetensors.index.json`` (13.5 GB; 6.7 B parameters). Weights are random, generated on
   the GPU when there is one, and written one tensor at a time. ``--small``: hidden 256,
   intermediate 688, 2 layers, vocab 1000 (≈ 6 MB).
2. Disk reading alone, page cache dropped first (``posix_fadvise(DONTNEED)`` on the fsynced files,
   no root needed; the script reports whether the drop took effect by the read speed):
   a. raw sequential read of every shard (1 MiB ``readinto``): what the disk can do;
   b. the package's reader: ``Checkpoint.stream`` over every matrix, each copied to the device
      (``.to(device)``; ``.clone()`` on CPU), i.e. exactly the bytes a job must read.
3. The full run, page cache dropped first: ``subspace-atlas spectra DIR --store TMP --force
   --device DEV`` in a child process (process start, imports, reading, compute, Parquet), wall
   time and peak RSS; then once more with the page cache warm, to separate compute from disk.

Reported: total time, and the share of time reading the disk = reader pass (2b) / full cold run
(3), and (cold − warm) / cold as a second estimate. Results go to stdout and to
``$OUT/gpu_llama7b.json`` when ``$OUT`` is set (the device runner's output folder), else
``bench/out/gpu_llama7b.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT, cli_path, peak_of, print_machine, run_child  # noqa: E402
from _synth import LLAMA2_7B, SMALL, evict_page_cache, write_checkpoint  # noqa: E402

READER_PASS = """
import sys, time, torch
from subspace_atlas.checkpoints import open_checkpoints
from subspace_atlas.specs import spectra
device = torch.device(sys.argv[2])
t0 = time.perf_counter()
n = nbytes = 0
for ck in open_checkpoints(sys.argv[1]):
    taken, _ = spectra.select(ck.tensors())
    for name, t in ck.stream([i.name for i in taken]):
        x = t.to(device) if device.type != "cpu" else t.clone()
        n += 1; nbytes += t.numel() * t.element_size()
        del x
if device.type == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
print(f"@@READ {n} {nbytes} {dt}")
"""


def raw_read(folder: Path) -> tuple[int, float]:
    """Sequentially read every shard with 1 MiB ``readinto`` calls; (bytes, seconds)."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total, t0 = 0, time.perf_counter()
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb", buffering=0) as fh:
            while True:
                got = fh.readinto(view)
                if not got:
                    break
                total += got
    return total, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny Llama shape, default --device cpu: a quick check")
    ap.add_argument("--device", default=None, help="device for the run (default: cuda, or cpu with --small)")
    ap.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: bench/out/<shape>)")
    ap.add_argument("--method", default="gram", choices=("gram", "gram32", "svd"))
    ap.add_argument("--no-warm", action="store_true", help="skip the second, page-cache-warm full run")
    ap.add_argument("--delete", action="store_true", help="delete the checkpoint afterwards")
    args = ap.parse_args()

    import torch

    shape = SMALL if args.small else LLAMA2_7B
    device = args.device or ("cpu" if args.small else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --small (CPU) or on a GPU machine", file=sys.stderr)
        return 2
    folder = args.out or (OUT / ("llama-small-synth" if args.small else "llama2-7b-synth"))
    info = print_machine(f"GPU benchmark: spectra --device {device} on a "
                         f"{'small' if args.small else 'Llama-2-7B'}-shaped bf16 checkpoint")
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory"] = f"{props.total_memory / 2**30:.0f} GiB"
        print(f"gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB")

    gen_device = "cuda" if torch.cuda.is_available() else "cpu"
    ck = write_checkpoint(folder, shape, shards=2, device=gen_device)
    print(f"checkpoint: {folder}  {ck['bytes'] / 1e6:.1f} MB, {ck['params'] / 1e6:.1f} M params, {ck['tensors']} "
          f"tensors" + ("" if ck["reused"] else f", written in {ck['seconds']:.1f} s "
                                                  f"({ck['bytes'] / 1e6 / max(ck['seconds'], 1e-9):.0f} MB/s)"))
    res = {"machine": info, "device": device, "method": args.method, "checkpoint": ck, "shape": vars(shape)}

    # 2a. raw disk read, cold
    dropped = evict_page_cache(folder)
    nbytes, secs = raw_read(folder)
    res["raw_read"] = {"bytes": nbytes, "seconds": secs, "gb_per_s": nbytes / 1e9 / secs, "cache_dropped": dropped}
    print(f"raw sequential read (cache dropped: {dropped}): {nbytes / 1e6:.1f} MB in {secs:.3f} s "
          f"= {nbytes / 1e9 / secs:.2f} GB/s")

    # 2b. the package's reader, every matrix to the device, cold
    evict_page_cache(folder)
    r = run_child([sys.executable, "-c", READER_PASS, str(folder), device])
    m = re.search(r"@@READ (\d+) (\d+) ([0-9.e+-]+)", r["stdout"])
    if r["rc"] != 0 or not m:
        print(r["stdout"], r["stderr"][-3000:])
        return 1
    n, rbytes, rsecs = int(m.group(1)), int(m.group(2)), float(m.group(3))
    res["reader_pass"] = {"matrices": n, "bytes": rbytes, "seconds": rsecs, "process_wall_s": r["wall_s"],
                          "gb_per_s": rbytes / 1e9 / rsecs}
    print(f"reader pass (Checkpoint.stream → {device}, cache dropped): {n} matrices, {rbytes / 1e6:.1f} MB in "
          f"{rsecs:.3f} s = {rbytes / 1e9 / rsecs:.2f} GB/s (process {r['wall_s']:.2f} s incl. start/imports)")

    # 3. full runs
    runs = []
    for label in ("cold", "warm")[: 1 if args.no_warm else 2]:
        with tempfile.TemporaryDirectory(prefix="atlas-gpu-bench-") as tmp:
            if label == "cold":
                evict_page_cache(folder)
            cmd = [cli_path(), "spectra", str(folder), "--store", tmp, "--force", "--device", device,
                   "--method", args.method]
            print(("running: " + " ".join(cmd)) if label == "cold" else "running again, page cache warm", flush=True)
            r = run_child(cmd, poll_s=0.1)
            if r["rc"] != 0:
                print(r["stdout"], r["stderr"][-3000:])
                return 1
            inner = re.search(r"matrices in ([0-9.]+) s", r["stdout"])
            peaks = peak_of(r["samples"])
            run = {"label": label, "wall_s": r["wall_s"], "in_process_s": float(inner.group(1)) if inner else None,
                   "peak_rss_mib": max(r["maxrss_kib"], r["vmhwm_kib"]) / 1024,
                   "max_anon_mib": peaks["anon"], "max_file_mib": peaks["file"], "stdout": r["stdout"].strip()}
            runs.append(run)
            print(f"full run ({label} cache): {run['wall_s']:.2f} s end to end "
                  f"(jobs.run {run['in_process_s']} s), peak RSS {run['peak_rss_mib']:.0f} MiB "
                  f"(anon {run['max_anon_mib']:.0f}, file-backed {run['max_file_mib']:.0f})")
    res["runs"] = runs
    cold = runs[0]["wall_s"]
    share = rsecs / cold
    res["disk_share_reader_over_cold"] = share
    inner = runs[0]["in_process_s"]
    inner_note = (f", {100 * rsecs / inner:.1f} % of the {inner:.1f} s the job itself took (jobs.run, without "
                  f"process start and imports)") if inner else ""
    res["disk_share_reader_over_jobs_run"] = rsecs / inner if inner else None
    print(f"\nRESULT: {ck['bytes'] / 1e9:.3g} GB, {n} matrices, spectra --device {device}: {cold:.1f} s end to end "
          f"(cold cache); reading every matrix alone takes {rsecs:.2f} s = {100 * share:.1f} % of it{inner_note}")
    if len(runs) > 1:
        warm = runs[1]["wall_s"]
        res["disk_share_cold_minus_warm"] = (cold - warm) / cold
        print(f"        warm-cache run {warm:.1f} s: (cold − warm) / cold = {100 * (cold - warm) / cold:.0f} % "
              f"(second estimate of the disk's share; only meaningful on an otherwise idle machine)")
    dest = Path(os.environ["OUT"]) if os.environ.get("OUT") else OUT
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "gpu_llama7b.json").write_text(json.dumps(res, indent=1, default=str))
    if args.delete:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
