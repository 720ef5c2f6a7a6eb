"""``subspace-atlas intruders`` end to end: formats, adapters merged on the fly, caching, bad pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import toy_checkpoints as toy
from subspace_atlas import cli, linalg
from subspace_atlas.store import Store
from subspace_atlas.svdcache import default_root

pytestmark = pytest.mark.integration
Q = "model.layers.0.self_attn.q_proj.weight"
V = "model.layers.0.self_attn.v_proj.weight"
DOWN = "model.layers.0.mlp.down_proj.weight"


def fine_tune(state: dict, seed: int = 1, size: float = 0.05, prefix: str = "") -> dict:
    """Every matrix nudged by ``size`` of its scale, stored in its own dtype, names under ``prefix``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        nudged = t.float() + size * t.float().std() * torch.randn(t.shape, generator=gen) if t.dim() == 2 else t.float()
        out[prefix + name] = nudged.to(t.dtype)
    return out


@pytest.fixture
def base(tmp_path, llama_state):
    return toy.write_hf_folder(tmp_path / "base", llama_state)


def intruders(tmp_path, *args) -> int:
    return cli.main(["intruders", "--store", str(tmp_path / "store"), *map(str, args)])


def test_full_checkpoints_in_any_format_with_a_prefix(tmp_path, capsys, base, llama_state):
    a = toy.write_safetensors(tmp_path / "a.safetensors", fine_tune(llama_state, 1))
    b = toy.write_torch(tmp_path / "b.pt", fine_tune(llama_state, 2, prefix="wrapper."))  # names under a prefix
    assert intruders(tmp_path, "--base", base, a, b, "--side", "both", "--epsilon", "0.5", "0.9") == 0
    store = Store(tmp_path / "store")
    summary = store.table("intruders", "summary")
    assert set(summary["checkpoint"]) == {"a", "b"} and set(summary["base"]) == {"base"}
    assert set(summary["tensor"]) == {Q, V, DOWN, "model.embed_tokens.weight"}  # base names, not "wrapper.…"
    assert set(summary["epsilon"]) == {0.5, 0.9} and set(summary["side"]) == {"left", "right"}
    assert set(summary["kind"]) == {"q", "v", "down", "embed"} and set(summary["layer"].dropna()) == {0}
    vectors = store.table("intruders", "vectors")
    assert vectors["max_cos"].between(0, 1 + 1e-6).all()
    jobs = store.jobs("intruders")
    assert {j["base"] for j in jobs["inputs"]} == {"base"}
    # Rerun: nothing to do.
    capsys.readouterr()
    assert intruders(tmp_path, "--base", base, a, b, "--side", "both", "--epsilon", "0.5", "0.9") == 0
    assert "computed nothing" in capsys.readouterr().out


def test_base_is_decomposed_once_for_many_fine_tunes_and_cached_across_runs(tmp_path, base, llama_state,
                                                                               monkeypatch):
    tuned = [toy.write_safetensors(tmp_path / f"t{i}.safetensors", fine_tune(llama_state, i)) for i in range(3)]
    calls = []
    real = linalg.svd
    monkeypatch.setattr(linalg, "svd", lambda mats, *a, **k: calls.append(tuple(mats.shape)) or real(mats, *a, **k))
    assert intruders(tmp_path, "--base", base, *tuned, "--tensors", "q_proj") == 0
    assert len(calls) == 1 + 3  # the base once, each fine-tune once
    calls.clear()
    extra = toy.write_safetensors(tmp_path / "t9.safetensors", fine_tune(llama_state, 9))
    assert intruders(tmp_path, "--base", base, extra, "--tensors", "q_proj") == 0
    assert len(calls) == 1  # the base's SVD came from the cache


