"""Property-based fuzzing of checkpoint inputs (issue 17): safetensors files mutated from valid ones, and PEFT
adapter configs, either open correctly or fail with one ``AtlasError`` line naming the file; nothing else.

"Correctly" is judged against the ``safetensors`` library itself: a file we open, it opens too, with the
same names, dtypes, shapes and bytes. Every example runs under an alarm, so a hang fails the test.
Bounded (examples and a deadline) to run in a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save

import toy_checkpoints as toy
from subspace_atlas.adapters import LoraAdapter, recorded_base
from subspace_atlas.checkpoints import open_one
from subspace_atlas.errors import AtlasError

pytestmark = pytest.mark.unit
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
                "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32,
                "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool}
OTHER_DTYPES = ["F4", "F6_E2M3", "C64", "E8M0", "f32", "", "F8_E4M3FN"]
DEEP = "__deep__"


@contextlib.contextmanager
def alarm(seconds: float = 5.0) -> Iterator[None]:
    """Fail the example, rather than the whole run, if it takes longer than ``seconds`` (a hang)."""
    def expire(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def assert_one_line(err: AtlasError, path: Path) -> None:
    text = str(err)
    assert text.startswith(f"{path}") and "\n" not in text and "\r" not in text, text


# ---------------------------------------------------------------- safetensors files

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
names = st.text(min_size=0, max_size=12)  # any code points, lone surrogates included


@st.composite
def tensors(draw) -> dict[str, torch.Tensor]:
    """A valid state dict: every dtype the library writes, 0-3 dims of 0-4, random bytes (NaNs included)."""
    state = {}
    for name in draw(st.lists(st.text("abcxyz._", min_size=1, max_size=6), max_size=4, unique=True)):
        dtype = TORCH_DTYPES[draw(st.sampled_from(sorted(TORCH_DTYPES)))]
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        data = bytearray(draw(st.binary(min_size=size, max_size=size)))
        state[name] = torch.frombuffer(data, dtype=dtype).reshape(shape) if size else torch.empty(shape, dtype=dtype)
    return state


def mutate_entry(draw, header: dict) -> None:
    """Change one field of one tensor's entry, or the entry itself, or add or drop one."""
    tensor_names = [n for n in header if n != "__metadata__"]
    if not tensor_names:
        header[draw(names)] = draw(json_values)
        return
    name = draw(st.sampled_from(tensor_names))
    entry = header[name]
    if not isinstance(entry, dict):  # an earlier mutation replaced it
        header[name] = draw(json_values)
        return
    what = draw(st.sampled_from(["shape", "dtype", "offsets", "nudge", "drop", "rename", "replace", "extra"]))
    if what == "shape":
        entry["shape"] = draw(st.lists(st.integers(-3, 2**66), max_size=4) | json_values)
    elif what == "dtype":
        entry["dtype"] = draw(st.sampled_from(sorted(TORCH_DTYPES) + OTHER_DTYPES) | json_values)
    elif what == "offsets":
        entry["data_offsets"] = draw(st.lists(st.integers(-3, 2**66), max_size=3) | json_values)
    elif what == "nudge" and _is_pair(entry.get("data_offsets")):
        k = draw(st.integers(0, 1))
        entry["data_offsets"][k] = max(0, entry["data_offsets"][k] + draw(st.integers(-9, 9)))
    elif what == "drop":
        del header[name]
    elif what == "rename":
        header[draw(names)] = header.pop(name)
    elif what == "replace":
        header[name] = draw(json_values | st.just(DEEP))
    else:
        entry[draw(st.text(max_size=4))] = draw(json_values)


def _is_pair(offsets: object) -> bool:
    return isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)


