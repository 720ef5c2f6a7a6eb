"""Pair a base checkpoint's matrices with their fine-tuned versions, for analyses that compare the two.

A fine-tuned checkpoint is a full state dict (names may carry another prefix: ``bert.encoder…`` vs
``encoder…``, matched by ``naming.align``) or a PEFT LoRA adapter folder, merged on the fly from its
factors. Every problem is found here, before any work: a tuned matrix whose shape differs from the
base's, base matrices the checkpoint lacks, an adapter trained on another base, or nothing to pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import pandas as pd
import torch

from subspace_atlas.adapters import LoraAdapter, LoraUpdate, is_adapter, recorded_base
from subspace_atlas.checkpoints import Checkpoint, TensorInfo, open_checkpoints, select_matrices
from subspace_atlas.errors import AtlasError
from subspace_atlas.naming import align
from subspace_atlas.parallel import map_matrices
from subspace_atlas.svdcache import SvdCache

Loader = Callable[[], torch.Tensor | LoraUpdate]
R = TypeVar("R")

# Stored bytes of base matrices and their fine-tuned versions being compared at once; one larger
# matrix runs alone. Keeps peak memory near the largest matrix's work, not two of them.
INFLIGHT_BYTES = 256 << 20


@dataclass
class PairedMatrix:
    """One base matrix and, for each job comparing with it, a loader of its fine-tuned version."""

    info: TensorInfo  # the base's name, shape and dtype
    cache_key: str  # the base matrix's content key (identity, name, shape)
    load_base: Callable[[], torch.Tensor]
    tuned: list[tuple[int, Loader]]  # (job index, loader of a dense matrix or a LoRA update)


def _bytes_of(item: PairedMatrix) -> int:
    """Stored bytes a paired matrix brings into memory: the base and each fine-tuned version."""
    return item.info.nbytes * (1 + len(item.tuned))


def map_pairs(work: Callable[[PairedMatrix], R], items: Iterable[PairedMatrix], device: torch.device,
              workers: int | None, progress: Callable[[int], None]) -> Iterator[R]:
    """``work`` on each paired matrix (``parallel.map_matrices``), reporting each matrix's pairs to ``progress``,
    with the stored bytes of the matrices in flight within ``INFLIGHT_BYTES``."""
    yield from map_matrices(work, items, _bytes_of, lambda item: len(item.tuned), device, workers, INFLIGHT_BYTES,
                            progress)


def empty_table(*keys: str) -> pd.DataFrame:
    """A result table with no rows that still has its key columns (``job``, or ``a`` and ``b``) and ``tensor``,
    so the runner can split and label it like any other."""
    return pd.DataFrame({**{k: pd.Series(dtype="int64") for k in keys}, "tensor": pd.Series(dtype=str)})


def pair_items(job, checkpoints: Sequence[Checkpoint], matrices_of: Callable) -> list[PairedMatrix]:
    """Matrix-major work for checkpoints sharing ``job``'s base: each base matrix with every checkpoint's version.

    ``job`` supplies the base and the tensor selection; a loader's index is the checkpoint's position.
    """
    base = job.base
    selected = {info.name: info for info in matrices_of(job, base)}
    everything = base.tensors_by_name()
    same_dtype = job.spec.same_dtype
    identity_of = cache(lambda path: open_checkpoints(path)[0].identity())  # a run's adapters share one base
    tuned: dict[str, list[tuple[int, Loader]]] = {name: [] for name in selected}
    for k, ckpt in enumerate(checkpoints):
        if not is_adapter(ckpt):
            found = _dense_loaders(ckpt, base, everything, selected, same_dtype)
        elif same_dtype:
            raise AtlasError(f"{ckpt.path}: a LoRA adapter folder; {job.spec.name} compares stored weights entry "
                             "by entry, so merge the adapter (PEFT merge_and_unload) and pass the merged model")
        else:
            found = _adapter_loaders(ckpt, base, everything, selected, job.base_identity, identity_of)
        for name, loader in found.items():
            tuned[name].append((k, loader))
    items = [PairedMatrix(info, SvdCache.key(job.base_identity, name, info.shape),
                          lambda name=name: base.load(name), tuned[name])
             for name, info in selected.items() if tuned[name]]
    if not items:
        raise AtlasError(f"--base {base.path}: none of its selected matrices has a fine-tuned version to compare")
    return items


def _check_shape(ckpt: Checkpoint, info: TensorInfo, base: Checkpoint, base_info: TensorInfo,
                 same_dtype: bool = False) -> None:
    if tuple(info.shape) != tuple(base_info.shape):
        raise AtlasError(f"{ckpt.path}: tensor {info.name!r} is {list(info.shape)} but {base_info.name!r} in --base "
                         f"{base.path} is {list(base_info.shape)}; is this a fine-tune of that base?")
    if same_dtype and info.dtype != base_info.dtype:
        raise AtlasError(f"{ckpt.path}: tensor {info.name!r} is stored as {info.dtype} but {base_info.name!r} in "
                         f"--base {base.path} as {base_info.dtype}; an entry-by-entry comparison needs one dtype "
                         "(a cast alone would change every entry)")


def _dense_loaders(ckpt: Checkpoint, base: Checkpoint, everything: dict[str, TensorInfo],
                   selected: dict[str, TensorInfo], same_dtype: bool) -> dict[str, Loader]:
    taken, _ = select_matrices(ckpt.tensors())
    to_base = align(list(everything), [i.name for i in taken])
    mine = {to_base[i.name]: i for i in reversed(taken) if i.name in to_base}  # first wins on a tie
    missing = [name for name in selected if name not in mine]
    if missing:
        raise AtlasError(f"{ckpt.path}: has no matrix matching {len(missing)} of the {len(selected)} selected in "
                         f"--base {base.path} (first: {missing[0]!r}); restrict the comparison with --tensors")
    for name, info in mine.items():
        if name in selected:
            _check_shape(ckpt, info, base, selected[name], same_dtype)
    return {name: (lambda n=mine[name].name: ckpt.load(n)) for name in selected}


def _adapter_loaders(ckpt: Checkpoint, base: Checkpoint, everything: dict[str, TensorInfo],
                     selected: dict[str, TensorInfo], base_identity: str,
                     identity_of: Callable[[object], str]) -> dict[str, Loader]:
    adapter = LoraAdapter(ckpt)
    trained_on = recorded_base(adapter)
    if trained_on is not None and identity_of(trained_on) != base_identity:
        raise AtlasError(f"{ckpt.path}: this adapter was trained on {trained_on} (adapter_config.json), "
                         f"which is not --base {base.path}")
    found: dict[str, Loader] = {}
    targets = [(info, False, lambda n=info.name: adapter.update(n)) for info in adapter.targets()]
    whole = [(info, True, lambda n=info.name: adapter.load_full(n))
             for info in select_matrices(adapter.full_tensors())[0]]
    to_base = align(list(everything), [info.name for info, _, _ in targets + whole])
    for info, is_whole, loader in targets + whole:
        if info.name not in to_base:
            if is_whole:  # a head the base lacks (e.g. a new classifier): nothing to compare
                continue
            raise AtlasError(f"{ckpt.path}: the adapter updates {info.name!r}, which --base {base.path} lacks; "
                             "is this adapter for that base?")
        name = to_base[info.name]
        _check_shape(ckpt, info, base, everything[name])
        if name in selected:
            found[name] = loader
    if not found:
        raise AtlasError(f"{ckpt.path}: the adapter updates none of the selected matrices of --base {base.path}")
    return found
