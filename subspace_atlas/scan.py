"""``subspace-atlas scan FOLDER``: find every checkpoint, run and adapter under a folder and plan every analysis.

What is found, and what it gets:

* every model checkpoint (a weights file, an HF folder, each child of a run folder): ``spectra``;
* every run folder (``checkpoint-N`` / ``stepN`` … children) with two or more checkpoints: ``overlap``;
* every PEFT LoRA adapter whose ``adapter_config.json`` names a base folder on this machine: ``intruders``
  against that base (every checkpoint of an adapter run), and ``angles`` between the adapters sharing a
  base (a run counts once, by its last checkpoint);
* what a manifest ``atlas-scan.json`` at the folder's top adds (paths relative to it)::

      {"pairs": [{"base": "llama-7b", "tuned": ["ft-math", "ft-code", "rl-run"],
                  "analyses": ["intruders", "sparsity", "angles"]}],
       "runs": [{"path": "rl-run", "start": "llama-7b"}],
       "skip": ["scratch"]}

  ``pairs`` say which full fine-tunes (or runs) belong to which base, and which paired analyses to run
  (default: intruders, angles; add sparsity for same-dtype full fine-tunes); ``runs`` give a run's
  starting checkpoint for ``overlap``; ``skip`` leaves folders out of the scan.

Each planned job is skipped when the store holds it; ``--dry-run`` prints the plan with that status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from subspace_atlas import analysis, planning
from subspace_atlas.adapters import LoraAdapter, is_adapter, recorded_base
from subspace_atlas.checkpoints import Checkpoint, open_checkpoints, open_one
from subspace_atlas.errors import AtlasError
from subspace_atlas.store import Store

MANIFEST = "atlas-scan.json"
PAIRED_DEFAULT = ("intruders", "angles")
ALL = ("spectra", "overlap", "intruders", "sparsity", "angles")


@dataclass
class Found:
    """What a folder holds: plain checkpoints, runs (name → ordered checkpoints) and adapters by base path."""

    models: list[Checkpoint] = field(default_factory=list)
    runs: dict[Path, list[Checkpoint]] = field(default_factory=dict)
    adapters: dict[Path, list[Checkpoint]] = field(default_factory=dict)
    orphans: list[Checkpoint] = field(default_factory=list)  # adapters whose base is not on this machine


def discover(root: Path, skip: set[Path] = frozenset()) -> Found:
    """Walk ``root``: every checkpoint, run and adapter in it and in its subfolders (a run's checkpoints once)."""
    found = Found()
    _walk(root.resolve(), found, {p.resolve() for p in skip})
    return found


def _walk(folder: Path, found: Found, skip: set[Path]) -> None:
    if folder in skip or folder.name.startswith("."):
        return
    try:
        ckpts = open_checkpoints(folder)
    except AtlasError:
        ckpts = []
    if ckpts:
        run = [c for c in ckpts if c.run is not None]
        if run:
            found.runs[folder] = run
        for c in ckpts:
            if is_adapter(c):
                base = recorded_base(LoraAdapter(c))
                (found.adapters.setdefault(base, []) if base else found.orphans).append(c)
            else:
                found.models.append(c)
    taken = {c.path for c in ckpts}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child not in taken:  # e.g. a run's merged/ model, a tokenizer/ (nothing)
            _walk(child, found, skip)


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AtlasError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or set(data) - {"pairs", "runs", "skip"}:
        raise AtlasError(f"{path}: expected an object with \"pairs\", \"runs\" and/or \"skip\"")
    return data


def plan(root: str | Path, analyses: tuple[str, ...] = ALL) -> list[tuple[str, list[planning.Job]]]:
    """Every job the folder calls for, grouped as (what, jobs) in run order."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise AtlasError(f"{root}: no such folder")
    unknown = set(analyses) - set(ALL)
    if unknown:
        raise AtlasError(f"--analyses: unknown {sorted(unknown)}; known: {', '.join(ALL)}")
    manifest = read_manifest(root)
    found = discover(root, {root / s for s in manifest.get("skip", [])})
    groups: list[tuple[str, list[planning.Job]]] = []

    def add(what: str, name: str, *args, **kwargs) -> None:
        if name in analyses:
            spec = analysis.SPECS[name]
            groups.append((what, planning.plan(spec, *args, params=spec.Params(), **kwargs)))

    if found.models:
        add(f"spectra of {len(found.models)} checkpoint(s)", "spectra", found.models)
    starts = {(root / r["path"]).resolve(): open_one(root / r["start"])
              for r in manifest.get("runs", []) if "start" in r}
    for folder, run in found.runs.items():
        dense = [c for c in run if not is_adapter(c)]
        if len(dense) + (folder in starts) >= 2:
            add(f"overlap over run {folder.name}", "overlap", dense, start=starts.get(folder))
    for base_path, adapters in found.adapters.items():
        base = open_one(base_path)
        add(f"intruders: {len(adapters)} adapter(s) vs {base.name}", "intruders", adapters, base=base)
        finals = list({(c.run or str(c.path)): c for c in adapters}.values())  # a run's task vector: its last
        add(f"angles: {len(finals)} adapter(s) vs {base.name}", "angles", finals, base=base)
    for pair in manifest.get("pairs", []):
        base = open_one(root / pair["base"])
        tuned = [c for t in pair.get("tuned", []) for c in open_checkpoints(root / t)]
        for name in pair.get("analyses", PAIRED_DEFAULT):
            if name not in ALL or name in ("spectra", "overlap"):
                raise AtlasError(f"{root / MANIFEST}: pair analysis {name!r}; expected intruders, sparsity or angles")
            add(f"{name}: {len(tuned)} checkpoint(s) vs {base.name}", name, tuned, base=base)
    return groups


def describe(groups: list[tuple[str, list[planning.Job]]], store: Store) -> list[str]:
    """One line per planned group: how many of its jobs the store already holds."""
    lines = []
    for what, planned in groups:
        held = sum(store.has(j.spec.NAME, j.fingerprint) for j in planned)
        lines.append(f"{what}: {len(planned)} job(s), {held} stored, {len(planned) - held} to compute")
    return lines
