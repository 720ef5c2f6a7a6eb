"""Run the jobs ``planning`` made that the store lacks, writing each one atomically.

Plain jobs run one checkpoint at a time. The paired jobs sharing a base run matrix by matrix
(``pairs``), so each base matrix is read and decomposed once however many checkpoints it meets; cross
and group jobs take their rows from the same pass. A run job runs matrix-major over its checkpoints.

One bad input costs only its own jobs: a job that fails (``JOB_ERRORS``) writes nothing, and the others
run and are stored; ``run`` says how failures are reported.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import subspace_atlas
from subspace_atlas import analysis
from subspace_atlas.checkpoints import Checkpoint, TensorInfo
from subspace_atlas.errors import AtlasError
from subspace_atlas.naming import classify, expert
from subspace_atlas.planning import Failure, Job, first_per_input, pending
from subspace_atlas.store import Store
from subspace_atlas.verify import remove_leftovers
from subspace_atlas.views import expanded


# What may fail one job without being a bug: bad or unreadable input, or numbers no analysis can take (a
# non-finite matrix, an eigensolver that did not converge). Anything else propagates, as do interrupts.
JOB_ERRORS = (AtlasError, OSError, ArithmeticError, torch.linalg.LinAlgError, np.linalg.LinAlgError)


@dataclass
class Outcome:
    computed: list[Job]
    skipped: list[Job]
    matrices: int
    seconds: float
    failed: list[Failure] = field(default_factory=list)  # one per input that failed; its jobs wrote nothing


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
                             f"(shape {list(bad.shape)}); {job.spec.NAME} needs 2-D floating-point matrices")
        other_2d = sum(1 for i in skipped if i.is_matrix)
        raise AtlasError(f"{checkpoint.path}: no 2-D floating-point weight matrices ({len(skipped)} tensors: "
                         f"{other_2d} 2-D of a non-float dtype, {len(skipped) - other_2d} not 2-D)")
    order = {shape: k for k, shape in enumerate(dict.fromkeys(i.shape for i in taken))}
    return sorted(taken, key=lambda i: order[i.shape])


def run(jobs: Sequence[Job], store: Store, device: torch.device, batch_bytes: int | None = None,
        force: bool = False, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
        keep_going: bool = False) -> Outcome:
    """Run every job not already stored (all of them with ``force``), writing each as it finishes.

    A job that fails while computing (a non-finite matrix, a tensor that does not read) writes nothing and
    the others still run. By default every input is checked first (headers, pairings) and a bad one raises
    before any work, leaving the store as it was; failures found later are raised together once the other
    jobs are stored. With ``keep_going`` (``scan``: inputs nobody named one by one) a bad input is one more
    failure, and failures come back in ``Outcome.failed`` instead.
    """
    _return_large_frees_to_the_os()
    if batch_bytes is None:  # batching pays on a GPU; on a CPU it only costs memory
        batch_bytes = 1 << 30 if device.type == "cuda" else 0
    start = time.perf_counter()
    with contextlib.ExitStack() as claims:
        todo = _claimed(pending(jobs, store, force), store, claims, force, log)
        for name in sorted({job.spec.NAME for job in todo}):
            remove_leftovers(store, name)
        skipped = [j for j in jobs if j not in todo]
        if todo and getattr(todo[0].spec, "PAIRED", False):
            computed, count, failed = _run_paired(todo, store, device, batch_bytes, log, keep_going)
        elif todo and getattr(todo[0].spec, "RUN", False):
            computed, count, failed = _run_runs(todo, store, device, log, keep_going)
        else:
            computed, count, failed = _run_plain(todo, store, device, batch_bytes, log, keep_going)
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
        holder = claims.enter_context(store.claim(job.spec.NAME, job.fingerprint))
        if holder is not None:
            busy.append(holder)
        elif force or not store.has(job.spec.NAME, job.fingerprint):
            mine.append(job)
    if busy:
        log(f"{len(busy)} job(s) left to the process computing them now ({', '.join(sorted(set(busy)))}); "
            "rerun once it has finished to check")
    return mine


def _checked(todo: list[Job], check: Callable[[Job], list], keep_going: bool) -> tuple[list[tuple[Job, list]],
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
    if getattr(job.spec, "RUN", False):
        return Failure.of(os.path.commonpath([c.path for c in job.group]), err)
    what = f"{job.checkpoint.path}" + (f" and {job.other.path}" if job.other is not None else "")
    return Failure.of(job.checkpoint.path, err, what + (f" vs --base {job.base.path}" if job.base else ""))


def _run_plain(todo: list[Job], store: Store, device: torch.device, batch_bytes: int,
               log: Callable[[str], None], keep_going: bool) -> Done:
    """Run plain jobs one checkpoint at a time, its matrices streamed from disk."""
    plans, failed = _checked(todo, matrices_of, keep_going)
    computed, count = [], 0
    with tqdm(total=sum(len(m) for _, m in plans), unit="matrix", disable=None, file=sys.stderr,
              leave=False) as bar:
        for k, (job, mats) in enumerate(plans, 1):
            bar.set_description(job.checkpoint.name)
            t0 = time.perf_counter()
            try:
                tables = _plain_tables(job, mats, device, batch_bytes, bar)
            except JOB_ERRORS as err:
                failed.append(failure(job, err))
                log(f"[{k}/{len(plans)}] {job.checkpoint.name}: failed")
                continue
            wall = time.perf_counter() - t0
            store.write(job.spec.NAME, job.fingerprint, tables, _provenance(job, device, wall, len(mats)))
            computed.append(job)
            count += len(mats)
            log(f"[{k}/{len(plans)}] {job.checkpoint.name}: {len(mats)} matrices in {wall:.2f} s")
    return computed, count, failed


def _plain_tables(job: Job, mats: list[TensorInfo], device: torch.device, batch_bytes: int,
                  bar: tqdm) -> dict[str, pd.DataFrame]:
    """One plain job's labelled tables."""
    stream = _counted(zip(mats, (t for _, t in job.checkpoint.stream([m.name for m in mats]))), bar)
    tables = analysis.compute_module(job.spec.NAME).compute(stream, job.params, device, batch_bytes)
    return {name: label(frame, job.checkpoint) for name, frame in tables.items()}


