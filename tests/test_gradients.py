"""Gradient subspaces: at saved checkpoints (``--of gradients``) and recorded during training (hook, callback)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from subspace_atlas import cli, zoo  # noqa: E402
from subspace_atlas.probes.recorder import GradientSubspaceCallback, GradientSubspaceRecorder  # noqa: E402
from subspace_atlas.specs import overlap  # noqa: E402
from subspace_atlas.store import Store  # noqa: E402

pytestmark = pytest.mark.integration
TEXT = "".join(f"def f{i}(x):\n    return x * {i} + len(str(x))  # line {i}\n" for i in range(400))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The zoo's pretraining recipe at mini scale: a real GPT-2 run folder with its tokenizer."""
    root = tmp_path_factory.mktemp("zoo")
    zoo.build(root, scale="mini", progress=False, only=["pretrain-gpt2-stdlib"])
    text = root / "batch.txt"
    text.write_text(TEXT)
    return root / "pretrain-gpt2-stdlib", text


def top_k(mat: torch.Tensor, k: int, side: str) -> np.ndarray:
    u, _, vh = np.linalg.svd(mat.double().numpy(), full_matrices=False)
    return u[:, :k] if side == "left" else vh[:k].T


def test_checkpoint_gradients_match_autograd_and_numpy(run, tmp_path):
    folder, text = run
    store = tmp_path / "store"
    assert cli.main(["overlap", str(folder), "--of", "gradients", "--data", str(text), "--k", "4", "--batch", "2",
                     "--seq-len", "32", "--store", str(store), "--no-welore"]) == 0
    pairs = Store(store).table("overlap", "pairs")
    assert set(pairs["of"]) == {"gradients"}
    grads = {}
    for ckpt in sorted(p for p in folder.iterdir() if p.name.startswith("checkpoint-")):
        model = transformers.GPT2LMHeadModel.from_pretrained(ckpt)
        tok = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer")
        ids = torch.tensor(tok(TEXT, add_special_tokens=False)["input_ids"][:64]).view(2, 32)
        model(input_ids=ids, labels=ids).loss.backward()
        grads[int(ckpt.name.split("-")[1])] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert len(pairs) == 2 * len(pairs["tensor"].unique())  # one pair, two sides
    for row in pairs.itertuples():
        qa = top_k(grads[row.step_a][row.tensor], 4, row.side)
        qb = top_k(grads[row.step_b][row.tensor], 4, row.side)
        assert row.overlap == pytest.approx(float(np.square(qa.T @ qb).sum()) / 4, abs=2e-3), row.tensor


def tiny_training(folder, steps: int, every: int, recorder=None, saved=None):
    """A few real AdamW steps of the mini GPT-2 on the text; gradients of record steps saved when asked."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel.from_pretrained(sorted(folder.glob("checkpoint-*"))[-1])
    tok = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer")
    ids = torch.tensor(tok(TEXT, add_special_tokens=False)["input_ids"][:steps * 64]).view(steps, 2, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(1, steps + 1):
        model(input_ids=ids[step - 1], labels=ids[step - 1]).loss.backward()
        if recorder is not None:
            recorder.record(model, step)
        if saved is not None and step % every == 0:
            grads = {n: p.grad.detach().clone().contiguous() for n, p in model.named_parameters() if p.grad.dim() == 2}
            save_file(grads, saved / f"step{step}.safetensors")
        opt.step()
        opt.zero_grad()
    return model


def test_recorder_equals_recomputing_offline_from_saved_gradients(run, tmp_path):
    folder, _ = run
    store, saved = tmp_path / "store", tmp_path / "grads"
    saved.mkdir()
    params = overlap.Params(k=4)
    recorder = GradientSubspaceRecorder(store, run="live", every=2, params=params, flush_every=0)
    tiny_training(folder, steps=8, every=2, recorder=recorder, saved=saved)
    recorder.flush()
    live = Store(store).table("overlap", "pairs", {"run": "live"})
    assert sorted(set(live["step_b"])) == [4, 6, 8]
    # offline: the saved gradients as a run of checkpoints, through the ordinary command
    assert cli.main(["overlap", str(saved), "--of", "weights", "--reference", "previous", "first", "--k", "4",
                     "--no-welore", "--store", str(store)]) == 0
    offline = Store(store).table("overlap", "pairs", {"run": "grads"})
    keys = ["step_a", "step_b", "tensor", "side"]
    both = live.merge(offline, on=keys, suffixes=("_live", "_offline"))
    assert len(both) == len(live) == len(offline) > 0
    np.testing.assert_allclose(both["overlap_live"], both["overlap_offline"], atol=1e-5)
    np.testing.assert_allclose(both["lead_cos_live"], both["lead_cos_offline"], atol=1e-4)
    assert (both["previous_live"] == both["previous_offline"]).all()
    conv_live = Store(store).table("overlap", "convergence", {"run": "live"})
    conv_off = Store(store).table("overlap", "convergence", {"run": "grads"})
    conv = conv_live.merge(conv_off, on=["tensor", "side"], suffixes=("_live", "_offline"))
    assert len(conv) == len(conv_live) > 0
    assert (conv["settled_step_live"].fillna(-1) == conv["settled_step_offline"].fillna(-1)).all()
    np.testing.assert_allclose(conv["final_overlap_live"], conv["final_overlap_offline"], atol=1e-5)


def test_trainer_callback_records_every_n_steps(run, tmp_path):
    folder, _ = run
    model = transformers.GPT2LMHeadModel.from_pretrained(sorted(folder.glob("checkpoint-*"))[-1])
    tok = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer")
    ids = tok(TEXT, add_special_tokens=False)["input_ids"][:8 * 32]
    data = [{"input_ids": ids[i:i + 32], "labels": ids[i:i + 32]} for i in range(0, len(ids), 32)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "my-run"), max_steps=6,
                                          per_device_train_batch_size=2, learning_rate=1e-3, report_to=[],
                                          save_strategy="no", logging_strategy="no", use_cpu=True,
                                          disable_tqdm=True)
    callback = GradientSubspaceCallback(tmp_path / "store", every=2, params=overlap.Params(k=3))
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    pairs = Store(tmp_path / "store").table("overlap", "pairs")
    assert set(pairs["run"]) == {"my-run"} and set(pairs["of"]) == {"gradients"}
    assert sorted(set(pairs["step_b"])) == [4, 6]
    subspaces = Store(tmp_path / "store").table("overlap", "subspaces")
    assert sorted(set(subspaces["step"])) == [2, 4, 6]
    assert (subspaces["k"] == 3).all() and subspaces["energy_captured"].between(0, 1 + 1e-6).all()
