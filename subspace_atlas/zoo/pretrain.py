"""Pretrain a small GPT-2 from scratch on the Python standard library's own source.

A byte-level BPE tokenizer is trained locally with ``tokenizers`` on the training files, saved as
``tokenizer.json`` plus what ``GPT2TokenizerFast.from_pretrained(folder)`` needs. Files are split into
train and held-out sets by a seeded hash of their path, so the held-out loss is measured on code the
model never saw. Every ``checkpoint-<step>/`` is an HF folder (``model.safetensors``, ``config.json``,
the tokenizer, ``trainer_state.json`` with the train-loss and held-out-loss log), written atomically.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from subspace_atlas.zoo import io
from subspace_atlas.zoo.tasks import is_heldout_file, stdlib_dir, stdlib_files

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class PretrainRecipe:
    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    block_size: int = 128
    batch_size: int = 16
    steps: int = 500
    saves: int = 25
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.1
    train_chars: int = 4_000_000  # text the model and the tokenizer see (a seeded sample of train files)
    heldout_chars: int = 300_000
    eval_blocks: int = 48  # held-out (and train) blocks scored at each checkpoint
    heldout_fraction: float = 0.1
    log_every: int = 10
    seed: int = 0


def corpus(recipe: PretrainRecipe) -> tuple[list[str], list[str], list[str]]:
    """(train texts, held-out texts, held-out relative paths): files in a seeded order up to the char budgets."""
    files = list(stdlib_files())
    random.Random(f"pretrain:{recipe.seed}").shuffle(files)
    budgets = {False: recipe.train_chars, True: recipe.heldout_chars}
    texts: dict[bool, list[str]] = {False: [], True: []}
    used = {False: 0, True: 0}
    held_names = []
    for path in files:
        held = is_heldout_file(path, recipe.seed, recipe.heldout_fraction)
        if used[held] >= budgets[held]:
            if all(used[h] >= budgets[h] for h in budgets):
                break
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        text = text[: budgets[held] - used[held]]
        texts[held].append(text)
        used[held] += len(text)
        if held:
            held_names.append(path.relative_to(stdlib_dir()).as_posix())
    return texts[False], texts[True], held_names


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2's scheme) trained on ``texts``, wrapped as a ``GPT2TokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    with io.quiet_hf():
        return GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                 model_max_length=1024)


def blocks(tokenizer, texts: list[str], block_size: int):
    """Every text's tokens followed by EOS, concatenated and cut into ``[n, block_size]`` rows."""
    import torch

    ids: list[int] = []
    with io.quiet_hf():  # long files exceed model_max_length: fine, nothing is fed whole
        for row in tokenizer(texts)["input_ids"]:
            ids += row + [tokenizer.eos_token_id]
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


def mean_loss(model, data, batch_size: int) -> float:
    import torch

    was = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data[start:start + batch_size]
            total += float(model(input_ids=batch, labels=batch).loss) * len(batch)
    model.train(was)
    return total / max(1, len(data))


def pretrain(run_dir: Path, recipe: PretrainRecipe, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Train the tokenizer and the model; return the run's record (checkpoints, final losses, sizes)."""
    import torch
    from tqdm import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    from subspace_atlas.zoo.finetune import save_steps

    run_dir.mkdir(parents=True, exist_ok=True)
    train_texts, held_texts, held_names = corpus(recipe)
    tokenizer = train_tokenizer(train_texts, recipe.vocab_size)
    io.write_folder(run_dir / "tokenizer", lambda tmp: _save_tokenizer(tokenizer, tmp))
    train = blocks(tokenizer, train_texts, recipe.block_size)
    heldout = blocks(tokenizer, held_texts, recipe.block_size)
    log(f"  {run_dir.name}: tokenizer {len(tokenizer)} tokens; {len(train)} train / {len(heldout)} held-out "
        f"blocks of {recipe.block_size} from {len(train_texts)} / {len(held_texts)} files")
    eval_held = heldout[: recipe.eval_blocks]
    eval_train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(recipe.seed))
                       [: recipe.eval_blocks]]

    torch.manual_seed(recipe.seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=recipe.block_size, n_embd=recipe.n_embd,
                        n_layer=recipe.n_layer, n_head=recipe.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with io.quiet_hf():
        model = GPT2LMHeadModel(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95))

    def lr_factor(s: int) -> float:  # linear warmup, cosine decay to 10%
        if s < recipe.warmup:
            return (s + 1) / recipe.warmup
        frac = (s - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, frac)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    order = torch.cat([torch.randperm(len(train), generator=generator)
                       for _ in range(math.ceil(recipe.steps * recipe.batch_size / len(train)) + 1)])
    saves = set(save_steps(recipe.steps, recipe.saves))
    history = [{"step": 0, "eval_loss": round(mean_loss(model, eval_held, 32), 6)}]
    checkpoints, window = [], []
    bar = tqdm(range(1, recipe.steps + 1), desc=run_dir.name, unit="step", disable=not progress, leave=False,
               mininterval=1.0)
    for step in bar:
        batch = train[order[(step - 1) * recipe.batch_size: step * recipe.batch_size]]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(float(loss.detach()))
        if step % recipe.log_every == 0 or step == recipe.steps:
            history.append({"step": step, "epoch": round(step * recipe.batch_size / len(train), 4),
                            "loss": round(sum(window) / len(window), 6), "learning_rate": schedule.get_last_lr()[0]})
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
            window = []
        if step in saves:
            history.append({"step": step, "eval_loss": round(mean_loss(model, eval_held, 32), 6)})
            state = {"global_step": step, "max_steps": recipe.steps,
                     "epoch": round(step * recipe.batch_size / len(train), 4),
                     "train_batch_size": recipe.batch_size, "logging_steps": recipe.log_every,
                     "recipe": asdict(recipe), "heldout_files": len(held_names), "log_history": list(history)}
            name = f"checkpoint-{step}"
            io.write_folder(run_dir / name, lambda tmp: _save(model, tokenizer, tmp, state))
            checkpoints.append({"step": step, "path": name})
    bar.close()
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    metrics = {"train_loss": mean_loss(model, eval_train, 32), "heldout_loss": eval_losses[-1],
               "initial_heldout_loss": eval_losses[0],
               "heldout_perplexity": math.exp(eval_losses[-1]),
               "heldout_loss_curve": [{"step": h["step"], "loss": h["eval_loss"]} for h in history
                                      if "eval_loss" in h]}
    log(f"  {run_dir.name}: held-out loss {eval_losses[0]:.3f} → {eval_losses[-1]:.3f}")
    return {"checkpoints": checkpoints, "merged": None, "metrics": metrics, "heldout_files": held_names,
            "vocab_size": len(tokenizer), "train_tokens_seen": recipe.steps * recipe.batch_size * recipe.block_size,
            "total_params": sum(p.numel() for p in model.parameters()), "tokenizer": "tokenizer"}


def _save_tokenizer(tokenizer, folder: Path) -> None:
    with io.quiet_hf():
        tokenizer.save_pretrained(folder)


def _save(model, tokenizer, folder: Path, state: dict) -> None:
    with io.quiet_hf():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    io.write_json(folder / "trainer_state.json", state)