def _run_paired(todo: list[Job], store: Store, device: torch.device, batch_bytes: int,
                log: Callable[[str], None], keep_going: bool) -> Done:
    """Run paired jobs base by base (``_paired_group``)."""
    groups: dict[str, list[Job]] = {}
    for job in todo:
        groups.setdefault(job.base_identity, []).append(job)
    return _merged([_paired_group(group, store, device, batch_bytes, log, keep_going) for group in groups.values()])


def _merged(parts: Sequence[Done]) -> Done:
    return [j for p in parts for j in p[0]], sum(p[1] for p in parts), [f for p in parts for f in p[2]]


def _paired_group(group: list[Job], store: Store, device: torch.device, batch_bytes: int,
                  log: Callable[[str], None], keep_going: bool) -> Done:
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
        return _isolated(group, err, store, device, batch_bytes, log, keep_going)
    t0 = time.perf_counter()
    try:
        tables = _paired_tables(group, ordered, items, device, batch_bytes)
    except JOB_ERRORS as err:
        return _isolated(group, err, store, device, batch_bytes, log, keep_going)
    wall = time.perf_counter() - t0
    done = _paired_write(group, ordered, items, tables, wall, store, device)
    log(f"{group[0].spec.NAME}: {len(group)} job(s) vs {group[0].base.name}: "
        f"{sum(len(i.tuned) for i in items)} matrix pairs in {wall:.2f} s")
    return done


def _isolated(group: list[Job], err: BaseException, store: Store, device: torch.device, batch_bytes: int,
              log: Callable[[str], None], keep_going: bool) -> Done:
    """After a base's pass failed: each checkpoint's own job alone, then the jobs comparing the good ones.

    A group with no single job to try alone (or only one job) fails whole, with ``err``.
    """
    singles = [j for j in group if j.other is None and not j.group]
    if len(group) == 1 or not singles:
        return [], 0, [failure(job, err) for job in group]
    parts = [_paired_group([job], store, device, batch_bytes, log, keep_going) for job in singles]
    bad = {_key(job.checkpoint) for job, (written, _, _) in zip(singles, parts) if not written}
    rest = [j for j in group if j not in singles and not bad & {_key(c) for c in _members(j)}]
    if rest:
        parts.append(_paired_group(rest, store, device, batch_bytes, log, keep_going))
    return _merged(parts)


