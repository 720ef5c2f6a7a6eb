"""Randomized block Krylov top-k (``linalg.top_svd``) vs a full SVD, on Llama-shaped matrices with planted spectra.

    .venv/bin/python bench/topk_vs_svd.py [--device cuda] [--shapes 4096x4096 4096x11008] [--ks 16 64]

For each shape and spectrum (σ_i = i^−0.3: slowly decaying, the hard case; σ_i = i^−1; a trained-like
spectrum: a Marchenko–Pastur bulk of a Gaussian matrix plus 32 planted spikes), it times
``torch.linalg.svd`` (the whole thin SVD, what a per-matrix loop pays) and ``top_svd`` at each k, and
reports the overlap ‖U_kᵀ Û_k‖²_F / k of both sides against the exact SVD, the method's own bound,
its iterations, and the time ratio. Float32, torch threads = all cores (the matrices are decomposed
one at a time, as a user's one-off call would be).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine  # noqa: E402

from subspace_atlas.linalg import top_svd  # noqa: E402


def planted(m: int, n: int, spectrum: str, gen: torch.Generator) -> torch.Tensor:
    r = min(m, n)
    if spectrum == "bulk+spikes":
        noise = torch.randn(m, n, generator=gen) / n**0.5
        spikes = torch.randn(m, 32, generator=gen) @ torch.randn(32, n, generator=gen) / n**0.5
        return noise + 0.3 * spikes
    u = torch.linalg.qr(torch.randn(m, r, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(n, r, generator=gen))[0]
    s = torch.arange(1, r + 1, dtype=torch.float32) ** -(0.3 if spectrum == "i^-0.3" else 1.0)
    return (u * s) @ v.T


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().T @ b.double()).square().sum()) / a.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", default=["4096x4096", "4096x11008"])
    parser.add_argument("--ks", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--spectra", nargs="+", default=["i^-0.3", "i^-1", "bulk+spikes"])
    args = parser.parse_args()
    device = torch.device(args.device)
    print_machine("Randomized top-k vs full SVD")
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'shape':>11} {'spectrum':>11} {'k':>3} {'full SVD s':>10} {'top-k s':>8} {'ratio':>6} "
          f"{'overlap U':>10} {'overlap V':>10} {'bound':>8} {'iters':>5} method")
    gen = torch.Generator().manual_seed(0)
    for shape in args.shapes:
        m, n = map(int, shape.split("x"))
        for spectrum in args.spectra:
            mat = planted(m, n, spectrum, gen).to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            u, s, vh = torch.linalg.svd(mat, full_matrices=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            full = time.perf_counter() - t0
            for k in args.ks:
                t0 = time.perf_counter()
                top = top_svd(mat, k, device=device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                fast = time.perf_counter() - t0
                print(f"{shape:>11} {spectrum:>11} {k:>3} {full:>10.2f} {fast:>8.3f} {full / fast:>6.1f} "
                      f"{overlap(u[:, :k].cpu(), top.u):>10.6f} {overlap(vh[:k].T.cpu(), top.v):>10.6f} "
                      f"{top.bound:>8.1e} {top.iterations:>5} {top.method}", flush=True)
            del mat, u, s, vh


if __name__ == "__main__":
    main()
