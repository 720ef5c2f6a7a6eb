"""Bad checkpoint inputs (issue 17): each is one ``AtlasError`` line naming the file, through the API and the
CLI (exit 2, nothing stored), never a traceback, a hang, a MemoryError or a silently wrong result."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import toy_checkpoints as toy
from subspace_atlas.adapters import LoraAdapter, recorded_base
from subspace_atlas.checkpoints import open_checkpoints, open_one
from subspace_atlas.cli import main
from subspace_atlas.errors import AtlasError
from subspace_atlas.store import Store

pytestmark = pytest.mark.integration
DEEP = "[" * 100_000 + "]" * 100_000
Q = "model.layers.0.self_attn.q_proj"


def refused(capsys, tmp_path, *args) -> str:
    """Run the CLI on bad input: exit 2, one ``subspace-atlas: error:`` line (returned), no file stored."""
    store = tmp_path / "S"
    capsys.readouterr()
    rc = main([*map(str, args), "--store", str(store)])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("subspace-atlas: error: ")
    assert not [p for p in store.rglob("*") if p.is_file()] if store.exists() else True
    return lines[0]


def spectra_refused(capsys, tmp_path, path, *texts: str) -> None:
    line = refused(capsys, tmp_path, "spectra", path, "--device", "cpu")
    for text in texts:
        assert text in line, line


def write_raw(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    """A safetensors file with exactly this header (a dict is dumped as JSON) and data section."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def library_refuses(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                fh.get_slice(key)
    except Exception:  # noqa: BLE001 (any refusal counts)
        return True
    return False


def f32(shape, begin=0, end=None) -> dict:
    end = begin + 4 * int(torch.tensor(shape).prod()) if end is None else end
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


# ---------------------------------------------------------------- 1. several files, one checkpoint?


def test_loose_files_without_an_index_are_a_checkpoint_each(tmp_path):
    folder = tmp_path / "exports"
    a, b = toy.llama_state(seed=1), toy.llama_state(seed=2)  # the same tensor names: two models
    toy.write_safetensors(folder / "model_a.safetensors", a)
    toy.write_safetensors(folder / "model_b.safetensors", b)
    found = open_checkpoints(folder)
    assert [(c.name, c.path.name, c.run) for c in found] == [("exports/model_a", "model_a.safetensors", None),
                                                             ("exports/model_b", "model_b.safetensors", None)]
    toy.assert_matches(found[0], a)
    toy.assert_matches(found[1], b)
    with pytest.raises(AtlasError, match=r"exports: holds 2 checkpoints .*; give one checkpoint"):
        open_one(folder)
    assert main(["spectra", str(folder), "--store", str(tmp_path / "S"), "--device", "cpu"]) == 0
    stored = Store(tmp_path / "S").table("spectra", "matrices")
    assert set(stored["checkpoint"]) == {"exports/model_a", "exports/model_b"}


def test_loose_files_in_a_step_folder_keep_its_step(tmp_path):
    run = tmp_path / "run"
    toy.write_hf_folder(run / "checkpoint-5", toy.llama_state(seed=5))
    toy.write_torch(run / "checkpoint-9" / "a.pt", toy.llama_state(seed=1))
    toy.write_torch(run / "checkpoint-9" / "b.pt", toy.llama_state(seed=2))
    assert [(c.name, c.step, c.run) for c in open_checkpoints(run)] == [
        ("run/checkpoint-5", 5, "run"), ("run/checkpoint-9/a", 9, "run"), ("run/checkpoint-9/b", 9, "run")]


def test_shards_sharing_a_tensor_are_an_error(tmp_path, capsys):
    state = toy.llama_state()
    folder = toy.write_sharded(tmp_path / "sharded", state, shards=2)
    first, second = toy.shard_names(2)
    from safetensors.torch import load_file

    embed = {"model.embed_tokens.weight": state["model.embed_tokens.weight"]}  # also in the first shard
    toy.write_safetensors(folder / second, load_file(str(folder / second)) | embed)
    message = f"tensor 'model.embed_tokens.weight' is in both {first} and {second}"
    with pytest.raises(AtlasError, match=re.escape(message)):
        open_one(folder).tensors()
    spectra_refused(capsys, tmp_path, folder, f"sharded: {message}")


