"""Intruders: our job path against the plain loop the paper's script and PEFT run, on the same matrices.

The plain loop, per fine-tune and matrix: merge (W0 + scale·BA for a LoRA), ``torch.linalg.svd`` of
W0 and of W (fp32, full thin), then max |cos| of W's top-10 left vectors against all of W0's. Ours:
``jobs.run`` of the ``intruders`` analysis (base decomposed once per command and cached on disk;
LoRA adapters through the factored top-k path; CPU workers one thread each), reading the same files.

Fine-tunes of a synthetic Llama-shaped fp32 base (decaying spectra, so rank order is well defined):
two full fine-tunes (dense nudges) and two PEFT-format LoRA adapters (r = 8 and 64) on every linear
layer. Prints both sides, the ratio, and how far the two sides' answers differ.

    .venv/bin/python bench/intruders_vs_svd_loop.py [--hidden 2048 --inter 5632 --layers 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, print_machine  # noqa: E402

KINDS = {"self_attn.q_proj": "hh", "self_attn.k_proj": "hh", "self_attn.v_proj": "hh", "self_attn.o_proj": "hh",
         "mlp.gate_proj": "ih", "mlp.up_proj": "ih", "mlp.down_proj": "hi"}


def shape(code: str, hidden: int, inter: int) -> tuple[int, int]:
    return tuple(hidden if c == "h" else inter for c in code)


def build(root: Path, hidden: int, inter: int, layers: int) -> dict[str, Path]:
    gen = torch.Generator().manual_seed(0)
    base = {}
    for i in range(layers):
        for module, code in KINDS.items():
            rows, cols = shape(code, hidden, inter)
            decay = torch.linspace(1.0, 0.05, cols) ** 2
            base[f"model.layers.{i}.{module}.weight"] = torch.randn(rows, cols, generator=gen) * decay
    paths = {"base": root / "base"}
    paths["base"].mkdir(parents=True)
    save_file(base, str(paths["base"] / "model.safetensors"))
    for k in (1, 2):
        tuned = {n: w + 0.02 * w.std() * torch.randn(w.shape, generator=gen) for n, w in base.items()}
        paths[f"full-{k}"] = root / f"full-{k}"
        paths[f"full-{k}"].mkdir()
        save_file(tuned, str(paths[f"full-{k}"] / "model.safetensors"))
    for r in (8, 64):
        folder = root / f"lora-r{r}"
        folder.mkdir()
        state = {}
        for name, w in base.items():
            module = name.removesuffix(".weight")
            state[f"base_model.model.{module}.lora_A.weight"] = 0.02 * torch.randn(r, w.shape[1], generator=gen)
            state[f"base_model.model.{module}.lora_B.weight"] = 0.02 * torch.randn(w.shape[0], r, generator=gen)
        save_file(state, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r,
                                                                "base_model_name_or_path": str(paths["base"])}))
        paths[f"lora-r{r}"] = folder
    return paths


def plain_loop(paths: dict[str, Path], k: int = 10) -> dict[tuple[str, str], np.ndarray]:
    """The reference: merge, two full SVDs, max |cos| — for every fine-tune and matrix."""
    base = load_file(str(paths["base"] / "model.safetensors"))
    out = {}
    for name, path in paths.items():
        if name == "base":
            continue
        if (path / "adapter_config.json").exists():
            config = json.loads((path / "adapter_config.json").read_text())
            factors = load_file(str(path / "adapter_model.safetensors"))
            scale = config["lora_alpha"] / config["r"]
            tuned = {t: w0 + scale * factors[f"base_model.model.{t[:-7]}.lora_B.weight"]
                     @ factors[f"base_model.model.{t[:-7]}.lora_A.weight"] for t, w0 in base.items()}
        else:
            tuned = load_file(str(path / "model.safetensors"))
        for tensor, w0 in base.items():
            u0 = torch.linalg.svd(w0, full_matrices=False)[0]
            u = torch.linalg.svd(tuned[tensor], full_matrices=False)[0]
            out[(name, tensor)] = (u[:, :k].T @ u0).abs().max(dim=1).values.numpy()
    return out


def ours(paths: dict[str, Path], store: Path, names: list[str]) -> dict[tuple[str, str], np.ndarray]:
    from subspace_atlas import analysis, jobs, planning
    from subspace_atlas.checkpoints import open_checkpoints
    from subspace_atlas.context import resolve
    from subspace_atlas.store import Store

    spec = analysis.SPECS["intruders"]
    base = open_checkpoints(paths["base"], name="base")[0]
    tuned = [c for n in names for c in open_checkpoints(paths[n], name=n)]
    planned = planning.plan(spec, tuned, spec.params(epsilon=(0.5,)), base=base)
    jobs.run(planned, Store(store), resolve("cpu"), log=lambda s: None)
    vectors = Store(store).table("intruders", "vectors")
    return {(c, t): f.sort_values("index")["max_cos"].to_numpy() for (c, t), f in vectors.groupby(["checkpoint", "tensor"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--inter", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=1)
    args = parser.parse_args()
    print_machine("intruders: job path vs plain torch.linalg.svd loop")
    work = Path(tempfile.mkdtemp(dir=OUT if OUT.exists() else None, prefix="intruders-"))
    try:
        import os

        os.environ["SUBSPACE_ATLAS_CACHE"] = str(work / "cache")
        paths = build(work / "ckpt", args.hidden, args.inter, args.layers)
        matrices = len(KINDS) * args.layers
        print(f"base: {args.layers} Llama-shaped layers, hidden {args.hidden}, intermediate {args.inter} "
              f"({matrices} matrices); fine-tunes: {', '.join(n for n in paths if n != 'base')}")
        t0 = time.perf_counter()
        reference = plain_loop(paths)
        loop_s = time.perf_counter() - t0
        everything = [n for n in paths if n != "base"]
        t0 = time.perf_counter()
        got = ours(paths, work / "store", everything)
        ours_s = time.perf_counter() - t0
        # One more fine-tune later: the base's SVD now comes from the cache.
        later = {}
        for name in ("full-2", "lora-r8"):
            t0 = time.perf_counter()
            ours(paths, work / f"store-{name}", [name])
            warm_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            plain_loop({"base": paths["base"], name: paths[name]})
            later[name] = (time.perf_counter() - t0, warm_s)
        diff = max(float(np.abs(reference[key] - got[key]).max()) for key in reference)
        flips = sum(int(((reference[key] < 0.5) != (got[key] < 0.5)).sum()) for key in reference)
        print(f"\n{len(reference)} (fine-tune, matrix) pairs")
        print(f"plain loop (2 SVDs per pair)          : {loop_s:8.2f} s")
        print(f"ours, cold cache                       : {ours_s:8.2f} s   ratio {loop_s / ours_s:.2f}×")
        for name, (loop_one_s, warm_s) in later.items():
            print(f"one more fine-tune ({name:7s}): plain loop   : {loop_one_s:8.2f} s")
            print(f"one more fine-tune ({name:7s}): ours, cached : {warm_s:8.2f} s   ratio {loop_one_s / warm_s:.2f}×")
        print(f"agreement: max |Δ max_cos| = {diff:.2e}; intruder flags differing at ε = 0.5: {flips}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