def _paired_tables(group: list[Job], ordered: list[Checkpoint], items: list, device: torch.device,
                   batch_bytes: int) -> dict[str, pd.DataFrame]:
    """The tables of one base's pass over every pairing; rows carry checkpoints by their index in ``ordered``."""
    from subspace_atlas.svdcache import SvdCache, default_root

    spec, base = group[0].spec, group[0].base
    index = _positions(ordered)
    extra: dict = {}
    if getattr(spec, "CROSS_TABLES", ()):
        extra["pairs"] = sorted({(index[_key(j.checkpoint)], index[_key(j.other)]) for j in group if j.other})
    if getattr(spec, "GROUP_TABLES", ()):
        whole = next((j for j in group if j.group), None)
        extra["group"] = [index[_key(c)] for c in whole.group] if whole else []
    with tqdm(total=sum(len(item.tuned) for item in items), unit="pair", disable=None, file=sys.stderr,
              leave=False, desc=f"{spec.NAME} vs {base.name}") as bar:
        return analysis.compute_module(spec.NAME).compute(items, group[0].params, device, batch_bytes,
                                                          cache=SvdCache(default_root()), progress=bar.update,
                                                          **extra)


def _paired_write(group: list[Job], ordered: list[Checkpoint], items: list, tables: dict[str, pd.DataFrame],
                  wall: float, store: Store, device: torch.device) -> Done:
    """Write each job's rows of a base's tables. A job whose result fails the compute's ``validate`` (e.g. a
    fine-tune of some other base) is not written: it is a failure."""
    spec, base = group[0].spec, group[0].base
    module = analysis.compute_module(spec.NAME)
    cross_tables = getattr(spec, "CROSS_TABLES", ())
    group_tables = getattr(spec, "GROUP_TABLES", ())
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
            problem = module.validate(mine["matrices"]) if hasattr(module, "validate") else None
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
        mine = {name: _aliased(frame, getattr(spec, "LABEL_ALIASES", {})) for name, frame in mine.items()}
        store.write(spec.NAME, job.fingerprint, mine, _provenance(job, device, wall / len(group), n))
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


def _run_runs(todo: list[Job], store: Store, device: torch.device, log: Callable[[str], None],
              keep_going: bool) -> Done:
    """Run each run job matrix-major over its checkpoints (inputs checked first), write it whole."""
    plans, failed = _checked(todo, run_matrices, keep_going)
    computed, count = [], 0
    for k, (job, items) in enumerate(plans, 1):
        members = list(job.group)
        t0 = time.perf_counter()
        try:
            tables = _run_tables(job, items, device, log)
        except JOB_ERRORS as err:
            failed.append(failure(job, err))
            log(f"[{k}/{len(plans)}] {members[0].run}: failed")
            continue
        wall = time.perf_counter() - t0
        n = sum(len(i.loaders) for i in items)
        store.write(job.spec.NAME, job.fingerprint, tables, _provenance(job, device, wall, n))
        computed.append(job)
        count += n
        log(f"[{k}/{len(plans)}] {members[0].run}: {len(members)} checkpoints × {len(items)} matrices "
            f"in {wall:.2f} s")
    return computed, count, failed


def _run_tables(job: Job, items: list, device: torch.device, log: Callable[[str], None]) -> dict[str, pd.DataFrame]:
    """One run job's labelled tables."""
    from subspace_atlas.svdcache import SvdCache, default_root

    spec, members = job.spec, list(job.group)
    if "gradients" in getattr(job.params, "of", ()):
        from subspace_atlas.probes.gradients import attach_gradients

        attach_gradients(items, members, job.params, device, log)
    steps = [c.step if c.step is not None else i for i, c in enumerate(members)]
    with tqdm(total=sum(len(i.loaders) for i in items), unit="matrix", disable=None, file=sys.stderr,
              leave=False, desc=f"{spec.NAME} {members[0].run}") as bar:
        tables = analysis.compute_module(spec.NAME).compute(items, job.params, steps, device,
                                                            cache=SvdCache(default_root()), progress=bar.update)
    return label_run(tables, members)


def label_run(tables: dict[str, pd.DataFrame], members: list[Checkpoint]) -> dict[str, pd.DataFrame]:
    """Label a run's tables: rows of two checkpoints (``a``, ``b``) with both and the run, rows of one
    (``job``) with it, the rest (per matrix) with the run, layer and kind."""
    labelled = {}
    for name, frame in tables.items():
        if "a" in frame:
            parts = [label_cross(part.drop(columns=["a", "b"]).reset_index(drop=True), members[a], members[b])
                     for (a, b), part in frame.groupby(["a", "b"], sort=True)]
            both = (pd.concat(parts, ignore_index=True) if parts else
                    label_cross(frame.drop(columns=["a", "b"]), members[0], members[-1]))
            labelled[name] = both.drop(columns=["run_a", "run_b"])
            labelled[name].insert(0, "run", members[0].run)
        elif "job" in frame:
            labelled[name] = label_members(frame, members, None)
        else:
            labelled[name] = label(frame, members[-1]).drop(columns=["checkpoint", "checkpoint_path", "step"])
    return labelled


