"""Activation patching: is a subspace a patch "finds" real, or an interpretability illusion?"""

import streamlit as st

from subspace_atlas import charts
from common import csv_download, existing_store, show, table_or_stop
from links import choose

store = existing_store()
st.title("Activation patching")
st.caption("A direction v at a site is patched from source prompts into base prompts (w' = w + P_v(u − w)); "
           "FLDD = 100·(1 − LD_patched / LD_base) says how much of the base's preference for its answer it "
           "removes. The illusion test splits v into the part that what reads the site downstream can see "
           "(v_row: W_out's row space for an MLP's hidden units, later heads' W_Q for the residual stream) and "
           "the part it cannot (v_null), and patches each alone (Makelov, Lange & Nanda). A direction whose "
           "effect needs v_null to switch on a dormant v_row is an illusion.")
effects = table_or_stop(store, "patching", "effects", "patching results",
                        "subspace-atlas patch --model PATH --site mlp_hidden resid_post --layer 0 1 --method das")

c1, c2 = st.columns(2)
models = sorted(effects["model"].unique(), key=lambda m: (m == "toy-illusion", m))
model = choose(c1.selectbox, "Model", models, key="patching_model", url="model")
mine = effects[effects["model"] == model]
site = choose(c2.selectbox, "Site", sorted(mine["site"].unique(), reverse=True), key=f"patching_site:{model}",
              url="site", help="mlp_hidden: an MLP's hidden units at the last token; resid_post: the residual stream "
                         "after a block")
mine = mine[mine["site"] == site]
clean = mine["clean_accuracy"].iloc[0]
st.markdown(f"Clean accuracy on the held-out pairs (LD > 0): **{clean:.3f}**.")

show(charts.verdict_grid(mine), key="patching_grid")
st.caption("How to read this: each cell is the share of the logit difference the whole direction removes (FLDD) at "
           "that layer and method, coloured by the verdict: faithful when its row-space part alone carries the "
           "effect, illusory when it needs the null-space part (Makelov et al. 2023, *Is This the Subspace You Are "
           "Looking For?*).")

c3, c4 = st.columns(2)
layers, methods = sorted(mine["layer"].unique()), sorted(mine["method"].unique())
strongest = charts.strongest_effect(mine)  # opens where the direction does most, not on an all-0 % layer 0
layer = choose(c3.selectbox, "Layer", layers, index=layers.index(strongest["layer"]),
               key=f"patching_layer:{model}:{site}", url="layer")
method = choose(c4.selectbox, "Method", methods, index=methods.index(strongest["method"]),
                key=f"patching_method:{model}:{site}", url="method")
one = mine[(mine["layer"] == layer) & (mine["method"] == method)]
if not one.empty:
    parts = one.set_index("component")
    full = parts.loc["full", "fldd"]
    share = (f"share {one['row_share'].iloc[0]:.2f}" if abs(full) >= one["min_effect"].iloc[0] else "too small an effect to judge")
    st.markdown(
        f"**{one['verdict'].iloc[0]}** — the direction removes {full:.1f} % of the base's logit difference; "
        f"its row part alone {parts.loc['row', 'fldd']:.1f} % ({share}), its null part alone "
        f"{parts.loc['null', 'fldd']:.1f} %. ‖v_row‖ = {parts.loc['row', 'norm']:.3f}, "
        f"‖v_null‖ = {parts.loc['null', 'norm']:.3f}. Read downstream by: "
        f"{one['readers'].iloc[0] or 'the answers’ unembedding (no later layer)'}.")
left, right = st.columns(2)
show(charts.effect_by_component(one), key="patching_components", where=left)
left.caption("How to read this: FLDD of patching the whole activation, the direction v, and its row and null parts "
             "alone (100 % = no preference left); v_row alone doing what v does is faithful, v_row doing nothing "
             "while v works is the illusion (Makelov et al. 2023).")
show(charts.norm_split(one), key="patching_norms", where=right)
right.caption("How to read this: the size of v's two parts (‖v‖ = 1) and how much base and source differ along "
              "each; a v_null that tracks the feature beside a v_row that stays still is the illusion's recipe, a "
              "disconnected part switching on a dormant one (Makelov et al. 2023).")
show(charts.effect_across_layers(mine[mine["method"] == method]), key="patching_layers")
st.caption("How to read this: FLDD of each part across layers for this method; where the row line follows the full "
           "one the direction acts through what reads it downstream, where only the full one is high it does not "
           "(Makelov et al. 2023).")
st.dataframe(mine.drop(columns=["model_path"]), hide_index=True)
csv_download(mine, "patching", key="patching_csv")