@st.composite
def safetensors_files(draw) -> bytes:
    """A file the library wrote, then mutated: its header's entries and metadata, its JSON text (nesting,
    encoding, padding), its length prefix, and its bytes."""
    blob = save(draw(tensors()))
    (length,) = struct.unpack("<Q", blob[:8])
    header, data = json.loads(blob[8:8 + length]), blob[8 + length:]
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            mutate_entry(draw, header)
        else:
            header["__metadata__"] = draw(json_values | st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
    text = json.dumps(header, ensure_ascii=draw(st.booleans()))
    depth = draw(st.sampled_from([1, 50, 5_000, 100_000]))
    text = text.replace(json.dumps(DEEP), "[" * depth + "]" * depth)
    raw = text.encode("utf-8", "surrogatepass") + b" " * draw(st.integers(0, 7))
    file = bytearray(struct.pack("<Q", draw(st.sampled_from([len(raw)] * 6 + [0, len(raw) + 1, 2**63, 2**64 - 1])))
                     + raw + data)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(file)))
        op = draw(st.sampled_from(["flip", "cut", "append", "insert"]))
        if op == "flip" and at < len(file):
            file[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del file[at:]
        elif op == "append":
            file += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            file[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(file)


def library_reads(path: Path) -> dict[str, torch.Tensor] | None:
    """What the safetensors library reads from the file; None when it refuses it."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception:  # noqa: BLE001 (any refusal counts)
        return None


def same(got: torch.Tensor, want: torch.Tensor) -> bool:
    return (got.dtype == want.dtype and got.shape == want.shape
            and torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)))


@FUZZ
@given(blob=safetensors_files())
def test_a_mutated_safetensors_file_opens_like_the_library_or_is_one_error_line(workdir, blob):
    path = workdir / "fuzz.safetensors"
    path.write_bytes(blob)
    with alarm():
        try:
            ckpt = open_one(path)
            ours = {info.name: ckpt.load(info.name) for info in ckpt.tensors()}
        except AtlasError as err:
            assert_one_line(err, path)
            event(f"refused: {str(err)[len(str(path)) + 2:][:30]}")
            return
        reference = library_reads(path)
    event(f"opened {len(ours)} tensor(s)")
    assert reference is not None, "we opened a file the safetensors library refuses"
    assert ours.keys() == reference.keys()
    for name, want in reference.items():
        assert same(ours[name], want), name


# ---------------------------------------------------------------- PEFT adapter configs

CONFIG_KEYS = ["r", "lora_alpha", "rank_pattern", "alpha_pattern", "peft_type", "use_rslora", "use_dora",
               "fan_in_fan_out", "base_model_name_or_path", "target_modules"]
patterns = st.dictionaries(st.sampled_from(["q_proj", "v_proj", "layers.0.self_attn.q_proj", ".*", "(", "[a-",
                                            "a{99999999999999999999}", "(" * 3000 + ")" * 3000]) | st.text(max_size=6),
                           st.integers(-2, 6) | st.floats() | json_values, max_size=3)


@st.composite
def adapter_configs(draw) -> object:
    """A valid LoRA config with some fields replaced by anything JSON holds, or something that is no config."""
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    for key in draw(st.lists(st.sampled_from(CONFIG_KEYS), max_size=3, unique=True)):
        if key in ("rank_pattern", "alpha_pattern"):
            config[key] = draw(patterns | json_values)
        elif key in ("r", "lora_alpha"):
            config[key] = draw(st.integers(-3, 8) | st.integers(2**63, 2**70) | st.floats() | json_values)
        else:
            config[key] = draw(json_values)
    return draw(st.just(config) | st.just(config) | st.just(config) | json_values)


@pytest.fixture(scope="module")
def adapter(workdir) -> Path:
    gen = torch.Generator().manual_seed(0)
    factors = {f"model.layers.0.self_attn.{m}": (torch.randn(2, toy.HIDDEN, generator=gen),
                                                 torch.randn(toy.HIDDEN, 2, generator=gen))
               for m in ("q_proj", "v_proj")}
    return toy.write_lora_adapter(workdir / "adapter", factors, rank=2, alpha=4)


@settings(FUZZ, max_examples=100)
@given(config=adapter_configs())
def test_any_adapter_config_merges_or_is_one_error_line(adapter, config):
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with alarm():
        try:
            lora = LoraAdapter(open_one(adapter))
            recorded_base(lora)
            for target in lora.targets():
                update = lora.update(target.name)
                assert math.isfinite(update.scale) and update.shape == target.shape
        except AtlasError as err:
            assert_one_line(err, adapter)
            event("refused")
            return
    event("merged")