def run_matrices(job: Job) -> list:
    """A run job's matrices, each with a loader per checkpoint; names aligned across a renamed prefix.

    The last checkpoint names the matrices. Every checkpoint must hold each of them in the same shape.
    """
    from subspace_atlas.analysis.overlap import RunMatrix
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


def _counted(stream, bar):
    for item in stream:
        yield item
        bar.update(1)


def label(frame: pd.DataFrame, ckpt: Checkpoint, base: Checkpoint | None = None) -> pd.DataFrame:
    """Prefix a result table with the checkpoint's columns and, where it has ``tensor``, layer and kind (and
    ``expert`` where a matrix is an MoE expert's, so tables of models without experts stay as they were)."""
    front = {} if base is None else {"base": base.name}
    front |= {
        "checkpoint": ckpt.name,
        "checkpoint_path": str(ckpt.path),
        "run": ckpt.run,
        "step": pd.array([ckpt.step] * len(frame), dtype="Int64"),
    }
    out = pd.DataFrame(front, index=frame.index)
    if "tensor" in frame:  # each matrix's labels once, spread to its rows by code (a 7B job has 0.9 M rows)
        codes, names = pd.factorize(frame["tensor"])
        labels = [classify(name) for name in names]
        out["tensor"] = frame["tensor"]
        out["layer"] = pd.array([layer for layer, _ in labels], dtype="Int64").take(codes)
        out["kind"] = np.array([kind for _, kind in labels], dtype=object)[codes]
        experts = [expert(name) for name in names]
        if any(e is not None for e in experts):
            out["expert"] = pd.array(experts, dtype="Int64").take(codes)
    return pd.concat([out, frame.drop(columns=[c for c in out.columns if c in frame])], axis=1)


def label_cross(frame: pd.DataFrame, a: Checkpoint, b: Checkpoint, base: Checkpoint | None = None) -> pd.DataFrame:
    """Prefix a cross table (two fine-tunes of one base, two checkpoints of a run) with both checkpoints'
    columns, layer and kind."""
    labelled = label(frame, a, base).rename(columns={"checkpoint": "checkpoint_a", "checkpoint_path": "path_a",
                                                      "run": "run_a", "step": "step_a"})
    at = 1 if base is not None else 0
    labelled.insert(at + 1, "checkpoint_b", b.name)
    labelled.insert(at + 3, "path_b", str(b.path))
    labelled.insert(at + 5, "run_b", b.run)
    labelled.insert(at + 7, "step_b", pd.array([b.step] * len(frame), dtype="Int64"))
    return labelled


def _aliased(frame: pd.DataFrame, aliases: dict[str, str]) -> pd.DataFrame:
    """Add each aliased label column again under the analysis's own name for it (checkpoint → task)."""
    for column, alias in aliases.items():
        if column in frame and alias not in frame:
            frame.insert(frame.columns.get_loc(column) + 1, alias, frame[column])
    return frame


def label_members(frame: pd.DataFrame, checkpoints: list[Checkpoint], base: Checkpoint | None) -> pd.DataFrame:
    """Label a group table whose rows name their checkpoint by index (column ``job``)."""
    parts = [label(frame[frame["job"] == k].drop(columns="job").reset_index(drop=True), ckpt, base)
             for k, ckpt in enumerate(checkpoints) if (frame["job"] == k).any()]
    return pd.concat(parts, ignore_index=True) if parts else label(frame.drop(columns="job"), checkpoints[0], base)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0]} ({len(names)} threads)" if names else platform.processor() or "cpu"


def _provenance(job: Job, device: torch.device, wall: float, matrices: int) -> dict:
    import safetensors

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "params": dataclasses.asdict(job.params),
        "inputs": {"checkpoint": job.checkpoint.name, "path": str(job.checkpoint.path),
                   "identity": job.identity, "step": job.checkpoint.step,
                   "run": job.checkpoint.run, "tensors": job.tensors}
                  | ({"base": job.base.name, "base_path": str(job.base.path), "base_identity": job.base_identity}
                     if job.base is not None else {})
                  | ({"other": job.other.name, "other_path": str(job.other.path)} if job.other is not None else {})
                  | ({"group": [c.name for c in job.group]} if job.group else {}),
        "versions": {"subspace_atlas": subspace_atlas.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "pandas": pd.__version__,
                     "safetensors": safetensors.__version__, "python": platform.python_version()},
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "matrices": matrices,
        "wall_s": round(wall, 4),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "schema_version": job.spec.SCHEMA_VERSION,
    }
