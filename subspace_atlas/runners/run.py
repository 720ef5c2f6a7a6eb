"""The runner of ``RunAnalysis`` jobs: each run matrix-major over its checkpoints, written whole."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm import tqdm

from subspace_atlas.checkpoints import TensorInfo
from subspace_atlas.context import ComputeContext
from subspace_atlas.errors import AtlasError
from subspace_atlas.labels import label_run
from subspace_atlas.planning import Job
from subspace_atlas.runners import JOB_ERRORS, Done, checked, failure, job_provenance, matrices_of
from subspace_atlas.specs import load
from subspace_atlas.store import Store
from subspace_atlas.writing import write_job


@dataclass
class RunMatrix:
    """One matrix across a run: a loader and a content key per checkpoint; what a spec's ``prepare`` adds
    (``gradients``: the top-k of its gradient per checkpoint, for ``overlap``)."""

    info: TensorInfo
    loaders: list[Callable[[], torch.Tensor]]
    keys: list[str]  # content identity of the matrix at each checkpoint
    gradients: list | None = None  # per checkpoint: (TopSvd, ‖G‖²_F) or None


def check(unit: Sequence[Job]) -> None:
    """Read and align each run's headers: what ``run`` would raise about its inputs."""
    for job in unit:
        run_matrices(job)


def run(todo: list[Job], store: Store, context: ComputeContext, log: Callable[[str], None], keep_going: bool) -> Done:
    """Run each run job matrix-major over its checkpoints (inputs checked first), write it whole."""
    plans, failed = checked(todo, run_matrices, keep_going)
    computed, count = [], 0
    for k, (job, items) in enumerate(plans, 1):
        members = list(job.group)
        t0 = time.perf_counter()
        try:
            tables = _tables(job, items, context, log)
        except JOB_ERRORS as err:
            failed.append(failure(job, err))
            log(f"[{k}/{len(plans)}] {members[0].run}: failed")
            continue
        wall = time.perf_counter() - t0
        n = sum(len(i.loaders) for i in items)
        write_job(store, job.spec.name, job.fingerprint, tables, **job_provenance(job, context, wall, n))
        computed.append(job)
        count += n
        log(f"[{k}/{len(plans)}] {members[0].run}: {len(members)} checkpoints × {len(items)} matrices "
            f"in {wall:.2f} s")
    return computed, count, failed


def _tables(job: Job, items: list[RunMatrix], context: ComputeContext,
            log: Callable[[str], None]) -> dict[str, pd.DataFrame]:
    """One run job's labelled tables (after the spec's ``prepare``, if any)."""
    spec, members = job.spec, list(job.group)
    if spec.prepare:
        load(spec.prepare)(items, members, job.params, context, log)
    steps = [c.step if c.step is not None else i for i, c in enumerate(members)]
    with tqdm(total=sum(len(i.loaders) for i in items), unit="matrix", disable=None, file=sys.stderr,
              leave=False, desc=f"{spec.name} {members[0].run}") as bar:
        tables = load(spec.compute)(items, job.params, context, steps=steps, progress=bar.update)
    return label_run(tables, members)


def run_matrices(job: Job) -> list[RunMatrix]:
    """A run job's matrices, each with a loader per checkpoint; names aligned across a renamed prefix.

    The last checkpoint names the matrices. Every checkpoint must hold each of them in the same shape.
    """
    from subspace_atlas.naming import align

    members = list(job.group)
    selected = matrices_of(job, members[-1])
    per_member = []
    for ckpt, identity in zip(members, job.identities):
        infos = ckpt.tensors_by_name()
        to_mine = align(list(infos), [i.name for i in selected])
        found = {}
        for info in selected:
            name = to_mine.get(info.name)
            if name is None:
                raise AtlasError(f"{ckpt.path}: has no tensor matching {info.name!r} of {members[-1].path}; "
                                 "restrict the run with --tensors")
            if tuple(infos[name].shape) != tuple(info.shape):
                raise AtlasError(f"{ckpt.path}: tensor {name!r} is {list(infos[name].shape)} but {info.name!r} in "
                                 f"{members[-1].path} is {list(info.shape)}; are these checkpoints of one run?")
            found[info.name] = name
        per_member.append((ckpt, identity, found))
    return [RunMatrix(info, [lambda c=c, n=found[info.name]: c.load(n) for c, _, found in per_member],
                      [f"{ident}|{found[info.name]}|{tuple(info.shape)}" for _, ident, found in per_member])
            for info in selected]
