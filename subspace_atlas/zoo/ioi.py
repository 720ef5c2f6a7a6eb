"""The IOI model: a small GPT-2 (HF architecture) trained from scratch here until it solves the IOI task.

Word-level tokenizer over the task's vocabulary (every name one token), built and saved locally. The
loss is the cross-entropy of the answer token only (the indirect object after "… gave a ball to"), on
prompts from the training templates with random name pairs, both orders (ABB and BAB). Held-out
accuracy is measured on fresh name pairs in the training templates and on two templates never trained
on. The activation-patching probes (``probes/patching.py``) run on the saved folder through
TransformerLens's ``TransformerBridge``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from subspace_atlas.probes import ioi
from subspace_atlas.zoo.io import write_folder, write_json

SPECIALS = ("[UNK]", "[PAD]", "[EOS]")


@dataclass(frozen=True)
class IoiRecipe:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    steps: int = 1500
    batch_size: int = 64  # pairs drawn per step; those of the first pair's template are trained on
    lr: float = 1e-3
    warmup: int = 100
    eval_pairs: int = 400
    saves: int = 3
    log_every: int = 250
    seed: int = 0


def build_tokenizer():
    """A word-level fast tokenizer over the task's words (whitespace-split), as transformers loads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + tuple(ioi.vocabulary()))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="[EOS]", bos_token="[EOS]")


def encode(tokenizer, prompts: list[str], answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of prompts (all of one template share a length; batches are grouped so) and answer ids."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    padded = torch.tensor([[pad] * (width - len(x)) + x for x in ids])  # left-padded: the answer slot is last
    return padded, torch.tensor([tokenizer.convert_tokens_to_ids(a) for a in answers])


def evaluate(model, tokenizer, pairs: list[ioi.Pair]) -> dict[str, float]:
    """Accuracy (the IO is the top token) and mean logit difference logit(IO) − logit(S), per template group."""
    model.eval()
    hits, diffs = [], []
    with torch.no_grad():
        for t in sorted({p.template for p in pairs}):
            group = [p for p in pairs if p.template == t]
            ids, io = encode(tokenizer, [p.base for p in group], [p.io for p in group])
            s = torch.tensor([tokenizer.convert_tokens_to_ids(p.s) for p in group])
            logits = model(input_ids=ids).logits[:, -1]
            hits += (logits.argmax(-1) == io).tolist()
            diffs += (logits.gather(1, io[:, None]) - logits.gather(1, s[:, None])).squeeze(1).tolist()
    model.train()
    return {"accuracy": sum(hits) / len(hits), "logit_diff": sum(diffs) / len(diffs)}


def train(run_dir: Path, recipe: IoiRecipe, progress: bool = True,
          log: Callable[[str], None] = lambda s: None) -> dict:
    """Train the IOI model; save ``checkpoint-<step>`` folders (model + tokenizer); return the run's record."""
    from tqdm import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer()
    longest = max(len(t.split()) for t in ioi.TEMPLATES) + 2
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=longest, n_embd=recipe.n_embd,
                        n_layer=recipe.n_layer, n_head=recipe.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    train_t = ioi.train_templates()
    fresh = ioi.pairs(recipe.eval_pairs, seed=recipe.seed + 10_000, templates=train_t)
    unseen = ioi.pairs(recipe.eval_pairs, seed=recipe.seed + 20_000, templates=ioi.heldout_templates())
    initial = {"train_templates": evaluate(model, tokenizer, fresh),
               "heldout_templates": evaluate(model, tokenizer, unseen)}
    save_at = {round(recipe.steps * (i + 1) / recipe.saves) for i in range(recipe.saves)}
    checkpoints, curve = [], []
    run_dir.mkdir(parents=True, exist_ok=True)
    for step in tqdm(range(1, recipe.steps + 1), disable=not progress, leave=False, desc="ioi"):
        batch = ioi.pairs(recipe.batch_size, seed=recipe.seed * 1_000_003 + step, templates=train_t)
        template = batch[0].template  # one template per batch (equal lengths, no padding): ~1/6 of the pairs drawn
        batch = [p for p in batch if p.template == template] or batch[:1]
        prompts = [p.base for p in batch] + [p.source for p in batch]
        answers = [p.io for p in batch] + [p.s for p in batch]
        ids, target = encode(tokenizer, prompts, answers)
        lr = recipe.lr * min(1.0, step / recipe.warmup) * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, -1], target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % recipe.log_every == 0 or step == recipe.steps:
            point = {"step": step, "loss": loss.item(), **evaluate(model, tokenizer, fresh[:100])}
            curve.append(point)
            log(f"ioi step {step}: loss {point['loss']:.3f}, accuracy {point['accuracy']:.3f}")
        if step in save_at:
            name = f"checkpoint-{step}"

            def fill(folder: Path, step=step) -> None:
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
                write_json(folder / "trainer_state.json", {"global_step": step, "log_history": list(curve)})

            write_folder(run_dir / name, fill)
            checkpoints.append({"step": step, "path": name})
    final = {"train_templates": evaluate(model, tokenizer, fresh),
             "heldout_templates": evaluate(model, tokenizer, unseen)}
    return {"checkpoints": checkpoints, "merged": None,
            "metrics": {"initial": initial, "final": final, "curve": curve}}
