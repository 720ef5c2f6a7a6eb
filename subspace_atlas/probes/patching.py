"""Subspace activation patching, and the test that tells a real subspace from an interpretability illusion.

Patching along a subspace span(V) replaces the base activation's component there with the source's:
w' = w + P_V (u − w). On paired prompts (``probes/ioi.py``: base answers IO, source answers S) the
effect is measured by the logit difference LD = logit(IO) − logit(S) on the base, FLDD =
100·(1 − LD_patched / LD_base) (100 %: no preference left; above: flipped), and the interchange
accuracy (the share of base prompts that now prefer the source's answer).

Directions come from four methods fitted on training pairs: ``mean_diff`` (source mean − base mean),
``probe`` (logistic regression, scikit-learn), ``gradient`` (mean ∂LD/∂activation) and ``das``
(distributed alignment search: a unit vector trained so that patching along it gives the source's
answer, cross-entropy, Adam). Effects are measured on held-out pairs.

The illusion test (Makelov, Lange & Nanda): split the direction v against the row space R of what reads
the site downstream — W_out for an MLP's hidden units, chosen heads' W_Q for the residual stream —
into v_row (in R) and v_null (orthogonal to R, e.g. v_null·W_out = 0), patch each alone, and measure how
much base and source activations differ along each (a part nearly constant on the data yet effective
when patched is a dormant pathway). Verdict: ``faithful`` when v_row alone carries at least
``faithful_share`` of the full effect, ``illusory`` when it carries at most ``illusory_share`` (the effect
needs the causally disconnected part to switch on a dormant one), ``inconclusive`` otherwise or when
the full effect is below ``min_effect`` %.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from subspace_atlas.context import ComputeContext
from subspace_atlas.errors import AtlasError
from subspace_atlas.linalg import orthonormal
from subspace_atlas.probes.targets import Batch, Target
from subspace_atlas.specs.patching import NAME, PLANTED, SCHEMA_VERSION, Params


# ---------------------------------------------------------------- the pure parts


def patch(w: torch.Tensor, u: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w + P_V (u − w) for rows of activations; ``basis`` is d × r (orthonormalised here)."""
    q = orthonormal(basis).to(w.dtype)
    return w + ((u - w) @ q) @ q.T