def test_two_entries_flattening_to_one_name_are_an_error(tmp_path, capsys):
    path = tmp_path / "twice.pt"
    torch.save({"a.b": torch.ones(4, 4), "a": {"b": torch.zeros(4, 4)}}, path)
    with pytest.raises(AtlasError, match=r"twice\.pt: not a readable torch checkpoint \(two entries flatten to "
                                         r"the tensor name 'a\.b'\)"):
        open_one(path).tensors()
    spectra_refused(capsys, tmp_path, path, "twice.pt: not a readable torch checkpoint")


# ---------------------------------------------------------------- 2. malformed safetensors headers

BAD_HEADERS = {  # name: (header, data, text of the one error line, whether the safetensors library refuses too)
    "overlapping offsets": ({"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, bytes(12),
                            "tensor 'b' at data bytes 4-12 overlaps the tensor before it", True),
    "a gap between tensors": ({"a": f32([2], 0, 8), "b": f32([2], 12, 20)}, bytes(20),
                              "tensor 'b' at data bytes 12-20 leaves a gap after data byte 8", True),
    "offsets past the end": ({"a": f32([2], 0, 8)}, bytes(4), "truncated: tensor 'a' ends at byte", True),
    "bytes past the last tensor": ({"a": f32([2])}, bytes(12), "4 bytes after the last tensor", True),
    "end before begin": ({"a": f32([0], 8, 0)}, bytes(8), "data_offsets [8, 0] end before they begin", True),
    "offsets not a pair": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8),
                           "data_offsets [0] is not two non-negative integers", True),
    "shape as a string": ({"a": {"dtype": "F32", "shape": "44", "data_offsets": [0, 16]}}, bytes(16),
                          "shape '44' is not a list of non-negative integers", True),
    "float shape": ({"a": {"dtype": "F32", "shape": [2.0, 2], "data_offsets": [0, 16]}}, bytes(16),
                    "shape [2.0, 2] is not a list", True),
    "bool shape": ({"a": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}}, bytes(16),
                   "shape [True, 4] is not a list", True),
    "negative dims": ({"a": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}}, bytes(16),
                      "shape [-2, -2] is not a list of non-negative integers", True),
    "unknown dtype": ({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, bytes(8),
                      "tensor 'a' has dtype 'F33', which is not supported here", True),
    "entry not an object": ({"a": [1, 2]}, b"", "tensor 'a' has a malformed header entry (not a JSON object)", True),
    "memory bomb shape": ({"a": f32([10**9, 10**9], 0, 16)}, bytes(16),
                          "tensor 'a' spans 16 bytes, its shape needs 4000000000000000000", True),
    "bigger bomb": ({"a": f32([10**12, 10**12], 0, 16)}, bytes(16), "[1000000000000, 1000000000000] of F32 is over "
                                                                     "2**64 bytes", True),
    "shape past u64": ({"a": f32([2**40, 2**40, 0], 0, 0)}, b"", "is over 2**64 bytes", True),
    "matching bomb, short file": ({"a": f32([10**6, 10**6])}, bytes(64),
                                  "truncated: tensor 'a' ends at byte 40000000000", True),
    "metadata not strings": ({"__metadata__": {"format": 1}}, b"", "__metadata__ is not a map of strings", True),
    "duplicate names": (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                        b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', bytes(1), "key 'a' appears twice",
                        False),
    "header not an object": (b"[1, 2]    ", b"", "header is not a JSON object", True),
    "not JSON": (b"{oops", b"", "header is not valid JSON", True),
    "NaN in the header": (b'{"__metadata__": {"x": NaN}}', b"", "NaN is not JSON", True),
    "non-UTF-8 header": (b'{"\xff\xfe": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', bytes(1),
                         "header is not UTF-8", True),
    "lone surrogate name": (b'{"\\ud800": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', bytes(1),
                            "is not valid Unicode (a lone surrogate)", True),
    "nested 100,000 deep": (('{"a": ' + DEEP + "}").encode(), b"", "header JSON is nested too deeply", True),
}


