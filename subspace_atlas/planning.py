"""Plan jobs and tell which the store already holds; no torch, so a fully cached rerun stays light.

A job is one analysis over one checkpoint with one set of params; its fingerprint hashes the
analysis, params, the checkpoint's content identity, the tensor selection and the schema version.
A ``PairedAnalysis`` (intruders, sparsity …) compares each checkpoint with a base; the base's identity
joins the fingerprint. A paired analysis with ``cross_tables`` also compares fine-tunes with each
other: every two checkpoints of a plan get a cross job of their own (its rows: those tables), so
adding a checkpoint later computes only its new pairs. ``group_tables`` hold what
depends on the whole set of checkpoints (e.g. alignment with their summed update): one group job per
plan, keyed by all of them. ``jobs`` runs what is planned here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from subspace_atlas.checkpoints import Checkpoint
from subspace_atlas.errors import AtlasError, first_line
from subspace_atlas.specs import Analysis, PairedAnalysis, RunAnalysis
from subspace_atlas.store import Store, fingerprint


@dataclass
class Job:
    """One analysis over one checkpoint (or two, a group, a run) with one set of params, fingerprinted."""

    spec: Analysis
    checkpoint: Checkpoint
    params: object
    tensors: str  # regex selecting tensor names; "" = all
    identity: str  # the checkpoint's content identity
    fingerprint: str
    base: Checkpoint | None = None  # what a paired analysis compares the checkpoint with
    base_identity: str | None = None
    other: Checkpoint | None = None  # a cross job's second checkpoint
    group: tuple[Checkpoint, ...] = ()  # a group job's (or a run job's) checkpoints
    identities: tuple[str, ...] = ()  # a run job's members' content identities, in order


@dataclass(frozen=True)
class Failure:
    """An input that could not be analysed: ``message`` is ``<path>: <why>``, one line; ``path`` the input's."""

    path: str
    message: str

    @classmethod
    def of(cls, path: Path | str, err: BaseException, subject: str | None = None) -> Failure:
        """The failure of the input at ``path``: the error's first line, led by ``subject`` (default: the path)
        unless it names that path already (a read error names the file under it)."""
        text = first_line(err)
        return cls(str(path), text if text.startswith((f"{path}:", f"{path}/")) else f"{subject or path}: {text}")

    def __str__(self) -> str:
        return f"failed: {self.message}"


def first_per_input(failures: Sequence[Failure]) -> list[Failure]:
    """One failure per input, the first: a bad checkpoint fails each analysis and job that reads it."""
    first: dict[str, Failure] = {}
    for failure in failures:
        first.setdefault(failure.path, failure)
    return list(first.values())


def pending(jobs: Sequence[Job], store: Store, force: bool = False) -> list[Job]:
    """The jobs still to compute: those the store lacks, or all of them with ``force``."""
    return [j for j in jobs if force or not store.has(j.spec.name, j.fingerprint)]


def plan(spec: Analysis, checkpoints: Sequence[Checkpoint], params: object, tensors: str = "",
         base: Checkpoint | None = None, cross: bool = True, start: Checkpoint | None = None) -> list[Job]:
    """One job per checkpoint, fingerprinted (reads file headers and a few sampled bytes only).

    For a spec with ``cross_tables``, also one job per two checkpoints unless ``cross`` is False.
    A ``RunAnalysis`` gets one job per run instead (see ``plan_runs``).
    """
    if isinstance(spec, RunAnalysis):
        return plan_runs(spec, checkpoints, params, tensors, start)
    if start is not None:
        raise AtlasError(f"{spec.name} takes no --start")
    paired = isinstance(spec, PairedAnalysis)
    if paired and base is None:
        raise AtlasError(f"{spec.name} compares checkpoints with a base model: give --base CKPT")
    if base is not None and not paired:
        raise AtlasError(f"{spec.name} takes no --base")
    base_identity = base.identity() if base is not None else None
    jobs = []
    for ckpt in checkpoints:
        identity = ckpt.identity()
        # The labels written into every row count too; the path does not (moving a folder keeps its cache).
        inputs = {"checkpoint": identity, "tensors": tensors, "name": ckpt.name, "step": ckpt.step, "run": ckpt.run}
        if base is not None:
            inputs |= {"base": base_identity, "base_name": base.name}
        jobs.append(Job(spec, ckpt, params, tensors, identity,
                        fingerprint(spec.name, params, inputs, spec.schema_version), base, base_identity))
    singles = list(jobs)
    if cross and paired and spec.cross_tables:
        for i, a in enumerate(singles):
            for b in singles[i + 1:]:
                inputs = {"a": a.identity, "b": b.identity, "names": [a.checkpoint.name, b.checkpoint.name],
                          "steps": [a.checkpoint.step, b.checkpoint.step], "runs": [a.checkpoint.run, b.checkpoint.run],
                          "tensors": tensors, "base": base_identity, "base_name": base.name, "cross": True}
                jobs.append(Job(spec, a.checkpoint, params, tensors, a.identity,
                                fingerprint(spec.name, params, inputs, spec.schema_version), base, base_identity,
                                other=b.checkpoint))
    if paired and spec.group_tables and singles:
        inputs = {"members": [[j.identity, j.checkpoint.name, j.checkpoint.step, j.checkpoint.run] for j in singles],
                  "tensors": tensors, "base": base_identity, "base_name": base.name, "group": True}
        jobs.append(Job(spec, singles[0].checkpoint, params, tensors, singles[0].identity,
                        fingerprint(spec.name, params, inputs, spec.schema_version), base, base_identity,
                        group=tuple(j.checkpoint for j in singles)))
    return jobs


def plan_runs(spec: RunAnalysis, checkpoints: Sequence[Checkpoint], params: object, tensors: str = "",
              start: Checkpoint | None = None) -> list[Job]:
    """One job per run: a run folder's checkpoints, or all loose checkpoints together, in step order.

    ``start`` (e.g. the pretrained model a fine-tuning run began from) goes first in every run, at
    step 0 unless it has a step of its own. A run's job is keyed by all its members, in order.
    """
    runs: dict[str, list[Checkpoint]] = {}
    for ckpt in checkpoints:
        runs.setdefault(ckpt.run or ckpt.path.parent.name, []).append(ckpt)
    extra = spec.job_inputs(params) if spec.job_inputs else {}
    jobs = []
    for name, members in runs.items():
        if any(c.step is None for c in members) and len(members) > 1 and members[0].run is None:
            raise AtlasError(f"{spec.name}: {', '.join(str(c.path) for c in members if c.step is None)}: no step "
                             "in the name or trainer_state.json; give a run folder (checkpoint-N children) or "
                             "checkpoints whose names carry their steps")
        members = sorted(members, key=lambda c: c.step if c.step is not None else -1)
        if start is not None:
            members = [dataclasses.replace(start, step=0 if start.step is None else start.step,
                                           name=f"{name}/start:{start.name}")] + members
        members = [dataclasses.replace(c, run=name) for c in members]
        if len(members) < 2:
            raise AtlasError(f"{spec.name}: run {name!r} has one checkpoint ({members[0].path}); "
                             "comparing over training needs at least two (give a run folder, or --start)")
        identities = [c.identity() for c in members]
        inputs = {"run": name, "members": [[i, c.name, c.step] for i, c in zip(identities, members)],
                  "tensors": tensors} | extra
        jobs.append(Job(spec, members[0], params, tensors, identities[0],
                        fingerprint(spec.name, params, inputs, spec.schema_version), group=tuple(members),
                        identities=tuple(identities)))
    return jobs
