"""The one way results reach a store: tables plus a provenance manifest, written atomically by ``Store.write``.

Every writer (the job runners, patching, the gradient recorder, the demo's zoo tables) goes through
``write_job``, so every manifest says the same things the same way: params, inputs, package versions,
where (the ``ComputeContext`` the work ran in: its device, not the ``--device`` flag) and how long it ran,
when, and the schema version.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Mapping
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import torch

import subspace_atlas
from subspace_atlas.context import ComputeContext
from subspace_atlas.store import Store


def write_job(store: Store, analysis: str, fingerprint: str, tables: Mapping[str, pd.DataFrame], *,
              params: object, inputs: dict, schema_version: int, context: ComputeContext | None = None,
              wall: float | None = None, matrices: int | None = None, **extra: object) -> None:
    """Write one job's tables under ``analysis``/``fingerprint`` with its provenance (``provenance``), rows in
    the order the analysis's spec asks (``Analysis.first``)."""
    from subspace_atlas.analysis import SPECS

    spec = SPECS.get(analysis)
    store.write(analysis, fingerprint, dict(tables),
                provenance(params, inputs, schema_version, context, wall, matrices, **extra),
                first=spec.first if spec is not None else None)


def provenance(params: object, inputs: dict, schema_version: int, context: ComputeContext | None = None,
               wall: float | None = None, matrices: int | None = None, **extra: object) -> dict:
    """A job's manifest: ``params`` (a Params dataclass or a dict), ``inputs``, versions, where it ran
    (``context.device``, that device's name, torch's threads), matrix count, seconds, time of writing, schema
    version, and any ``extra`` keys."""
    import safetensors

    found = {"params": dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params or {}),
             "inputs": inputs,
             "versions": {"subspace_atlas": subspace_atlas.__version__, "torch": torch.__version__,
                          "numpy": np.__version__, "pandas": pd.__version__,
                          "safetensors": safetensors.__version__, "python": platform.python_version()}}
    if context is not None:
        found |= {"device": context.device,
                  "device_name": torch.cuda.get_device_name(context.device) if context.on_gpu else _cpu_name(),
                  "threads": context.threads or torch.get_num_threads()}
    if matrices is not None:
        found["matrices"] = matrices
    if wall is not None:
        found["wall_s"] = round(wall, 4)
    return found | extra | {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "schema_version": schema_version}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0]} ({len(names)} threads)" if names else platform.processor() or "cpu"
