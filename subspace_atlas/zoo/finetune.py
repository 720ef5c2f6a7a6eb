"""Fine-tune the pretrained MiniLM (+ a classification head) on one task, or on tasks in sequence.

Methods: ``full`` (every weight trains), ``lora`` (PEFT LoRA on every linear layer of the encoder,
``lora_alpha = 2r``) and ``rslora`` (the same with ``use_rslora=True``, scale ``alpha/sqrt(r)``).
Checkpoints land as the formats users have: ``checkpoint-<step>/`` is an HF model folder
(``model.safetensors`` + ``config.json``) for full fine-tuning or a PEFT adapter folder
(``adapter_model.safetensors`` + ``adapter_config.json``) for LoRA, each with the tokenizer and a
``trainer_state.json`` (global step, loss and held-out evaluation log). ``merged/`` is the final full
model (for LoRA, the adapter merged into the base). Every folder is written to a hidden temporary
name and renamed.

Sequential (continual) runs train the phases' tasks one after another on one model with one head
whose logits are the tasks' label sets side by side; each task is scored on its own slice of the
logits (task-incremental evaluation), so forgetting shows as a drop in the earlier task's accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from subspace_atlas.zoo import io
from subspace_atlas.zoo.tasks import Task

LORA_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
METHODS = ("full", "lora", "rslora")


@dataclass(frozen=True)
class Recipe:
    """How one fine-tuning run trains. ``steps`` and ``saves`` are per phase (task)."""

    method: str = "full"
    rank: int | None = None
    steps: int = 120
    saves: int = 8
    batch_size: int = 16
    lr: float = 5e-5
    warmup: float = 0.1
    weight_decay: float = 0.0
    lora_dropout: float = 0.0
    max_length: int = 24
    eval_batch_size: int = 64
    max_eval: int | None = 400  # examples scored per split at each checkpoint and at the end
    log_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if (self.method == "full") != (self.rank is None):
            raise ValueError("full fine-tuning has no rank; lora and rslora need one")
        if self.saves < 1 or self.steps < self.saves:
            raise ValueError("need 1 <= saves <= steps")


@lru_cache(maxsize=2)
def _tokenizer(base: str):
    from transformers import AutoTokenizer

    with io.quiet_hf():
        return AutoTokenizer.from_pretrained(base, local_files_only=True)


def _encode(tokenizer, texts: Sequence[str], max_length: int):
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _trim(ids, mask):
    """Cut a batch's padding columns beyond its longest sequence (same result, less compute)."""
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width]


def build_model(base: Path, tasks: Sequence[Task], recipe: Recipe):
    """The base MiniLM with a fresh head over all tasks' labels, wrapped in PEFT for LoRA methods."""
    import torch
    from transformers import AutoModelForSequenceClassification

    names = [f"{t.name}:{label}" if len(tasks) > 1 else label for t in tasks for label in t.labels]
    with io.quiet_hf():
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, dtype=torch.float32, local_files_only=True)
        if recipe.method != "full":
            from peft import LoraConfig, TaskType, get_peft_model

            config = LoraConfig(task_type=TaskType.SEQ_CLS, r=recipe.rank, lora_alpha=2 * recipe.rank,
                                lora_dropout=recipe.lora_dropout, target_modules=list(LORA_TARGETS),
                                use_rslora=recipe.method == "rslora")
            model = get_peft_model(model, config)
    return model


def evaluate(model, tokenizer, task: Task, offset: int, examples: Sequence[tuple[str, int]],
             recipe: Recipe) -> dict:
    """Accuracy and mean cross-entropy of ``task`` on its own slice of the head's logits."""
    import torch
    import torch.nn.functional as F

    examples = list(examples)[: recipe.max_eval] if recipe.max_eval else list(examples)
    if not examples:
        return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
    ids, mask = _encode(tokenizer, [t for t, _ in examples], recipe.max_length)
    labels = torch.tensor([y for _, y in examples])
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(examples), recipe.eval_batch_size):
            sl = slice(start, start + recipe.eval_batch_size)
            b_ids, b_mask = _trim(ids[sl], mask[sl])
            logits = model(input_ids=b_ids, attention_mask=b_mask).logits[:, offset:offset + task.num_labels]
            loss_sum += float(F.cross_entropy(logits, labels[sl], reduction="sum"))
            correct += int((logits.argmax(-1) == labels[sl]).sum())
    model.train(was_training)
    return {"accuracy": correct / len(examples), "loss": loss_sum / len(examples), "n": len(examples)}