@pytest.mark.parametrize("case", BAD_HEADERS, ids=str)
def test_malformed_header_is_one_line(tmp_path, capsys, case):
    header, data, text, library_too = BAD_HEADERS[case]
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    assert library_refuses(path) == library_too
    with pytest.raises(AtlasError) as caught:
        open_one(path).tensors()
    assert str(caught.value).startswith(f"{path}: ") and text in str(caught.value)
    assert "\n" not in str(caught.value)
    spectra_refused(capsys, tmp_path, path, "bad.safetensors: ", text)


@pytest.mark.parametrize("length, text", [(10_000, "header length 10000 does not fit a 24-byte file"),
                                          (2**63, "is over the 100000000-byte limit"),
                                          (None, "a 5-byte file has no 8-byte header length")])
def test_header_length_that_cannot_be(tmp_path, capsys, length, text):
    path = tmp_path / "len.safetensors"
    path.write_bytes(b"12345" if length is None else struct.pack("<Q", length) + b"{}" + bytes(14))
    assert library_refuses(path)
    with pytest.raises(AtlasError, match=r"len\.safetensors: not a readable safetensors file \(") as caught:
        open_one(path).tensors()
    assert text in str(caught.value)
    spectra_refused(capsys, tmp_path, path, text)


def test_every_dtype_the_library_writes_reads_back_equal(tmp_path):
    from safetensors.torch import load_file

    state = {str(dtype): torch.arange(6).reshape(2, 3).to(dtype) for dtype in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint64, torch.uint32, torch.uint16, torch.uint8,
        torch.bool)}
    state["empty"] = torch.empty(0, 7)
    path = toy.write_safetensors(tmp_path / "all.safetensors", state)
    ckpt, reference = open_one(path), load_file(str(path))
    for name, want in reference.items():
        got = ckpt.load(name)
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got.view(torch.uint8),
                                                                                    want.view(torch.uint8)), name


# ---------------------------------------------------------------- 3. shard indexes


@pytest.mark.parametrize("weight_map, text", [
    (["model-00001-of-00002.safetensors"], 'no "weight_map" object'),
    ({}, 'no "weight_map" object'),
    ({"w": "../../x.safetensors"}, "weight_map names '../../x.safetensors', not a file inside the index's folder"),
    ({"w": "/etc/x.safetensors"}, "weight_map names '/etc/x.safetensors', not a file"),
    ({"w": ["a", "b"]}, "weight_map names ['a', 'b'], not a file"),
    ({"w": ""}, "weight_map names '', not a file"),
])
def test_shard_index_that_points_nowhere_safe(tmp_path, capsys, weight_map, text):
    folder = toy.write_sharded(tmp_path / "m" / "sharded", toy.llama_state(), shards=2)
    toy.write_safetensors(tmp_path / "x.safetensors", toy.llama_state(seed=3))  # what ../../x would reach
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(AtlasError, match=re.escape(f"model.safetensors.index.json: not a valid shard index ({text}")):
        open_checkpoints(folder)
    spectra_refused(capsys, tmp_path, folder, "model.safetensors.index.json: not a valid shard index", text)


def test_shard_index_listing_a_missing_file(tmp_path, capsys):
    folder = toy.write_sharded(tmp_path / "sharded", toy.llama_state(), shards=2)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "sub/gone.safetensors"}}))
    spectra_refused(capsys, tmp_path, folder, "sub/gone.safetensors: listed by", "but missing")


def test_shards_linked_from_elsewhere_are_fine(tmp_path):
    """HF's cache links each shard to a blob outside the folder: the index's names are checked, not the links."""
    state = toy.llama_state()
    folder = toy.write_sharded(tmp_path / "sharded", state, shards=2)
    blob = tmp_path / "blobs" / "b1"
    blob.parent.mkdir()
    (folder / toy.shard_names(2)[0]).rename(blob)
    (folder / toy.shard_names(2)[0]).symlink_to(blob)
    toy.assert_matches(open_one(folder), state)


# ---------------------------------------------------------------- 4. JSON nested 100,000 deep


