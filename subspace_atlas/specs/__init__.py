"""What each analysis is, without its compute: one frozen spec per analysis, importable with no torch.

A spec is one of four kinds, by how its jobs find and read their inputs:

* ``CheckpointAnalysis``: one job per checkpoint (``spectra``);
* ``PairedAnalysis``: each checkpoint against a ``--base`` (``intruders``, ``sparsity``, ``angles``), with
  optional cross jobs (every two checkpoints) and a group job (all of them);
* ``RunAnalysis``: one job per run, its checkpoints in step order (``overlap``);
* ``ProbeAnalysis``: runs a model on prompts instead of reading weight matrices (``patching``).

The CLI, planning, the runners, ``scan``, the HTML report and the app's navigation all read these fields;
nothing else names an analysis. The compute, the report section and the validation are import paths
(``"package.module:function"``) loaded only when used, so building the parser or a cached rerun stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from subspace_atlas.checkpoints import select_matrices

# How ``scan`` finds a spec's inputs under a folder (see ``subspace_atlas.scan``).
SCAN_MODELS = "models"  # every model checkpoint
SCAN_RUNS = "runs"  # every run folder with two or more checkpoints
SCAN_ADAPTERS = "adapters"  # every PEFT adapter checkpoint, against the base its config names
SCAN_ADAPTER_FINALS = "adapter finals"  # each adapter run's last checkpoint (or a lone adapter), against its base


def load(path: str) -> Callable:
    """The object an import path ``"package.module:name"`` names (the module is imported now)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Page:
    """An app page: its script (relative to ``app/``, or absolute), title and Material icon."""

    path: str
    title: str
    icon: str = ":material/analytics:"


@dataclass(frozen=True, eq=False)
class Analysis:
    """What every kind declares.

    ``params``' fields become CLI flags and join the cache key with ``name`` and ``schema_version``;
    ``compute`` is the import path of the function the kind's runner calls; ``report`` the one that turns
    a ``Store`` into report sections (``subspace_atlas.report.Section``s); ``page`` the app page.
    """

    name: str
    description: str
    params: type
    tables: tuple[str, ...]
    compute: str
    schema_version: int = 1
    page: Page | None = None
    report: str = ""
    scan: str = ""  # one of the SCAN_* rules, or "" (scan never plans it by itself)
    select: Callable = select_matrices  # (tensor infos) → (taken, skipped)

    @property
    def command(self) -> str:
        """The CLI subcommand."""
        return self.name


@dataclass(frozen=True, eq=False)
class CheckpointAnalysis(Analysis):
    """One job per checkpoint. ``compute(stream, params, device, batch_bytes)`` gets (TensorInfo, tensor)
    pairs and returns named tables."""


@dataclass(frozen=True, eq=False)
class PairedAnalysis(Analysis):
    """Each checkpoint against a base, base matrix by base matrix. ``compute(items, params, device,
    batch_bytes, cache=, progress=, [pairs=], [group=])`` returns tables whose rows carry ``job`` (one
    checkpoint), ``a``/``b`` (``cross_tables``: two checkpoints) or ``job`` (``group_tables``: the whole set).
    ``validate`` (an import path, optional) turns a job's ``matrices`` table into a problem or None."""

    cross_tables: tuple[str, ...] = ()
    group_tables: tuple[str, ...] = ()
    same_dtype: bool = False  # base and fine-tune must share a dtype (entry-by-entry comparisons)
    label_aliases: Mapping[str, str] = field(default_factory=dict)  # label column → this analysis's own name
    validate: str = ""


@dataclass(frozen=True, eq=False)
class RunAnalysis(Analysis):
    """One job per run, its checkpoints in step order. ``compute(items, params, steps, device, cache=,
    progress=)`` gets ``RunMatrix`` items. ``job_inputs(params)`` adds what a job depends on besides its
    checkpoints to the cache key; ``prepare`` (an import path) runs on the items before the compute
    (``prepare(items, members, params, device, log)``)."""

    job_inputs: Callable[[object], dict] | None = None
    prepare: str = ""


@dataclass(frozen=True, eq=False)
class ProbeAnalysis(Analysis):
    """Runs a model. Its CLI subcommand ``command_name`` takes ``--task`` (``tasks``), ``--model`` (needed
    by ``model_tasks``) and several values for each ``sweep`` field; ``compute(store, task, model, *sweep
    values, fixed, device, force=, name=)`` stores one job per combination and returns (computed, skipped)."""

    command_name: str = ""
    tasks: tuple[str, ...] = ()
    model_tasks: tuple[str, ...] = ()
    sweep: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return self.command_name or self.name


KINDS = (CheckpointAnalysis, PairedAnalysis, RunAnalysis, ProbeAnalysis)
