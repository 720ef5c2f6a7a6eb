"""The illusion distilled (after Makelov, Lange & Nanda's toy example): a three-unit hidden layer where it provably occurs.

A binary feature x = ±1 (+1: the base answers IO, −1: the source answers S) is written to two hidden
units, h = (x, x, 0). Downstream, W_out reads unit 1 and unit 3 (a dormant unit, always 0 on the data);
unit 2 is read by nothing (it lies in W_out's nullspace). LD = logit(IO) − logit(S) = 2·(h₁ + h₃).

* e₁ is the real feature direction: patching along it flips the answer, and it lies in W_out's row
  space → **faithful**.
* v = (e₂ + e₃)/√2 also flips half the preference when patched (FLDD 100 %), yet neither part does
  alone: e₂ varies with the feature but nothing reads it (disconnected), e₃ is read but constant on the
  data (dormant). Patching v writes the feature's difference into the dormant unit → **illusory**.
"""

from __future__ import annotations

import torch

from subspace_atlas.probes.targets import Batch

W_IN = torch.tensor([[1.0, 1.0, 0.0]])  # x → h
W_OUT = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # h → out (reads units 1 and 3)
UNEMBED = torch.tensor([[1.0, -1.0], [1.0, -1.0]])  # out → logits of (IO, S)
FAITHFUL = torch.tensor([1.0, 0.0, 0.0])
ILLUSORY = torch.tensor([0.0, 1.0, 1.0]) / 2**0.5


class ToyTarget:
    """The toy as a patching target: inputs are x values (N,), the site is the hidden layer h."""

    def activations(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[:, None].float() @ W_IN

    def logits(self, batch: torch.Tensor, replace: torch.Tensor | None = None) -> torch.Tensor:
        h = self.activations(batch) if replace is None else replace.float()
        return h @ W_OUT @ UNEMBED

    def reader_basis(self) -> torch.Tensor:
        return W_OUT


def batches(count: int = 16) -> list[Batch]:
    """Base prompts x = +1 (answer token 0 = IO), sources x = −1 (answer token 1 = S)."""
    ones = torch.ones(count)
    return [Batch(ones, -ones, torch.zeros(count, dtype=torch.long), torch.ones(count, dtype=torch.long))]
