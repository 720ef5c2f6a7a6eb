"""Matrices cut from stored tensors of three dimensions, so analyses that take 2-D matrices see them too.

Two kinds of 3-D weight are split or joined into matrices, read from headers alone:

* **Fused MoE experts** (Transformers 5 stores all experts of a projection as one tensor):
  ``…experts.down_proj`` ``[E, H, I]`` gives one matrix per expert, named ``…experts.down_proj[3]``.
  ``…experts.gate_up_proj`` ``[E, 2I, H]`` (Mixtral, Qwen-MoE, DeepSeek, OLMoE …) gives two per expert,
  ``…experts.gate_up_proj[3].gate`` and ``….up``: rows ``:I`` and ``I:``, the halves the model's own
  ``linear(x, w).chunk(2, dim=-1)`` takes. In the transposed ``[E, H, 2I]`` layout (gpt-oss, Llama 4) the
  halves are interleaved in some models and concatenated in others, which headers cannot tell, so each
  expert stays one fused ``…gate_up_proj[3]`` matrix. The layout is read off the ``down_proj`` beside it.
  Any other 3-D float tensor under ``experts`` is one matrix per expert.
* **TransformerLens per-head attention** ``W_Q`` / ``W_K`` / ``W_V`` ``[n_heads, d_model, d_head]`` and
  ``W_O`` ``[n_heads, d_head, d_model]``: one matrix with the heads joined along ``d_head`` (head-major),
  ``[d_model, n_heads·d_head]`` and ``[n_heads·d_head, d_model]``, named ``…attn.W_Q[heads]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from subspace_atlas.checkpoints import TensorInfo

_EXPERTS = re.compile(r"(?:^|\.)experts\.\w+$")
_GATE_UP = re.compile(r"(?:^|\.)experts\.gate_up_proj$")
_HEADS = re.compile(r"(?:^|\.)attn\._?W_([QKVO])$")


@dataclass(frozen=True)
class View:
    """How a 2-D matrix is cut from the stored tensor ``source``.

    ``expert``: the slice along the first axis. ``half``: the first row of the rows taken from that slice
    (a gate or up half). ``heads_axis``: the axis (1 or 2) holding ``d_head`` when heads are joined.
    """

    source: str
    expert: int | None = None
    half: int | None = None
    heads_axis: int | None = None

    def cut(self, tensor: torch.Tensor, rows: int) -> torch.Tensor:
        """The ``rows``-row matrix from ``tensor``: the source's ``expert`` slice, or the whole source when
        heads are joined."""
        if self.heads_axis is not None:
            return tensor.movedim(0, self.heads_axis - 1).flatten(self.heads_axis - 1, self.heads_axis)
        if self.half is None:
            return tensor
        return tensor[self.half:self.half + rows].clone()  # a copy: a view would keep the other half alive


def expanded(infos: Iterable[TensorInfo]) -> list[TensorInfo]:
    """``infos`` with each 3-D float tensor these rules know replaced, in place, by the matrices cut from it."""
    infos = list(infos)
    shapes = {info.name: info.shape for info in infos}
    out: list[TensorInfo] = []
    for info in infos:
        known = len(info.shape) == 3 and info.is_float and min(info.shape) > 0
        out += (_cut(info, shapes) if known else []) or [info]
    return out


def _cut(info: TensorInfo, shapes: dict[str, tuple[int, ...]]) -> list[TensorInfo]:
    """The matrices one 3-D tensor holds; none when it is not a weight these rules know."""
    heads = _HEADS.search(info.name)
    if heads:
        return [_joined_heads(info, heads.group(1))]
    if _GATE_UP.search(info.name):
        return _gate_up(info, shapes.get(info.name.removesuffix("gate_up_proj") + "down_proj"))
    if _EXPERTS.search(info.name):
        return _per_expert(info, info.shape[1:])
    return []


def _joined_heads(info: TensorInfo, which: str) -> TensorInfo:
    n_heads, rows, cols = info.shape
    shape, axis = ((n_heads * rows, cols), 1) if which == "O" else ((rows, n_heads * cols), 2)
    return _info(f"{info.name}[heads]", shape, info, View(info.name, heads_axis=axis))


def _gate_up(info: TensorInfo, down: tuple[int, ...] | None) -> list[TensorInfo]:
    """Gate and up halves per expert in the ``[E, 2I, H]`` layout; one fused matrix each otherwise."""
    experts, rows, cols = info.shape
    if down is None or len(down) != 3 or not (cols == down[1] and rows == 2 * down[2]):
        return _per_expert(info, (rows, cols))
    half = rows // 2
    return [_info(f"{info.name}[{e}].{part}", (half, cols), info, View(info.name, e, start))
            for e in range(experts) for part, start in (("gate", 0), ("up", half))]


def _per_expert(info: TensorInfo, shape: tuple[int, ...]) -> list[TensorInfo]:
    return [_info(f"{info.name}[{e}]", shape, info, View(info.name, e)) for e in range(info.shape[0])]


def _info(name: str, shape: tuple[int, ...], source: TensorInfo, view: View) -> TensorInfo:
    return replace(source, name=name, shape=tuple(shape), view=view)
