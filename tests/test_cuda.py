"""``--device cuda`` against ``--device cpu``: a whole ``scan`` (spectra, overlap, intruders, angles, sparsity)
gives the same tables on the GPU as on the CPU, to float precision, and angles and sparsity do their work on
the GPU. Skipped without a CUDA device (CI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import test_cli  # noqa: E402
import test_scan  # noqa: E402
from subspace_atlas import analysis, scan  # noqa: E402
from subspace_atlas.adapters import LoraUpdate  # noqa: E402
from subspace_atlas.analysis import angles, sparsity  # noqa: E402
from subspace_atlas.checkpoints import TensorInfo  # noqa: E402
from subspace_atlas.context import ComputeContext  # noqa: E402
from subspace_atlas.pairs import PairedMatrix  # noqa: E402
from subspace_atlas.specs import angles as angles_spec  # noqa: E402
from subspace_atlas.specs import sparsity as sparsity_spec  # noqa: E402
from subspace_atlas.store import Store  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
folder = test_scan.folder  # a base, a run, LoRA adapters, a full fine-tune and an atlas-scan.json
cli = test_cli.cli

# Relative to each column's largest magnitude: float32 GPU kernels sum in another order than the CPU's,
# and an angle near 0 or a σ near 0 is only good to √ε32 ≈ 3e-4 of its scale.
TOL = 1e-3
# angles: float64 throughout, so only rounding differs; an angle near 0 from cos θ ≈ 1 is good to √ε64 ≈ 1.5e-8 rad.
TOL_ANGLES = 1e-6
# sparsity: counts and masks are exact; the update rank's tolerance comes from a float32 σmax (≈ 1e-6 relative).
TOL_SPARSITY = 1e-5
CPU, GPU = ComputeContext("cpu", workers=1), ComputeContext("cuda:0", workers=1)


def column_gaps(left: pd.DataFrame, right: pd.DataFrame) -> dict[str, float]:
    """Largest difference per numeric column, relative to the column's largest magnitude; exact for the rest."""
    gaps = {}
    for col in left.columns:
        a, b = left[col], right[col]
        arrays = a.dtype == object and len(a) and isinstance(a.iloc[0], (np.ndarray, list))
        if pd.api.types.is_float_dtype(a) or arrays:
            x, y = (np.concatenate([np.asarray(v, float) for v in s]) if arrays else s.to_numpy(float) for s in (a, b))
            assert x.shape == y.shape, f"{col}: arrays of other lengths"
            assert (np.isnan(x) == np.isnan(y)).all(), f"{col}: NaN in different rows"
            scale = max(np.nanmax(np.abs(x), initial=0.0), 1e-12)
            gaps[col] = float(np.nanmax(np.abs(x - y), initial=0.0) / scale)
        else:
            pd.testing.assert_series_equal(a, b, check_names=False, obj=col)
    return gaps


def test_scan_on_cuda_equals_scan_on_cpu(folder, tmp_path, capsys):
    assert cli(capsys, "scan", folder, "--store", tmp_path / "cpu", "--device", "cpu")[0] == 0
    rc, out, err = cli(capsys, "scan", folder, "--store", tmp_path / "gpu", "--device", "cuda")
    assert rc == 0, err
    cpu, gpu = Store(str(tmp_path / "cpu")), Store(str(tmp_path / "gpu"))
    assert cpu.analyses() == gpu.analyses() == sorted(scan.default_names())
    worst = {}
    for name in cpu.analyses():
        assert (gpu.jobs(name)["device"].str.startswith("cuda")).all(), name
        for table in analysis.SPECS[name].tables:
            left, right = cpu.table_if_stored(name, table), gpu.table_if_stored(name, table)
            assert (left is None) == (right is None), (name, table)
            if left is None:
                continue
            assert list(left.columns) == list(right.columns) and len(left) == len(right), (name, table)
            for col, gap in column_gaps(left, right).items():
                worst[f"{name}/{table}.{col}"] = gap
    print("\nlargest CPU-vs-CUDA gaps (relative to each column's scale):")
    for key, gap in sorted(worst.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {key:<48} {gap:.2e}")
    bad = {k: v for k, v in worst.items() if not v <= TOL}
    assert not bad, f"CPU and CUDA differ beyond {TOL:g}: {bad}"


def paired(w0: torch.Tensor, tuned: list) -> PairedMatrix:
    """One base matrix and its fine-tuned versions (dense matrices or LoRA updates), jobs 0, 1, …"""
    info = TensorInfo("layers.0.q_proj.weight", tuple(w0.shape), str(w0.dtype).removeprefix("torch."))
    return PairedMatrix(info, "key", lambda: w0, [(k, lambda t=t: t) for k, t in enumerate(tuned)])


def on_gpu_equals_on_cpu(compute, item: PairedMatrix, tol: float, **extra) -> None:
    """``compute`` on the GPU allocates there and gives the CPU's tables: other columns exact, floats within ``tol``
    of each column's scale."""
    cpu = compute([item], context=CPU, **extra)
    torch.cuda.reset_peak_memory_stats()
    gpu = compute([item], context=GPU, **extra)
    assert torch.cuda.max_memory_allocated() > 0, "nothing ran on the GPU"
    assert cpu.keys() == gpu.keys()
    for name in cpu:
        assert list(cpu[name].columns) == list(gpu[name].columns) and len(cpu[name]) == len(gpu[name]) > 0, name
        bad = {col: gap for col, gap in column_gaps(cpu[name], gpu[name]).items() if not gap <= tol}
        assert not bad, f"{name}: CPU and CUDA differ beyond {tol:g}: {bad}"


def test_angles_on_cuda_equal_the_cpu():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(64, 48, generator=gen, dtype=torch.float64)
    dense = [w0 + 0.1 * torch.randn(64, 6, generator=gen, dtype=torch.float64)
             @ torch.randn(6, 48, generator=gen, dtype=torch.float64) for _ in range(2)]
    lora = LoraUpdate(torch.randn(64, 4, generator=gen), torch.randn(4, 48, generator=gen), 0.5)
    params = angles_spec.Params(k=4)
    on_gpu_equals_on_cpu(lambda items, context, **kw: angles.compute(items, params, context, **kw),
                         paired(w0, [*dense, lora]), TOL_ANGLES, pairs=[(0, 1), (0, 2), (1, 2)], group=[0, 1, 2])


def test_sparsity_on_cuda_equals_the_cpu():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(64, 48, generator=gen).to(torch.bfloat16)
    tuned = []
    for density in (0.1, 0.3):
        changed = torch.rand(64, 48, generator=gen) < density
        tuned.append(torch.where(changed, base.float() + 0.05 * torch.randn(64, 48, generator=gen), base.float())
                     .to(torch.bfloat16))
    params = sparsity_spec.Params()
    on_gpu_equals_on_cpu(lambda items, context, **kw: sparsity.compute(items, params, context, **kw),
                         paired(base, tuned), TOL_SPARSITY, pairs=[(0, 1)])