def split(v: torch.Tensor, readers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v = v_row + v_null: its part in the readers' row space and the part they cannot see."""
    q = orthonormal(readers).to(v.dtype)
    row = q @ (q.T @ v)
    return row, v - row


def logit_diff(logits: torch.Tensor, io: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """logit(IO) − logit(S) per prompt."""
    return (logits.gather(1, io[:, None]) - logits.gather(1, s[:, None])).squeeze(1)


def fldd(ld_patched: float, ld_base: float) -> float:
    """100·(1 − LD_patched / LD_base): how much of the base's preference the patch removed, in %."""
    return 100.0 * (1.0 - ld_patched / ld_base) if ld_base else math.nan


def verdict(full: float, row: float, params: Params) -> str:
    """faithful / illusory / inconclusive from the full direction's effect and its row part's alone."""
    if not full >= params.min_effect:
        return "inconclusive"
    share = row / full
    if share >= params.faithful_share:
        return "faithful"
    if share <= params.illusory_share:
        return "illusory"
    return "inconclusive"


# ---------------------------------------------------------------- measuring


@dataclass
class Measured:
    """A batch with its site activations and clean last-token logits, taken once and reused by every patch."""

    batch: Batch
    w: torch.Tensor  # base activations (N, d)
    u: torch.Tensor  # source activations (N, d)
    clean: torch.Tensor  # the base prompts' unpatched logits (N, vocab)


def measure(target: Target, batches: list[Batch]) -> list[Measured]:
    """One unpatched pass over base and source prompts per batch."""
    with torch.no_grad():
        return [Measured(b, target.activations(b.base), target.activations(b.source), target.logits(b.base))
                for b in batches]


def effect(target: Target, measured: list[Measured], basis: torch.Tensor | None) -> dict[str, float]:
    """Patch the source's component in span(basis) (None: the whole activation) into each base prompt."""
    base_ld, patched_ld, flipped, count = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for m in measured:
            b = m.batch
            out = target.logits(b.base, m.u if basis is None else patch(m.w, m.u, basis))
            base_ld += float(logit_diff(m.clean, b.io, b.s).sum())
            diff = logit_diff(out, b.io, b.s)
            patched_ld += float(diff.sum())
            flipped += int((diff < 0).sum())
            count += len(b.io)
    base, patched = base_ld / count, patched_ld / count
    return {"logit_diff_base": base, "logit_diff": patched, "fldd": fldd(patched, base), "accuracy": flipped / count}


def variation(measured: list[Measured], direction: torch.Tensor) -> dict[str, float]:
    """How base and source activations vary along a unit direction: variance and standardised separation."""
    w = torch.cat([m.w for m in measured]).double()
    u = torch.cat([m.u for m in measured]).double()
    d = direction.double() / direction.double().norm()
    pw, pu = w @ d, u @ d
    spread = float(torch.cat([pw, pu]).var())
    total = float(torch.cat([w, u]).var(0).sum())
    paired = math.sqrt(float(((pu - pw) ** 2).mean()))  # how far a pair's source is from its base along d
    return {"variance_on_data": spread, "variance_share": spread / total if total > 0 else math.nan,
            "paired_difference": paired, "separation": paired / math.sqrt(spread) if spread > 0 else 0.0}


# ---------------------------------------------------------------- finding directions


def find_direction(target: Target, measured: list[Measured], params: Params,
                   log: Callable[[str], None] = lambda s: None) -> torch.Tensor:
    """A unit direction at the site by ``params.method``, fitted on the ``measured`` batches."""
    w = torch.cat([m.w for m in measured]).double()
    u = torch.cat([m.u for m in measured]).double()
    if params.method == "mean_diff":
        v = u.mean(0) - w.mean(0)
    elif params.method == "probe":
        from sklearn.linear_model import LogisticRegression

        x = torch.cat([w, u]).numpy()
        y = np.r_[np.zeros(len(w)), np.ones(len(u))]
        scale = x.std(0) + 1e-12
        fit = LogisticRegression(max_iter=2000, C=1.0).fit(x / scale, y)
        v = torch.from_numpy(fit.coef_[0] / scale)
    elif params.method == "gradient":
        v = torch.zeros(w.shape[1], dtype=torch.float64)
        for m in measured:
            act = m.w.clone().requires_grad_(True)
            logit_diff(target.logits(m.batch.base, act), m.batch.io, m.batch.s).sum().backward()
            v -= act.grad.double().sum(0)  # the way that lowers LD the fastest
    else:
        v = das(target, measured, params, log)
    if not bool(torch.isfinite(v).all()) or float(v.norm()) == 0:
        raise AtlasError(f"{params.method}: found no direction (the activations do not differ between base and source)")
    return (v / v.norm()).float()


def das(target: Target, measured: list[Measured], params: Params,
        log: Callable[[str], None] = lambda s: None) -> torch.Tensor:
    """Distributed alignment search for a 1-D subspace: a unit vector v trained so that patching along it makes
    the base give the source's answer (cross-entropy on the patched logits); Adam, linear decay to 0.1×."""
    gen = torch.Generator().manual_seed(params.seed)
    start = torch.randn(measured[0].w.shape[1], generator=gen)
    raw = torch.nn.Parameter(start / start.norm())  # unit length, so the learning rate means the same at any width
    opt = torch.optim.Adam([raw], lr=params.das_lr)
    rows = [(i, j) for i, m in enumerate(measured) for j in range(len(m.batch.io))]
    steps = params.das_epochs * max(1, math.ceil(len(rows) / params.das_batch))
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=steps)
    for epoch in range(params.das_epochs):
        order = torch.randperm(len(rows), generator=gen).tolist()
        total = 0.0
        for begin in range(0, len(order), params.das_batch):
            picked = [rows[k] for k in order[begin:begin + params.das_batch]]
            loss = 0.0
            for i in sorted({i for i, _ in picked}):
                js = torch.tensor([j for ii, j in picked if ii == i])
                m = measured[i]
                w, u = m.w[js], m.u[js]
                v = raw / raw.norm()
                new = w + ((u - w) @ v)[:, None] * v[None, :]
                out = target.logits(_rows(m.batch.base, js), new)
                loss = loss + torch.nn.functional.cross_entropy(out, m.batch.s[js], reduction="sum")
            loss = loss / len(picked)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(picked)
        if epoch in (0, params.das_epochs - 1):
            log(f"DAS epoch {epoch + 1}/{params.das_epochs}: patched cross-entropy {total / len(rows):.3f}")
    return (raw / raw.norm()).detach()


def _rows(batch: object, index: torch.Tensor) -> object:
    return batch[index] if isinstance(batch, torch.Tensor) else [batch[i] for i in index.tolist()]


# ---------------------------------------------------------------- the whole test


def illusion_test(target: Target, train: list[Batch], held_out: list[Batch], params: Params,
                  direction: torch.Tensor | None = None, log: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """Find (or take) a direction, split it against the site's readers, patch each part alone on held-out pairs.

    One row per component — ``activation`` (the whole activation, for reference), ``full``, ``row``, ``null`` —
    with FLDD, accuracy, logit differences, the component's norm in v, how it varies on the data, the verdict,
    and the model's clean accuracy on the held-out pairs (LD > 0, and the IO as the top token).
    """
    held = measure(target, held_out)
    v = direction if direction is not None else find_direction(target, measure(target, train), params, log)
    v = v / v.norm()
    readers = target.reader_basis().double()
    row, null = split(v.double(), readers)
    parts = {"full": v.double(), "row": row, "null": null}
    rows = [{"component": "activation", **effect(target, held, None), "norm": math.nan,
             "variance_on_data": math.nan, "variance_share": math.nan, "paired_difference": math.nan,
             "separation": math.nan}]
    for name, part in parts.items():
        norm = float(part.norm())
        if norm < 1e-9:  # nothing of v in this part: it cannot move anything
            base = effect(target, held, torch.zeros(v.numel(), 0, dtype=torch.float64))
            rows.append({"component": name, **base, "norm": norm, "variance_on_data": 0.0, "variance_share": 0.0,
                         "paired_difference": 0.0, "separation": 0.0})
            continue
        rows.append({"component": name, **effect(target, held, part[:, None]), "norm": norm,
                     **variation(held, part)})
    frame = pd.DataFrame(rows)
    full = float(frame.loc[frame.component == "full", "fldd"].iloc[0])
    row_effect = float(frame.loc[frame.component == "row", "fldd"].iloc[0])
    frame["verdict"] = verdict(full, row_effect, params)
    frame["row_share"] = row_effect / full if full else math.nan
    frame["min_effect"] = params.min_effect
    frame["reader_rank"] = readers.shape[1]
    frame["site_dim"] = v.numel()
    frame["clean_accuracy"] = float(torch.cat([logit_diff(m.clean, m.batch.io, m.batch.s) > 0 for m in held])
                                    .float().mean())
    frame["clean_top1"] = float(torch.cat([m.clean.argmax(-1) == m.batch.io for m in held]).float().mean())
    return frame


# ---------------------------------------------------------------- transformer models (TransformerLens 4)


class BridgeTarget:
    """A site of a TransformerLens ``TransformerBridge``: ``blocks.L.mlp.hook_post`` or ``blocks.L.hook_resid_post``
    (``hook`` names any other hook point of the same shape; its readers are still the site's)."""

    def __init__(self, bridge, site: str, layer: int, readers: list[tuple[int, int]] | None = None,
                 answer_ids: torch.Tensor | None = None, hook: str | None = None):
        n_layers = bridge.cfg.n_layers
        if not 0 <= layer < n_layers:
            raise AtlasError(f"--layer {layer}: the model has layers 0–{n_layers - 1}")
        self.bridge, self.site, self.layer = bridge, site, layer
        self.hook = hook or (f"blocks.{layer}.mlp.hook_post" if site == "mlp_hidden"
                             else f"blocks.{layer}.hook_resid_post")
        self.readers = readers or []
        self.answer_ids = answer_ids

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        found = {}

        def grab(act, hook):
            found["act"] = act[:, -1].detach().clone()
            return act

        with torch.no_grad():
            self.bridge.run_with_hooks(tokens, fwd_hooks=[(self.hook, grab)])
        return found["act"]

    def logits(self, tokens: torch.Tensor, replace: torch.Tensor | None = None) -> torch.Tensor:
        if replace is None:
            return self.bridge(tokens)[:, -1]

        def swap(act, hook):
            act = act.clone()
            act[:, -1] = replace.to(act.dtype)
            return act

        return self.bridge.run_with_hooks(tokens, fwd_hooks=[(self.hook, swap)])[:, -1]

    def reader_basis(self) -> torch.Tensor:
        if self.site == "mlp_hidden":
            return self.bridge.blocks[self.layer].mlp.W_out.detach().double()  # d_mlp × d_model
        if self.readers:
            return torch.cat([self.bridge.blocks[l].attn.W_Q[h].detach().double() for l, h in self.readers], 1)
        return self.bridge.W_U.detach().double()[:, self.answer_ids]  # the last layer: the answers' unembedding


def load_bridge(model, device: str = "cpu"):
    """A local HF causal LM folder (a path or an opened ``Checkpoint``) booted offline in TransformerLens 4;
    returns the bridge, its tokenizer and the checkpoint."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    from subspace_atlas.checkpoints import Checkpoint, open_one
    from subspace_atlas.probes.gradients import load_tokenizer, model_folder
    from subspace_atlas.hf import quiet_hf

    ckpt = model if isinstance(model, Checkpoint) else open_one(model, flag="--model")
    folder = model_folder(ckpt)
    with quiet_hf():
        tokenizer = load_tokenizer(folder)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf_model, tokenizer=tokenizer,
                                                     device=device)
    for param in bridge.parameters():
        param.requires_grad_(False)
    return bridge, tokenizer, ckpt


def ioi_batches(tokenizer, pairs: list, device: str = "cpu") -> list[Batch]:
    """Tokenized IOI pairs grouped by template (one length per group), names kept only if one token each."""
    def single(name: str) -> int | None:
        ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    out = []
    for t in sorted({p.template for p in pairs}):
        group = [p for p in pairs if p.template == t and single(p.io) is not None and single(p.s) is not None]
        if not group:
            continue
        base = [tokenizer(p.base, add_special_tokens=False)["input_ids"] for p in group]
        source = [tokenizer(p.source, add_special_tokens=False)["input_ids"] for p in group]
        if len({len(x) for x in base + source}) != 1:
            raise AtlasError("the IOI prompts of one template tokenize to different lengths; are the names one "
                             "token each in this tokenizer?")
        out.append(Batch(torch.tensor(base, device=device), torch.tensor(source, device=device),
                         torch.tensor([single(p.io) for p in group], device=device),
                         torch.tensor([single(p.s) for p in group], device=device)))
    if not out:
        raise AtlasError("none of the IOI names is a single token in this model's tokenizer")
    return out


def name_mover_heads(bridge, batches: list[Batch], layer: int, top: int = 3) -> list[tuple[int, int]]:
    """The ``top`` heads after ``layer`` attending most from the last token to the IO (the name movers)."""
    scores = []
    for later in range(layer + 1, bridge.cfg.n_layers):
        hook = f"blocks.{later}.attn.hook_pattern"
        total, count = torch.zeros(bridge.cfg.n_heads), 0
        for b in batches:
            found = {}

            def grab(pattern, hook, found=found):
                found["p"] = pattern.detach()
                return pattern

            with torch.no_grad():
                bridge.run_with_hooks(b.base, fwd_hooks=[(hook, grab)])
            io_pos = (b.base == b.io[:, None]).float().argmax(1)  # the IO's first mention
            last = found["p"][:, :, -1, :]  # N × heads × keys
            total += last.gather(2, io_pos[:, None, None].expand(-1, last.shape[1], 1)).squeeze(2).sum(0)
            count += len(b.io)
        scores += [(float(total[h] / count), later, h) for h in range(bridge.cfg.n_heads)]
    return [(l, h) for _, l, h in sorted(scores, reverse=True)[:top]]


def parse_heads(specs: tuple) -> list[tuple[int, int]]:
    """``("3.1", "3.2")`` → [(3, 1), (3, 2)]."""
    heads = []
    for spec in specs:
        layer, dot, head = str(spec).partition(".")
        if not dot or not layer.isdigit() or not head.isdigit():
            raise AtlasError(f"--readers {spec!r}: expected LAYER.HEAD, e.g. 3.1")
        heads.append((int(layer), int(head)))
    return heads


def run_ioi(model, params: Params, device: str = "cpu",
            log: Callable[[str], None] = lambda s: None) -> tuple[pd.DataFrame, object]:
    """The illusion test on a local HF causal LM (a path or a ``Checkpoint``) and the IOI task; returns the
    effects table and the checkpoint."""
    from subspace_atlas.probes import ioi

    if params.method in PLANTED:
        raise AtlasError(f"--method {params.method}: planted directions exist only in --task toy")
    bridge, tokenizer, ckpt = load_bridge(model, device)
    train = ioi_batches(tokenizer, ioi.pairs(params.train_pairs, seed=params.seed), device)
    held = ioi_batches(tokenizer, ioi.pairs(params.eval_pairs, seed=params.seed + 1), device)
    readers = parse_heads(params.readers)
    for l, h in readers:
        if not (params.layer < l < bridge.cfg.n_layers and 0 <= h < bridge.cfg.n_heads):
            raise AtlasError(f"--readers {l}.{h}: a reader must be a head of a later layer "
                             f"({params.layer + 1}–{bridge.cfg.n_layers - 1}, heads 0–{bridge.cfg.n_heads - 1})")
    if params.site == "resid_post" and not readers and params.layer < bridge.cfg.n_layers - 1:
        readers = name_mover_heads(bridge, held, params.layer)
    answers = torch.unique(torch.cat([torch.cat([b.io, b.s]) for b in held]))
    target = BridgeTarget(bridge, params.site, params.layer, readers, answers)
    frame = illusion_test(target, train, held, params, log=log)
    readers_label = " ".join(f"{l}.{h}" for l, h in readers) if params.site == "resid_post" else "W_out"
    return _labelled(frame, ckpt.name, str(ckpt.path), "ioi", params, readers_label, held), ckpt


def run_toy(params: Params, log: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """The illusion test on the distilled toy (``toy_illusion``): a found or a planted direction."""
    from subspace_atlas.probes import toy_illusion as toy

    planted = {"planted_faithful": toy.FAITHFUL, "planted_illusory": toy.ILLUSORY}.get(params.method)
    data = toy.batches()
    frame = illusion_test(toy.ToyTarget(), data, data, params, direction=planted, log=log)
    return _labelled(frame, "toy-illusion", "", "toy", replace(params, site="mlp_hidden", layer=0), "W_out", data)


def _labelled(frame: pd.DataFrame, model: str, path: str, task: str, params: Params, readers: str,
              held: list[Batch]) -> pd.DataFrame:
    """The effects table with what it is of in front: model, task, site, layer, method, readers, pairs."""
    labels = {"model": model, "model_path": path, "task": task, "site": params.site, "layer": params.layer,
              "method": params.method, "readers": readers, "eval_pairs": sum(len(b.io) for b in held)}
    for k, (column, value) in enumerate(labels.items()):
        frame.insert(k, column, value)
    return frame


def run_jobs(store, task: str, model: str | None, sites, layers, methods, fixed: dict,
             context: ComputeContext = ComputeContext(), force: bool = False,
             log: Callable[[str], None] | None = None, name: str | None = None) -> tuple[int, int]:
    """One stored job per (site, layer, method), keyed by the model's content, the task and the params;
    what the store holds is skipped. ``name`` labels the model (default: its folder's name). The IOI model
    runs on ``context.device``; the toy always on the CPU, and each job's provenance says which.
    Returns (computed, skipped)."""
    import itertools
    import sys
    import time

    from subspace_atlas.checkpoints import open_one
    from subspace_atlas.store import fingerprint
    from subspace_atlas.writing import write_job

    log = log or (lambda s: print(s, file=sys.stderr))
    ckpt = open_one(model, name, "--model") if task == "ioi" else None
    ran = context if ckpt is not None else replace(context, device="cpu")
    inputs = {"task": task} | ({"model": ckpt.identity(), "name": ckpt.name} if ckpt else {})
    computed = skipped = 0
    for site, layer, method in itertools.product(sites, layers, methods):
        try:
            params = Params(site=site, layer=layer, method=method, **fixed)
        except ValueError as err:
            raise AtlasError(f"patch: {err}") from err
        fp = fingerprint(NAME, params, inputs, SCHEMA_VERSION)
        if store.has(NAME, fp) and not force:
            skipped += 1
            continue
        t0 = time.perf_counter()
        frame = run_toy(params, log) if ckpt is None else run_ioi(ckpt, params, context.device, log)[0]
        wall = time.perf_counter() - t0
        write_job(store, NAME, fp, {"effects": frame}, params=params, context=ran, wall=wall,
                  inputs={"checkpoint": ckpt.name if ckpt else "toy-illusion", "path": str(ckpt.path) if ckpt else "",
                          "task": task},
                  schema_version=SCHEMA_VERSION)
        fx = frame.set_index("component")["fldd"]
        log(f"patch {task} {site} layer {layer} {method}: full {fx['full']:.1f} % FLDD, row part {fx['row']:.1f} %, "
            f"null part {fx['null']:.1f} % → {frame['verdict'].iloc[0]} ({wall:.1f} s)")
        computed += 1
    return computed, skipped
