"""Every common model family, built by transformers' own classes from a tiny config, through spectra and intruders.

Each model gets random weights and is written by its own ``save_pretrained`` (whatever layout that
writes: per-expert for Mixtral and DeepSeek, fused 3-D for gpt-oss). The count of matrices it should
give comes from the model's ``state_dict()`` alone: every weight of two or three dimensions (biases,
norms and sinks aside), a tied weight once, a 3-D expert tensor one matrix per expert (two for a fused
gate_up). The reference singular values are ``torch.linalg.svdvals`` of the model's own parameters.
A tied embedding is its one row marked ``tied``; untied families have no ``tied`` column.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from subspace_atlas.cli import main
from subspace_atlas.store import Store

pytestmark = pytest.mark.integration
EXPERTS = 4
UNLAYERED = {"embed", "pos_embed", "unembed", "task_head"}  # kinds that belong to no block
DECODER = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2)
ENCODER = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)


def _build(config: str, model: str, **settings) -> Callable[[], torch.nn.Module]:
    """A builder of ``transformers.<model>(transformers.<config>(**settings))``, seeded."""
    def build() -> torch.nn.Module:
        import transformers

        torch.manual_seed(0)
        return getattr(transformers, model)(getattr(transformers, config)(**settings))
    return build


MOE = dict(num_experts_per_tok=2)
FAMILIES = {
    "llama3": _build("LlamaConfig", "LlamaForCausalLM", **DECODER, tie_word_embeddings=True),  # as Llama 3.2 1B
    "qwen2": _build("Qwen2Config", "Qwen2ForCausalLM", **DECODER),
    "qwen3": _build("Qwen3Config", "Qwen3ForCausalLM", **DECODER, head_dim=8),
    "qwen3_moe": _build("Qwen3MoeConfig", "Qwen3MoeForCausalLM", **DECODER, **MOE, head_dim=8,
                        moe_intermediate_size=20, num_experts=EXPERTS),
    "mixtral": _build("MixtralConfig", "MixtralForCausalLM", **DECODER, **MOE, num_local_experts=EXPERTS),
    "mistral": _build("MistralConfig", "MistralForCausalLM", **DECODER),
    "gemma2": _build("Gemma2Config", "Gemma2ForCausalLM", **DECODER, head_dim=8),
    "gemma3": _build("Gemma3TextConfig", "Gemma3ForCausalLM", **DECODER, head_dim=8),
    "phi3": _build("Phi3Config", "Phi3ForCausalLM", **DECODER, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "olmo2": _build("Olmo2Config", "Olmo2ForCausalLM", **DECODER, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "gpt2": _build("GPT2Config", "GPT2LMHeadModel", vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                   bos_token_id=0, eos_token_id=0),
    "gpt_neox": _build("GPTNeoXConfig", "GPTNeoXForCausalLM", **ENCODER),
    "bert": _build("BertConfig", "BertForMaskedLM", **ENCODER, max_position_embeddings=32),
    "roberta": _build("RobertaConfig", "RobertaForMaskedLM", **ENCODER, max_position_embeddings=34),
    "t5": _build("T5Config", "T5ForConditionalGeneration", vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                 num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=True),
    "deepseek_v3": _build("DeepseekV3Config", "DeepseekV3ForCausalLM", **DECODER, **MOE, moe_intermediate_size=20,
                          n_routed_experts=EXPERTS, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=16,
                          kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8, n_group=1,
                          topk_group=1),
    "gpt_oss": _build("GptOssConfig", "GptOssForCausalLM", **{**DECODER, "intermediate_size": 20}, **MOE,
                      head_dim=8, num_local_experts=EXPERTS),
}
TIED = {"llama3", "gemma2", "gemma3", "gpt2", "bert", "roberta", "t5"}  # lm_head (T5: also both embed_tokens)
MOES = {"qwen3_moe", "mixtral", "deepseek_v3", "gpt_oss"}
# Kinds the family's names must give, beyond those every family has.
NAMED = {"phi3": {"qkv", "gate_up"}, "gpt2": {"qkv", "fc_in", "fc_out", "pos_embed"},
         "gpt_neox": {"qkv", "fc_in", "fc_out"}, "bert": {"q", "k", "v", "fc_in", "fc_out", "pos_embed", "task_head"},
         "roberta": {"q", "k", "v", "fc_in", "fc_out", "pos_embed", "task_head"},
         "t5": {"q", "k", "v", "gate", "up", "fc_out", "pos_embed"},
         "deepseek_v3": {"q_a", "q_b", "kv_a", "kv_b", "router", "gate", "up", "down"},
         "gpt_oss": {"q", "k", "v", "router", "gate", "up", "down"}}


def _weights(model: torch.nn.Module) -> tuple[int, list[list[str]], dict[str, torch.Tensor]]:
    """The matrix count the model should give, its tied groups, and its 2-D weights by name."""
    count, by_storage, matrices = 0, {}, {}
    for name, tensor in model.state_dict().items():
        if tensor.dim() not in (2, 3) or name.endswith("bias") or not tensor.is_floating_point():
            continue
        group = by_storage.setdefault((tensor.data_ptr(), tuple(tensor.shape)), [])
        group.append(name)
        if len(group) > 1:
            continue
        if tensor.dim() == 2:
            count += 1
            matrices[name] = tensor.detach().double()
        else:
            count += tensor.shape[0] * (2 if name.endswith("gate_up_proj") else 1)
    return count, [group for group in by_storage.values() if len(group) > 1], matrices


def _fine_tune(base: Path, folder: Path) -> Path:
    """A copy of ``base`` with every weight of two or more dimensions nudged by a tenth of its spread."""
    folder.mkdir()
    shutil.copy(base / "config.json", folder / "config.json")
    gen = torch.Generator().manual_seed(1)
    state = load_file(base / "model.safetensors")
    save_file({k: v + 0.1 * v.std() * torch.randn(v.shape, generator=gen) if v.dim() > 1 else v
               for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _sigmas(values: pd.DataFrame, tensor: str) -> torch.Tensor:
    rows = values[values["tensor"] == tensor].sort_values("index")
    return torch.tensor(rows["sigma"].to_numpy(), dtype=torch.float64)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_weight_matrix_is_analysed_once_under_its_familys_names(tmp_path, family):
    model = FAMILIES[family]()
    count, tied, matrices = _weights(model)
    model.save_pretrained(tmp_path / "base")
    tuned = _fine_tune(tmp_path / "base", tmp_path / "tuned")
    store = ["--store", str(tmp_path / "S"), "--device", "cpu"]
    assert main(["spectra", str(tmp_path / "base"), *store]) == 0
    assert main(["intruders", str(tuned), "--base", str(tmp_path / "base"), *store]) == 0
    spectra, values = (Store(tmp_path / "S").table("spectra", table) for table in ("matrices", "values"))
    intruders = Store(tmp_path / "S").table("intruders", "matrices")

    assert len(spectra) == spectra["tensor"].nunique() == count
    assert sorted(intruders["tensor"]) == sorted(spectra["tensor"])
    assert spectra["kind"].ne("other").all(), spectra.loc[spectra["kind"].eq("other"), "tensor"].tolist()
    unplaced = spectra[spectra["layer"].isna() & ~spectra["kind"].isin(UNLAYERED)]
    assert unplaced.empty, unplaced["tensor"].tolist()
    assert set(spectra["layer"].dropna()) == {0, 1}
    assert {"embed"} | NAMED.get(family, {"q", "k", "v", "o", "gate", "up", "down"}) <= set(spectra["kind"])
    assert bool(tied) == (family in TIED)
    for group in tied:  # analysed once, as the input embedding
        assert spectra.loc[spectra["tensor"].isin(group), "kind"].tolist() == ["embed"], group
    for table in (spectra, intruders):  # and marked tied there, in tied families only
        if family in TIED:
            marked = table.loc[table["tied"].fillna(False), "tensor"].tolist()
            assert len(marked) == 1 and any(marked[0] in group for group in tied), marked
            assert table.loc[table["tied"].fillna(False), "kind"].tolist() == ["embed"]
        else:
            assert "tied" not in table
    experts = spectra[spectra["expert"].notna()] if "expert" in spectra else spectra.iloc[:0]
    if family in MOES:
        assert set(experts["kind"]) == {"gate", "up", "down"}
        assert experts.groupby(["layer", "kind"]).size().eq(EXPERTS).all()
    else:
        assert experts.empty
    for name in set(matrices) & set(spectra["tensor"]):
        torch.testing.assert_close(_sigmas(values, name), torch.linalg.svdvals(matrices[name]), rtol=1e-4, atol=1e-6)
