"""Matrices cut from stored tensors of three dimensions, so analyses that take 2-D matrices see them too.

Two kinds of 3-D weight are split or joined into matrices, read from headers (and ``config.json``) alone:

* **Fused MoE experts** (Transformers 5 stores all experts of a projection as one tensor):
  ``…experts.down_proj`` ``[E, H, I]`` gives one matrix per expert, named ``…experts.down_proj[3]``.
  ``…experts.gate_up_proj`` ``[E, 2I, H]`` (Mixtral, Qwen-MoE, DeepSeek, OLMoE …) gives two per expert,
  ``…experts.gate_up_proj[3].gate`` and ``….up``: rows ``:I`` and ``I:``, the halves the model's own
  ``linear(x, w).chunk(2, dim=-1)`` takes. In the transposed ``[E, H, 2I]`` layout the halves are columns,
  interleaved in some models (gpt-oss: ``gate_up[..., ::2]``, ``[..., 1::2]``) and concatenated in others
  (Llama 4, Aria: ``chunk(2, dim=-1)``). Headers cannot tell which, so the checkpoint's ``model_type``
  does (``HALVES``, set on the tensor as ``TensorInfo.halves``); for a model not listed each expert stays
  one fused ``…gate_up_proj[3]`` matrix. The layout is read off the ``down_proj`` beside it. Matrices are
  cut as stored (``[H, I]`` in the transposed layout; spectra do not care). Any other 3-D float tensor
  under ``experts`` is one matrix per expert; a stacked 2-D expert bias (gpt-oss ``…experts.down_proj_bias``
  ``[E, H]``) is one bias vector per expert, so analyses skip it as they skip every bias.
* **TransformerLens per-head attention** ``W_Q`` / ``W_K`` / ``W_V`` ``[n_heads, d_model, d_head]`` and
  ``W_O`` ``[n_heads, d_head, d_model]``: one matrix per head, its ``[d_model, d_head]`` (``[d_head, d_model]``)
  slice, named ``…attn.W_Q[head 3]``; and one with the heads joined along ``d_head`` (head-major),
  ``[d_model, n_heads·d_head]`` and ``[n_heads·d_head, d_model]``, named ``…attn.W_Q[heads]``: the map the
  layer applies as a whole. ``head`` rather than a bare index, so no head is taken for an MoE expert.
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
_EXPERT_BIAS = re.compile(r"(?:^|\.)experts\.\w+_bias$")
_GATE_UP = re.compile(r"(?:^|\.)experts\.gate_up_proj$")
_HEADS = re.compile(r"(?:^|\.)attn\._?W_([QKVO])$")

# How a model type's fused ``[E, H, 2I]`` gate_up tensor holds its gate and up halves (transformers 5.23:
# ``GptOssExperts._apply_gate``; ``Llama4TextExperts.forward``, ``AriaExperts``, ``OpenAIPrivacyFilterExperts``).
HALVES = {"gpt_oss": "interleaved", "llama4": "concatenated", "llama4_text": "concatenated",
          "aria": "concatenated", "aria_text": "concatenated", "openai_privacy_filter": "concatenated"}


@dataclass(frozen=True)
class View:
    """How a 2-D matrix is cut from the stored tensor ``source``.

    ``index``: the slice along the first axis (an expert, a head). ``half``: the first row (``axis`` 0) or
    column (``axis`` 1) of the gate or up half taken from that slice, every ``step``-th from there (2 when
    interleaved).
    ``heads_axis``: the axis (1 or 2) holding ``d_head`` when heads are joined.
    """

    source: str
    index: int | None = None
    half: int | None = None
    heads_axis: int | None = None
    axis: int = 0
    step: int = 1

    def cut(self, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """The matrix of ``shape`` from ``tensor``: the source's ``index`` slice, or the whole source when
        heads are joined."""
        import torch

        if self.heads_axis is not None:
            return tensor.movedim(0, self.heads_axis - 1).flatten(self.heads_axis - 1, self.heads_axis)
        if self.half is None:
            return tensor
        taken = slice(self.half, self.half + self.step * shape[self.axis], self.step)
        part = tensor[taken] if self.axis == 0 else tensor[:, taken]
        return part.clone(memory_format=torch.contiguous_format)  # a copy: a view keeps the other half alive


def expanded(infos: Iterable[TensorInfo]) -> list[TensorInfo]:
    """``infos`` with each 3-D float tensor these rules know replaced, in place, by the matrices cut from it
    (and each stacked expert bias by its vectors)."""
    infos = list(infos)
    shapes = {info.name: info.shape for info in infos}
    out: list[TensorInfo] = []
    for info in infos:
        stacked = len(info.shape) == 3 or (len(info.shape) == 2 and _EXPERT_BIAS.search(info.name))
        known = stacked and info.is_float and min(info.shape) > 0
        out += (_cut(info, shapes) if known else []) or [info]
    return out


def _cut(info: TensorInfo, shapes: dict[str, tuple[int, ...]]) -> list[TensorInfo]:
    """The matrices one 3-D tensor holds (the vectors of a stacked expert bias); none when these rules do not
    know it."""
    if len(info.shape) == 2:
        return _per_slice(info, info.shape[1:])
    heads = _HEADS.search(info.name)
    if heads:
        return [_joined_heads(info, heads.group(1)), *_per_slice(info, info.shape[1:], "head ")]
    if _GATE_UP.search(info.name):
        return _gate_up(info, shapes.get(info.name.removesuffix("gate_up_proj") + "down_proj"), info.halves)
    if _EXPERTS.search(info.name):
        return _per_slice(info, info.shape[1:])
    return []


def _joined_heads(info: TensorInfo, which: str) -> TensorInfo:
    n_heads, rows, cols = info.shape
    shape, axis = ((n_heads * rows, cols), 1) if which == "O" else ((rows, n_heads * cols), 2)
    return _info(f"{info.name}[heads]", shape, info, View(info.name, heads_axis=axis))


def _gate_up(info: TensorInfo, down: tuple[int, ...] | None, halves: str | None) -> list[TensorInfo]:
    """Gate and up halves per expert: rows in the ``[E, 2I, H]`` layout (concatenated unless ``halves`` says
    otherwise), columns in ``[E, H, 2I]`` when ``halves`` is known; one fused matrix per expert otherwise."""
    experts, rows, cols = info.shape
    if down is None or len(down) != 3:
        return _per_slice(info, (rows, cols))
    if cols == down[1] and rows == 2 * down[2]:
        axis, halves = 0, halves or "concatenated"
    elif rows == down[2] and cols == 2 * down[1] and halves is not None:
        axis = 1
    else:
        return _per_slice(info, (rows, cols))
    size = info.shape[1 + axis] // 2
    shape = (size, cols) if axis == 0 else (rows, size)
    starts, step = ((0, 1), 2) if halves == "interleaved" else ((0, size), 1)
    return [_info(f"{info.name}[{e}].{part}", shape, info, View(info.name, e, start, axis=axis, step=step))
            for e in range(experts) for part, start in zip(("gate", "up"), starts)]


def _per_slice(info: TensorInfo, shape: tuple[int, ...], tag: str = "") -> list[TensorInfo]:
    """One matrix per slice of the first axis: ``…[3]`` (an expert), or ``…[head 3]`` with ``tag`` ``"head "``."""
    return [_info(f"{info.name}[{tag}{e}]", shape, info, View(info.name, e)) for e in range(info.shape[0])]


def _info(name: str, shape: tuple[int, ...], source: TensorInfo, view: View) -> TensorInfo:
    return replace(source, name=name, shape=tuple(shape), view=view)
