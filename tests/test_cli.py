"""``subspace-atlas`` end to end on real checkpoints: spectra into a store, info, reruns, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import toy_checkpoints as toy
from subspace_atlas.checkpoints import open_checkpoints
from subspace_atlas.cli import main
from subspace_atlas.naming import classify
from subspace_atlas.specs import spectra
from subspace_atlas.store import META_KEY, Store

pytestmark = pytest.mark.integration

MATRIX_COLUMNS = ["checkpoint", "checkpoint_path", "step", "tensor", "layer", "kind", "rows", "cols", "dtype",
                  "alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank", "log_alpha_norm",
                  "effective_rank"]
VALUE_COLUMNS = ["checkpoint", "checkpoint_path", "tensor", "index", "sigma"]
EXPECTED_LABELS = {
    "model.embed_tokens.weight": (None, "embed"),
    "model.layers.0.self_attn.q_proj.weight": (0, "q"),
    "model.layers.0.self_attn.v_proj.weight": (0, "v"),
    "model.layers.0.mlp.down_proj.weight": (0, "down"),
    "transformer.wte.weight": (None, "embed"),
    "transformer.wpe.weight": (None, "pos_embed"),
    "transformer.h.1.attn.c_attn.weight": (1, "qkv"),
    "transformer.h.1.attn.c_proj.weight": (1, "o"),
    "transformer.h.1.mlp.c_fc.weight": (1, "fc_in"),
    "transformer.h.1.mlp.c_proj.weight": (1, "fc_out"),
}


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def model_state(seed: int) -> dict[str, torch.Tensor]:
    """Llama-style and GPT-2-style names side by side, fp32/bf16/fp16, with 1-D tensors among them."""
    return {**toy.llama_state(seed), **toy.gpt2_state(seed)}


def make_run(root, steps=(500, 1000)) -> dict[int, dict[str, torch.Tensor]]:
    states = {}
    for k, step in enumerate(steps):
        states[step] = model_state(step)
        toy.write_hf_folder(root / f"checkpoint-{step}", states[step], fmt="safetensors" if k % 2 == 0 else "bin")
    return states


def snapshot(root) -> dict[str, tuple[bytes, int, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
            for p in sorted(root.rglob("*")) if p.is_file()}


def sigma_of(tensor: torch.Tensor) -> np.ndarray:
    return torch.linalg.svdvals(tensor.to(torch.float64)).numpy()


# ---------------------------------------------------------------- end to end


def test_spectra_on_a_run_folder_then_info(tmp_path, capsys):
    run = tmp_path / "run"
    states = make_run(run)
    store_dir = tmp_path / "S"
    rc, out, err = cli(capsys, "spectra", run, "--store", store_dir, "--device", "cpu")
    assert rc == 0, err
    assert out.startswith("spectra: computed 2 job(s), 20 matrices in ")
    assert "0 already stored" in out

    store = Store(store_dir)
    matrices = store.table("spectra", "matrices")
    values = store.table("spectra", "values")
    assert set(MATRIX_COLUMNS) <= set(matrices.columns)
    assert set(VALUE_COLUMNS) <= set(values.columns)
    assert len(matrices) == 20
    assert matrices["step"].dtype == "Int64" and matrices["layer"].dtype == "Int64"
    assert matrices["nonfinite"].eq(0).all()

    for step, state in states.items():
        name = f"run/checkpoint-{step}"
        path = str((run / f"checkpoint-{step}").resolve())
        mine = matrices[matrices["checkpoint"] == name].set_index("tensor")
        assert set(mine.index) == set(EXPECTED_LABELS)  # every 2-D float matrix, no 1-D tensor
        assert set(mine["step"]) == {step} and set(mine["checkpoint_path"]) == {path}
        assert set(mine["run"]) == {"run"}
        for tensor, (layer, kind) in EXPECTED_LABELS.items():
            row = mine.loc[tensor]
            want = state[tensor]
            assert (None if pd.isna(row["layer"]) else int(row["layer"]), row["kind"]) == (layer, kind), tensor
            assert classify(tensor) == (layer, kind)
            assert (row["rows"], row["cols"]) == tuple(want.shape)
            assert row["dtype"] == str(want.dtype).removeprefix("torch.")
            assert math.isfinite(row["alpha"]) and row["alpha"] > 1, tensor
            sig = sigma_of(want)
            lam = sig**2
            assert row["log_spectral_norm"] == pytest.approx(math.log10(lam[0]), rel=1e-6)
            assert row["log_norm"] == pytest.approx(math.log10(lam.sum()), rel=1e-6)
            assert row["stable_rank"] == pytest.approx(lam.sum() / lam[0], rel=1e-6)
            assert row["alpha_weighted"] == pytest.approx(row["alpha"] * math.log10(lam[0]), rel=1e-9)
            assert 1 <= row["effective_rank"] <= min(want.shape)
            assert math.isfinite(row["log_alpha_norm"])
            vals = values[(values["checkpoint"] == name) & (values["tensor"] == tensor)].sort_values("index")
            assert vals["index"].tolist() == list(range(min(want.shape)))
            assert set(vals["checkpoint_path"]) == {path}
            np.testing.assert_allclose(vals["sigma"].to_numpy(), sig, rtol=1e-6, atol=1e-9 * sig[0])

    rc, out, err = cli(capsys, "info", "--store", store_dir)
    assert rc == 0, err
    assert out.strip() == "spectra: 2 job(s) over 2 checkpoint(s), 4 file(s): run/checkpoint-1000, run/checkpoint-500"


def test_info_on_an_empty_store(tmp_path, capsys):
    rc, out, _ = cli(capsys, "info", "--store", tmp_path / "nothing")
    assert rc == 0
    assert out.strip() == f"{tmp_path / 'nothing'}: empty store"


def test_provenance_of_a_cli_job(tmp_path, capsys, tiny_model):
    store_dir = tmp_path / "S"
    rc, _, err = cli(capsys, "spectra", tiny_model, "--store", store_dir, "--device", "cpu", "--min-evals", "10")
    assert rc == 0, err
    ckpt = open_checkpoints(tiny_model)[0]
    store = Store(store_dir)
    (part,) = store.parts("spectra", "matrices")
    prov = json.loads(pq.read_schema(part).metadata[META_KEY])
    assert prov["params"] == dataclasses.asdict(spectra.Params(min_evals=10))
    assert prov["inputs"]["identity"] == ckpt.identity()
    assert prov["inputs"]["checkpoint"] == "tiny-model"
    assert prov["inputs"]["path"] == str(tiny_model.resolve())
    assert prov["versions"]["torch"] == torch.__version__
    assert prov["device"] == "cpu"
    assert prov["matrices"] == 4 and prov["wall_s"] >= 0
    assert part.rsplit("/", 1)[1].startswith(f"part-{prov['fingerprint']}-")
    job = store.jobs("spectra").iloc[0]
    assert job["fingerprint"] == prov["fingerprint"] and job["inputs"] == prov["inputs"]
    assert job["tables"] == {"matrices": 4, "values": 32 + 32 + 32 + 32}


def test_rerun_skips_and_force_recomputes(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    store_dir = tmp_path / "S"
    args = ("spectra", run, "--store", store_dir, "--device", "cpu")
    assert cli(capsys, *args)[0] == 0
    first = snapshot(store_dir)
    assert len([k for k in first if k.endswith(".parquet")]) == 4
    tables = {t: Store(store_dir).table("spectra", t) for t in ("matrices", "values")}

    rc, out, _ = cli(capsys, *args)
    assert rc == 0
    assert out.strip() == f"spectra: all 2 job(s) already in {store_dir}; computed nothing"
    assert snapshot(store_dir) == first  # same bytes, same mtimes, same inodes: nothing rewritten

    rc, out, _ = cli(capsys, *args, "--force")
    assert rc == 0
    assert out.startswith("spectra: computed 2 job(s), 20 matrices")
    forced = snapshot(store_dir)
    parts, new_parts = ({k for k in files if k.endswith(".parquet")} for files in (first, forced))
    assert forced.keys() - new_parts == first.keys() - parts  # the same manifests …
    assert len(new_parts) == 4 and not new_parts & parts  # … naming new files; the replaced ones are gone
    for key in first.keys() - parts:
        assert forced[key][2] != first[key][2], f"{key} was not rewritten"
    for name, before in tables.items():  # recomputed, the same numbers
        pd.testing.assert_frame_equal(Store(store_dir).table("spectra", name), before)


def test_new_checkpoint_or_new_params_compute_only_what_is_missing(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    store_dir = tmp_path / "S"
    assert cli(capsys, "spectra", run, "--store", store_dir, "--device", "cpu")[0] == 0
    toy.write_hf_folder(run / "checkpoint-1500", model_state(1500))
    rc, out, _ = cli(capsys, "spectra", run, "--store", store_dir, "--device", "cpu")
    assert rc == 0
    assert out.startswith("spectra: computed 1 job(s), 10 matrices") and "2 already stored" in out
    steps = Store(store_dir).table("spectra", "matrices").groupby("step").size().to_dict()
    assert steps == {500: 10, 1000: 10, 1500: 10}

    rc, out, _ = cli(capsys, "spectra", run / "checkpoint-500", "--store", store_dir, "--device", "cpu",
                     "--tensors", r"q_proj|c_attn")
    assert rc == 0 and out.startswith("spectra: computed 1 job(s), 2 matrices")
    assert len(Store(store_dir).jobs("spectra")) == 4


# ---------------------------------------------------------------- NaN / Inf


@pytest.mark.parametrize("batch_mb", [None, 1])
def test_nonfinite_matrix_gets_a_row_and_the_rest_are_fine(tmp_path, capsys, batch_mb):
    gen = torch.Generator().manual_seed(0)
    state = {f"model.layers.0.self_attn.{p}_proj.weight": torch.randn(32, 32, generator=gen) for p in "qkv"}
    state["model.layers.0.mlp.up_proj.weight"] = torch.randn(48, 32, generator=gen)
    state["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
    state["model.layers.0.self_attn.k_proj.weight"][1, 2] = float("inf")
    state["model.layers.0.self_attn.k_proj.weight"][3, 4] = float("-inf")
    path = toy.write_safetensors(tmp_path / "nan.safetensors", state)
    extra = [] if batch_mb is None else ["--batch-mb", batch_mb]  # 1 MB: q, k, v are decomposed as one batch
    rc, out, err = cli(capsys, "spectra", path, "--store", tmp_path / "S", "--device", "cpu", *extra)
    assert rc == 0, err
    store = Store(tmp_path / "S")
    rows = store.table("spectra", "matrices").set_index("tensor")
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    assert rows.loc[q, "nonfinite"] == 1 and rows.loc[k, "nonfinite"] == 2
    for bad in (q, k):
        assert math.isnan(rows.loc[bad, "alpha"]) and math.isnan(rows.loc[bad, "log_norm"])
        assert rows.loc[bad, "alpha_warning"] == "non-finite values"
    values = store.table("spectra", "values")
    assert set(values["tensor"]) == {"model.layers.0.self_attn.v_proj.weight", "model.layers.0.mlp.up_proj.weight"}
    for good in values["tensor"].unique():
        assert rows.loc[good, "nonfinite"] == 0 and math.isfinite(rows.loc[good, "alpha"])
        got = values[values["tensor"] == good].sort_values("index")["sigma"].to_numpy()
        np.testing.assert_allclose(got, sigma_of(state[good]), rtol=1e-6)


def test_checkpoint_whose_every_matrix_is_nonfinite(tmp_path, capsys):
    path = toy.write_safetensors(tmp_path / "allnan.safetensors",
                                 {"a.weight": torch.full((30, 30), float("nan")), "b.weight": torch.ones(30)})
    rc, _, err = cli(capsys, "spectra", path, "--store", tmp_path / "S", "--device", "cpu")
    assert rc == 0, err
    store = Store(tmp_path / "S")
    row = store.table("spectra", "matrices").iloc[0]
    assert (row["tensor"], row["nonfinite"]) == ("a.weight", 900)
    assert len(store.table("spectra", "values")) == 0


# ---------------------------------------------------------------- bad input


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _missing(tmp):
    return [tmp / "nope"], ["nope: no such file or folder"]


def _empty(tmp):
    (tmp / "empty").mkdir()
    return [tmp / "empty"], ["empty: no checkpoint found"]


def _truncated(tmp):
    path = toy.truncate(toy.write_safetensors(tmp / "cut.safetensors", toy.llama_state()))
    return [path], ["cut.safetensors: truncated: tensor"]


def _garbage(tmp):
    path = tmp / "junk.safetensors"
    path.write_bytes(os.urandom(2048))
    return [path], ["junk.safetensors: not a readable safetensors file"]


def _code_running_pickle(tmp):
    path = tmp / "evil.pt"
    torch.save({"w": torch.randn(8, 8), "x": _RunsCode(tmp / "code-ran")}, path)
    return [path], ["evil.pt: refused: this pickle would run code"]


def _only_1d(tmp):
    path = toy.write_safetensors(tmp / "norms.safetensors", {"ln.weight": torch.ones(8), "ln.bias": torch.zeros(8)})
    return [path], ["norms.safetensors: no 2-D floating-point weight matrices"]


def _unknown_extension(tmp):
    path = tmp / "weights.npz"
    path.write_bytes(b"\x93NUMPY not a checkpoint")
    return [path], ["weights.npz: unknown checkpoint format"]


def _missing_shard(tmp):
    folder = toy.write_sharded(tmp / "sharded", toy.llama_state(), shards=2)
    (folder / toy.shard_names(2)[1]).unlink()
    return [folder], [f"{toy.shard_names(2)[1]}: listed by"]


def _bad_index(tmp):
    folder = toy.write_sharded(tmp / "sharded", toy.llama_state(), shards=2)
    (folder / "model.safetensors.index.json").write_text("{oops")
    return [folder], ["model.safetensors.index.json: not a valid shard index"]


def _mixed_model(tmp):
    state = {**toy.llama_state(), "input_ids": torch.arange(12).reshape(3, 4),
             "attention_mask": torch.ones(3, 4, dtype=torch.bool)}
    return toy.write_safetensors(tmp / "mixed.safetensors", state)


def _tensors_1d(tmp):
    return [_mixed_model(tmp), "--tensors", "input_layernorm"], [
        "mixed.safetensors: tensor 'model.layers.0.input_layernorm.weight' is 1-D float32"]


def _tensors_int(tmp):
    return [_mixed_model(tmp), "--tensors", "^input_ids$"], ["mixed.safetensors: tensor 'input_ids' is 2-D int64"]


def _tensors_bool(tmp):
    return [_mixed_model(tmp), "--tensors", "mask"], ["mixed.safetensors: tensor 'attention_mask' is 2-D bool"]


def _tensors_nothing(tmp):
    return [_mixed_model(tmp), "--tensors", "nothing_like_this"], [
        "mixed.safetensors: no tensor matches --tensors 'nothing_like_this'"]


def _tensors_bad_regex(tmp):
    return [_mixed_model(tmp), "--tensors", "q_proj("], ["--tensors 'q_proj(': not a valid regular expression"]


def _bad_device(tmp):
    return [_mixed_model(tmp), "--device", "tpu"], ["--device tpu: expected auto, cpu or cuda"]


BAD_INPUTS = [_missing, _empty, _truncated, _garbage, _code_running_pickle, _only_1d, _unknown_extension,
              _missing_shard, _bad_index, _tensors_1d, _tensors_int, _tensors_bool, _tensors_nothing,
              _tensors_bad_regex, _bad_device]


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    """A store that already holds a run's results, and a checkpoint it does not hold yet."""
    root = tmp_path_factory.mktemp("filled")
    make_run(root / "run")
    store_dir = root / "S"
    assert main(["spectra", str(root / "run"), "--store", str(store_dir), "--device", "cpu"]) == 0
    fresh = toy.write_hf_folder(root / "fresh", model_state(7))
    return store_dir, root / "run", fresh


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_is_one_error_line_and_the_store_is_untouched(tmp_path, capsys, filled_store, bad):
    store_dir, run, fresh = filled_store
    before = snapshot(store_dir)
    args, expected = bad(tmp_path)
    if "--tensors" not in args and "--device" not in args:
        # A good checkpoint first, one already stored and one not: nothing is computed before the bad one fails.
        args = [run, fresh, *args]
    rc, out, err = cli(capsys, "spectra", *args, "--store", store_dir)
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("subspace-atlas: error: ")
    for text in expected:
        assert text in lines[0]
    assert snapshot(store_dir) == before
    assert not (tmp_path / "code-ran").exists()


