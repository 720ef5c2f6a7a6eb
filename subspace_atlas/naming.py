"""Map raw tensor names of common architectures to a ``(layer, kind)`` pair, MoE experts and attention heads
to their index.

Kinds: q k v qkv o q_a q_b kv_a kv_b up gate gate_up down fc_in fc_out router embed pos_embed unembed
task_head other. ``qkv`` is a fused query-key-value matrix (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``,
Phi-3 ``qkv_proj``); ``gate_up`` fused gate and up projections left whole (Phi-3 ``gate_up_proj``, or an
expert's whose halves ``views`` cannot split); ``q_a`` ``q_b`` ``kv_a`` ``kv_b`` the low-rank query and
key-value projections of multi-head latent attention (DeepSeek-V2/V3 ``q_a_proj``, ``q_b_proj``,
``kv_a_proj_with_mqa``, ``kv_b_proj``): none is one of q, k or v; ``router`` an MoE layer's
expert-choosing matrix; ``embed`` an input embedding table (token, or BERT's token types); ``pos_embed``
absolute or relative position embeddings (T5's per-block ``relative_attention_bias``); ``task_head`` a task
head's matrix (BERT pooler, masked-LM transform, classifier). Unknown names map to ``(None, "other")``
rather than failing, so any checkpoint can be analysed. Tied weights are stored, and so named, once.
A TransformerLens per-head matrix (``attn.W_Q[head 3]``, cut by ``views``) has its head's index; the heads
joined (``attn.W_Q[heads]``) have none. Either keeps its projection's kind.
"""

from __future__ import annotations

import re

KINDS = ("q", "k", "v", "qkv", "o", "q_a", "q_b", "kv_a", "kv_b", "up", "gate", "gate_up", "down", "fc_in",
         "fc_out", "router", "embed", "pos_embed", "unembed", "task_head", "other")

# The block index: Llama/Qwen/BERT/NeoX `layers.3` / `layer.3`, GPT-2 `h.3`, TransformerLens/T5 `blocks.3`/`block.3`.
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")

# One routed expert: stored on its own (`experts.3.w1.weight`, `experts.3.gate_proj.weight`) or cut from
# a fused 3-D tensor (`experts.gate_up_proj[3].gate`, `experts.down_proj[3]`; see `views`).
_EXPERT = re.compile(r"(?:^|\.)experts\.(?:(\d+)\.(\w+)|(\w+)\[(\d+)\](?:\.(gate|up))?)")
# One attention head's matrix, cut from a TransformerLens per-head tensor (`attn.W_Q[head 3]`; see `views`).
_HEAD = re.compile(r"(?:^|\.)attn\._?W_[QKVO]\[head (\d+)\]$")
_EXPERT_KINDS = {"w1": "gate", "gate_proj": "gate", "gate": "gate", "w3": "up", "up_proj": "up", "up": "up",
                 "w2": "down", "down_proj": "down", "gate_up_proj": "gate_up"}

