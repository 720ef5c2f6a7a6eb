"""Run the jobs ``planning`` made that the store lacks, writing each one atomically.

Plain jobs run one checkpoint at a time. The paired jobs sharing a base run matrix by matrix
(``pairs``), so each base matrix is read and decomposed once however many checkpoints it meets; cross
and group jobs take their rows from the same pass. A run job runs matrix-major over its checkpoints.
"""

from __future__ import annotations

import ctypes
import dataclasses
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd
import torch
from tqdm import tqdm

import subspace_atlas
from subspace_atlas import analysis
from subspace_atlas.checkpoints import Checkpoint, TensorInfo
from subspace_atlas.errors import AtlasError
from subspace_atlas.naming import classify
from subspace_atlas.planning import Job, pending
from subspace_atlas.store import Store


@dataclass
class Outcome:
    computed: list[Job]
    skipped: list[Job]
    matrices: int
    seconds: float


def matrices_of(job: Job, checkpoint: Checkpoint | None = None) -> list[TensorInfo]:
    """The matrices a job decomposes (of ``checkpoint``, by default its own), grouped by shape."""
    checkpoint = checkpoint or job.checkpoint
    infos = checkpoint.tensors()
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
        force: bool = False, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Outcome:
    """Run every job not already stored (all of them with ``force``), writing each as it finishes."""
    _return_large_frees_to_the_os()
    todo = pending(jobs, store, force)
    skipped = [j for j in jobs if j not in todo]
    if batch_bytes is None:  # batching pays on a GPU; on a CPU it only costs memory
        batch_bytes = 1 << 30 if device.type == "cuda" else 0
    if todo and getattr(todo[0].spec, "PAIRED", False):
        return _run_paired(todo, skipped, store, device, batch_bytes, log)
    if todo and getattr(todo[0].spec, "RUN", False):
        return _run_runs(todo, skipped, store, device, log)
    start, count = time.perf_counter(), 0
    plans = [(job, matrices_of(job)) for job in todo]  # validate every input before any work
    total = sum(len(m) for _, m in plans)
    with tqdm(total=total, unit="matrix", disable=None, file=sys.stderr, leave=False) as bar:
        for k, (job, mats) in enumerate(plans, 1):
            bar.set_description(job.checkpoint.name)
            t0 = time.perf_counter()
            stream = _counted(zip(mats, (t for _, t in job.checkpoint.stream([m.name for m in mats]))), bar)
            tables = analysis.compute_module(job.spec.NAME).compute(stream, job.params, device, batch_bytes)
            tables = {name: label(frame, job.checkpoint) for name, frame in tables.items()}
            wall = time.perf_counter() - t0
            store.write(job.spec.NAME, job.fingerprint, tables, _provenance(job, device, wall, len(mats)))
            count += len(mats)
            log(f"[{k}/{len(plans)}] {job.checkpoint.name}: {len(mats)} matrices in {wall:.2f} s")
    return Outcome(todo, skipped, count, time.perf_counter() - start)


def _run_paired(todo: list[Job], skipped: list[Job], store: Store, device: torch.device, batch_bytes: int,
                log: Callable[[str], None]) -> Outcome:
    """Run paired jobs base by base, matrix-major; write each job once all its matrices are done.

    Every pairing is validated before any work. A job whose result fails the compute's ``validate``
    (e.g. a fine-tune of some other base) is not written; the others are, then the error is raised.
    """
    from subspace_atlas.pairs import pair_items
    from subspace_atlas.svdcache import SvdCache, default_root

    start, count, problems = time.perf_counter(), 0, []
    groups: dict[str, list[Job]] = {}
    for job in todo:
        groups.setdefault(job.base_identity, []).append(job)
    for group in groups.values():
        spec, base = group[0].spec, group[0].base
        module = analysis.compute_module(spec.NAME)
        cross_tables = getattr(spec, "CROSS_TABLES", ())
        group_tables = getattr(spec, "GROUP_TABLES", ())
        ordered = paired_members(group)  # a checkpoint's position here is its index in the work
        position = {(str(c.path), c.name): k for k, c in enumerate(ordered)}

        def index(ckpt: Checkpoint) -> int:
            return position[(str(ckpt.path), ckpt.name)]

        items = pair_items(group[0], ordered, matrices_of)
        crosses = sorted({(index(j.checkpoint), index(j.other)) for j in group if j.other is not None})
        total = sum(len(item.tuned) for item in items)
        t0 = time.perf_counter()
        extra = {"pairs": crosses} if cross_tables else {}
        whole = next((j for j in group if j.group), None)
        if group_tables:
            extra["group"] = [index(c) for c in whole.group] if whole else []
        with tqdm(total=total, unit="pair", disable=None, file=sys.stderr, leave=False,
                  desc=f"{spec.NAME} vs {base.name}") as bar:
            tables = module.compute(items, group[0].params, device, batch_bytes, cache=SvdCache(default_root()),
                                    progress=bar.update, **extra)
        wall = time.perf_counter() - t0
        for job in group:
            if job.group:
                names = " + ".join(c.name for c in job.group)  # which set of checkpoints the rows belong to
                mine = {name: label_members(frame, ordered, base).assign(group=names)
                        for name, frame in tables.items() if name in group_tables}
                problem, n = None, 0
            elif job.other is None:
                k = index(job.checkpoint)
                mine = {name: label(frame[frame["job"] == k].drop(columns="job").reset_index(drop=True),
                                     job.checkpoint, base)
                        for name, frame in tables.items() if name not in cross_tables + group_tables}
                problem = module.validate(mine["matrices"]) if hasattr(module, "validate") else None
                n = sum(1 for item in items for j, _ in item.tuned if j == k)
            else:
                a, b = index(job.checkpoint), index(job.other)
                mine = {name: label_cross(frame[(frame["a"] == a) & (frame["b"] == b)].drop(columns=["a", "b"])
                                           .reset_index(drop=True), job.checkpoint, job.other, base)
                        for name, frame in tables.items() if name in cross_tables}
                problem, n = None, 0
            if problem:
                problems.append(f"{job.checkpoint.path} vs --base {base.path}: {problem}")
                continue
            mine = {name: _aliased(frame, getattr(spec, "LABEL_ALIASES", {})) for name, frame in mine.items()}
            store.write(spec.NAME, job.fingerprint, mine, _provenance(job, device, wall / len(group), n))
            count += n
        log(f"{spec.NAME}: {len(group)} job(s) vs {base.name}: {total} matrix pairs in {wall:.2f} s")
    if problems:
        raise AtlasError("; ".join(problems))
    return Outcome(todo, skipped, count, time.perf_counter() - start)