def test_deeply_nested_json_is_one_line(tmp_path, capsys, caplog):
    folder = toy.write_sharded(tmp_path / "sharded", toy.llama_state(), shards=2)
    (folder / "model.safetensors.index.json").write_text(DEEP)
    spectra_refused(capsys, tmp_path, folder, "model.safetensors.index.json: not a valid shard index (JSON nested "
                                              "too deeply)")
    adapter = lora_adapter(tmp_path / "adapter")
    (adapter / "adapter_config.json").write_text(DEEP)
    with pytest.raises(AtlasError, match=r"adapter_config\.json: not a readable adapter config \(JSON nested too"):
        LoraAdapter(open_one(adapter))
    last = toy.write_hf_folder(tmp_path / "run" / "last", toy.llama_state())
    (last / "trainer_state.json").write_text(DEEP)
    toy.write_hf_folder(tmp_path / "run" / "checkpoint-3", toy.llama_state())
    with caplog.at_level(logging.WARNING):
        assert [(c.name, c.step) for c in open_checkpoints(tmp_path / "run")] == [
            ("run/checkpoint-3", 3), ("run/last", None)]
    assert "trainer_state.json: not a readable trainer state (JSON nested too deeply)" in caplog.text


# ---------------------------------------------------------------- 5. PEFT adapter configs


def lora_adapter(folder: Path, **config) -> Path:
    gen = torch.Generator().manual_seed(0)
    factors = {Q: (torch.randn(2, toy.HIDDEN, generator=gen), torch.randn(toy.HIDDEN, 2, generator=gen))}
    return toy.write_lora_adapter(folder, factors, rank=2, alpha=4, **config)


def set_config(adapter: Path, **changes) -> Path:
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    return adapter


