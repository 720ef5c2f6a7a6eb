"""Record gradient subspaces during your own training: a plain PyTorch hook and an HF ``TrainerCallback``.

Every ``every`` steps, after ``loss.backward()``, each selected matrix's gradient is reduced to its top-k
triplets (``overlap.top_subspace``, so the same randomized method and bound as offline) and compared
with the previous and the first recording. Only those two top-k bases per matrix are kept, never a
full gradient. Rows go to the store as one ``overlap`` job (tables ``pairs``, ``subspaces`` and
``convergence``, ``of = gradients``), rewritten atomically at each ``flush`` (every ``flush_every``
recordings, and at the end of training).

    recorder = GradientSubspaceRecorder("atlas-store", run="my-run", every=100)
    for step, batch in enumerate(loader, 1):
        loss = model(**batch).loss
        loss.backward()
        recorder.record(model, step)
        optimizer.step(); optimizer.zero_grad()
    recorder.flush()

With the HF ``Trainer``: ``Trainer(..., callbacks=[GradientSubspaceCallback("atlas-store", every=100)])``.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import TrainerCallback

from subspace_atlas.analysis import overlap
from subspace_atlas.analysis.angles import sides
from subspace_atlas.checkpoints import Checkpoint
from subspace_atlas.context import ComputeContext
from subspace_atlas.labels import label_run
from subspace_atlas.linalg import TopSvd
from subspace_atlas.specs import overlap as overlap_spec
from subspace_atlas.store import Store, fingerprint
from subspace_atlas.writing import write_job


class GradientSubspaceRecorder:
    """Top-k gradient subspaces of every 2-D floating-point parameter, every ``every`` steps, into a store."""

    def __init__(self, store: str | Path | Store, run: str, every: int = 100, params: overlap_spec.Params | None = None,
                 tensors: str = "", flush_every: int = 10, device: torch.device | None = None):
        if every < 1:
            raise ValueError("every must be at least 1")
        self.store = store if isinstance(store, Store) else Store(store)
        self.run, self.every, self.flush_every, self.device = run, every, flush_every, device
        self.where = str(device or "cpu")  # where the last gradient was reduced: the device, else the gradient's
        self.params = replace(params or overlap_spec.Params(), of=("gradients",), reference=("previous", "first"),
                              welore=False, data="")
        self.pattern = re.compile(tensors) if tensors else None
        self.steps: list[int] = []
        self.first: dict[str, TopSvd] = {}
        self.previous: dict[str, TopSvd] = {}
        self.history: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (tensor, side) → (overlap, lead)
        self.rows: dict[str, list[dict]] = {"pairs": [], "subspaces": []}
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.fingerprint = fingerprint(overlap_spec.NAME, self.params, {"recorder": run, "every": every,
                                                                   "tensors": tensors, "started": started},
                                       overlap_spec.SCHEMA_VERSION)
        self.seconds = 0.0

    def record(self, model: torch.nn.Module, step: int) -> bool:
        """Reduce the current gradients if ``step`` is a recording step; returns whether it was."""
        if step % self.every:
            return False
        t0 = time.perf_counter()
        index = len(self.steps)
        self.steps.append(step)
        for name, param in model.named_parameters():
            grad = param.grad
            if grad is None or grad.dim() != 2 or not grad.is_floating_point():
                continue
            if self.pattern is not None and not self.pattern.search(name):
                continue
            g = grad.detach().float()
            device = self.device or g.device
            self.where = str(device)
            top = overlap.top_subspace(g, self.params, device)
            norm2 = float(g.double().square().sum())
            self.rows["subspaces"].append(overlap.subspace_row(index, name, "gradients", top, norm2))
            if name in self.previous:
                for side in sides(self.params):
                    pair = overlap.subspace_pair(self.previous[name], top, side)
                    self.history.setdefault((name, side), []).append((pair["overlap"], pair["lead_cos"]))
                    self.rows["pairs"].append({"a": index - 1, "b": index, "tensor": name, "of": "gradients",
                                               "side": side, "previous": True, "from_first": index == 1,
                                               "to_last": False, **pair})
                    if index > 1:
                        self.rows["pairs"].append({"a": 0, "b": index, "tensor": name, "of": "gradients",
                                                   "side": side, "previous": False, "from_first": True,
                                                   "to_last": False, **overlap.subspace_pair(self.first[name], top,
                                                                                             side)})
            self.first.setdefault(name, top)
            self.previous[name] = top
        self.seconds += time.perf_counter() - t0
        if self.flush_every and len(self.steps) % self.flush_every == 0:
            self.flush()
        return True

    def convergence(self) -> list[dict]:
        """Per matrix and side, a ``convergence`` row: the settled and Q-GaLore steps of the recordings so far."""
        at = self.steps[1:]
        return [overlap.convergence_row(name, "gradients", side, len(found) + 1, [o for o, _ in found],
                                        [c for _, c in found], at[-len(found):], self.params)
                for (name, side), found in self.history.items()]

    def flush(self) -> None:
        """Write everything recorded so far as one job (replacing this recorder's earlier write)."""
        if len(self.steps) < 1:
            return
        members = [Checkpoint(name=f"{self.run}/step{s}", path=Path(self.run) / f"step{s}", files=(), step=s,
                              run=self.run) for s in self.steps]
        tables = label_run(overlap.frames({**self.rows, "convergence": self.convergence()}), members)
        write_job(self.store, overlap_spec.NAME, self.fingerprint, tables,
                  params={"k": self.params.k, "energy": self.params.energy, "tol": self.params.tol, "every": self.every},
                  inputs={"checkpoint": self.run, "run": self.run, "recorder": True, "steps": self.steps},
                  schema_version=overlap_spec.SCHEMA_VERSION, context=ComputeContext(self.where), wall=self.seconds,
                  matrices=len(self.first))


class GradientSubspaceCallback(TrainerCallback):
    """HF ``Trainer`` callback: a ``GradientSubspaceRecorder`` fed after gradient clipping, before each step."""

    def __init__(self, store: str | Path | Store, run: str | None = None, every: int = 100,
                 params: overlap_spec.Params | None = None, tensors: str = "", flush_every: int = 10):
        self.options = {"store": store, "run": run, "every": every, "params": params, "tensors": tensors,
                        "flush_every": flush_every}
        self.recorder: GradientSubspaceRecorder | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        options = dict(self.options)
        options["run"] = options["run"] or Path(args.output_dir).name
        self.recorder = GradientSubspaceRecorder(**options)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.recorder is not None and model is not None:
            self.recorder.record(model, state.global_step + 1)  # the step this update completes

    def on_train_end(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self.recorder.flush()
