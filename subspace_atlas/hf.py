"""Quiet, offline transformers/PEFT loading, shared by the probes and the demo zoo (every load is a local folder)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; every load is a local folder
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
