"""naming.classify: raw tensor names of common architectures → (layer, kind)."""

from __future__ import annotations

import pytest

from subspace_atlas.naming import KINDS, classify

pytestmark = pytest.mark.unit

CASES = {
    # Llama / Mistral / Qwen
    "model.layers.0.self_attn.q_proj.weight": (0, "q"),
    "model.layers.0.self_attn.k_proj.weight": (0, "k"),
    "model.layers.7.self_attn.v_proj.weight": (7, "v"),
    "model.layers.12.self_attn.o_proj.weight": (12, "o"),
    "model.layers.3.mlp.gate_proj.weight": (3, "gate"),
    "model.layers.3.mlp.up_proj.weight": (3, "up"),
    "model.layers.31.mlp.down_proj.weight": (31, "down"),
    "model.layers.5.self_attn.q_proj.bias": (5, "q"),  # Qwen2 has q/k/v biases
    "model.embed_tokens.weight": (None, "embed"),
    "lm_head.weight": (None, "unembed"),
    "model.norm.weight": (None, "other"),
    "model.layers.2.input_layernorm.weight": (2, "other"),
    "model.layers.2.post_attention_layernorm.weight": (2, "other"),
    # GPT-2
    "transformer.h.0.attn.c_attn.weight": (0, "qkv"),
    "transformer.h.11.attn.c_proj.weight": (11, "o"),
    "transformer.h.4.mlp.c_fc.weight": (4, "fc_in"),
    "transformer.h.4.mlp.c_proj.weight": (4, "fc_out"),
    "h.2.attn.c_attn.bias": (2, "qkv"),  # GPT2Model without the transformer. prefix
    "transformer.wte.weight": (None, "embed"),
    "transformer.wpe.weight": (None, "pos_embed"),
    "transformer.h.0.ln_1.weight": (0, "other"),
    "transformer.ln_f.weight": (None, "other"),
    # GPT-NeoX / Pythia
    "gpt_neox.layers.0.attention.query_key_value.weight": (0, "qkv"),
    "gpt_neox.layers.5.attention.dense.weight": (5, "o"),
    "gpt_neox.layers.5.mlp.dense_h_to_4h.weight": (5, "fc_in"),
    "gpt_neox.layers.5.mlp.dense_4h_to_h.weight": (5, "fc_out"),
    "gpt_neox.embed_in.weight": (None, "embed"),
    "embed_out.weight": (None, "unembed"),
    "gpt_neox.final_layer_norm.weight": (None, "other"),
    # BERT (and sentence-transformers, which drop the bert. prefix)
    "bert.encoder.layer.0.attention.self.query.weight": (0, "q"),
    "bert.encoder.layer.0.attention.self.key.weight": (0, "k"),
    "encoder.layer.9.attention.self.value.weight": (9, "v"),
    "bert.encoder.layer.1.attention.output.dense.weight": (1, "o"),
    "bert.encoder.layer.1.intermediate.dense.weight": (1, "fc_in"),
    "bert.encoder.layer.1.output.dense.weight": (1, "fc_out"),
    "bert.encoder.layer.1.attention.output.LayerNorm.weight": (1, "other"),
    "bert.embeddings.word_embeddings.weight": (None, "embed"),
    "embeddings.position_embeddings.weight": (None, "pos_embed"),
    "bert.embeddings.token_type_embeddings.weight": (None, "embed"),
    "bert.pooler.dense.weight": (None, "task_head"),
    "cls.predictions.transform.dense.weight": (None, "task_head"),
    "lm_head.dense.weight": (None, "task_head"),  # RoBERTa's masked-LM transform, not the unembedding
    "classifier.out_proj.weight": (None, "task_head"),
    "score.weight": (None, "task_head"),
    # Phi-3 (fused 2-D qkv and gate-up)
    "model.layers.4.self_attn.qkv_proj.weight": (4, "qkv"),
    "model.layers.4.mlp.gate_up_proj.weight": (4, "gate_up"),
    # DeepSeek-V2/V3 multi-head latent attention
    "model.layers.3.self_attn.q_a_proj.weight": (3, "q_a"),
    "model.layers.3.self_attn.q_a_layernorm.weight": (3, "other"),
    "model.layers.3.self_attn.q_b_proj.weight": (3, "q_b"),
    "model.layers.3.self_attn.kv_a_proj_with_mqa.weight": (3, "kv_a"),
    "model.layers.3.self_attn.kv_b_proj.weight": (3, "kv_b"),
    # T5 (self- and cross-attention, gated and plain feed-forward) and TransformerLens
    "encoder.block.2.layer.0.SelfAttention.q.weight": (2, "q"),
    "decoder.block.0.layer.1.EncDecAttention.k.weight": (0, "k"),
    "decoder.block.0.layer.1.EncDecAttention.o.weight": (0, "o"),
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (0, "pos_embed"),
    "encoder.block.1.layer.1.DenseReluDense.wi.weight": (1, "fc_in"),
    "encoder.block.1.layer.1.DenseReluDense.wi_0.weight": (1, "gate"),
    "encoder.block.1.layer.1.DenseReluDense.wi_1.weight": (1, "up"),
    "decoder.block.1.layer.2.DenseReluDense.wo.weight": (1, "fc_out"),
    "shared.weight": (None, "embed"),
    "blocks.4.mlp.W_in": (4, "fc_in"),
    # Unknown
    "foo.bar": (None, "other"),
    "conv1.weight": (None, "other"),
    "": (None, "other"),
}


@pytest.mark.parametrize("name,expected", list(CASES.items()), ids=lambda v: v if isinstance(v, str) else None)
def test_classify(name, expected):
    assert classify(name) == expected


def test_every_kind_is_declared():
    assert {kind for _, kind in CASES.values()} <= set(KINDS)
    assert all(isinstance(kind, str) for _, kind in map(classify, CASES))