def _adamw(params, recipe: Recipe):
    """AdamW, the fused kernel where this torch has one for CPU (about 2x faster over MiniLM's 23M weights)."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def save_steps(steps: int, saves: int) -> list[int]:
    """``saves`` distinct steps spread evenly over ``1..steps``, the last one always ``steps``."""
    return sorted({max(1, round(steps * (k + 1) / saves)) for k in range(saves)})


def finetune(run_dir: Path, tasks: Sequence[Task], recipe: Recipe, base: Path | None = None,
             progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train ``tasks`` in sequence (one task: an ordinary fine-tune), writing checkpoints into ``run_dir``.

    Returns the run's record: checkpoints, merged folder, final metrics per task, parameter counts.
    ``run_dir`` must not hold checkpoints from another attempt (the caller restarts runs cleanly).
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    base = Path(base or io.minilm_path())
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)  # the head's initialisation, LoRA's A matrices, dropout
    tokenizer = _tokenizer(str(base))
    model = build_model(base, tasks, recipe)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    offsets = [sum(t.num_labels for t in tasks[:k]) for k in range(len(tasks))]
    total_steps = recipe.steps * len(tasks)
    history: list[dict] = []
    checkpoints: list[dict] = []
    after_phase: list[dict] = []
    step = 0

    def eval_all(split: str) -> dict:
        return {t.name: evaluate(model, tokenizer, t, off, getattr(t, split), recipe)
                for t, off in zip(tasks, offsets)}

    for phase, (task, offset) in enumerate(zip(tasks, offsets)):
        ids, mask = _encode(tokenizer, [t for t, _ in task.train], recipe.max_length)
        labels = torch.tensor([y for _, y in task.train])
        generator = torch.Generator().manual_seed(recipe.seed * 1000 + phase)
        order = torch.cat([torch.randperm(len(labels), generator=generator)
                           for _ in range(math.ceil(recipe.steps * recipe.batch_size / len(labels)) + 1)])
        optimizer = _adamw(trainable, recipe)
        warm = max(1, round(recipe.warmup * recipe.steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warm, max(0.0, (recipe.steps - s) / max(1, recipe.steps - warm))))
        saves = set(save_steps(recipe.steps, recipe.saves))
        window: list[float] = []
        bar = tqdm(range(1, recipe.steps + 1), desc=f"{run_dir.name} [{task.name}]", unit="step",
                   disable=not progress, leave=False, mininterval=1.0)
        for local in bar:
            step += 1
            batch = order[(local - 1) * recipe.batch_size: local * recipe.batch_size]
            b_ids, b_mask = _trim(ids[batch], mask[batch])
            logits = model(input_ids=b_ids, attention_mask=b_mask).logits[:, offset:offset + task.num_labels]
            loss = F.cross_entropy(logits, labels[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            window.append(float(loss.detach()))
            if local % recipe.log_every == 0 or local == recipe.steps:
                history.append({"step": step, "epoch": round(local * recipe.batch_size / len(labels), 4),
                                "task": task.name, "loss": round(sum(window) / len(window), 6),
                                "learning_rate": schedule.get_last_lr()[0]})
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
                window = []
            if local in saves:
                scores = eval_all("heldout")
                history.append({"step": step, "task": task.name,
                                **{f"eval_{name}_{k}": round(v, 6) for name, s in scores.items()
                                   for k, v in s.items() if k != "n"}})
                state = {"global_step": step, "max_steps": total_steps, "phase": phase, "task": task.name,
                         "epoch": round(local * recipe.batch_size / len(labels), 4),
                         "train_batch_size": recipe.batch_size, "logging_steps": recipe.log_every,
                         "recipe": asdict(recipe), "log_history": list(history)}
                name = f"checkpoint-{step}"
                io.write_folder(run_dir / name, lambda tmp: _save(model, tokenizer, tmp, state))
                checkpoints.append({"step": step, "path": name, "task": task.name})
        bar.close()
        if len(tasks) > 1:
            after_phase.append({"phase": phase, "task": task.name, "step": step, "heldout": eval_all("heldout")})
        last = [h["loss"] for h in history if "loss" in h][-1]
        log(f"  {run_dir.name}: {task.name} trained to step {step}, train loss {last:.4f}")

    final = {"train": eval_all("train"), "heldout": eval_all("heldout")}
    merged = model.merge_and_unload() if recipe.method != "full" else model
    io.write_folder(run_dir / "merged", lambda tmp: _save(merged, tokenizer, tmp, None))
    metrics = {t.name: {"train_accuracy": final["train"][t.name]["accuracy"],
                        "train_loss": final["train"][t.name]["loss"],
                        "heldout_accuracy": final["heldout"][t.name]["accuracy"],
                        "heldout_loss": final["heldout"][t.name]["loss"],
                        "chance_accuracy": 1 / t.num_labels} for t in tasks}
    return {"checkpoints": checkpoints, "merged": "merged", "metrics": metrics, "after_phase": after_phase,
            "num_labels": sum(t.num_labels for t in tasks), "labels": list(merged.config.id2label.values()),
            "trainable_params": sum(p.numel() for p in trainable),
            "total_params": sum(p.numel() for p in merged.parameters())}


def _save(model, tokenizer, folder: Path, state: dict | None) -> None:
    with io.quiet_hf():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    if state is not None:
        io.write_json(folder / "trainer_state.json", state)
