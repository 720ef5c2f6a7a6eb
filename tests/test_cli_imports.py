"""Fast commands: ``--help``, ``info`` and a rerun whose jobs are all stored import no torch or scipy.

Each command runs in a fresh interpreter (``sys.executable``) that reports which heavy modules it
loaded; a rerun with work to do must still load them and compute (the light path is no stub).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

import toy_checkpoints as toy
from subspace_atlas import analysis
from subspace_atlas.cli import main
from subspace_atlas.store import Store

pytestmark = pytest.mark.integration
HEAVY = ("torch", "scipy", "transformers", "transformer_lens", "plotly", "streamlit")
# Runs the CLI in a fresh interpreter, then prints its exit code and the heavy modules it imported.
SCRIPT = f"""
import json, sys
from subspace_atlas.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as done:
    rc = done.code
print(json.dumps({{"rc": rc, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def fresh(*args) -> tuple[int, list[str], str]:
    """``subspace-atlas ARGS`` in a new interpreter: exit code, heavy modules imported, what it printed."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    *printed, last = done.stdout.splitlines()
    report = json.loads(last)
    return report["rc"], report["heavy"], "\n".join(printed)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base, two fine-tunes of it and a run of two checkpoints (safetensors HF folders)."""
    root = tmp_path_factory.mktemp("models")
    toy.write_hf_folder(root / "base", toy.llama_state(0))
    for seed in (1, 2):
        toy.write_hf_folder(root / f"ft{seed}", {name: t + 0.01 * toy.llama_state(seed)[name]
                                                 for name, t in toy.llama_state(0).items()})
    for step in (10, 20):
        toy.write_hf_folder(root / "run" / f"checkpoint-{step}", toy.llama_state(step))
    return root


@pytest.fixture(scope="module")
def stored(tmp_path_factory, models):
    """A store already holding spectra (2 jobs), intruders (2 jobs) and overlap (1 job) of ``models``."""
    commands = {"spectra": (["spectra", models / "base", models / "ft1"], 2),
                "intruders": (["intruders", models / "ft1", models / "ft2", "--base", models / "base"], 2),
                "overlap": (["overlap", models / "run"], 1)}
    store = tmp_path_factory.mktemp("imports") / "S"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SUBSPACE_ATLAS_CACHE", str(store.parent / "svd-cache"))
        for args, _ in commands.values():
            assert main([str(a) for a in (*args, "--store", store, "--device", "cpu")]) == 0
    return store, commands


def test_help_imports_nothing_heavy():
    rc, heavy, out = fresh("--help")
    assert rc == 0 and heavy == []
    assert all(name in out for name in (*(spec.command for spec in analysis.SPECS.values()), "scan", "info"))


def test_info_imports_nothing_heavy(stored):
    store, _ = stored
    rc, heavy, out = fresh("info", "--store", store)
    assert rc == 0 and heavy == []
    assert [line.split(":")[0] for line in out.splitlines()] == ["intruders", "overlap", "spectra"]


@pytest.mark.parametrize("name", ["spectra", "intruders", "overlap"])
def test_a_fully_cached_rerun_imports_nothing_heavy(stored, name):
    store, commands = stored
    args, planned = commands[name]
    before = set(Store(store).jobs(name)["fingerprint"])
    rc, heavy, out = fresh(*args, "--store", store)
    assert rc == 0 and heavy == []
    assert out == f"{name}: all {planned} job(s) already in {store}; computed nothing"
    assert set(Store(store).jobs(name)["fingerprint"]) == before


def test_a_cached_rerun_still_checks_the_device_spec(stored):
    store, commands = stored
    rc, heavy, _ = fresh(*commands["spectra"][0], "--store", store, "--device", "tpu")
    assert rc == 2 and heavy == []


def test_a_rerun_with_work_loads_the_runners_and_computes(stored, models):
    store, commands = stored
    rc, heavy, out = fresh(*commands["spectra"][0], models / "ft2", "--store", store, "--device", "cpu")
    assert rc == 0 and "torch" in heavy and "scipy" in heavy
    assert out.startswith("spectra: computed 1 job(s), 4 matrices") and "2 already stored" in out
    assert "ft2" in set(Store(store).table("spectra", "matrices")["checkpoint"])


def test_a_fully_cached_scan_imports_nothing_heavy(tmp_path, models):
    assert main(["scan", str(models), "--store", str(tmp_path / "S"), "--device", "cpu"]) == 0
    rc, heavy, out = fresh("scan", models, "--store", tmp_path / "S")
    stored = len(Store(tmp_path / "S").jobs())  # every registered analysis scan plans: spectra, overlap, …
    assert rc == 0 and heavy == [] and stored >= 6
    assert out.endswith(f"scan: computed 0 job(s), {stored} already stored → {tmp_path / 'S'}")


@pytest.mark.parametrize("name", list(analysis.SPECS))
def test_each_subcommand_help_lists_its_parameters(capsys, name):
    spec = analysis.SPECS[name]
    with pytest.raises(SystemExit) as done:
        main([spec.command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    for field in dataclasses.fields(spec.params):  # a probe's sweep fields are flags of their own too
        assert f"--{field.name.replace('_', '-')}" in out, field.name
