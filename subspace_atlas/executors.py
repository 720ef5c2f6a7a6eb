"""``--executor ray``: the jobs ``planning.plan`` makes, run as Ray tasks on a cluster (or a local one).

The driver does what the local executor does before any work: it drops the jobs the store holds and
checks every input (headers only), so a bad input fails at once and leaves the store as it was. The
rest is cut into independent units, each one Ray task that runs ``jobs.run`` on its worker and writes
its own jobs' files to the store (one file per job: workers never share a writer):

* a plain job (one checkpoint) is a unit of its own;
* the paired jobs of one plan sharing a base are one unit: they share the base's decompositions, and
  their cross and group jobs need all of them;
* a run job (every checkpoint of a training run) is a unit of its own.

A task takes one CPU core and runs torch on one thread (the parallelism is in the tasks), or one GPU
when the device is CUDA. Each matrix is decomposed on one thread by the local executor too, so the
tables equal the local ones. Checkpoints and the store must be reachable from every worker.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

from tqdm import tqdm

from subspace_atlas import jobs
from subspace_atlas.runners import JOB_ERRORS, failure
from subspace_atlas.errors import AtlasError
from subspace_atlas.jobs import Outcome
from subspace_atlas.options import check_device_spec
from subspace_atlas.planning import Failure, Job, first_per_input
from subspace_atlas.specs import PairedAnalysis, RunAnalysis
from subspace_atlas.store import Store

INSTALL_HINT = "pip install 'subspace-atlas[cluster]'"


def run(groups: Sequence[Sequence[Job]], store: Store, device: str = "auto", address: str | None = None,
        batch_bytes: int | None = None, force: bool = False,
        log: Callable[[str], None] = lambda s: tqdm.write(s, file=sys.stderr),
        keep_going: bool = False) -> tuple[Outcome, str]:
    """Run every job not already stored (all of them with ``force``) as Ray tasks; also say where they ran.

    ``groups`` are plans as ``jobs.run`` would take them one by one (``scan`` makes several); all their
    units go to the cluster at once. ``device`` is ``auto`` (a GPU per task when the cluster has GPUs),
    ``cpu`` or ``cuda[:N]`` (a GPU per task; Ray picks which). ``address``: a running cluster (``auto``,
    ``HOST:PORT``, ``ray://HOST:10001``); without it, ``$RAY_ADDRESS``, else a local cluster for this call.
    ``keep_going`` (``scan``): a unit whose input is bad, or whose task fails, is one more ``Outcome.failed``
    and the rest still run, as ``jobs.run(keep_going=True)`` does.
    """
    start = time.perf_counter()
    check_device_spec(device)
    if store.root.startswith("memory://"):
        raise AtlasError(f"--store {store.root}: a memory:// store lives in one process; Ray workers need a "
                         "folder they all see or a URL such as s3://")
    if store.local:  # workers may start elsewhere: name the folder absolutely
        store = Store(os.path.abspath(store.root))
    seen: set[tuple[str, str]] = set()
    units, skipped = [], []
    for group in groups:
        todo = []
        for job in group:
            key = (job.spec.name, job.fingerprint)
            if key in seen or not force and store.has(*key):
                skipped.append(job)
            else:
                seen.add(key)
                todo.append(job)
        units += partition(todo)
    failed: list[Failure] = []
    for unit in list(units):  # every input problem before any work, as the local executor finds them
        try:
            check(unit)
        except JOB_ERRORS as err:
            if not keep_going:
                raise
            failed += [failure(job, err) for job in unit]
            units.remove(unit)
    if not units:
        return Outcome([], skipped, 0, time.perf_counter() - start, first_per_input(failed)), "Ray"
    with connected(address) as ray:
        gpus = ray.cluster_resources().get("GPU", 0)
        use_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
        if use_gpu and not gpus:
            raise AtlasError(f"--device {device}: the Ray cluster has no GPU (use --device cpu or auto)")
        task = ray.remote(_work).options(num_cpus=1, num_gpus=1 if use_gpu else 0)
        pending = {task.remote(unit, store, "cuda" if use_gpu else "cpu", batch_bytes, force, keep_going): unit
                   for unit in units}
        computed, matrices, failures = _gather(ray, pending, log)
    failed = first_per_input(failed + failures)
    if failed and not keep_going:
        more = f" (and {len(failed) - 1} more failed)" if len(failed) > 1 else ""
        raise AtlasError(failed[0].message + more)
    where = f"Ray ({len(units)} task(s), {'one GPU' if use_gpu else 'one CPU core'} each)"
    return Outcome(computed, skipped, matrices, time.perf_counter() - start, failed), where


def partition(todo: Sequence[Job]) -> list[list[Job]]:
    """Independent units of one plan's jobs: a plain or run job alone, paired jobs together by base."""
    by_base: dict[str, list[Job]] = {}
    units = []
    for job in todo:
        if isinstance(job.spec, PairedAnalysis):
            if job.base_identity not in by_base:
                by_base[job.base_identity] = []
                units.append(by_base[job.base_identity])
            by_base[job.base_identity].append(job)
        else:
            units.append([job])
    return units


def check(unit: Sequence[Job]) -> None:
    """Raise what ``jobs.run`` would raise about the unit's inputs before computing anything."""
    jobs.runner(unit[0].spec).check(unit)


@contextmanager
def connected(address: str | None = None, num_cpus: int | None = None) -> Iterator[ModuleType]:
    """The ``ray`` module, connected: to ``address`` (or ``$RAY_ADDRESS``), else to a new local cluster of
    ``num_cpus`` cores (default: all). A connection made here is closed on leaving; one already open
    (a driver script that called ``ray.init`` itself) is used as it is and left open."""
    try:
        import ray
    except ImportError as err:
        raise AtlasError(f"--executor ray needs Ray: {INSTALL_HINT}") from err
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a cluster the user never asked for: no telemetry
            # "local": a new cluster even where `ray start` left one (plain ray.init() would join that)
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    except (ConnectionError, ValueError, RuntimeError, ImportError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AtlasError(f"could not connect to {where}: {reason}") from err
    try:
        yield ray
    finally:
        ray.shutdown()


def _gather(ray: ModuleType, pending: dict, log: Callable[[str], None]) -> tuple[list[Job], int, list[Failure]]:
    """Wait for every task, logging each as it finishes; a failed task's error does not stop the others
    (their jobs are stored, as the local executor stores the jobs it finished before an error)."""
    computed: list[Job] = []
    matrices, finished, total, failures = 0, 0, sum(len(u) for u in pending.values()), []
    with tqdm(total=total, unit="job", disable=None, file=sys.stderr, leave=False, desc="ray") as bar:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ref)
            finished += len(unit)
            bar.update(len(unit))
            try:
                done = ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                if not isinstance(err.cause, AtlasError):
                    raise  # a bug: its message carries the worker's traceback
                failures.append(Failure(_describe(unit), str(err.cause)))  # names its input already
                log(f"[{finished}/{total}] {_describe(unit)}: failed")
            except ray.exceptions.RayError as err:  # the worker died (out of memory, node lost …)
                failures += [Failure(_describe(unit), f"{_describe(unit)}: the Ray task failed: "
                                                      f"{str(err).strip().splitlines()[0]}")]
                log(f"[{finished}/{total}] {_describe(unit)}: failed")
            else:
                done, count, wall, lost = done
                failures += lost
                computed += [job for job in unit if job.fingerprint in done]
                matrices += count
                log(f"[{finished}/{total}] {_describe(unit)}: {count} matrices in {wall:.2f} s")
    return computed, matrices, failures


def _describe(unit: Sequence[Job]) -> str:
    job = unit[0]
    if job.base is not None:
        return f"{job.spec.name}: {len(unit)} job(s) vs {job.base.name}"
    if isinstance(job.spec, RunAnalysis):
        return f"{job.spec.name} over run {job.group[0].run}"
    return f"{job.spec.name} of {job.checkpoint.name}"


def _work(unit: list[Job], store: Store, device: str, batch_bytes: int | None,
          force: bool, keep_going: bool) -> tuple[set[str], int, float, list[Failure]]:
    """In a Ray worker: ``jobs.run`` on one unit with torch on one thread (the task's one core); returns the
    fingerprints it computed, its matrix count, its seconds and (``keep_going``) the jobs that failed."""
    import torch

    from subspace_atlas.context import resolve

    torch.set_num_threads(1)
    outcome = jobs.run(unit, store, resolve(device, batch_bytes), force, log=lambda line: None, keep_going=keep_going)
    return {job.fingerprint for job in outcome.computed}, outcome.matrices, outcome.seconds, outcome.failed
