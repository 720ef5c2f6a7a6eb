"""Run the jobs ``planning`` made that the store lacks, each by its kind's runner, writing each atomically.

``runners.checkpoint`` runs one checkpoint at a time; ``runners.paired`` runs the jobs sharing a base
matrix by matrix, so each base matrix is read and decomposed once; ``runners.run`` runs a run job
matrix-major over its checkpoints. All compute in one ``ComputeContext`` (``context.resolve``, once per command)
and write through ``writing.write_job``.

One bad input costs only its own jobs: a job that fails (``JOB_ERRORS``) writes nothing, and the others
run and are stored; ``run`` says how failures are reported.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType

from subspace_atlas.context import ComputeContext
from subspace_atlas.errors import AtlasError
from subspace_atlas.planning import Failure, Job, first_per_input, pending
from subspace_atlas.runners import checkpoint, paired
from subspace_atlas.runners import run as runs
from subspace_atlas.specs import Analysis, CheckpointAnalysis, PairedAnalysis, RunAnalysis
from subspace_atlas.store import Store
from subspace_atlas.verify import remove_leftovers

RUNNERS: dict[type, ModuleType] = {CheckpointAnalysis: checkpoint, PairedAnalysis: paired, RunAnalysis: runs}


@dataclass
class Outcome:
    computed: list[Job]
    skipped: list[Job]
    matrices: int
    seconds: float
    failed: list[Failure] = field(default_factory=list)  # one per input that failed; its jobs wrote nothing


def runner(spec: Analysis) -> ModuleType:
    """The runner module of ``spec``'s kind (``check`` and ``run``)."""
    for kind, module in RUNNERS.items():
        if isinstance(spec, kind):
            return module
    raise AtlasError(f"{spec.name}: a {type(spec).__name__} has no job runner")


def run(jobs: Sequence[Job], store: Store, context: ComputeContext, force: bool = False,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr), keep_going: bool = False) -> Outcome:
    """Run every job not already stored (all of them with ``force``), writing each as it finishes.

    A job that fails while computing (a non-finite matrix, a tensor that does not read) writes nothing and
    the others still run. By default every input is checked first (headers, pairings) and a bad one raises
    before any work, leaving the store as it was; failures found later are raised together once the other
    jobs are stored. With ``keep_going`` (``scan``: inputs nobody named one by one) a bad input is one more
    failure, and failures come back in ``Outcome.failed`` instead.
    """
    _return_large_frees_to_the_os()
    start = time.perf_counter()
    with contextlib.ExitStack() as claims:
        todo = _claimed(pending(jobs, store, force), store, claims, force, log)
        for name in sorted({job.spec.name for job in todo}):
            remove_leftovers(store, name)
        skipped = [j for j in jobs if j not in todo]
        computed, count, failed = (runner(todo[0].spec).run(todo, store, context, log, keep_going)
                                   if todo else ([], 0, []))
    failed = first_per_input(failed)
    if failed and not keep_going:
        raise AtlasError("; ".join(f.message for f in failed))
    return Outcome(computed, skipped, count, time.perf_counter() - start, failed)


def _claimed(todo: list[Job], store: Store, claims: contextlib.ExitStack, force: bool,
             log: Callable[[str], None]) -> list[Job]:
    """The jobs this process claims (held until ``claims`` closes): a job another live process is computing is
    left to it, and one it finished meanwhile is not computed again, so concurrent writers never duplicate work."""
    mine, busy = [], []
    for job in todo:
        holder = claims.enter_context(store.claim(job.spec.name, job.fingerprint))
        if holder is not None:
            busy.append(holder)
        elif force or not store.has(job.spec.name, job.fingerprint):
            mine.append(job)
    if busy:
        log(f"{len(busy)} job(s) left to the process computing them now ({', '.join(sorted(set(busy)))}); "
            "rerun once it has finished to check")
    return mine


def _return_large_frees_to_the_os() -> None:
    """Pin glibc's mmap threshold at 1 MiB so every freed matrix-sized buffer goes back to the OS.

    glibc raises the threshold to 32 MiB after the first large free; buffers below it then come from
    the heap and fragment it, so RSS creeps up over a model (measured on a 2.2 GB bf16 checkpoint:
    1498 MiB peak without, under 900 MiB with it; bench/RESULTS.md). It costs small models some speed
    (fresh zeroed pages for every buffer over 1 MiB), which bench/RESULTS.md also records.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):  # not glibc (musl): nothing to tune
            pass