def test_a_corrupt_cache_entry_is_recomputed(tmp_path, base, llama_state):
    tuned = toy.write_safetensors(tmp_path / "t.safetensors", fine_tune(llama_state, 1))
    assert intruders(tmp_path, "--base", base, tuned, "--tensors", "q_proj") == 0
    entries = list(default_root().glob("svd/*/*.safetensors"))
    assert len(entries) == 1
    entries[0].write_bytes(b"garbage")
    first = Store(tmp_path / "store").table("intruders", "vectors")
    assert intruders(tmp_path, "--base", base, tuned, "--tensors", "q_proj", "--force") == 0
    again = Store(tmp_path / "store").table("intruders", "vectors")
    np.testing.assert_allclose(again["max_cos"], first["max_cos"], atol=1e-6)


def lora_factors(state: dict, modules: list[str], rank: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    factors = {}
    for module in modules:
        rows, cols = state[f"{module}.weight"].shape
        factors[module] = (0.3 * torch.randn(rank, cols, generator=gen), 0.3 * torch.randn(rows, rank, generator=gen))
    return factors


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_adapter_folders_merge_on_the_fly_like_a_merged_model(tmp_path, base, llama_state, rslora):
    modules = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]
    factors = lora_factors(llama_state, modules, rank=4)
    adapter = toy.write_lora_adapter(tmp_path / "adapter", factors, rank=4, alpha=8, base_path=str(base),
                                     rslora=rslora)
    scale = 8 / (2 if rslora else 4)
    merged = dict(llama_state)
    for module, (a, b) in factors.items():
        w = llama_state[f"{module}.weight"]
        merged[f"{module}.weight"] = (w.float() + scale * b @ a).to(w.dtype)
    merged_path = toy.write_safetensors(tmp_path / "merged.safetensors", merged)
    assert intruders(tmp_path, "--base", base, adapter, merged_path, "--tensors", "q_proj|down_proj",
                     "--side", "both") == 0
    vectors = Store(tmp_path / "store").table("intruders", "vectors")
    by = {name: frame.sort_values(["tensor", "side", "index"]).reset_index(drop=True)
          for name, frame in vectors.groupby("checkpoint")}
    # down_proj is bf16 in the base: the merged file rounds W0 + ΔW to bf16, the adapter path does not.
    np.testing.assert_allclose(by["adapter"]["max_cos"], by["merged"]["max_cos"], atol=2e-2)
    np.testing.assert_allclose(by["adapter"]["sigma"], by["merged"]["sigma"], rtol=1e-2)
    q = lambda f: f[f["tensor"] == Q]  # noqa: E731  (fp32 in the base: no rounding, tight agreement)
    np.testing.assert_allclose(q(by["adapter"])["max_cos"], q(by["merged"])["max_cos"], atol=1e-5)
    matrices = Store(tmp_path / "store").table("intruders", "matrices")
    assert set(matrices.loc[matrices["checkpoint"] == "adapter", "lora_rank"]) == {4}


def test_gpt2_conv1d_adapter_is_transposed_like_peft(tmp_path):
    state = toy.gpt2_state()
    base = toy.write_hf_folder(tmp_path / "gpt2", state)
    module = "transformer.h.1.mlp.c_fc"
    rows, cols = state[f"{module}.weight"].shape  # (in, out) as GPT-2 stores it
    gen = torch.Generator().manual_seed(0)
    a, b = 0.3 * torch.randn(2, rows, generator=gen), 0.3 * torch.randn(cols, 2, generator=gen)  # A: r×in, B: out×r
    adapter = toy.write_lora_adapter(tmp_path / "adapter", {module: (a, b)}, rank=2, alpha=2, fan_in_fan_out=True)
    merged = dict(state)
    merged[f"{module}.weight"] = state[f"{module}.weight"] + (b @ a).T
    merged_path = toy.write_safetensors(tmp_path / "merged.safetensors", merged)
    assert intruders(tmp_path, "--base", base, adapter, merged_path, "--tensors", "c_fc") == 0
    vectors = Store(tmp_path / "store").table("intruders", "vectors")
    got = {c: f.sort_values("index")["sigma"].to_numpy() for c, f in vectors.groupby("checkpoint")}
    np.testing.assert_allclose(got["adapter"], got["merged"], rtol=1e-5)


