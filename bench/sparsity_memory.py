"""Peak memory of ``subspace-atlas sparsity`` on a pair of 2.2 GB bf16 Llama-shaped checkpoints.

    .venv/bin/python bench/sparsity_memory.py [--rank]

The base is ``peak_memory.py``'s TinyLlama-shaped checkpoint (written once into bench/out/); the
"fine-tune" is a copy in which 10 % of every matrix's entries move by one bf16 ulp and 1 % by a lot,
written one tensor at a time. The CLI runs in a child process; its peak RSS (kernel VmHWM) is the
number to compare with the largest matrix pair (the 32000 × 2048 embedding: 2 × 131 MB in bf16).
Without ``--rank`` no update ranks are computed (an SVD per matrix; minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, cli_path, peak_of, print_machine, run_child  # noqa: E402
from _synth import TINYLLAMA, write_checkpoint  # noqa: E402


def write_tuned(base: Path, target: Path) -> None:
    """Copy ``base`` shard by shard, nudging entries of every 2-D tensor, one tensor in memory at a time."""
    marker = target / "tuned.json"
    if marker.exists():
        print(f"reusing {target}")
        return
    target.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1)
    for shard in sorted(base.glob("*.safetensors")):
        with open(shard, "rb") as src, open(target / shard.name, "wb") as dst:
            (length,) = struct.unpack("<Q", src.read(8))
            header_bytes = src.read(length)
            header = json.loads(header_bytes)
            dst.write(struct.pack("<Q", length) + header_bytes)
            for name, entry in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                                      key=lambda kv: kv[1]["data_offsets"][0]):
                begin, end = entry["data_offsets"]
                src.seek(8 + length + begin)
                bits = torch.frombuffer(bytearray(src.read(end - begin)), dtype=torch.int16).clone()
                if len(entry["shape"]) == 2:
                    draw = torch.rand(bits.shape, generator=gen)
                    bits[draw < 0.10] += 1  # one ulp (away from zero for either sign)
                    values = bits.view(torch.bfloat16)
                    values[draw > 0.99] += 0.01
                dst.write(bits.numpy().tobytes())
    for extra in ("model.safetensors.index.json", "config.json"):
        shutil.copy(base / extra, target / extra)
    marker.write_text(json.dumps({"from": str(base), "ulp_fraction": 0.10, "large_fraction": 0.01}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", action="store_true", help="also compute update ranks")
    args = parser.parse_args()
    print_machine("sparsity: peak memory on a 2.2 GB bf16 pair")
    base = OUT / "tinyllama-synth"
    write_checkpoint(base, TINYLLAMA)
    tuned = OUT / "tinyllama-synth-tuned"
    write_tuned(base, tuned)
    with tempfile.TemporaryDirectory() as store:
        cmd = [cli_path(), "sparsity", "--base", str(base), str(tuned), "--store", store, "--device", "cpu",
               "--force"] + ([] if args.rank else ["--no-rank"])
        result = run_child(cmd)
        if result["rc"] != 0:
            print(result["stderr"][-2000:])
            raise SystemExit(result["rc"])
        from subspace_atlas.store import Store

        m = Store(store).table("sparsity", "matrices")
    peak = max(result["vmhwm_kib"], result["maxrss_kib"]) / 1024
    largest = 2 * 32000 * 2048 * 2 / 2**20
    print(f"matrices: {len(m)}; unchanged exact {(m.unchanged_exact * m.numel).sum() / m.numel.sum():.4f}, "
          f"≤1 ulp {(m.unchanged_ulp * m.numel).sum() / m.numel.sum():.4f} (planted: 0.89 / 0.99)")
    print(f"wall {result['wall_s']:.1f} s; peak RSS {peak:.0f} MiB (sampled: {peak_of(result['samples'])}); "
          f"largest matrix pair {largest:.0f} MiB; checkpoints 2 × 2.2 GB")


if __name__ == "__main__":
    main()
