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
from subspace_atlas.naming import KINDS as MATRIX_KINDS

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


@dataclass(frozen=True)
class Column:
    """One stored column: name, Arrow type (``string``, ``int64``, ``float64``, ``float32``, ``bool``,
    ``list<float64>``), one-line meaning, and ``when`` it is there (empty: always)."""

    name: str
    type: str
    description: str
    when: str = ""


@dataclass(frozen=True)
class Table:
    """A stored table's schema: what one row is, and its columns in order (``docs/tables.md`` lists them)."""

    rows: str
    columns: tuple[Column, ...]


def matrix_labels() -> tuple[Column, ...]:
    """What a row's matrix is (``labels.label``): tensor name, layer, kind and, where there are any, expert, head
    and tied embeddings."""
    return (Column("tensor", "string", "the tensor's name in the checkpoint (… `[3].gate` for a cut MoE expert)"),
            Column("layer", "int64", "the block the matrix belongs to; null outside the blocks (embeddings, head)"),
            Column("kind", "string", f"what the matrix does: {' '.join(MATRIX_KINDS)} (`subspace_atlas.naming`)"),
            Column("expert", "int64", "the expert's index; null for matrices that are no expert's",
                   "the model has MoE experts"),
            Column("head", "int64", "the attention head's index; null for matrices that are no single head's",
                   "matrices are cut per head (TransformerLens `attn.W_Q[head 3]`)"),
            Column("tied", "bool", "whether the matrix is the token embedding that is also the output projection "
                   "(tied word embeddings, stored and analysed once, as kind `embed`)",
                   "the checkpoint ties its embeddings: it stores a token embedding but no LM head, and its "
                   "config.json names a class with an LM head without `tie_word_embeddings: false` "
                   "(`Checkpoint.tied_embeddings`)"))


def checkpoint_labels(*, base: bool = False) -> tuple[Column, ...]:
    """The leading columns of a row of one checkpoint (and, paired, its base) and one matrix."""
    front = (Column("base", "string", "the base checkpoint's name (`--base`)"),) if base else ()
    return (*front,
            Column("checkpoint", "string", "the checkpoint's name (NAME=PATH, else from its path)"),
            Column("checkpoint_path", "string", "where it was read from"),
            Column("run", "string", "its run's name; null for a checkpoint outside a run"),
            Column("step", "int64", "its training step; null when unknown"),
            *matrix_labels())


def cross_labels(*, base: bool = False, run: bool = False) -> tuple[Column, ...]:
    """The leading columns of a row comparing two checkpoints ``a`` and ``b`` (of one base, or of one ``run``)."""
    front = (Column("base", "string", "the base checkpoint's name (`--base`)"),) if base else ()
    if run:
        front += (Column("run", "string", "the run's name"),)
    per_side = [(Column(f"checkpoint_{x}", "string", f"checkpoint {x}'s name"),
                 Column(f"path_{x}", "string", f"where checkpoint {x} was read from"),
                 Column(f"run_{x}", "string", f"checkpoint {x}'s run; null outside a run"),
                 Column(f"step_{x}", "int64", f"checkpoint {x}'s step; null when unknown")) for x in "ab"]
    kinds = [tuple(side[k] for side in per_side) for k in range(4)]  # checkpoints, paths, runs, steps
    return (*front, *kinds[0], *kinds[1], *(() if run else kinds[2]), *kinds[3], *matrix_labels())


def with_aliases(columns: tuple[Column, ...], aliases: Mapping[str, str]) -> tuple[Column, ...]:
    """``columns`` with each aliased label column repeated under its alias right after it (``labels.aliased``)."""
    out = []
    for column in columns:
        out.append(column)
        if column.name in aliases:
            out.append(Column(aliases[column.name], column.type, f"the same as `{column.name}`"))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class Analysis:
    """What every kind declares.

    ``params``' fields become CLI flags and join the cache key with ``name`` and ``schema_version``;
    ``compute`` is the import path of the function the kind's runner calls; ``report`` the one that turns
    a ``Store`` into report sections (``subspace_atlas.report.Section``s); ``page`` the app page;
    ``schemas`` each of ``tables``' columns (``python -m subspace_atlas.docs`` writes them to docs/tables.md).
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
    opt_in: bool = False  # scan plans it only when ``--analyses`` names it (a costly extra, off by default)
    select: Callable = select_matrices  # (tensor infos) → (taken, skipped)
    schemas: Mapping[str, Table] = field(default_factory=dict)  # table name → its columns (docs/tables.md)
    # table name → boolean columns whose true rows are stored ahead of the rest (``Store.write``'s ``first``):
    # a read filtered on them skips the row groups holding none
    first: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

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
