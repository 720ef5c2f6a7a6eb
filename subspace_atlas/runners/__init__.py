"""One runner per analysis kind, and what they share: reading a job's matrices, checking inputs first, failures.

A runner module has ``check(unit)`` (raise what running the unit would raise about its inputs, before any
work; ``executors`` calls it) and ``run(todo, store, context, log, keep_going) → Done``, which hands the
``ComputeContext`` to every compute and records it in every job's provenance.
``jobs.run`` picks the runner by the spec's kind; no runner knows any analysis by name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

from subspace_atlas import linalg
from subspace_atlas.checkpoints import Checkpoint, TensorInfo
from subspace_atlas.context import ComputeContext
from subspace_atlas.errors import AtlasError
from subspace_atlas.planning import Failure, Job
from subspace_atlas.specs import RunAnalysis
from subspace_atlas.views import expanded

# What may fail one job without being a bug: bad or unreadable input, or numbers no analysis can take (a
# non-finite matrix, an eigensolver that did not converge). Anything else propagates, as do interrupts.
JOB_ERRORS = (AtlasError, OSError, ArithmeticError, *linalg.ERRORS)

# What a runner did: the jobs it wrote, their matrix count, and what failed.
Done = tuple[list[Job], int, list[Failure]]


def matrices_of(job: Job, checkpoint: Checkpoint | None = None) -> list[TensorInfo]:
    """The matrices a job decomposes (of ``checkpoint``, by default its own), grouped by shape.

    ``--tensors`` sees the matrices cut from 3-D tensors by their own names (``experts.down_proj[3]``).
    """
    checkpoint = checkpoint or job.checkpoint
    infos = expanded(checkpoint.tensors())
    if job.tensors:
        try:
            pattern = re.compile(job.tensors)
        except re.error as err:
            raise AtlasError(f"--tensors {job.tensors!r}: not a valid regular expression ({err})") from err
        infos = [i for i in infos if pattern.search(i.name)]
        if not infos:
            raise AtlasError(f"{checkpoint.path}: no tensor matches --tensors {job.tensors!r}")
    taken, skipped = job.spec.select(infos)
    if not taken:
        if job.tensors and skipped:
            bad = skipped[0]
            raise AtlasError(f"{checkpoint.path}: tensor {bad.name!r} is {len(bad.shape)}-D {bad.dtype} "
                             f"(shape {list(bad.shape)}); {job.spec.name} needs 2-D floating-point matrices")
        other_2d = sum(1 for i in skipped if i.is_matrix)
        raise AtlasError(f"{checkpoint.path}: no 2-D floating-point weight matrices ({len(skipped)} tensors: "
                         f"{other_2d} 2-D of a non-float dtype, {len(skipped) - other_2d} not 2-D)")
    order = {shape: k for k, shape in enumerate(dict.fromkeys(i.shape for i in taken))}
    return sorted(taken, key=lambda i: order[i.shape])


def checked(todo: list[Job], check: Callable[[Job], list], keep_going: bool) -> tuple[list[tuple[Job, list]],
                                                                                    list[Failure]]:
    """Each job with what ``check`` reads of its inputs (headers), before any work. A bad input raises, or
    with ``keep_going`` is its job's failure."""
    plans, failed = [], []
    for job in todo:
        try:
            plans.append((job, check(job)))
        except JOB_ERRORS as err:
            if not keep_going:
                raise
            failed.append(failure(job, err))
    return plans, failed


def failure(job: Job, err: BaseException) -> Failure:
    """``job``'s failure, under the input it is about: its checkpoint (and base), or its run's folder."""
    if isinstance(job.spec, RunAnalysis):
        return Failure.of(os.path.commonpath([c.path for c in job.group]), err)
    what = f"{job.checkpoint.path}" + (f" and {job.other.path}" if job.other is not None else "")
    return Failure.of(job.checkpoint.path, err, what + (f" vs --base {job.base.path}" if job.base else ""))


def job_provenance(job: Job, context: ComputeContext, wall: float, matrices: int) -> dict:
    """``write_job``'s keyword arguments for a planned job: its params, inputs (checkpoint, base, other, group)
    and schema version, where it ran and how long."""
    inputs = ({"checkpoint": job.checkpoint.name, "path": str(job.checkpoint.path), "identity": job.identity,
               "step": job.checkpoint.step, "run": job.checkpoint.run, "tensors": job.tensors}
              | ({"base": job.base.name, "base_path": str(job.base.path), "base_identity": job.base_identity}
                 if job.base is not None else {})
              | ({"other": job.other.name, "other_path": str(job.other.path)} if job.other is not None else {})
              | ({"group": [c.name for c in job.group]} if job.group else {}))
    return {"params": job.params, "inputs": inputs, "schema_version": job.spec.schema_version, "context": context,
            "wall": wall, "matrices": matrices}


def merged(parts: Sequence[Done]) -> Done:
    """Several runners' results as one."""
    return [j for p in parts for j in p[0]], sum(p[1] for p in parts), [f for p in parts for f in p[2]]


def counted(stream, bar):
    """``stream``'s items, ticking ``bar`` after each."""
    for item in stream:
        yield item
        bar.update(1)
