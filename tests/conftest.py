"""Shared fixtures. Checkpoint writers live in ``toy_checkpoints`` (importable from any test).

``toy_checkpoints`` imports torch, so it is imported inside the fixtures: collecting torch-free tests
(the dashboard's) does not pull torch in.
"""

from __future__ import annotations

import logging
import os
import socket

import pytest

BUCKET = "atlas"


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


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on a free local port, with the environment pointing boto at it; yields the s3fs.

    One per session: moto's backend is per process and fsspec caches filesystems by their options, so a
    second server would leave earlier ``Store`` objects pointing at a closed port.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
