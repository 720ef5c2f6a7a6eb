"""``subspace-atlas scan FOLDER``: find every checkpoint, run and adapter under a folder and plan every analysis.

What is found, and what it gets (each registered spec's ``scan`` rule says which it takes):

* every model checkpoint (a weights file, an HF folder, each child of a run folder): ``SCAN_MODELS``
  (``spectra``);
* every run folder (``checkpoint-N`` / ``stepN`` … children) with two or more checkpoints: ``SCAN_RUNS``
  (``overlap``);
* every PEFT LoRA adapter whose ``adapter_config.json`` names a base folder on this machine, against that
  base: ``SCAN_ADAPTERS`` every checkpoint of an adapter run (``intruders``), ``SCAN_ADAPTER_FINALS`` the
  adapters sharing a base, a run counting once by its last checkpoint (``angles``);
* what a manifest ``atlas-scan.json`` at the folder's top adds (paths relative to it)::

      {"pairs": [{"base": "llama-7b", "tuned": ["ft-math", "ft-code", "rl-run"],
                  "analyses": ["intruders", "sparsity", "angles"]}],
       "runs": [{"path": "rl-run", "start": "llama-7b"}],
       "skip": ["scratch"]}

  ``pairs`` say which full fine-tunes (or runs) belong to which base, and which paired analyses to run
  (default: the paired ones with a scan rule, intruders and angles; add sparsity for same-dtype full
  fine-tunes); ``runs`` give a run's
  starting checkpoint for ``overlap``; ``skip`` leaves folders out of the scan.

Each planned job is skipped when the store holds it; ``--dry-run`` prints the plan with that status.

The walk visits each real folder once (a link back up is noted, not followed round), at most ``MAX_DEPTH``
folders down. What cannot be scanned is left out and listed after everything else: a folder that cannot be
read (``skipped:``), a checkpoint that does not open (``failed:``, found by reading its safetensors headers
before planning, so ``--dry-run`` names it too); the rest is planned as usual.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from subspace_atlas import analysis, planning
from subspace_atlas.adapters import LoraAdapter, is_adapter, recorded_base
from subspace_atlas.checkpoints import PICKLES, SAFETENSORS, Checkpoint, open_checkpoints, open_one, read_json
from subspace_atlas.errors import AtlasError
from subspace_atlas.planning import Failure
from subspace_atlas.specs import (SCAN_ADAPTER_FINALS, SCAN_ADAPTERS, SCAN_MODELS, SCAN_RUNS, Analysis,
                                  PairedAnalysis)
from subspace_atlas.store import Store

T = TypeVar("T")

MANIFEST = "atlas-scan.json"
MAX_DEPTH = 64  # folders below the scan root; deeper ones are noted, not walked


@dataclass
class Found:
    """What a folder holds: plain checkpoints, runs (name → ordered checkpoints) and adapters by base path;
    also the folders left out (``skipped: <folder>: why``) and the checkpoints that do not open."""

    models: list[Checkpoint] = field(default_factory=list)
    runs: dict[Path, list[Checkpoint]] = field(default_factory=dict)
    adapters: dict[Path, list[Checkpoint]] = field(default_factory=dict)
    orphans: list[Checkpoint] = field(default_factory=list)  # adapters whose base is not on this machine
    skipped: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)


@dataclass
class Plan:
    """Every job a folder calls for, grouped as (what, jobs) in run order, and what the scan left out."""

    groups: list[tuple[str, list[planning.Job]]]
    skipped: list[str]
    failed: list[Failure]


def discover(root: Path, skip: set[Path] = frozenset()) -> Found:
    """Walk ``root``: every checkpoint, run and adapter in it and in its subfolders (a run's checkpoints once)."""
    found = Found()
    _walk(Path(os.path.realpath(root)), found, {Path(os.path.realpath(p)) for p in skip})
    return found


def _walk(root: Path, found: Found, skip: set[Path]) -> None:
    """Depth first, without recursion (a deep tree cannot exhaust the stack), each real folder once (links
    back up cannot loop), at most ``MAX_DEPTH`` folders down; a folder that cannot be read is noted and left."""
    seen: dict[tuple[int, int], Path] = {}
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        if depth > MAX_DEPTH:
            found.skipped.append(f"skipped: {folder}: more than {MAX_DEPTH} folders below {root}")
            continue
        try:
            subfolders = _visit(folder, found, seen, skip)
        except OSError as err:  # ENAMETOOLONG, EACCES, ELOOP …
            found.skipped.append(f"skipped: {folder}: {err.strerror or err}")
            continue
        stack += [(sub, depth + 1) for sub in reversed(subfolders)]


def _visit(folder: Path, found: Found, seen: dict[tuple[int, int], Path], skip: set[Path]) -> list[Path]:
    """Record one folder's checkpoints; return its subfolders still to walk, in name order."""
    stat = os.stat(folder)
    real = Path(os.path.realpath(folder))
    if real in skip:
        return []
    if (stat.st_dev, stat.st_ino) in seen:
        found.skipped.append(f"skipped: {folder}: the same folder as {seen[stat.st_dev, stat.st_ino]}, "
                             "already scanned")
        return []
    seen[stat.st_dev, stat.st_ino] = folder
    ckpts = _open(real, found)
    opened = [c for c in ckpts if _recorded(c, found)]
    run = [c for c in opened if c.run is not None]
    if run:
        found.runs[real] = run
    taken = {c.path for c in ckpts}  # e.g. a run's checkpoint-N folders (its merged/ model is walked)
    return [sub for sub in _subfolders(real, found) if sub not in taken]


def _subfolders(folder: Path, found: Found) -> list[Path]:
    """A folder's subfolders in name order, hidden ones left out; an entry that cannot be looked at (a link
    to itself) is a note."""
    subfolders = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                if not entry.name.startswith(".") and entry.is_dir():
                    subfolders.append(folder / entry.name)
            except OSError as err:
                found.skipped.append(f"skipped: {folder / entry.name}: {err.strerror or err}")
    return subfolders


def _open(folder: Path, found: Found) -> list[Checkpoint]:
    """The checkpoints in a folder; none for a folder without weights (a subfolder's name too long to look at is
    the walk's to note), and a failure for one whose weights do not open (a corrupt shard index, say)."""
    try:
        return open_checkpoints(folder)
    except (AtlasError, OSError) as err:
        if any(p.suffix in SAFETENSORS + PICKLES or p.name.endswith(".index.json") for p in folder.iterdir()):
            found.failed.append(Failure.of(folder, err))
        return []


def _recorded(ckpt: Checkpoint, found: Found) -> bool:
    """Record a checkpoint in ``found`` (``_record``); one that does not read is a failure instead."""
    try:
        _record(ckpt, found)
    except (AtlasError, OSError) as err:
        found.failed.append(Failure.of(ckpt.path, err))
        return False
    return True


def _record(ckpt: Checkpoint, found: Found) -> None:
    """File a checkpoint under models or adapters, once its files read: every file's sampled bytes, and the
    headers of safetensors files (a truncated one fails here, so ``--dry-run`` names it too; a pickle would
    need torch and a full load, so it is read when its job runs)."""
    ckpt.identity()
    if all(f.suffix in SAFETENSORS for f in ckpt.files):
        ckpt.tensors()
    if is_adapter(ckpt):
        base = recorded_base(LoraAdapter(ckpt))
        (found.adapters.setdefault(base, []) if base else found.orphans).append(ckpt)
    else:
        found.models.append(ckpt)


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        return {}
    data = read_json(path, "not valid JSON")
    if not isinstance(data, dict) or set(data) - {"pairs", "runs", "skip"}:
        raise AtlasError(f"{path}: expected an object with \"pairs\", \"runs\" and/or \"skip\"")
    entries = [*data.get("pairs", []), *data.get("runs", [])] if all(
        isinstance(data.get(k, []), list) for k in ("pairs", "runs", "skip")) else None
    if entries is None or not all(isinstance(e, dict) for e in entries) or not all(
            isinstance(s, str) for s in data.get("skip", [])):
        raise AtlasError(f"{path}: \"pairs\" and \"runs\" are lists of objects, \"skip\" a list of folder names")
    paired = [spec.name for spec in analysis.batch_specs() if isinstance(spec, PairedAnalysis)]
    for pair in data.get("pairs", []):
        for name in pair.get("analyses", paired_default()):
            if name not in paired:
                raise AtlasError(f"{path}: pair analysis {name!r}; expected {', '.join(paired[:-1])} or {paired[-1]}")
    return data


def names() -> tuple[str, ...]:
    """Every analysis ``scan`` can plan (the registered ones that read checkpoints), in registry order."""
    return tuple(spec.name for spec in analysis.batch_specs())


def default_names() -> tuple[str, ...]:
    """What ``scan`` plans unless ``--analyses`` says otherwise: every analysis but the opt-in ones."""
    return tuple(spec.name for spec in analysis.batch_specs() if not spec.opt_in)


def paired_default() -> tuple[str, ...]:
    """The paired analyses an ``atlas-scan.json`` pair gets unless it names its own: those with a scan rule."""
    return tuple(spec.name for spec in analysis.batch_specs() if isinstance(spec, PairedAnalysis) and spec.scan)


def _by_rule(rule: str) -> list[Analysis]:
    return [spec for spec in analysis.batch_specs() if spec.scan == rule]


def plan(root: str | Path, analyses: tuple[str, ...] | None = None) -> Plan:
    """Every job the folder calls for, grouped as (what, jobs) in run order.

    An input that does not open (a checkpoint, a base, a run's start) costs only what needs it: it is in
    ``Plan.failed``. A bad manifest or argument raises.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise AtlasError(f"{root}: no such folder")
    analyses = default_names() if analyses is None else analyses
    unknown = set(analyses) - set(names())
    if unknown:
        raise AtlasError(f"--analyses: unknown {sorted(unknown)}; known: {', '.join(names())}")
    manifest = read_manifest(root)
    found = discover(root, {root / s for s in manifest.get("skip", [])})
    out = Plan([], found.skipped, found.failed)

    def attempt(what: Path | str, step: Callable[[], T]) -> T | None:
        """``step()``, or None with a failure naming ``what`` when an input it reads is bad."""
        try:
            return step()
        except (AtlasError, OSError) as err:
            out.failed.append(Failure.of(what, err))
            return None

    def add(what: str, name: str, *args, **kwargs) -> None:
        if name in analyses:
            spec = analysis.SPECS[name]
            jobs = attempt(what, lambda: planning.plan(spec, *args, params=spec.params(), **kwargs))
            if jobs is not None:
                out.groups.append((what, jobs))

    if found.models:
        for spec in _by_rule(SCAN_MODELS):
            add(f"{spec.name} of {len(found.models)} checkpoint(s)", spec.name, found.models)
    starts = {Path(os.path.realpath(root / r["path"])): attempt(root / r["start"],
                                                                 partial(open_one, root / r["start"]))
              for r in manifest.get("runs", []) if "start" in r}
    for folder, run in found.runs.items():
        dense = [c for c in run if not is_adapter(c)]
        if len(dense) + (starts.get(folder) is not None) >= 2:
            for spec in _by_rule(SCAN_RUNS):
                add(f"{spec.name} over run {folder.name}", spec.name, dense, start=starts.get(folder))
    for base_path, adapters in found.adapters.items():
        base = attempt(base_path, partial(open_one, base_path))
        if base is None:
            continue
        finals = list({(c.run or str(c.path)): c for c in adapters}.values())  # a run's task vector: its last
        for spec in analysis.batch_specs():
            taken = {SCAN_ADAPTERS: adapters, SCAN_ADAPTER_FINALS: finals}.get(spec.scan)
            if taken is not None:
                add(f"{spec.name}: {len(taken)} adapter(s) vs {base.name}", spec.name, taken, base=base)
    for pair in manifest.get("pairs", []):
        base = attempt(root / pair["base"], partial(open_one, root / pair["base"]))
        tuned = [c for t in pair.get("tuned", [])
                 for c in attempt(root / t, partial(open_checkpoints, root / t)) or []]
        if base is None:
            continue
        for name in pair.get("analyses", paired_default()):
            add(f"{name}: {len(tuned)} checkpoint(s) vs {base.name}", name, tuned, base=base)
    return out


def describe(groups: list[tuple[str, list[planning.Job]]], store: Store) -> list[str]:
    """One line per planned group: how many of its jobs the store already holds."""
    lines = []
    for what, planned in groups:
        held = sum(store.has(j.spec.name, j.fingerprint) for j in planned)
        lines.append(f"{what}: {len(planned)} job(s), {held} stored, {len(planned) - held} to compute")
    return lines


def report(skipped: list[str], failed: list[Failure]) -> int:
    """Print what the scan left out, one line each, after everything else; the exit code: 1 when an input failed."""
    for line in [*skipped, *map(str, planning.first_per_input(failed))]:
        print(line, file=sys.stderr)
    return 1 if failed else 0
