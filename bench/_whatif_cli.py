"""Run ``subspace-atlas`` with the proposed memory fixes applied at runtime (the package is untouched).

    python bench/_whatif_cli.py [--fixes pread,count_nonzero,mallopt] -- spectra CKPT --store TMP ...

Each fix is the runtime equivalent of one proposed source change (see bench/RESULTS.md):

* ``pread``: ``checkpoints._SafetensorsFile`` opens files with ``safe_open(..., backend="pread")``
  (safetensors ≥ 0.8) instead of memory-mapping them, so touched pages of the weight files are not
  kept mapped (file-backed RSS) for the whole job.
* ``count_nonzero``: ``spectra.compute`` counts non-finite entries with ``.count_nonzero()`` instead of
  ``.sum()`` on the boolean mask (the sum materialises an int64 copy: 8 bytes per element).
* ``mmap4`` / ``mmap16``: as ``mallopt`` but with a 4 / 16 MiB threshold (a 1 MiB threshold costs
  about a quarter of the compute time on small matrices: every buffer over 1 MiB is a fresh mmap,
  page-faulted and zeroed); replaces the package's own pinning where it has one.
* ``inplace_gram``: ``linalg._gram_singular_values`` accumulates with ``gram.baddbmm_(blockᵀ, block)``
  into one float64 block buffer reused across blocks, so a matrix costs two large allocations
  (buffer, Gram) instead of two per block (converted block, product).
* ``nomallopt``: undo the package's own pinning (to measure without it).
* ``inflight128``: ``spectra._INFLIGHT_BYTES`` = 128 MiB instead of 256 MiB, so two 131 MB bf16
  matrices (a Llama embedding and lm_head) are not decomposed at the same time, each with its
  float64 blocks, Gram matrix and eigensolver workspace.
* ``mallopt``: glibc ``mallopt(M_MMAP_THRESHOLD, 1 MiB)`` at start, so large temporaries are always
  mmapped and returned to the OS on free instead of fragmenting the heap (glibc's dynamic threshold
  otherwise rises to 32 MiB after the first large free).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import inspect
import sys

ALL = ("pread", "count_nonzero", "mallopt", "inflight128", "mmap4", "mmap16", "nomallopt", "inplace_gram")


def apply(fixes: set[str]) -> list[str]:
    """Apply what still applies to the current source; return notes on what was skipped and why."""
    notes = []
    if "mallopt" in fixes:
        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD = -3
        if libc.mallopt(M_MMAP_THRESHOLD, 1 << 20) != 1:
            raise SystemExit("mallopt failed")
    if "pread" in fixes:
        import safetensors

        import subspace_atlas.checkpoints as ckmod

        if hasattr(ckmod, "safe_open"):
            ckmod.safe_open = functools.partial(safetensors.safe_open, backend="pread")
        else:
            notes.append("pread: not applicable (the reader no longer memory-maps through safe_open)")
    if "count_nonzero" in fixes:
        from subspace_atlas.analysis import spectra

        src = inspect.getsource(spectra.compute)
        new = src.replace("int((~torch.isfinite(m)).sum())", "int((~torch.isfinite(m)).count_nonzero())")
        if new == src:
            notes.append("count_nonzero: not applicable (the bool-mask .sum() is gone from spectra.compute)")
        else:
            exec(compile(new, spectra.__file__, "exec"), spectra.__dict__)
    for name, mib in (("mmap4", 4), ("mmap16", 16), ("nomallopt", None)):
        if name in fixes:
            from subspace_atlas import jobs

            def pin(mib=mib):
                if mib is not None:
                    ctypes.CDLL("libc.so.6").mallopt(-3, mib << 20)
            if hasattr(jobs, "_return_large_frees_to_the_os"):
                jobs._return_large_frees_to_the_os = pin
            else:
                pin()
    if "inplace_gram" in fixes:
        import torch

        from subspace_atlas import linalg

        def gram_inplace(batch, device, dtype=torch.float64):  # linalg passes the Gram precision
            if batch.shape[-2] < batch.shape[-1]:
                batch = batch.transpose(-2, -1)
            count, rows, cols = batch.shape
            gram = torch.zeros(count, cols, cols, dtype=dtype, device=device)
            step = max(1, linalg._BLOCK_BYTES // max(1, 8 * cols * count))
            buf = torch.empty(count, min(step, rows), cols, dtype=dtype, device=device)
            for start in range(0, rows, step):
                n = min(step, rows - start)
                block = buf[:, :n]
                block.copy_(batch[:, start:start + n])
                gram.baddbmm_(block.transpose(-2, -1), block)
            del buf
            evals = linalg._where_finite(gram, torch.linalg.eigvalsh)
            return evals.flip(-1).clamp_min(0).sqrt()
        linalg._gram_singular_values = gram_inplace
    if "inflight128" in fixes:
        from subspace_atlas.analysis import spectra

        if hasattr(spectra, "_INFLIGHT_BYTES"):
            spectra._INFLIGHT_BYTES = 128 << 20
        else:
            notes.append("inflight128: not applicable (no spectra._INFLIGHT_BYTES)")
    return notes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixes", default=",".join(ALL))
    ap.add_argument("cli", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    fixes = {f for f in args.fixes.split(",") if f}
    unknown = fixes - set(ALL)
    if unknown:
        raise SystemExit(f"unknown fixes {unknown}")
    for note in apply(fixes):
        print(f"what-if: {note}", file=sys.stderr)
    from subspace_atlas.cli import main as cli_main

    argv = args.cli[1:] if args.cli and args.cli[0] == "--" else args.cli
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