# Ordered: the first pattern that matches the name (searched anywhere) decides the kind.
_KIND_PATTERNS: tuple[tuple[str, str], ...] = (
    # MoE routers (Mixtral `block_sparse_moe.gate`, Qwen-MoE `mlp.gate`, gpt-oss `mlp.router`, Llama 4
    # `feed_forward.router`, Qwen2-MoE `shared_expert_gate`) and shared experts
    (r"(?:mlp|block_sparse_moe|feed_forward|moe)\.(?:gate|router|shared_expert_gate)\.", "router"),
    (r"shared_experts?\.gate_proj\.", "gate"), (r"shared_experts?\.up_proj\.", "up"),
    (r"shared_experts?\.down_proj\.", "down"),
    # Task heads (before `lm_head`: RoBERTa's masked-LM transform is `lm_head.dense`)
    (r"(?:^|\.)(?:pooler|predictions\.transform|lm_head)\.dense\.", "task_head"),
    (r"(?:^|\.)(?:classifier|score|qa_outputs)\.", "task_head"),
    # Llama / Mistral / Qwen / Gemma / OLMo; Phi-3 fuses qkv and gate-up; DeepSeek's latent attention
    (r"self_attn\.q_proj\.", "q"), (r"self_attn\.k_proj\.", "k"), (r"self_attn\.v_proj\.", "v"),
    (r"self_attn\.o_proj\.", "o"),
    (r"self_attn\.qkv_proj\.", "qkv"), (r"self_attn\.q_a_proj\.", "q_a"), (r"self_attn\.q_b_proj\.", "q_b"),
    (r"self_attn\.kv_a_proj(?:_with_mqa)?\.", "kv_a"), (r"self_attn\.kv_b_proj\.", "kv_b"),
    (r"mlp\.gate_proj\.", "gate"), (r"mlp\.up_proj\.", "up"), (r"mlp\.down_proj\.", "down"),
    (r"mlp\.gate_up_proj\.", "gate_up"),
    (r"embed_tokens\.", "embed"), (r"(?:^|\.)lm_head\.", "unembed"),
    # GPT-2 (Conv1D weights are stored transposed; spectra do not care)
    (r"attn\.c_attn\.", "qkv"), (r"attn\.c_proj\.", "o"), (r"mlp\.c_fc\.", "fc_in"),
    (r"mlp\.c_proj\.", "fc_out"), (r"(?:^|\.)wte\.", "embed"), (r"(?:^|\.)wpe\.", "pos_embed"),
    # GPT-NeoX
    (r"attention\.query_key_value\.", "qkv"), (r"attention\.dense\.", "o"),
    (r"mlp\.dense_h_to_4h\.", "fc_in"), (r"mlp\.dense_4h_to_h\.", "fc_out"),
    (r"(?:^|\.)embed_in\.", "embed"), (r"(?:^|\.)embed_out\.", "unembed"),
    # BERT
    (r"attention\.self\.query\.", "q"), (r"attention\.self\.key\.", "k"),
    (r"attention\.self\.value\.", "v"), (r"attention\.output\.dense\.", "o"),
    (r"intermediate\.dense\.", "fc_in"), (r"(?:^|\.)output\.dense\.", "fc_out"),
    (r"(?:word|token_type)_embeddings\.", "embed"), (r"position_embeddings\.", "pos_embed"),
    # TransformerLens (2-D parameters; per-head W_Q … W_O cut per head and joined across heads by `views`)
    (r"attn\._?W_Q\[(?:heads|head \d+)\]$", "q"), (r"attn\._?W_K\[(?:heads|head \d+)\]$", "k"),
    (r"attn\._?W_V\[(?:heads|head \d+)\]$", "v"), (r"attn\._?W_O\[(?:heads|head \d+)\]$", "o"),
    (r"mlp\.W_in$", "fc_in"), (r"mlp\.W_out$", "fc_out"), (r"(?:^|\.)W_E$", "embed"),
    (r"(?:^|\.)W_pos$", "pos_embed"), (r"(?:^|\.)W_U$", "unembed"),
    # T5 (self- and cross-attention; the gated feed-forward's wi_0 gates wi_1)
    (r"Attention\.relative_attention_bias\.", "pos_embed"),
    (r"(?:SelfAttention|EncDecAttention)\.q\.", "q"), (r"(?:SelfAttention|EncDecAttention)\.k\.", "k"),
    (r"(?:SelfAttention|EncDecAttention)\.v\.", "v"), (r"(?:SelfAttention|EncDecAttention)\.o\.", "o"),
    (r"DenseReluDense\.wi\.", "fc_in"), (r"DenseReluDense\.wi_0\.", "gate"),
    (r"DenseReluDense\.wi_1\.", "up"), (r"DenseReluDense\.wo\.", "fc_out"),
    (r"(?:^|\.)shared\.", "embed"),
)
_COMPILED = tuple((re.compile(p), kind) for p, kind in _KIND_PATTERNS)


def classify(name: str) -> tuple[int | None, str]:
    """Return ``(layer, kind)`` for a raw tensor name; ``(None, "other")`` when unknown."""
    match = _LAYER.search(name)
    layer = int(match.group(1)) if match else None
    routed = _EXPERT.search(name)
    if routed:
        return layer, _EXPERT_KINDS.get(routed.group(2) or routed.group(5) or routed.group(3), "other")
    probe = name if name.endswith(".") else name + "."
    for pattern, kind in _COMPILED:
        if pattern.search(probe) or pattern.search(name):
            return layer, kind
    return layer, "other"


def expert(name: str) -> int | None:
    """The routed expert a matrix belongs to (``experts.3.w1.weight``, ``experts.down_proj[3]`` → 3); else None."""
    match = _EXPERT.search(name)
    return None if match is None else int(match.group(1) or match.group(4))


def head(name: str) -> int | None:
    """The attention head a per-head matrix is (``attn.W_Q[head 3]`` → 3); None for the heads joined and the rest."""
    match = _HEAD.search(name)
    return None if match is None else int(match.group(1))


def align(base: list[str], tuned: list[str]) -> dict[str, str]:
    """Pair each tuned tensor name with the base tensor it fine-tunes: ``{tuned: base}``.

    Fine-tunes often wrap the base under a prefix (``bert.encoder…`` vs ``encoder…``; ``model.layers…``
    in a causal LM vs a bare ``layers…``), or the base carries one the fine-tune lacks. A tuned name
    pairs with the base name sharing its longest dotted suffix, when exactly one base name does. A
    prefix that is dropped may not hold a number: ``layers.7.q.weight`` never pairs with ``layers.0.q.weight``.
    """
    by_suffix: dict[str, list[str]] = {}
    for name in base:
        parts = name.split(".")
        for start in _suffix_starts(parts):
            by_suffix.setdefault(".".join(parts[start:]), []).append(name)
    pairs = {}
    for name in tuned:
        parts = name.split(".")
        for start in _suffix_starts(parts):
            found = by_suffix.get(".".join(parts[start:]))
            if found:
                if len(found) == 1 and len(parts) - start >= 2:  # "weight" alone pairs nothing
                    pairs[name] = found[0]
                break
    return pairs


def _suffix_starts(parts: list[str]) -> list[int]:
    """Where a dotted suffix may start: never past a numeric component (a layer index)."""
    starts = []
    for start, part in enumerate(parts):
        starts.append(start)
        if part.isdigit():
            break
    return starts