BAD_CONFIGS = {
    "a list": ([1, 2], "not a readable adapter config (a JSON list, not an object)"),
    "alpha a word": ({"lora_alpha": "eight"}, "lora_alpha is 'eight', not a finite number"),
    "alpha NaN": ({"lora_alpha": float("nan")}, "lora_alpha is nan, not a finite number"),
    "alpha inf": ({"lora_alpha": float("inf")}, "lora_alpha is inf, not a finite number"),
    "alpha huge int": ({"lora_alpha": 10**400}, "lora_alpha is 1000"),
    "r zero": ({"r": 0}, "r is 0, not a positive integer"),
    "r negative": ({"r": -2}, "r is -2, not a positive integer"),
    "r float": ({"r": 2.0}, "r is 2.0, not a positive integer"),
    "r string": ({"r": "2"}, "r is '2', not a positive integer"),
    "r bool": ({"r": True}, "r is True, not a positive integer"),
    "bad rank_pattern regex": ({"rank_pattern": {"q_proj(": 2}}, "rank_pattern key 'q_proj(' is not a valid regular "
                                                                 "expression"),
    "bad alpha_pattern regex": ({"alpha_pattern": {"[": 2}}, "alpha_pattern key '[' is not a valid regular"),
    "regex nested too deeply": ({"rank_pattern": {"(" * 5000 + ")" * 5000: 2}}, "is not a valid regular expression "
                                                                              "(RecursionError"),
    "rank_pattern value": ({"rank_pattern": {"q_proj": 0}}, "rank_pattern['q_proj'] is 0, not a positive integer"),
    "alpha_pattern value": ({"alpha_pattern": {"q_proj": "x"}}, "alpha_pattern['q_proj'] is 'x', not a finite"),
    "rank_pattern a list": ({"rank_pattern": ["q_proj"]}, "rank_pattern is ['q_proj'], not an object"),
    "base a number": ({"base_model_name_or_path": 7}, "base_model_name_or_path 7 is not a path or hub id"),
    "base with NUL": ({"base_model_name_or_path": "a\0b"}, "is not a path or hub id"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=str)
def test_bad_adapter_config_is_one_line_naming_the_file(tmp_path, capsys, case):
    change, text = BAD_CONFIGS[case]
    adapter = lora_adapter(tmp_path / "adapter")
    if isinstance(change, dict):
        set_config(adapter, **change)
    else:
        (adapter / "adapter_config.json").write_text(json.dumps(change))
    with pytest.raises(AtlasError) as caught:
        LoraAdapter(open_one(adapter))
    assert str(caught.value).startswith(f"{adapter / 'adapter_config.json'}: ") and text in str(caught.value)
    base = toy.write_hf_folder(tmp_path / "base", toy.llama_state())
    line = refused(capsys, tmp_path, "intruders", "--base", base, adapter)
    assert "adapter_config.json: " in line and text in line, line


def test_non_matrix_lora_factors_are_refused(tmp_path):
    adapter = lora_adapter(tmp_path / "adapter")
    toy.write_safetensors(adapter / "adapter_model.safetensors", {
        f"base_model.model.{Q}.lora_A.weight": torch.ones(2, 3, 1, 1),
        f"base_model.model.{Q}.lora_B.weight": torch.ones(4, 2, 1, 1)})
    with pytest.raises(AtlasError, match=r"lora_A is \[2, 3, 1, 1\] but lora_B is \[4, 2, 1, 1\]"):
        LoraAdapter(open_one(adapter))


def test_recorded_base_that_is_no_path_here_is_none(tmp_path):
    for base in ("~no-such-user-here/model", "x" * 5000, "org/model"):
        adapter = LoraAdapter(open_one(set_config(lora_adapter(tmp_path / "a"), base_model_name_or_path=base)))
        assert recorded_base(adapter) is None


# ---------------------------------------------------------------- 6. devices and FIFOs


def finishes(call, seconds: float = 10.0) -> object:
    """``call()``'s result or exception, failing the test if it blocks (a FIFO opened for reading would)."""
    box: list = []

    def run():
        try:
            box.append(call())
        except BaseException as err:  # noqa: BLE001 (handed back to the test)
            box.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    return box[0]


def test_dev_null_and_a_fifo_are_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    for path in (Path("/dev/null"), fifo):
        err = finishes(lambda path=path: open_checkpoints(path))
        assert isinstance(err, AtlasError) and str(err) == (
            f"{path}: not a checkpoint (a device, FIFO or socket, not a regular file or folder)")
        spectra_refused(capsys, tmp_path, path, f"{path}: not a checkpoint")


def test_fifo_inside_a_checkpoint_folder_is_refused_without_blocking(tmp_path, capsys, caplog):
    folder = tmp_path / "m"
    folder.mkdir()
    os.mkfifo(folder / "model.safetensors")
    err = finishes(lambda: open_one(folder).tensors())
    assert isinstance(err, AtlasError) and "model.safetensors: not a regular file" in str(err)
    spectra_refused(capsys, tmp_path, folder, "model.safetensors: not a regular file")

    sharded = toy.write_sharded(tmp_path / "sharded", toy.llama_state(), shards=2)
    (sharded / toy.shard_names(2)[1]).unlink()
    os.mkfifo(sharded / toy.shard_names(2)[1])
    spectra_refused(capsys, tmp_path, sharded, f"{toy.shard_names(2)[1]}: not a regular file")

    (sharded / "model.safetensors.index.json").unlink()
    os.mkfifo(sharded / "model.safetensors.index.json")
    err = finishes(lambda: open_checkpoints(sharded))
    assert isinstance(err, AtlasError) and "model.safetensors.index.json: not a regular file" in str(err)

    run = tmp_path / "run"
    toy.write_hf_folder(run / "checkpoint-1", toy.llama_state())
    os.mkfifo(run / "checkpoint-1" / "trainer_state.json")
    last = toy.write_hf_folder(run / "last", toy.llama_state())
    os.mkfifo(last / "trainer_state.json")
    with caplog.at_level(logging.WARNING):
        found = finishes(lambda: open_checkpoints(run))
    assert [(c.name, c.step) for c in found] == [("run/checkpoint-1", 1), ("run/last", None)]
    assert "trainer_state.json: not a regular file" in caplog.text


# ---------------------------------------------------------------- 7. names that are not UTF-8


def test_non_utf8_file_names_are_one_line(tmp_path, capsys):
    folder = tmp_path / "m"
    toy.write_safetensors(folder / os.fsdecode(b"model_\xff.safetensors"), toy.llama_state())
    toy.write_safetensors(folder / "model_ok.safetensors", toy.llama_state())
    with pytest.raises(AtlasError, match=r"model_\\udcff\.safetensors: not valid UTF-8; rename it"):
        open_checkpoints(folder)
    spectra_refused(capsys, tmp_path, folder, "model_\\udcff.safetensors: not valid UTF-8")
    single = toy.write_safetensors(tmp_path / os.fsdecode(b"\xfe.safetensors"), toy.llama_state())
    spectra_refused(capsys, tmp_path, single, "\\udcfe.safetensors: not valid UTF-8")
    good = toy.write_safetensors(tmp_path / "good.safetensors", toy.llama_state())
    name = os.fsdecode(b"n\xff")
    spectra_refused(capsys, tmp_path, f"{name}={good}", "n\\udcff: not valid UTF-8")


def test_lone_surrogates_in_names_are_one_line(tmp_path, capsys):
    pt = tmp_path / "sur.pt"
    torch.save({"w\ud800": torch.ones(4, 4)}, pt)
    with pytest.raises(AtlasError, match=r"sur\.pt: not a readable torch checkpoint \(tensor name 'w\\ud800' is not "
                                         r"valid Unicode\)"):
        open_one(pt).tensors()
    spectra_refused(capsys, tmp_path, pt, "tensor name 'w\\ud800' is not valid Unicode")
    folder = toy.write_sharded(tmp_path / "sharded", toy.llama_state(), shards=2)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"w": "\\ud800.safetensors"}}')
    spectra_refused(capsys, tmp_path, folder, "\\ud800.safetensors: not valid UTF-8")