def test_bad_input_never_creates_a_store(tmp_path, capsys):
    rc, _, err = cli(capsys, "spectra", tmp_path / "nope", "--store", tmp_path / "S")
    assert rc == 2 and err.startswith("subspace-atlas: error: ")
    assert not (tmp_path / "S").exists()


def test_copy_of_a_stored_checkpoint_is_not_recomputed(tmp_path, capsys, tiny_model):
    store_dir = tmp_path / "S"
    assert cli(capsys, "spectra", tiny_model, "--store", store_dir, "--device", "cpu")[0] == 0
    copy = shutil.copytree(tiny_model, tmp_path / "moved" / "tiny-model")
    rc, out, _ = cli(capsys, "spectra", copy, "--store", store_dir, "--device", "cpu")
    assert rc == 0 and "computed nothing" in out


def test_name_equals_path_names_the_checkpoint(tmp_path, capsys, tiny_model):
    store_dir = tmp_path / "S"
    rc, _, err = cli(capsys, "spectra", f"base={tiny_model}", "--store", store_dir, "--device", "cpu")
    assert rc == 0, err
    assert set(Store(store_dir).table("spectra", "matrices")["checkpoint"]) == {"base"}
    rc, out, _ = cli(capsys, "info", "--store", store_dir)
    assert out.strip() == "spectra: 1 job(s) over 1 checkpoint(s), 2 file(s): base"


