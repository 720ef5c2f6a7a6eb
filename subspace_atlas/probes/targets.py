"""What activation patching works on, apart from how: a model site (``Target``) and paired prompts (``Batch``).

Its own module so that targets (``probes.toy_illusion``, the IOI bridge in ``probes.patching``) and the
patching code import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class Target(Protocol):
    """A model and a site in it: activations at the last position, and logits with that activation replaced."""

    def activations(self, batch: object) -> torch.Tensor: ...  # (N, d)

    def logits(self, batch: object, replace: torch.Tensor | None = None) -> torch.Tensor: ...  # (N, vocab)

    def reader_basis(self) -> torch.Tensor: ...  # (d, r) orthonormal: what reads the site downstream


@dataclass
class Batch:
    """Prompts of one shape (a template), with the answer token ids: base answers ``io``, source answers ``s``."""

    base: object
    source: object
    io: torch.Tensor
    s: torch.Tensor
