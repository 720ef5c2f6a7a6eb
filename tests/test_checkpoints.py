"""open_checkpoints over every format on disk, run folders and steps, identity, streaming, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading

import pytest
import torch
from safetensors.torch import save_file

import toy_checkpoints as toy
from subspace_atlas.checkpoints import _step_of, open_checkpoints
from subspace_atlas.errors import AtlasError

pytestmark = pytest.mark.integration


def only(path) -> object:
    found = open_checkpoints(path)
    assert len(found) == 1, [c.name for c in found]
    return found[0]


# ---------------------------------------------------------------- formats


def test_single_safetensors_file(tmp_path, llama_state):
    path = toy.write_safetensors(tmp_path / "weights.safetensors", llama_state)
    ckpt = only(path)
    assert ckpt.name == "weights"
    assert ckpt.path == path.resolve()
    assert ckpt.files == (path.resolve(),)
    assert ckpt.step is None and ckpt.run is None
    toy.assert_matches(ckpt, llama_state)
    dtypes = {i.dtype for i in ckpt.tensors()}
    assert dtypes == {"float32", "float16", "bfloat16"}


def test_hf_folder_model_safetensors(tiny_model, llama_state):
    ckpt = only(tiny_model)
    assert ckpt.name == "tiny-model"
    assert [f.name for f in ckpt.files] == ["model.safetensors"]
    toy.assert_matches(ckpt, llama_state)


def test_hf_folder_prefers_safetensors_over_bin(tmp_path, llama_state):
    folder = toy.write_hf_folder(tmp_path / "both", llama_state)
    toy.write_torch(folder / "pytorch_model.bin", toy.gpt2_state())
    ckpt = only(folder)
    assert [f.name for f in ckpt.files] == ["model.safetensors"]
    toy.assert_matches(ckpt, llama_state)


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_safetensors_folder(tmp_path, shards):
    state = toy.llama_state(layers=2)
    folder = toy.write_sharded(tmp_path / "sharded", state, shards=shards)
    ckpt = only(folder)
    assert [f.name for f in ckpt.files] == toy.shard_names(shards)
    toy.assert_matches(ckpt, state)


def test_pytorch_model_bin_folder(tmp_path, llama_state):
    folder = toy.write_hf_folder(tmp_path / "binmodel", llama_state, fmt="bin")
    ckpt = only(folder)
    assert [f.name for f in ckpt.files] == ["pytorch_model.bin"]
    toy.assert_matches(ckpt, llama_state)


def test_sharded_bin_folder(tmp_path):
    state = toy.llama_state(layers=2)
    folder = toy.write_sharded(tmp_path / "binsharded", state, shards=2, fmt="bin")
    ckpt = only(folder)
    assert [f.name for f in ckpt.files] == toy.shard_names(2, "bin")
    toy.assert_matches(ckpt, state)


@pytest.mark.parametrize("suffix,legacy", [(".pt", False), (".pth", False), (".pth", True), (".bin", False)])
def test_torch_state_dict_file(tmp_path, llama_state, suffix, legacy):
    path = toy.write_torch(tmp_path / f"state{suffix}", llama_state, legacy=legacy)
    ckpt = only(path)
    assert ckpt.name == "state"
    toy.assert_matches(ckpt, llama_state)


def test_nested_state_dict_flattened_and_non_tensors_skipped(tmp_path, llama_state):
    path = toy.write_torch(tmp_path / "lightning.pt", llama_state, nest="state_dict",
                           extra={"epoch": 3, "global_step": 120, "hparams": {"lr": 0.1}})
    ckpt = only(path)
    toy.assert_matches(ckpt, llama_state, prefix="state_dict.")
    ckpt.tensors()
    assert sorted(ckpt._sources["state_dict.model.norm.weight"].non_tensors) == [
        "epoch", "global_step", "hparams.lr"]


def test_folder_of_loose_pt_files_and_peft_adapter(tmp_path, llama_state):
    loose = tmp_path / "loose"
    toy.write_torch(loose / "b.pt", {"x.weight": llama_state["model.layers.0.self_attn.q_proj.weight"]})
    toy.write_torch(loose / "a.pt", {"y.weight": llama_state["model.embed_tokens.weight"]})
    found = open_checkpoints(loose)  # two weight files and no index: two checkpoints, never one merged
    assert [(c.name, c.path.name) for c in found] == [("loose/a", "a.pt"), ("loose/b", "b.pt")]
    assert [[i.name for i in c.tensors()] for c in found] == [["y.weight"], ["x.weight"]]

    lora = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 32),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, 4)}
    adapter = toy.write_safetensors(tmp_path / "adapter" / "adapter_model.safetensors", lora).parent
    toy.assert_matches(only(adapter), lora)


# ---------------------------------------------------------------- run folders and steps


def test_run_folder_children_sorted_by_step(tmp_path):
    run = tmp_path / "run"
    states = {s: toy.llama_state(seed=s) for s in (200, 300, 500, 1000, 1200)}
    toy.write_hf_folder(run / "checkpoint-500", states[500])
    toy.write_sharded(run / "checkpoint-1000", states[1000], shards=2)
    toy.write_hf_folder(run / "step200", states[200], fmt="bin")
    toy.write_torch(run / "global_step300" / "mp_rank_00_model_states.pt", states[300])
    last = toy.write_hf_folder(run / "last", states[1200])  # no number: the step comes from trainer_state.json
    toy.write_trainer_state(last, 1200)
    # Not checkpoints: no step anywhere, no weights, hidden, or not a weight file.
    toy.write_hf_folder(run / "best", toy.llama_state(seed=9))
    toy.write_trainer_state(run / "step50", 50)
    toy.write_hf_folder(run / ".step10", toy.llama_state(seed=10))
    (run / "step99.txt").write_text("notes")
    (run / "README.md").write_text("a run")

    found = open_checkpoints(run)
    assert [c.name for c in found] == ["run/step200", "run/global_step300", "run/checkpoint-500",
                                       "run/checkpoint-1000", "run/last"]
    assert [c.step for c in found] == [200, 300, 500, 1000, 1200]
    assert {c.run for c in found} == {"run"}
    assert [c.path for c in found] == [(run / n).resolve() for n in
                                       ("step200", "global_step300", "checkpoint-500", "checkpoint-1000", "last")]
    for ckpt in found:
        toy.assert_matches(ckpt, states[ckpt.step])


def test_step_of_names_and_trainer_state(tmp_path):
    assert _step_of(tmp_path / "checkpoint-500") == 500
    assert _step_of(tmp_path / "global_step300") == 300
    assert _step_of(tmp_path / "step_7") == 7
    assert _step_of(tmp_path / "epoch3") == 3
    assert _step_of(tmp_path / "final") is None
    named = tmp_path / "checkpoint-40"
    toy.write_trainer_state(named, 41)
    assert _step_of(named) == 40  # the name wins over trainer_state.json
    unnamed = tmp_path / "latest"
    toy.write_trainer_state(unnamed, 1234)
    assert _step_of(unnamed) == 1234
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "trainer_state.json").write_text("{not json")
    assert _step_of(broken) is None
    step_file = toy.write_safetensors(tmp_path / "model_step900.safetensors", {"w": torch.ones(2, 2)})
    assert _step_of(step_file) == 900


def test_child_without_any_step_is_not_a_run_child(tmp_path):
    run = tmp_path / "run"
    toy.write_hf_folder(run / "checkpoint-10", toy.llama_state(seed=1))
    toy.write_hf_folder(run / "best", toy.llama_state(seed=2))  # weights but no step: ignored
    assert [c.name for c in open_checkpoints(run)] == ["run/checkpoint-10"]
    toy.write_trainer_state(run / "best", 25)  # now it has a step
    found = open_checkpoints(run)
    assert [(c.name, c.step) for c in found] == [("run/checkpoint-10", 10), ("run/best", 25)]


def test_final_model_in_run_folder(tmp_path):
    run = tmp_path / "run"
    toy.write_hf_folder(run / "checkpoint-1000", toy.llama_state(seed=1))
    toy.write_hf_folder(run / "checkpoint-500", toy.llama_state(seed=2))
    final_state = toy.llama_state(seed=3)
    toy.write_hf_folder(run, final_state)  # the Trainer's output_dir: the final model beside its checkpoints
    found = open_checkpoints(run)
    assert [(c.name, c.step) for c in found] == [("run/checkpoint-500", 500), ("run/checkpoint-1000", 1000),
                                                 ("run/final", None)]
    final = found[-1]
    assert final.path == run.resolve() and final.run == "run"
    assert final.files == ((run / "model.safetensors").resolve(),)
    toy.assert_matches(final, final_state)
    toy.write_trainer_state(run, 1500)  # the Trainer also leaves trainer_state.json in output_dir
    assert open_checkpoints(run)[-1].step == 1500


def test_run_folder_of_step_named_files(tmp_path):
    run = tmp_path / "run"
    states = {s: toy.llama_state(seed=s) for s in (100, 20)}
    toy.write_torch(run / "step100.pt", states[100])
    toy.write_safetensors(run / "ckpt_20.safetensors", states[20])
    found = open_checkpoints(run)
    # Step-named files are the run's checkpoints, not also parts of a "final" model made of all of them.
    assert [(c.name, c.step) for c in found] == [("run/ckpt_20", 20), ("run/step100", 100)]
    for ckpt in found:
        toy.assert_matches(ckpt, states[ckpt.step])


def test_step_named_folder_opened_directly(tmp_path, llama_state):
    folder = toy.write_hf_folder(tmp_path / "checkpoint-700", llama_state)
    ckpt = only(folder)
    assert (ckpt.name, ckpt.step, ckpt.run) == ("checkpoint-700", 700, None)


# ---------------------------------------------------------------- streaming


def test_stream_yields_in_requested_order(tmp_path):
    state = toy.llama_state(layers=3)
    ckpt = only(toy.write_sharded(tmp_path / "sharded", state, shards=2))
    names = list(reversed(state))
    for ahead in (0, 1000, 1 << 30):
        got = list(ckpt.stream(names, ahead_bytes=ahead))
        assert [n for n, _ in got] == names
        for name, tensor in got:
            assert torch.equal(tensor, state[name])


def test_prefetch_keeps_the_bytes_alive_within_its_budget():
    """Alive = the tensor in hand plus those read ahead; the reader waits while the next would not fit."""
    import time

    from subspace_atlas.checkpoints import _prefetch

    loaded: list[int] = []

    def items(n):
        for i in range(n):
            yield f"t{i}", 10, lambda i=i: loaded.append(i) or torch.zeros(1)

    for budget, most_ahead in ((1, 0), (25, 1), (10**6, 19)):
        loaded.clear()
        ahead = []
        for seen, (name, _) in enumerate(_prefetch(items(20), budget), 1):
            time.sleep(0.01)  # time for the reader to get as far ahead as it may
            ahead.append(len(loaded) - seen)
        assert loaded == list(range(20))
        assert max(ahead) == most_ahead if most_ahead < 19 else max(ahead) > 1


def test_stream_propagates_a_loader_error(tmp_path, llama_state):
    ckpt = only(toy.write_safetensors(tmp_path / "m.safetensors", llama_state))
    first = "model.norm.weight"
    gen = ckpt.stream([first, "no.such.tensor", "model.embed_tokens.weight"], ahead_bytes=1 << 20)
    name, tensor = next(gen)
    assert name == first and torch.equal(tensor, llama_state[first])
    with pytest.raises(AtlasError, match=r"m\.safetensors: no tensor named 'no\.such\.tensor'"):
        next(gen)


def test_stream_raises_for_a_corrupt_shard(tmp_path):
    state = toy.llama_state()
    folder = toy.write_sharded(tmp_path / "sharded", state, shards=2)
    bad = folder / toy.shard_names(2)[1]
    bad.write_bytes(os.urandom(300))
    ckpt = only(folder)
    with pytest.raises(AtlasError, match=re.escape(bad.name)):
        list(ckpt.stream(list(state)))


def test_stream_closed_early_stops_its_thread(tmp_path):
    state = toy.llama_state(layers=4)
    ckpt = only(toy.write_safetensors(tmp_path / "m.safetensors", state))
    before = threading.active_count()
    gen = ckpt.stream(list(state), ahead_bytes=1)
    next(gen)
    gen.close()
    assert threading.active_count() == before


# ---------------------------------------------------------------- identity


def test_identity_is_content_not_path(tmp_path, llama_state):
    a = toy.write_hf_folder(tmp_path / "a" / "model", llama_state)
    b = tmp_path / "elsewhere" / "copy"
    shutil.copytree(a, b)
    id_a, id_b = only(a).identity(), only(b).identity()
    assert id_a == id_b
    assert re.fullmatch(r"[0-9a-f]{24}", id_a)

    changed = dict(llama_state)
    w = changed["model.layers.0.self_attn.q_proj.weight"].clone()
    w[3, 5] += 1.0
    changed["model.layers.0.self_attn.q_proj.weight"] = w
    toy.write_safetensors(b / "model.safetensors", changed)
    assert only(b).identity() != id_a


def test_identity_of_sharded_and_pickle_copies(tmp_path, llama_state):
    sharded = toy.write_sharded(tmp_path / "s1", llama_state, shards=2)
    copy = shutil.copytree(sharded, tmp_path / "s2")
    assert only(sharded).identity() == only(copy).identity()
    pt = toy.write_torch(tmp_path / "one" / "x.pt", llama_state)
    pt2 = tmp_path / "two" / "x.pt"
    pt2.parent.mkdir()
    shutil.copyfile(pt, pt2)
    assert only(pt).identity() == only(pt2).identity()
    assert only(pt).identity() != only(sharded).identity()


# ---------------------------------------------------------------- tied embeddings

_LLAMA = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"]
_CAUSAL = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


def _model(folder, names: list[str], config: dict | None) -> object:
    """A folder of 2-D tensors ``names`` and, unless None, ``config`` as its config.json, opened."""
    folder.mkdir()
    save_file({name: torch.zeros(4, 2) for name in names}, folder / "model.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return only(folder)


@pytest.mark.parametrize("names, config, tied", [
    (_LLAMA, {**_CAUSAL, "tie_word_embeddings": True}, {"model.embed_tokens.weight"}),
    (_LLAMA, {**_CAUSAL, "tie_word_embeddings": False}, set()),
    (_LLAMA + ["lm_head.weight"], {**_CAUSAL, "tie_word_embeddings": True}, set()),  # the head is stored
    (_LLAMA, _CAUSAL, set()),  # no key: LlamaConfig's default, false
    (["transformer.wte.weight", "transformer.wpe.weight"], {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
     {"transformer.wte.weight"}),  # no key: GPT2Config's default, true; the position embedding is no output
    (["embeddings.word_embeddings.weight", "embeddings.token_type_embeddings.weight"],
     {"model_type": "bert", "architectures": ["BertModel"]}, set()),  # as all-MiniLM-L6-v2: an encoder, no LM head
    (["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"],
     {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "tie_word_embeddings": True},
     {"shared.weight"}),  # old T5 files store the copies; the head ties to `shared`
], ids=["causal-lm", "explicit-false", "head-stored", "llama-default", "gpt2-default", "encoder", "t5-copies"])
def test_tied_embeddings_from_config_and_tensor_names(tmp_path, names, config, tied):
    assert _model(tmp_path / "m", names, config).tied_embeddings() == tied


def test_no_config_claims_no_tying(tmp_path):
    """An embedding without ``lm_head`` and no config.json is not marked: the names alone cannot tell a causal LM
    that ties from a headless encoder or base model (``BertModel``, ``LlamaModel``), which store the same."""
    assert _model(tmp_path / "m", _LLAMA, None).tied_embeddings() == frozenset()


# ---------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
    with pytest.raises(AtlasError, match=re.escape(f"{tmp_path / 'nope'}: no such file or folder")):
        open_checkpoints(tmp_path / "nope")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AtlasError, match=r"empty: no checkpoint found"):
        open_checkpoints(tmp_path / "empty")


def test_unknown_extension(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(AtlasError, match=r"weights\.npz: unknown checkpoint format"):
        open_checkpoints(path)


def test_truncated_safetensors(tmp_path, llama_state):
    path = toy.truncate(toy.write_safetensors(tmp_path / "cut.safetensors", llama_state))
    ckpt = only(path)  # opening lists files only; reading the header finds the damage
    with pytest.raises(AtlasError, match=r"cut\.safetensors: truncated: tensor .* ends at byte \d+ of a \d+-byte file"):
        ckpt.tensors()


def test_garbage_safetensors_header(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(AtlasError, match=r"junk\.safetensors: not a readable safetensors file"):
        only(path).tensors()


def test_truncated_torch_file(tmp_path, llama_state):
    path = toy.truncate(toy.write_torch(tmp_path / "cut.pt", llama_state))
    with pytest.raises(AtlasError, match=r"cut\.pt: not a readable torch checkpoint"):
        only(path).tensors()


class _RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: a harmless stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("legacy", [False, True])
def test_code_running_pickle_is_refused(tmp_path, legacy):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.randn(4, 4), "payload": _RunsCode(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    assert not marker.exists()
    with pytest.raises(AtlasError, match=r"evil\.pt: refused: this pickle would run code"):
        only(path).tensors()
    assert not marker.exists()


def test_shard_index_listing_a_missing_shard(tmp_path, llama_state):
    folder = toy.write_sharded(tmp_path / "sharded", llama_state, shards=2)
    missing = folder / toy.shard_names(2)[1]
    missing.unlink()
    ckpt = only(folder)
    for call in (ckpt.identity, ckpt.tensors):
        with pytest.raises(AtlasError, match=re.escape(f"{missing.name}: listed by")):
            call()


def test_invalid_shard_index(tmp_path, llama_state):
    folder = toy.write_sharded(tmp_path / "sharded", llama_state, shards=2)
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(AtlasError, match=r"model\.safetensors\.index\.json: not a valid shard index"):
        open_checkpoints(folder)
