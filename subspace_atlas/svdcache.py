"""A disk cache of base matrices' full thin SVDs, so many fine-tunes compared to one base decompose it once.

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
import uuid
from pathlib import Path

import torch


def default_root() -> Path:
    if os.environ.get("SUBSPACE_ATLAS_CACHE"):
        return Path(os.environ["SUBSPACE_ATLAS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "subspace-atlas"


class SvdCache:
    """``get``/``put`` of (U, S, Vh) by key; ``SvdCache(None)`` caches nothing."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = None if root is None else Path(root).expanduser() / "svd"
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: object) -> str:
        """A cache key from what determines an entry (base identity, tensor, shape, precision …)."""
        return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._path(key)
        if path is None or not path.is_file():
            self.misses += 1
            return None
        try:
            found = load_file(path)
            entry = found["U"], found["S"], found["Vh"]
        except (SafetensorError, KeyError, OSError, RuntimeError):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: str, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            save_file({"U": u.contiguous().cpu(), "S": s.contiguous().cpu(), "Vh": vh.contiguous().cpu()}, tmp)
            os.replace(tmp, path)
        except OSError:  # a full or read-only disk costs only the cache
            pass
        finally:
            tmp.unlink(missing_ok=True)

    def _path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key[:2] / f"{key}.safetensors"
