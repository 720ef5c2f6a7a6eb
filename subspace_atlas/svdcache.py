"""A disk cache of decompositions: base matrices' thin SVDs (many fine-tunes compared to one base decompose
it once) and a run's top-k subspaces (a run that grows decomposes only its new checkpoints).

Entries are keyed by the base checkpoint's content identity, the tensor name, shape and precision, so
a moved or renamed base still hits. Each entry is one safetensors file (U, S, Vh) written atomically;
an unreadable entry counts as a miss and is rewritten. The cache lives outside result stores (shared
dashboards need not carry it): ``$SUBSPACE_ATLAS_CACHE``, else ``$XDG_CACHE_HOME/subspace-atlas``,
else ``~/.cache/subspace-atlas``. It grows with every new base (about 1.4× the base's fp32 size);
deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from subspace_atlas import linalg
from subspace_atlas.store import atomic_write


def default_root() -> Path:
    if os.environ.get("SUBSPACE_ATLAS_CACHE"):
        return Path(os.environ["SUBSPACE_ATLAS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "subspace-atlas"


class SvdCache:
    """``get``/``put`` of (U, S, Vh), or of any named tensors, by key; ``SvdCache(None)`` caches nothing."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = None if root is None else Path(root).expanduser() / "svd"

    @staticmethod
    def key(*parts: object) -> str:
        """A cache key from what determines an entry (base identity, tensor, shape, precision …)."""
        return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        found = self.get_tensors(key, ("U", "S", "Vh"))
        return None if found is None else (found["U"], found["S"], found["Vh"])

    def put(self, key: str, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> None:
        self.put_tensors(key, {"U": u, "S": s, "Vh": vh})

    def get_tensors(self, key: str, names: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
        """The named tensors stored under ``key``, or None (absent, unreadable or missing a name)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            found = load_file(path)
            return {name: found[name] for name in names}
        except (SafetensorError, KeyError, OSError, RuntimeError):
            return None

    def put_tensors(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        if path is None:
            return
        tensors = {name: t.contiguous().cpu() for name, t in tensors.items()}
        try:
            atomic_write(path, lambda tmp: save_file(tensors, tmp))
        except OSError:  # a full or read-only disk costs only the cache
            pass

    def svd(self, key: str, matrix: Callable[[], torch.Tensor], dtype: torch.dtype,
            device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The thin SVD (on the CPU) of the matrix ``key`` names in ``dtype``: from the cache, or computed
        from ``matrix()`` on ``device`` and stored; the matrix is loaded only on a miss."""
        key = self.key(key, str(dtype))
        found = self.get(key)
        if found is None:
            found = tuple(t.cpu() for t in linalg.svd(matrix(), dtype, device))
            self.put(key, *found)
        return found

    def _path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key[:2] / f"{key}.safetensors"