# ---------------------------------------------------------------- 8. trainer_state.json


@pytest.mark.parametrize("state, text", [
    ("{not json", "not a readable trainer state (Expecting property name"),
    ("[1]", "not a readable trainer state (not a JSON object)"),
    ('{"global_step": 1e30}', "global_step 1e+30 is not a step"),
    ('{"global_step": Infinity}', "global_step inf is not a step"),
    ('{"global_step": 12.5}', "global_step 12.5 is not a step"),
    ('{"global_step": "12"}', "global_step '12' is not a step"),
    ('{"global_step": -3}', "global_step -3 is not a step"),
    ('{"global_step": 100000000000000000000000000000}', "global_step 100000000000000000000000000000 is not a step"),
])
def test_malformed_trainer_state_keeps_the_checkpoint_without_a_step(tmp_path, caplog, state, text):
    run = tmp_path / "run"
    toy.write_hf_folder(run / "checkpoint-2", toy.llama_state(seed=2))
    last = toy.write_hf_folder(run / "last", toy.llama_state(seed=3))
    (last / "trainer_state.json").write_text(state)
    with caplog.at_level(logging.WARNING):
        found = open_checkpoints(run)
    assert [(c.name, c.step) for c in found] == [("run/checkpoint-2", 2), ("run/last", None)]
    assert f"{last / 'trainer_state.json'}: {text}" in caplog.text and "last is read without a step" in caplog.text


def test_a_trainer_state_without_a_step_is_a_final_model_not_a_step_of_the_run(tmp_path):
    run = tmp_path / "run"
    toy.write_hf_folder(run / "checkpoint-2", toy.llama_state(seed=2))
    final = toy.write_hf_folder(run / "final-fp32", toy.llama_state(seed=3))
    (final / "trainer_state.json").write_text('{"epoch": 1}')
    assert [(c.name, c.step) for c in open_checkpoints(run)] == [("run/checkpoint-2", 2)]
    assert [(c.path, c.step) for c in open_checkpoints(final)] == [(final.resolve(), None)]


def test_a_step_past_int64_in_a_name_is_read_without_a_step(tmp_path, caplog):
    run = tmp_path / "run"
    toy.write_hf_folder(run / "checkpoint-2", toy.llama_state(seed=2))
    toy.write_hf_folder(run / "checkpoint-99999999999999999999", toy.llama_state(seed=3))
    with caplog.at_level(logging.WARNING):
        found = open_checkpoints(run)
    assert [c.step for c in found] == [2, None]
    assert "checkpoint-99999999999999999999: step 99999999999999999999 is not a step" in caplog.text
    assert main(["spectra", str(run), "--store", str(tmp_path / "S"), "--device", "cpu"]) == 0
    steps = Store(tmp_path / "S").table("spectra", "matrices").groupby("checkpoint")["step"].first()
    assert steps["run/checkpoint-2"] == 2 and steps.isna()["run/checkpoint-99999999999999999999"]
