"""``subspace-atlas scan``: discovery of checkpoints, runs and adapters, the manifest, dry runs, skipping."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

import toy_checkpoints as toy  # noqa: E402
from subspace_atlas import cli, scan  # noqa: E402
from subspace_atlas.store import Store  # noqa: E402

pytestmark = pytest.mark.integration
Q = "model.layers.0.self_attn.q_proj.weight"


def nudged(state: dict, seed: int, size: float = 0.05) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {n: (t.float() + size * t.float().std() * torch.randn(t.shape, generator=gen)).to(t.dtype)
            if t.dim() == 2 else t for n, t in state.items()}


@pytest.fixture
def folder(tmp_path, llama_state):
    """A base, a run of three checkpoints, two LoRA adapters of the base, a full fine-tune and a manifest."""
    root = tmp_path / "models"
    base = toy.write_hf_folder(root / "base", llama_state)
    for i, step in enumerate((10, 20, 30)):
        toy.write_hf_folder(root / "run" / f"checkpoint-{step}", nudged(llama_state, i + 1, 0.05 * (i + 1)))
    gen = torch.Generator().manual_seed(9)
    for name in ("lora-a", "lora-b"):
        factors = {"model.layers.0.self_attn.q_proj": (torch.randn(4, 32, generator=gen),
                                                       torch.randn(32, 4, generator=gen))}
        toy.write_lora_adapter(root / "adapters" / name, factors, rank=4, alpha=8, base_path=str(base))
    toy.write_hf_folder(root / "ft", nudged(llama_state, 7))
    toy.write_hf_folder(root / "scratch" / "junk", llama_state)
    (root / "atlas-scan.json").write_text(json.dumps({
        "pairs": [{"base": "base", "tuned": ["ft"], "analyses": ["intruders", "sparsity"]}],
        "runs": [{"path": "run", "start": "base"}],
        "skip": ["scratch"]}))
    return root


def test_dry_run_plans_everything_and_writes_nothing(folder, tmp_path, capsys):
    store = tmp_path / "store"
    assert cli.main(["scan", str(folder), "--dry-run", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "plan: spectra of 5 checkpoint(s)" in out  # base, 3 run checkpoints, ft (scratch/ skipped)
    assert "overlap over run run: 1 job(s)" in out
    assert "intruders: 2 adapter(s) vs base" in out and "angles: 2 adapter(s) vs base" in out
    assert "intruders: 1 checkpoint(s) vs base" in out and "sparsity: 1 checkpoint(s) vs base" in out
    assert not store.exists()


def test_scan_computes_then_skips(folder, tmp_path, capsys):
    store = tmp_path / "store"
    assert cli.main(["scan", str(folder), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "scan: computed" in out
    s = Store(store)
    assert set(s.analyses()) == set(scan.default_names())  # the folder has something for every analysis scan runs
    spectra = s.table("spectra", "matrices")
    assert "junk" not in " ".join(spectra["checkpoint_path"])
    overlap = s.table("overlap", "subspaces")
    assert sorted(set(overlap["step"])) == [0, 10, 20, 30]  # the manifest's start, then the run
    angles = s.table("angles", "pairs")
    assert set(angles["task_a"]) | set(angles["task_b"]) == {"lora-a", "lora-b"}
    assert cli.main(["scan", str(folder), "--store", str(store)]) == 0
    assert "computed 0 job(s)" in capsys.readouterr().out
    assert cli.main(["scan", str(folder), "--store", str(store), "--analyses", "spectra", "--dry-run"]) == 0
    assert "0 to compute" in capsys.readouterr().out
    opt_in = sorted(set(scan.names()) - set(scan.default_names()))  # randomization: only when named
    assert opt_in and not set(opt_in) & set(s.analyses())
    assert cli.main(["scan", str(folder), "--store", str(store), "--analyses", *opt_in, "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert all(f"plan: {name} of" in planned for name in opt_in) and "0 stored" in planned


def test_bad_input_is_one_clear_line(folder, tmp_path, capsys):
    assert cli.main(["scan", str(tmp_path / "nowhere"), "--store", str(tmp_path / "s")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (folder / "atlas-scan.json").write_text("{not json")
    assert cli.main(["scan", str(folder), "--store", str(tmp_path / "s")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (folder / "atlas-scan.json").write_text(json.dumps({"pairs": [{"base": "base", "tuned": ["ft"],
                                                                     "analyses": ["spectra"]}]}))
    assert cli.main(["scan", str(folder), "--store", str(tmp_path / "s")]) == 2
    assert "pair analysis 'spectra'" in capsys.readouterr().err
    assert cli.main(["scan", str(folder), "--analyses", "nonsense", "--store", str(tmp_path / "s")]) == 2
    assert "unknown" in capsys.readouterr().err