def test_adapter_run_folder_gets_steps(tmp_path, base, llama_state):
    modules = ["model.layers.0.self_attn.q_proj"]
    for step in (10, 20):
        toy.write_lora_adapter(tmp_path / "run" / f"checkpoint-{step}", lora_factors(llama_state, modules, 2, step),
                               rank=2, alpha=4)
    assert intruders(tmp_path, "--base", base, tmp_path / "run") == 0
    summary = Store(tmp_path / "store").table("intruders", "summary")
    assert sorted(summary["step"].unique()) == [10, 20] and set(summary["run"]) == {"run"}
    assert set(summary["tensor"]) == {Q}


# ---------------------------------------------------------------- bad pairs


def expect_error(tmp_path, capsys, *args) -> str:
    before = sorted(p.name for p in (tmp_path / "store").rglob("*")) if (tmp_path / "store").exists() else []
    assert intruders(tmp_path, *args) == 2
    after = sorted(p.name for p in (tmp_path / "store").rglob("*")) if (tmp_path / "store").exists() else []
    assert after == before  # nothing stored
    return capsys.readouterr().err


def test_shape_mismatch_names_both_tensors(tmp_path, capsys, base, llama_state):
    bad = fine_tune(llama_state)
    bad[Q] = torch.zeros(3, 5)
    path = toy.write_safetensors(tmp_path / "bad.safetensors", bad)
    err = expect_error(tmp_path, capsys, "--base", base, path)
    assert Q in err and "[3, 5]" in err and "is this a fine-tune" in err


def test_missing_tensors_are_named(tmp_path, capsys, base, llama_state):
    partial = {k: v for k, v in fine_tune(llama_state).items() if k != DOWN}
    path = toy.write_safetensors(tmp_path / "partial.safetensors", partial)
    err = expect_error(tmp_path, capsys, "--base", base, path)
    assert DOWN in err and "--tensors" in err


def test_adapter_trained_on_another_base(tmp_path, capsys, base, llama_state):
    other = toy.write_hf_folder(tmp_path / "other-base", toy.llama_state(seed=5))
    adapter = toy.write_lora_adapter(tmp_path / "adapter", lora_factors(llama_state, ["model.layers.0.self_attn.q_proj"], 2),
                                     rank=2, alpha=4, base_path=str(other))
    err = expect_error(tmp_path, capsys, "--base", base, adapter)
    assert "trained on" in err and "other-base" in err


def test_unrelated_model_of_the_same_shapes_is_refused(tmp_path, capsys, base):
    stranger = toy.write_safetensors(tmp_path / "stranger.safetensors", toy.llama_state(seed=7))
    err = expect_error(tmp_path, capsys, "--base", base, stranger)
    assert "does not look like a fine-tune of the base" in err


def test_adapter_targeting_a_module_the_base_lacks(tmp_path, capsys, base):
    adapter = toy.write_lora_adapter(tmp_path / "adapter", {"model.layers.7.self_attn.q_proj":
                                                           (torch.ones(2, 32), torch.ones(32, 2))}, rank=2, alpha=4)
    err = expect_error(tmp_path, capsys, "--base", base, adapter)
    assert "model.layers.7.self_attn.q_proj.weight" in err and "lacks" in err


def test_dora_adapters_are_refused_clearly(tmp_path, capsys, base, llama_state):
    adapter = toy.write_lora_adapter(tmp_path / "adapter", lora_factors(llama_state, ["model.layers.0.self_attn.q_proj"], 2),
                                     rank=2, alpha=4, use_dora=True)
    assert "DoRA" in expect_error(tmp_path, capsys, "--base", base, adapter)


def test_base_must_be_given_and_be_one_checkpoint(tmp_path, capsys, base, llama_state):
    with pytest.raises(SystemExit):
        cli.main(["intruders", str(base)])
    assert "--base" in capsys.readouterr().err
    run = tmp_path / "run"
    for step in (1, 2):
        toy.write_hf_folder(run / f"checkpoint-{step}", llama_state)
    assert "run folder" in expect_error(tmp_path, capsys, "--base", run, base)


def test_bad_epsilon_is_one_error_line(tmp_path, capsys, base):
    assert "epsilon" in expect_error(tmp_path, capsys, "--base", base, base, "--epsilon", "2")
