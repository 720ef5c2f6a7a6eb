"""Shared fixtures. Checkpoint writers live in ``toy_checkpoints`` (importable from any test).

``toy_checkpoints`` imports torch, so it is imported inside the fixtures: collecting torch-free tests
(the dashboard's) does not pull torch in.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def llama_state():
    """A tiny Llama-style state dict (fp32, bf16, fp16 matrices and 1-D norms)."""
    import toy_checkpoints as toy

    return toy.llama_state()


@pytest.fixture
def tiny_model(tmp_path, llama_state):
    """An HF model folder (``model.safetensors``) holding ``llama_state``."""
    import toy_checkpoints as toy

    return toy.write_hf_folder(tmp_path / "tiny-model", llama_state)


@pytest.fixture(autouse=True)
def _private_svd_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own SVD cache folder, never the user's ~/.cache."""
    monkeypatch.setenv("SUBSPACE_ATLAS_CACHE", str(tmp_path_factory.mktemp("svd-cache")))
