"""The runner of ``CheckpointAnalysis`` jobs: one checkpoint at a time, its matrices streamed from disk."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import pandas as pd
from tqdm import tqdm

from subspace_atlas.checkpoints import TensorInfo
from subspace_atlas.context import ComputeContext
from subspace_atlas.labels import label
from subspace_atlas.planning import Job
from subspace_atlas.runners import JOB_ERRORS, Done, checked, counted, failure, job_provenance, matrices_of
from subspace_atlas.specs import load
from subspace_atlas.store import Store
from subspace_atlas.writing import write_job


def check(unit: Sequence[Job]) -> None:
    """Read each job's headers: what ``run`` would raise about its inputs."""
    for job in unit:
        matrices_of(job)


def run(todo: list[Job], store: Store, context: ComputeContext, log: Callable[[str], None], keep_going: bool) -> Done:
    """Run each job over its checkpoint's matrices (inputs checked first), writing each as it finishes."""
    plans, failed = checked(todo, matrices_of, keep_going)
    computed, count = [], 0
    with tqdm(total=sum(len(m) for _, m in plans), unit="matrix", disable=None, file=sys.stderr,
              leave=False) as bar:
        for k, (job, mats) in enumerate(plans, 1):
            bar.set_description(job.checkpoint.name)
            t0 = time.perf_counter()
            try:
                tables = _tables(job, mats, context, bar)
            except JOB_ERRORS as err:
                failed.append(failure(job, err))
                log(f"[{k}/{len(plans)}] {job.checkpoint.name}: failed")
                continue
            wall = time.perf_counter() - t0
            write_job(store, job.spec.name, job.fingerprint, tables, **job_provenance(job, context, wall, len(mats)))
            computed.append(job)
            count += len(mats)
            log(f"[{k}/{len(plans)}] {job.checkpoint.name}: {len(mats)} matrices in {wall:.2f} s")
    return computed, count, failed


def _tables(job: Job, mats: list[TensorInfo], context: ComputeContext, bar: tqdm) -> dict[str, pd.DataFrame]:
    """One job's labelled tables."""
    stream = counted(zip(mats, (t for _, t in job.checkpoint.stream([m.name for m in mats]))), bar)
    tables = load(job.spec.compute)(stream, job.params, context)
    return {name: label(frame, job.checkpoint) for name, frame in tables.items()}

