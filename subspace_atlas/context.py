"""Where and how a job computes: one ``ComputeContext`` resolved once from the flags, passed to every compute.

Nothing here enters a fingerprint: every choice that changes the numbers (method, precision, k …) is an
analysis param. The context only says where the work runs, how it is spread and batched, and which
decomposition cache it reads, so a result stored on one machine serves a rerun on another. Importing
this module imports no torch; ``resolve`` and ``torch_device`` load it when there is work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from subspace_atlas.errors import AtlasError
from subspace_atlas.options import check_device_spec

if TYPE_CHECKING:
    import torch

    from subspace_atlas.svdcache import SvdCache

GPU_BATCH_BYTES = 1 << 30  # default --batch-mb on a GPU (1024 MB); batching on a CPU only costs memory


@dataclass(frozen=True)
class ComputeContext:
    """Where a job's work runs and how: device, matrices at once, torch threads, batch bytes, SVD cache."""

    device: str = "cpu"  # resolved: "cpu" or "cuda:N", never "auto"
    batch_bytes: int = 0  # bytes of same-shaped matrices decomposed together
    workers: int | None = None  # matrices worked on at once (None: each analysis's default)
    threads: int | None = None  # torch's CPU threads when resolved (None: not resolved, e.g. a test's context)
    cache_root: str | None = None  # the decomposition cache's folder (None: cache nothing)

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    def svd_cache(self) -> SvdCache:
        from subspace_atlas.svdcache import SvdCache

        return SvdCache(self.cache_root)


def resolve(device: str = "auto", batch_bytes: int | None = None, workers: int | None = None,
            cache_root: str | os.PathLike | None = None) -> ComputeContext:
    """The context for ``--device`` (``auto``: CUDA when present), ``--batch-mb`` in bytes (default: 1 GiB on
    a GPU, 0 on a CPU) and the default decomposition cache (``svdcache.default_root``) unless one is given.

    ``cuda`` names the current GPU by index, so provenance says which one did the work. Asking for a CUDA
    device this machine lacks fails with one line.
    """
    import torch

    from subspace_atlas.svdcache import default_root

    check_device_spec(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AtlasError(f"--device {device}: no CUDA device is available here (use --device cpu or auto)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    if device.startswith("cuda") and int(device[5:]) >= torch.cuda.device_count():
        raise AtlasError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if batch_bytes is None:
        batch_bytes = GPU_BATCH_BYTES if device.startswith("cuda") else 0
    return ComputeContext(device, batch_bytes, workers, torch.get_num_threads(),
                          str(cache_root if cache_root is not None else default_root()))