def paired_members(group: Sequence[Job]) -> list[Checkpoint]:
    """Every checkpoint that paired jobs sharing a base need, once each, in order."""
    members = {(str(c.path), c.name): c for job in group for c in (job.checkpoint, job.other, *job.group) if c}
    return list(members.values())


def _run_runs(todo: list[Job], skipped: list[Job], store: Store, device: torch.device,
              log: Callable[[str], None]) -> Outcome:
    """Run each run job matrix-major over its checkpoints (all inputs validated first), write it whole."""
    from subspace_atlas.svdcache import SvdCache, default_root

    start, count = time.perf_counter(), 0
    plans = [(job, run_matrices(job)) for job in todo]
    for k, (job, items) in enumerate(plans, 1):
        spec, members = job.spec, list(job.group)
        t0 = time.perf_counter()
        if "gradients" in getattr(job.params, "of", ()):
            from subspace_atlas.probes.gradients import attach_gradients

            attach_gradients(items, members, job.params, device, log)
        steps = [c.step if c.step is not None else i for i, c in enumerate(members)]
        with tqdm(total=sum(len(i.loaders) for i in items), unit="matrix", disable=None, file=sys.stderr,
                  leave=False, desc=f"{spec.NAME} {members[0].run}") as bar:
            tables = analysis.compute_module(spec.NAME).compute(items, job.params, steps, device,
                                                                cache=SvdCache(default_root()), progress=bar.update)
        labelled = label_run(tables, members)
        wall = time.perf_counter() - t0
        n = sum(len(i.loaders) for i in items)
        store.write(spec.NAME, job.fingerprint, labelled, _provenance(job, device, wall, n))
        count += n
        log(f"[{k}/{len(plans)}] {members[0].run}: {len(members)} checkpoints × {len(items)} matrices "
            f"in {wall:.2f} s")
    return Outcome(todo, skipped, count, time.perf_counter() - start)


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
    """Prefix a result table with the checkpoint's columns and, where it has ``tensor``, layer and kind."""
    front = {} if base is None else {"base": base.name}
    front |= {
        "checkpoint": ckpt.name,
        "checkpoint_path": str(ckpt.path),
        "run": ckpt.run,
        "step": pd.array([ckpt.step] * len(frame), dtype="Int64"),
    }
    out = pd.DataFrame(front, index=frame.index)
    if "tensor" in frame:
        labels = {name: classify(name) for name in frame["tensor"].unique()}  # once per matrix, not per row
        out["tensor"] = frame["tensor"]
        out["layer"] = pd.array([labels[name][0] for name in frame["tensor"]], dtype="Int64")
        out["kind"] = [labels[name][1] for name in frame["tensor"]]
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
    import numpy
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
                     "numpy": numpy.__version__, "pandas": pd.__version__,
                     "safetensors": safetensors.__version__, "python": platform.python_version()},
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "matrices": matrices,
        "wall_s": round(wall, 4),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "schema_version": job.spec.SCHEMA_VERSION,
    }
