"""What the compute layer accepts, named without torch: singular-value methods and device specs.

Flags and plans check these before anything is computed; ``linalg`` acts on them.
"""

from __future__ import annotations

import re

from subspace_atlas.errors import AtlasError

METHODS = ("gram", "gram32", "svd")
_DEVICE_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_spec(spec: str) -> None:
    """Fail with one line unless ``spec`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whatever this machine has)."""
    if not _DEVICE_SPEC.fullmatch(spec):
        raise AtlasError(f"--device {spec}: expected auto, cpu or cuda[:N]")
