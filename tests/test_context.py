"""The compute context (``context.resolve``): ``--device`` resolved once, a missing GPU refused in one line,
provenance that says where the work ran, and ``linalg`` as the only module that decomposes."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

import toy_checkpoints as toy
from subspace_atlas.cli import main
from subspace_atlas.context import GPU_BATCH_BYTES, ComputeContext, resolve
from subspace_atlas.errors import AtlasError
from subspace_atlas.probes import patching
from subspace_atlas.specs import patching as patching_spec
from subspace_atlas.store import Store
from subspace_atlas.svdcache import default_root

pytestmark = pytest.mark.unit
PACKAGE = Path(__file__).resolve().parent.parent / "subspace_atlas"

# --------------------------------------------------------------------------- resolving --device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine that says it has one CUDA device (nothing is computed on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_is_the_cpu_without_cuda(no_cuda):
    context = resolve("auto")
    assert context == ComputeContext("cpu", 0, None, torch.get_num_threads(), str(default_root()))
    assert context.torch_device() == torch.device("cpu") and not context.on_gpu
    assert resolve() == context


def test_auto_here_is_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the no-CUDA branch is covered with a monkeypatch")
    assert resolve("auto").device == "cpu"


def test_auto_and_cuda_name_the_gpu_and_batch_on_it(one_gpu):
    assert resolve("auto") == resolve("cuda") == resolve("cuda:0")
    context = resolve("cuda")
    assert context.device == "cuda:0" and context.on_gpu and context.batch_bytes == GPU_BATCH_BYTES


def test_given_batch_bytes_and_cache_win(no_cuda, tmp_path):
    context = resolve("cpu", 3 << 20, workers=2, cache_root=tmp_path)
    assert (context.batch_bytes, context.workers, context.cache_root) == (3 << 20, 2, str(tmp_path))
    assert context.svd_cache().root == tmp_path / "svd"
    assert ComputeContext().svd_cache().root is None  # a test's context caches nothing


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_an_atlas_error(no_cuda, spec):
    with pytest.raises(AtlasError, match=f"--device {spec}: no CUDA device is available here"):
        resolve(spec)


def test_a_gpu_index_the_machine_lacks_is_an_atlas_error(one_gpu):
    with pytest.raises(AtlasError, match="--device cuda:1: this machine has 1 CUDA device"):
        resolve("cuda:1")


@pytest.mark.parametrize("spec", ["gpu", "tpu", "", "CPU", "cpux", "mps:0", " cpu", "cuda:x", "cuda0", "cuda:-1"])
def test_garbage_is_an_atlas_error(spec):
    with pytest.raises(AtlasError, match="expected auto, cpu or cuda"):
        resolve(spec)


@pytest.mark.integration
def test_cuda_without_cuda_fails_in_one_line_through_the_cli(no_cuda, tmp_path, capsys):
    model = toy.write_hf_folder(tmp_path / "m", toy.llama_state(0))
    rc = main(["spectra", str(model), "--store", str(tmp_path / "S"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == ("subspace-atlas: error: --device cuda: no CUDA device is available here "
                   "(use --device cpu or auto)\n")
    assert not Store(str(tmp_path / "S")).analyses()


# --------------------------------------------------------------------------- provenance


@pytest.mark.integration
def test_provenance_records_the_cpu_the_work_ran_on(no_cuda, tmp_path, capsys):
    model = toy.write_hf_folder(tmp_path / "m", toy.llama_state(0))
    assert main(["spectra", str(model), "--store", str(tmp_path / "S"), "--device", "auto"]) == 0
    jobs = Store(str(tmp_path / "S")).jobs("spectra")
    assert list(jobs["device"]) == ["cpu"]
    assert list(jobs["threads"]) == [torch.get_num_threads()]


def test_the_toy_patching_job_records_the_cpu_whatever_the_context(tmp_path):
    """The toy runs on the CPU only: a CUDA context must not be recorded as where it ran."""
    store = Store(str(tmp_path / "S"))
    fixed = {f.name: f.default for f in dataclasses.fields(patching_spec.Params)
             if f.name not in ("site", "layer", "method")}
    done = patching.run_jobs(store, "toy", None, ["mlp_hidden"], [0], ["mean_diff"], fixed,
                             ComputeContext("cuda:0"), log=lambda line: None)
    assert done == (1, 0)
    assert list(store.jobs("patching")["device"]) == ["cpu"]


# --------------------------------------------------------------------------- only linalg decomposes

LINALG_NAMESPACES = ("torch.linalg", "numpy.linalg", "scipy.linalg", "scipy.sparse.linalg")
# torch's decompositions outside ``torch.linalg`` (old names and low-rank/iterative solvers).
TORCH_DECOMPOSITIONS = {f"torch.{name}" for name in ("svd", "svd_lowrank", "pca_lowrank", "lobpcg", "qr", "eig",
                                                     "symeig", "cholesky", "lstsq", "pinverse", "inverse", "det",
                                                     "logdet", "slogdet", "matrix_rank", "lu", "geqrf")}


def decomposition_calls(source: str) -> list[str]:
    """Every reference in ``source`` to a linear-algebra namespace or a torch decomposition, import aliases
    followed (``import numpy as np`` → ``np.linalg.svd`` is ``numpy.linalg.svd``), as 'line: name'."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    found = []

    def banned(name: str) -> bool:
        return name in TORCH_DECOMPOSITIONS or any(name == ns or name.startswith(ns + ".") for ns in LINALG_NAMESPACES)

    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node  # type: ignore[attr-defined]
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]  # `import a.b` binds a; `import a.b as c` binds a.b
                aliases[local] = alias.name if alias.asname else local
                if banned(alias.name):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                aliases[alias.asname or alias.name] = full
                if banned(node.module) or banned(full):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "parent", None), ast.Attribute):
            parts, root = [], node
            while isinstance(root, ast.Attribute):
                parts.append(root.attr)
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                name = ".".join([aliases[root.id], *reversed(parts)])
                if banned(name):
                    found.append(f"{node.lineno}: {name}")
    return found


@pytest.mark.parametrize("source", [
    "import torch\ntorch.linalg.svd(x)", "import numpy as np\nnp.linalg.eigh(x)", "import scipy.linalg\nscipy.linalg.qr(x)",
    "from scipy import linalg\nlinalg.svd(x)", "from numpy.linalg import lstsq", "import torch\ntorch.svd_lowrank(x)",
    "from scipy.sparse.linalg import svds", "import torch as T\nT.linalg.svdvals(x)", "import torch\ntorch.qr(x)",
])
def test_the_check_finds_a_decomposition(source):
    assert decomposition_calls(source)


@pytest.mark.parametrize("source", [
    "from subspace_atlas import linalg\nlinalg.svd(x)", "import torch\ntorch.matmul(a, b)", "cache.svd(key, m, d)",
    "import numpy as np\nnp.sort(x)",
])
def test_the_check_lets_the_rest_through(source):
    assert not decomposition_calls(source)


def test_linalg_itself_decomposes():
    assert decomposition_calls((PACKAGE / "linalg.py").read_text(encoding="utf-8"))


def test_no_module_but_linalg_decomposes():
    found = {str(path.relative_to(PACKAGE)): calls for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "linalg.py" or path.parent != PACKAGE
             for calls in [decomposition_calls(path.read_text(encoding="utf-8"))] if calls}
    assert not found, f"decompose through subspace_atlas.linalg instead: {found}"
