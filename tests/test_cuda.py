"""``--device cuda`` against ``--device cpu``: a whole ``scan`` (spectra, overlap, intruders, angles, sparsity)
gives the same tables on the GPU as on the CPU, to float precision. Skipped without a CUDA device (CI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import test_cli  # noqa: E402
import test_scan  # noqa: E402
from subspace_atlas import analysis, scan  # noqa: E402
from subspace_atlas.store import Store  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
folder = test_scan.folder  # a base, a run, LoRA adapters, a full fine-tune and an atlas-scan.json
cli = test_cli.cli

# Relative to each column's largest magnitude: float32 GPU kernels sum in another order than the CPU's,
# and an angle near 0 or a σ near 0 is only good to √ε32 ≈ 3e-4 of its scale.
TOL = 1e-3


def column_gaps(left: pd.DataFrame, right: pd.DataFrame) -> dict[str, float]:
    """Largest difference per numeric column, relative to the column's largest magnitude; exact for the rest."""
    gaps = {}
    for col in left.columns:
        a, b = left[col], right[col]
        arrays = a.dtype == object and len(a) and isinstance(a.iloc[0], np.ndarray)
        if pd.api.types.is_float_dtype(a) or arrays:
            x, y = (np.concatenate(list(s)).astype(float) if arrays else s.to_numpy(float) for s in (a, b))
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
    assert cpu.analyses() == gpu.analyses() == sorted(scan.names())
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
