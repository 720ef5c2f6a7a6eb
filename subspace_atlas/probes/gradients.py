"""Gradient subspaces at saved checkpoints: each matrix's gradient on one fixed batch, reduced to its top-k.

The batch is cut from a text file the user gives (``--data``): its tokens in order, ``batch`` blocks of
``seq_len``, so every checkpoint of a run sees exactly the same tokens. The loss is the model's own
causal-LM loss (labels = inputs) or a masked-LM loss (15 % of positions masked, seeded). Only the
top-k triplets and ‖G‖_F of each gradient are kept; the full gradients live one checkpoint at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from subspace_atlas.checkpoints import Checkpoint
from subspace_atlas.context import ComputeContext
from subspace_atlas.errors import AtlasError
from subspace_atlas.naming import align

MASK_SHARE = 0.15


def model_folder(ckpt: Checkpoint) -> Path:
    """The HF folder holding the checkpoint's ``config.json`` (gradients need the architecture)."""
    folder = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    if not (folder / "config.json").is_file():
        raise AtlasError(f"{ckpt.path}: gradients need a Hugging Face model folder with config.json")
    return folder


def load_tokenizer(folder: Path):
    """The checkpoint's tokenizer, else its run's (``tokenizer/`` beside the checkpoints, or the run folder)."""
    from transformers import AutoTokenizer

    for place in (folder, folder.parent / "tokenizer", folder.parent):
        if (place / "tokenizer.json").is_file() or (place / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(place)
    raise AtlasError(f"{folder}: no tokenizer here, in ../tokenizer or in the run folder")


def loss_kind(folder: Path, asked: str) -> str:
    """``causal`` or ``masked``: as asked, or from the architecture in config.json."""
    if asked != "auto":
        return asked
    from transformers import AutoConfig

    names = AutoConfig.from_pretrained(folder).architectures or []
    if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        return "causal"
    if any(n.endswith("ForMaskedLM") for n in names):
        return "masked"
    raise AtlasError(f"{folder}: architecture {names or 'unknown'} has no language-model head to take a loss "
                     "through; give --loss causal or --loss masked")


def fixed_batch(tokenizer, path: str, batch: int, seq_len: int) -> torch.Tensor:
    """``batch`` consecutive blocks of ``seq_len`` tokens from the start of the text."""
    text = Path(path).expanduser().read_text(encoding="utf-8", errors="replace")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    need = batch * seq_len
    if len(ids) < need:
        raise AtlasError(f"--data {path}: {len(ids)} tokens, fewer than --batch {batch} × --seq-len {seq_len}")
    return torch.tensor(ids[:need]).view(batch, seq_len)


def gradients(model, input_ids: torch.Tensor, kind: str, mask_id: int | None = None,
              seed: int = 0) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the mean token loss on ``input_ids`` (one forward and backward)."""
    model.zero_grad(set_to_none=True)
    if kind == "causal":
        loss = model(input_ids=input_ids, labels=input_ids).loss
    else:
        if mask_id is None:
            raise AtlasError("a masked-LM loss needs a tokenizer with a mask token")
        gen = torch.Generator().manual_seed(seed)
        masked = torch.rand(input_ids.shape, generator=gen) < MASK_SHARE
        masked[:, 0] |= ~masked.any(1)  # at least one target per sequence
        labels = torch.where(masked, input_ids, torch.full_like(input_ids, -100))
        loss = model(input_ids=torch.where(masked, mask_id, input_ids), labels=labels).loss
    loss.backward()
    return {name: p.grad.detach() for name, p in model.named_parameters() if p.grad is not None}


def attach_gradients(items: Sequence, members: Sequence[Checkpoint], params, context: ComputeContext,
                     log: Callable[[str], None]) -> None:
    """Fill each run matrix's ``gradients``: per checkpoint, the top-k (and ‖G‖²_F) of its gradient on
    ``context.device``, when ``params.of`` asks for gradients (``overlap``'s ``prepare``)."""
    if "gradients" not in params.of:
        return
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from subspace_atlas.analysis.overlap import top_subspace
    from subspace_atlas.hf import quiet_hf

    device = context.torch_device()
    for item in items:
        item.gradients = [None] * len(members)
    for t, ckpt in enumerate(members):
        folder = model_folder(ckpt)
        kind = loss_kind(folder, params.loss)
        loader = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
        with quiet_hf():  # no load reports, and the text is cut to seq_len: no "sequence too long"
            tokenizer = load_tokenizer(folder)
            model = loader.from_pretrained(folder, dtype=torch.float32).to(device).train()
            batch = fixed_batch(tokenizer, params.data, params.batch, params.seq_len).to(device)
        grads = gradients(model, batch, kind, tokenizer.mask_token_id, params.seed)
        to_param = align(list(grads), [item.info.name for item in items])
        for item in items:
            name = to_param.get(item.info.name)
            if name is None:
                raise AtlasError(f"{folder}: the model has no parameter for {item.info.name!r} (or it got no "
                                 "gradient); restrict the run with --tensors")
            g = grads[name]
            if tuple(g.shape) != tuple(item.info.shape):
                raise AtlasError(f"{folder}: the gradient of {name!r} is {list(g.shape)}, the stored matrix "
                                 f"{list(item.info.shape)}")
            g = g.float()
            item.gradients[t] = (top_subspace(g, params, device), float(g.double().square().sum()))
        del model, grads
        log(f"gradients: {ckpt.name} ({kind} loss, {params.batch}×{params.seq_len} tokens)")