def test_identical_final_model_and_last_checkpoint_both_stored(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    # The Trainer's output_dir often holds a final model byte-identical to its last checkpoint.
    shutil.copyfile(run / "checkpoint-500" / "model.safetensors", run / "model.safetensors")
    store_dir = tmp_path / "S"
    rc, out, err = cli(capsys, "spectra", run, "--store", store_dir, "--device", "cpu")
    assert rc == 0, err
    assert out.startswith("spectra: computed 3 job(s), 30 matrices")
    matrices = Store(store_dir).table("spectra", "matrices")
    assert matrices.groupby("checkpoint").size().to_dict() == {
        "run/checkpoint-500": 10, "run/checkpoint-1000": 10, "run/final": 10}
    final = matrices[matrices["checkpoint"] == "run/final"].set_index("tensor")["alpha"]
    first = matrices[matrices["checkpoint"] == "run/checkpoint-500"].set_index("tensor")["alpha"]
    pd.testing.assert_series_equal(final.sort_index(), first.sort_index())


def test_messages_say_what_is_wrong(capsys, tmp_path):
    """The store path is a file; a checkpoint holds only 2-D integer buffers; a pickle names the code it would run."""
    ckpt = tmp_path / "m.safetensors"
    toy.write_safetensors(ckpt, {"w": torch.randn(24, 24)})
    store_file = tmp_path / "store.txt"
    store_file.write_text("not a folder")
    rc, _, err = cli(capsys, "spectra", ckpt, "--store", store_file)
    assert rc == 2 and f"--store {store_file}: exists and is not a folder" in err
    assert store_file.read_text() == "not a folder"

    ints = tmp_path / "ints.safetensors"
    toy.write_safetensors(ints, {"ids": torch.zeros(2, 8, dtype=torch.int64), "b": torch.zeros(8)})
    rc, _, err = cli(capsys, "spectra", ints, "--store", tmp_path / "s")
    assert rc == 2 and "1 2-D of a non-float dtype, 1 not 2-D" in err

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.randn(24, 24), "x": Evil()}, evil)
    rc, _, err = cli(capsys, "spectra", evil, "--store", tmp_path / "s")
    assert rc == 2 and "getcwd" in err
