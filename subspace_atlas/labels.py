"""Label result tables with what they are of: checkpoint, run, step (and base), layer, kind, expert,
head, tied.

Computes return bare tables (rows carry a ``tensor`` and, where they compare checkpoints, their indices
``job`` / ``a`` / ``b``); the runners label them here before writing, so every analysis's tables share
the same leading columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from subspace_atlas.checkpoints import Checkpoint
from subspace_atlas.naming import classify, expert, head


def label(frame: pd.DataFrame, ckpt: Checkpoint, base: Checkpoint | None = None) -> pd.DataFrame:
    """Prefix a result table with the checkpoint's columns and, where it has ``tensor``, layer and kind (and
    ``expert`` where a matrix is an MoE expert's, ``head`` where it is one attention head's, ``tied`` where the
    checkpoint's token embedding is also its output projection, so tables of other models stay as they were)."""
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
        for column, index_of in (("expert", expert), ("head", head)):
            indices = [index_of(name) for name in names]
            if any(i is not None for i in indices):
                out[column] = pd.array(indices, dtype="Int64").take(codes)
        tied = ckpt.tied_embeddings()
        if tied:
            out["tied"] = pd.array(names.isin(tied), dtype="boolean").take(codes)
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


def label_members(frame: pd.DataFrame, checkpoints: list[Checkpoint], base: Checkpoint | None) -> pd.DataFrame:
    """Label a group table whose rows name their checkpoint by index (column ``job``)."""
    parts = [label(frame[frame["job"] == k].drop(columns="job").reset_index(drop=True), ckpt, base)
             for k, ckpt in enumerate(checkpoints) if (frame["job"] == k).any()]
    return pd.concat(parts, ignore_index=True) if parts else label(frame.drop(columns="job"), checkpoints[0], base)


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


def aliased(frame: pd.DataFrame, aliases: dict[str, str]) -> pd.DataFrame:
    """Add each aliased label column again under the analysis's own name for it (checkpoint → task)."""
    for column, alias in aliases.items():
        if column in frame and alias not in frame:
            frame.insert(frame.columns.get_loc(column) + 1, alias, frame[column])
    return frame
