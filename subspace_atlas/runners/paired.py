"""The runner of ``PairedAnalysis`` jobs: base by base, matrix-major, each base matrix read and decomposed once.

Every job sharing a base runs in one pass (``pairs``) however many checkpoints it meets; cross jobs (two
checkpoints) and the group job (all of them) take their rows from the same pass.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import pandas as pd
from tqdm import tqdm

from subspace_atlas.checkpoints import Checkpoint
from subspace_atlas.context import ComputeContext
from subspace_atlas.errors import AtlasError
from subspace_atlas.labels import aliased, label, label_cross, label_members
from subspace_atlas.planning import Job
from subspace_atlas.runners import JOB_ERRORS, Done, failure, job_provenance, matrices_of, merged
from subspace_atlas.specs import load
from subspace_atlas.store import Store
from subspace_atlas.writing import write_job


def check(unit: Sequence[Job]) -> None:
    """Pair every checkpoint of one base's jobs with the base: what ``run`` would raise about them."""
    from subspace_atlas.pairs import pair_items

    pair_items(unit[0], paired_members(unit), matrices_of)


def run(todo: list[Job], store: Store, context: ComputeContext, log: Callable[[str], None], keep_going: bool) -> Done:
    """Run paired jobs base by base (``_group``)."""
    groups: dict[str, list[Job]] = {}
    for job in todo:
        groups.setdefault(job.base_identity, []).append(job)
    return merged([_group(group, store, context, log, keep_going) for group in groups.values()])


def _group(group: list[Job], store: Store, context: ComputeContext, log: Callable[[str], None],
           keep_going: bool) -> Done:
    """One base's paired jobs in one matrix-major pass; each job is written once all its matrices are done.

    Every pairing is checked before any work (a bad one raises, or with ``keep_going`` fails alone). When
    the pass fails, ``_isolated`` finds the checkpoint at fault, so one bad fine-tune costs only its jobs.
    """
    from subspace_atlas.pairs import pair_items

    ordered = paired_members(group)  # a checkpoint's position here is its index in the work
    try:
        items = pair_items(group[0], ordered, matrices_of)
    except JOB_ERRORS as err:
        if not keep_going:
            raise
        return _isolated(group, err, store, context, log, keep_going)
    t0 = time.perf_counter()
    try:
        tables = _tables(group, ordered, items, context)
    except JOB_ERRORS as err:
        return _isolated(group, err, store, context, log, keep_going)
    wall = time.perf_counter() - t0
    done = _write(group, ordered, items, tables, wall, store, context)
    log(f"{group[0].spec.name}: {len(group)} job(s) vs {group[0].base.name}: "
        f"{sum(len(i.tuned) for i in items)} matrix pairs in {wall:.2f} s")
    return done


def _isolated(group: list[Job], err: BaseException, store: Store, context: ComputeContext,
              log: Callable[[str], None], keep_going: bool) -> Done:
    """After a base's pass failed: each checkpoint's own job alone, then the jobs comparing the good ones.

    A group with no single job to try alone (or only one job) fails whole, with ``err``.
    """
    singles = [j for j in group if j.other is None and not j.group]
    if len(group) == 1 or not singles:
        return [], 0, [failure(job, err) for job in group]
    parts = [_group([job], store, context, log, keep_going) for job in singles]
    bad = {_key(job.checkpoint) for job, (written, _, _) in zip(singles, parts) if not written}
    rest = [j for j in group if j not in singles and not bad & {_key(c) for c in _members(j)}]
    if rest:
        parts.append(_group(rest, store, context, log, keep_going))
    return merged(parts)


def _tables(group: list[Job], ordered: list[Checkpoint], items: list,
            context: ComputeContext) -> dict[str, pd.DataFrame]:
    """The tables of one base's pass over every pairing; rows carry checkpoints by their index in ``ordered``."""
    spec, base = group[0].spec, group[0].base
    index = _positions(ordered)
    extra: dict = {}
    if spec.cross_tables:
        extra["pairs"] = sorted({(index[_key(j.checkpoint)], index[_key(j.other)]) for j in group if j.other})
    if spec.group_tables:
        whole = next((j for j in group if j.group), None)
        extra["group"] = [index[_key(c)] for c in whole.group] if whole else []
    with tqdm(total=sum(len(item.tuned) for item in items), unit="pair", disable=None, file=sys.stderr,
              leave=False, desc=f"{spec.name} vs {base.name}") as bar:
        return load(spec.compute)(items, group[0].params, context, progress=bar.update, **extra)


def _write(group: list[Job], ordered: list[Checkpoint], items: list, tables: dict[str, pd.DataFrame],
           wall: float, store: Store, context: ComputeContext) -> Done:
    """Write each job's rows of a base's tables. A job whose result fails the spec's ``validate`` (e.g. a
    fine-tune of some other base) is not written: it is a failure."""
    spec, base = group[0].spec, group[0].base
    validate = load(spec.validate) if spec.validate else None
    cross_tables, group_tables = spec.cross_tables, spec.group_tables
    index = _positions(ordered)
    written, count, failed = [], 0, []
    for job in group:
        if job.group:
            names = " + ".join(c.name for c in job.group)  # which set of checkpoints the rows belong to
            mine = {name: label_members(frame, ordered, base).assign(group=names)
                    for name, frame in tables.items() if name in group_tables}
            problem, n = None, 0
        elif job.other is None:
            k = index[_key(job.checkpoint)]
            mine = {name: label(frame[frame["job"] == k].drop(columns="job").reset_index(drop=True),
                                job.checkpoint, base)
                    for name, frame in tables.items() if name not in cross_tables + group_tables}
            problem = validate(mine["matrices"]) if validate else None
            n = sum(1 for item in items for j, _ in item.tuned if j == k)
        else:
            a, b = index[_key(job.checkpoint)], index[_key(job.other)]
            mine = {name: label_cross(frame[(frame["a"] == a) & (frame["b"] == b)].drop(columns=["a", "b"])
                                      .reset_index(drop=True), job.checkpoint, job.other, base)
                    for name, frame in tables.items() if name in cross_tables}
            problem, n = None, 0
        if problem:
            failed.append(failure(job, AtlasError(problem)))
            continue
        mine = {name: aliased(frame, spec.label_aliases) for name, frame in mine.items()}
        write_job(store, spec.name, job.fingerprint, mine, **job_provenance(job, context, wall / len(group), n))
        written.append(job)
        count += n
    return written, count, failed


def _key(ckpt: Checkpoint) -> tuple[str, str]:
    """A checkpoint's identity within a plan: its path and name (one file may appear under two names)."""
    return str(ckpt.path), ckpt.name


def _members(job: Job) -> list[Checkpoint]:
    """The checkpoints a paired job compares with its base."""
    return [c for c in (job.checkpoint, job.other, *job.group) if c is not None]


def _positions(ordered: list[Checkpoint]) -> dict[tuple[str, str], int]:
    return {_key(c): k for k, c in enumerate(ordered)}


def paired_members(group: Sequence[Job]) -> list[Checkpoint]:
    """Every checkpoint that paired jobs sharing a base need, once each, in order."""
    return list({_key(c): c for job in group for c in _members(job)}.values())
