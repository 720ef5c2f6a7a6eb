"""RL and SFT fine-tunes of the zoo's pretrained GPT-2 on a verifiable task, stored in bf16.

Task: complete a line of Python. A prompt is the first four tokens of a code line from the standard
library; the model writes up to ``max_new`` tokens, to the end of the line. The reward is verifiable
and binary: 1 when the finished line is valid Python syntax (``ast.parse`` accepts it alone, or as the
header of a block, or inside a function, a loop or a ``try``), else 0. Held-out prompts come from
held-out files (the pretraining split), scored greedily.

* ``grpo``: group-relative policy gradient (GRPO's advantage: each sample's reward minus its group's
  mean, over the group's std), on-policy, one update per batch, so no ratio clipping is needed; no
  KL penalty (as Dr. GRPO and DAPO drop it). ``rl-grpo-seed0`` and ``-seed1`` differ only in seed.
* ``sft``: cross-entropy on the real continuations of the same prompts, same optimiser and steps.

Weights train in float32 (a master copy, as mixed-precision trainers keep) with AdamW without weight
decay; every checkpoint is stored in bfloat16, as RL checkpoints of large models are, and the final
model is also stored in float32 (``final-fp32/``) so the sparsity bf16 storage shows can be compared
with the float32 update ("The Path Not Taken"). The base for both is ``gpt2-stdlib-bf16`` (the
pretrained GPT-2 cast to bfloat16) and the pretraining run's last checkpoint.
"""

from __future__ import annotations

import ast
import copy
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from subspace_atlas.zoo import io
from subspace_atlas.zoo.tasks import code_and_prose_lines, is_heldout_file, stdlib_files

PROMPT_TOKENS = 4
_WRAPS = ("{}", "{}\n    pass", "if 1:\n    pass\n{}\n    pass", "try:\n    pass\n{}\n    pass",
          "def f():\n    {}", "for _ in ():\n    {}", "def f():\n    for _ in ():\n        {}")


@dataclass(frozen=True)
class RlRecipe:
    method: str  # grpo | sft
    steps: int = 120
    prompts_per_step: int = 8
    group: int = 8  # samples per prompt (GRPO)
    max_new: int = 12
    lr: float = 1e-5  # the same for RL and SFT, in the range RL fine-tunes of LLMs use
    saves: int = 8
    temperature: float = 1.0
    train_prompts: int = 4000
    eval_prompts: int = 256
    seed: int = 0


def is_valid_line(line: str) -> bool:
    """Whether one line of code is valid Python on its own or in an obvious enclosing block."""
    text = line.strip()
    if not text:
        return False
    for wrap in _WRAPS:
        try:
            ast.parse(wrap.format(text))
            return True
        except (SyntaxError, ValueError, RecursionError):
            continue
    return False


def prompts(tokenizer, recipe: RlRecipe, pretrain_seed: int) -> tuple[list[tuple], list[tuple]]:
    """(train, held-out) lists of (prompt ids, continuation ids to the end of the line)."""
    split: dict[bool, list[tuple]] = {False: [], True: []}
    files = list(stdlib_files())
    random.Random(f"rl:{pretrain_seed}").shuffle(files)  # the same prompts for every run and seed
    wanted = {False: recipe.train_prompts, True: recipe.eval_prompts}
    for path in files:
        held = is_heldout_file(path, pretrain_seed, 0.1)
        if len(split[held]) >= wanted[held]:
            if all(len(split[h]) >= wanted[h] for h in wanted):
                break
            continue
        try:
            code, _ = code_and_prose_lines(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        for line in code[:20]:
            ids = tokenizer(line + "\n")["input_ids"]
            if len(ids) >= PROMPT_TOKENS + 2:
                split[held].append((ids[:PROMPT_TOKENS], ids[PROMPT_TOKENS:PROMPT_TOKENS + recipe.max_new]))
    return split[False][: recipe.train_prompts], split[True][: recipe.eval_prompts]


def _cut(tokenizer, ids: list[int]) -> tuple[list[int], str]:
    """Completion tokens up to and including the first one holding a newline (or EOS), and the text before it."""
    kept, text = [], ""
    for t in ids:
        kept.append(t)
        if t == tokenizer.eos_token_id:
            break
        piece = tokenizer.decode([t])
        if "\n" in piece:
            text += piece.split("\n", 1)[0]
            break
        text += piece
    return kept, text


def _rewards(tokenizer, prompt_ids, samples) -> tuple[list[float], list[list[int]]]:
    prompt_text = tokenizer.decode(prompt_ids)
    rewards, cut = [], []
    for ids in samples:
        kept, text = _cut(tokenizer, ids)
        cut.append(kept)
        rewards.append(1.0 if is_valid_line(prompt_text + text) else 0.0)
    return rewards, cut


def _sequence_logprobs(model, prompt_ids: list[int], completions: list[list[int]], pad: int):
    """Mean log-probability of each completion given the prompt (one batch)."""
    import torch

    longest = max(len(c) for c in completions)
    rows = [prompt_ids + c + [pad] * (longest - len(c)) for c in completions]
    mask = torch.tensor([[1.0] * len(c) + [0.0] * (longest - len(c)) for c in completions])
    ids = torch.tensor(rows)
    logits = model(input_ids=ids).logits[:, len(prompt_ids) - 1:-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, len(prompt_ids):, None]).squeeze(-1)
    return (logp * mask).sum(1) / mask.sum(1).clamp_min(1)


def evaluate(model, tokenizer, items: list[tuple], max_new: int) -> float:
    """Share of held-out prompts whose greedy completion makes a valid line."""
    import torch

    model.eval()
    good = 0
    with torch.no_grad():
        batch = torch.tensor([p for p, _ in items])
        out = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), do_sample=False,
                             max_new_tokens=max_new, pad_token_id=tokenizer.eos_token_id)
    for (prompt_ids, _), row in zip(items, out[:, batch.shape[1]:].tolist()):
        _, text = _cut(tokenizer, row)
        good += is_valid_line(tokenizer.decode(prompt_ids) + text)
    model.train()
    return good / max(1, len(items))


def train(run_dir: Path, base: Path, recipe: RlRecipe, pretrain_seed: int, progress: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``base`` (an HF GPT-2 folder) by GRPO or SFT; bf16 checkpoints plus a float32 final."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from subspace_atlas.zoo.finetune import save_steps

    torch.manual_seed(recipe.seed)
    with io.quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    model.train()
    train_items, heldout = prompts(tokenizer, recipe, pretrain_seed)
    rng = random.Random(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.99), weight_decay=0.0)
    saves = set(save_steps(recipe.steps, recipe.saves))
    initial = evaluate(model, tokenizer, heldout, recipe.max_new)
    history: list[dict] = [{"step": 0, "heldout_reward": initial}]
    checkpoints = []
    bar = tqdm(range(1, recipe.steps + 1), desc=run_dir.name, unit="step", disable=not progress, leave=False)
    for step in bar:
        batch = rng.sample(train_items, recipe.prompts_per_step)
        loss, rewards = _grpo_loss(model, tokenizer, batch, recipe) if recipe.method == "grpo" else \
            _sft_loss(model, tokenizer, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append({"step": step, "loss": round(float(loss), 6),
                        **({"reward": round(sum(rewards) / len(rewards), 4)} if rewards else {})})
        if step in saves:
            score = evaluate(model, tokenizer, heldout, recipe.max_new)
            history.append({"step": step, "heldout_reward": score})
            bar.set_postfix(heldout=f"{score:.3f}")
            state = {"global_step": step, "max_steps": recipe.steps, "recipe": asdict(recipe),
                     "log_history": list(history)}
            name = f"checkpoint-{step}"
            io.write_folder(run_dir / name, lambda tmp: _save(model, tokenizer, tmp, state, torch.bfloat16))
            checkpoints.append({"step": step, "path": name})
    bar.close()
    # No "global_step" in its state: the float32 final is not one more checkpoint of the bf16 run.
    io.write_folder(run_dir / "final-fp32", lambda tmp: _save(model, tokenizer, tmp, {"steps_trained": recipe.steps},
                                                               torch.float32))
    final = [h["heldout_reward"] for h in history if "heldout_reward" in h][-1]
    train_rewards = [h["reward"] for h in history if "reward" in h]
    metrics = {"initial_heldout_reward": initial, "heldout_reward": final,
               "train_reward_last20": sum(train_rewards[-20:]) / len(train_rewards[-20:]) if train_rewards else None,
               "heldout_reward_curve": [{"step": h["step"], "reward": h["heldout_reward"]} for h in history
                                        if "heldout_reward" in h]}
    log(f"  {run_dir.name}: held-out valid-line rate {initial:.3f} → {final:.3f}")
    return {"checkpoints": checkpoints, "merged": None, "final_fp32": "final-fp32", "metrics": metrics,
            "train_prompts": len(train_items), "heldout_prompts": len(heldout)}


def _grpo_loss(model, tokenizer, batch, recipe: RlRecipe):
    import torch

    prompts_t = torch.tensor([p for p, _ in batch]).repeat_interleave(recipe.group, 0)
    with torch.no_grad():
        model.eval()
        out = model.generate(input_ids=prompts_t, attention_mask=torch.ones_like(prompts_t), do_sample=True,
                             top_k=0, temperature=recipe.temperature, max_new_tokens=recipe.max_new,
                             pad_token_id=tokenizer.eos_token_id)
        model.train()
    samples = out[:, prompts_t.shape[1]:].tolist()
    losses, all_rewards = [], []
    for k, (prompt_ids, _) in enumerate(batch):
        group = samples[k * recipe.group:(k + 1) * recipe.group]
        rewards, cut = _rewards(tokenizer, prompt_ids, group)
        all_rewards += rewards
        r = torch.tensor(rewards)
        if float(r.std()) == 0.0:  # every sample equally good: no signal from this group
            continue
        advantage = (r - r.mean()) / (r.std() + 1e-4)
        logp = _sequence_logprobs(model, prompt_ids, cut, tokenizer.eos_token_id)
        losses.append(-(advantage * logp).mean())
    loss = torch.stack(losses).mean() if losses else sum(p.sum() * 0.0 for p in model.parameters())
    return loss, all_rewards


def _sft_loss(model, tokenizer, batch):
    import torch

    losses = []
    for prompt_ids, target in batch:
        kept, _ = _cut(tokenizer, target)
        losses.append(-_sequence_logprobs(model, prompt_ids, [kept], tokenizer.eos_token_id)[0])
    return torch.stack(losses).mean(), []


def cast_base(target: Path, source: Path) -> dict:
    """The pretrained GPT-2 cast to bfloat16: the base the bf16 RL and SFT checkpoints are compared with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with io.quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    io.write_folder(target, lambda tmp: _save(model, tokenizer, tmp, {"cast_from": str(source)}, torch.bfloat16))
    return {"checkpoints": [], "merged": None, "metrics": {}, "cast_from": str(source)}


def _save(model, tokenizer, folder: Path, state: dict, dtype) -> None:
    with io.quiet_hf():
        copy.deepcopy(model).to(dtype).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    io.write_json(folder / "trainer_state.json", state)
