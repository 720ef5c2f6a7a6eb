"""``--executor ray`` on a real local Ray cluster of 2 CPUs: the same tables as the local executor, reruns
that compute nothing, and bad input that fails in one line with the store left as it was."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

import test_cli  # noqa: E402
import test_scan  # noqa: E402
import toy_checkpoints as toy  # noqa: E402
from subspace_atlas import analysis, executors, scan  # noqa: E402
from subspace_atlas.store import Store  # noqa: E402
from subspace_atlas.specs import SCAN_MODELS  # noqa: E402

pytestmark = pytest.mark.integration
folder = test_scan.folder  # a base, a run, LoRA adapters, a full fine-tune and an atlas-scan.json
cli, snapshot = test_cli.cli, test_cli.snapshot
PROVENANCE = ["device_name", "threads", "wall_s", "created", "files"]  # where, how long and which file: not what


@pytest.fixture(scope="module", autouse=True)
def cluster(tmp_path_factory):
    """One local Ray cluster for the module, started the way the CLI starts one, offline, with its own
    SVD cache (its workers inherit this environment, never the per-test one the driver gets)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        env.delenv("RAY_ADDRESS", raising=False)
        env.setenv("SUBSPACE_ATLAS_CACHE", str(tmp_path_factory.mktemp("ray-svd-cache")))
        with executors.connected(num_cpus=2):
            yield
    assert not ray.is_initialized()


def assert_same_results(local, remote) -> None:
    """Every table of every analysis equal to the bit, and the same jobs with the same provenance but for
    where and how long they ran."""
    a, b = Store(str(local)), Store(str(remote))
    assert a.analyses() == b.analyses()
    for name in a.analyses():
        ja, jb = (s.jobs(name).sort_values("fingerprint", ignore_index=True) for s in (a, b))
        assert (jb["device"] == "cpu").all()
        pd.testing.assert_frame_equal(ja.drop(columns=PROVENANCE), jb.drop(columns=PROVENANCE))
        for table in analysis.SPECS[name].tables:
            left, right = a.table_if_stored(name, table), b.table_if_stored(name, table)
            assert (left is None) == (right is None), (name, table)
            if left is not None:
                pd.testing.assert_frame_equal(left, right, check_exact=True)


def test_spectra_on_ray_equal_local(tmp_path, capsys):
    ckpts = [toy.write_hf_folder(tmp_path / f"model-{seed}", test_cli.model_state(seed)) for seed in range(3)]
    rc, out, _ = cli(capsys, "spectra", *ckpts, "--store", tmp_path / "local", "--device", "cpu")
    assert rc == 0
    rc, out, err = cli(capsys, "spectra", *ckpts, "--store", tmp_path / "ray", "--device", "cpu",
                       "--executor", "ray")
    assert rc == 0, err
    assert "spectra: computed 3 job(s), 30 matrices" in out and "on Ray (3 task(s), one CPU core each)" in out
    assert_same_results(tmp_path / "local", tmp_path / "ray")
    assert set(Store(str(tmp_path / "ray")).jobs("spectra")["threads"]) == {1}  # computed in single-core tasks

    before = snapshot(tmp_path / "ray")
    rc, out, _ = cli(capsys, "spectra", *ckpts, "--store", tmp_path / "ray", "--executor", "ray")
    assert rc == 0 and "all 3 job(s) already in" in out
    assert snapshot(tmp_path / "ray") == before


def test_scan_on_ray_equals_local(folder, tmp_path, capsys):
    """Plain, paired (intruders, sparsity, angles with cross and group jobs) and run (overlap) jobs."""
    assert cli(capsys, "scan", folder, "--store", tmp_path / "local", "--device", "cpu")[0] == 0
    rc, out, err = cli(capsys, "scan", folder, "--store", tmp_path / "ray", "--executor", "ray")
    assert rc == 0, err
    assert set(Store(str(tmp_path / "ray")).analyses()) == set(scan.default_names())
    assert_same_results(tmp_path / "local", tmp_path / "ray")

    before = snapshot(tmp_path / "ray")
    rc, out, _ = cli(capsys, "scan", folder, "--store", tmp_path / "ray", "--executor", "ray")
    assert rc == 0 and "scan: computed 0 job(s)" in out
    assert snapshot(tmp_path / "ray") == before


def test_bad_input_is_one_line_and_stores_nothing(tmp_path, capsys, llama_state):
    base = toy.write_hf_folder(tmp_path / "base", llama_state)
    good = toy.write_hf_folder(tmp_path / "good", test_scan.nudged(llama_state, 1))
    store = tmp_path / "store"
    assert cli(capsys, "spectra", base, "--store", store, "--executor", "ray")[0] == 0
    before = snapshot(store)

    # Found by the driver before any task runs: a truncated file beside a good one stores neither.
    broken = toy.write_hf_folder(tmp_path / "broken", llama_state)
    toy.truncate(broken / "model.safetensors")
    rc, out, err = cli(capsys, "spectra", good, broken, "--store", store, "--executor", "ray")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("subspace-atlas: error: ") and "truncated" in err
    assert snapshot(store) == before

    rc, _, err = cli(capsys, "spectra", good, "--store", store, "--executor", "ray", "--device", "cuda")
    assert rc == 2 and "the Ray cluster has no GPU" in err and err.count("\n") == 1
    assert snapshot(store) == before

    rc, _, err = cli(capsys, "spectra", good, "--store", "memory://ray-test/s", "--executor", "ray")
    assert rc == 2 and "a memory:// store lives in one process" in err and err.count("\n") == 1

    # Found inside a task: a checkpoint of some other model fails as it does locally; the good job is kept.
    other = toy.write_hf_folder(tmp_path / "other", toy.llama_state(seed=5))
    errors = []
    for where, flags in (("local", ()), ("ray", ("--executor", "ray"))):
        rc, _, err = cli(capsys, "intruders", "--base", base, good, other, "--store", tmp_path / where, *flags)
        assert rc == 2 and err.endswith("\n") and "Traceback" not in err
        errors.append(err.splitlines()[-1])  # after the progress lines
    assert errors[0] == errors[1]
    assert errors[0].startswith(f"subspace-atlas: error: {other} vs --base {base}: does not look like a fine-tune")
    assert_same_results(tmp_path / "local", tmp_path / "ray")
    assert [i["checkpoint"] for i in Store(str(tmp_path / "ray")).jobs("intruders")["inputs"]] == ["good"]


def test_without_ray_installed_the_error_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as it does where Ray is not installed
    rc, _, err = cli(capsys, "spectra", toy.write_hf_folder(tmp_path / "m", toy.llama_state()),
                     "--store", tmp_path / "s", "--executor", "ray")
    assert rc == 2 and "--executor ray needs Ray: pip install 'subspace-atlas[cluster]'" in err
    assert not (tmp_path / "s" / "spectra").exists()


def test_address_without_the_ray_executor_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(capsys, "spectra", tmp_path, "--store", tmp_path / "s", "--address", "auto")
    assert exit_.value.code == 2
    assert "--address names a Ray cluster: use it with --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_scan_on_ray_keeps_going_past_bad_checkpoints(tmp_path, llama_state, capsys):
    """The ray executor under ``scan``: a checkpoint whose job fails on a worker (a truncated pickle, only read
    when its job runs) is one ``failed:`` line; the good one is stored; exit 1; a rerun computes nothing new."""
    root, store = tmp_path / "models", tmp_path / "ray"
    toy.write_hf_folder(root / "good", llama_state)
    bad = toy.truncate(toy.write_hf_folder(root / "pickled", llama_state, fmt="bin") / "pytorch_model.bin")
    per_model = len([s for s in analysis.batch_specs() if s.scan == SCAN_MODELS and not s.opt_in])  # spectra, …
    rc, out, err = cli(capsys, "scan", root, "--store", store, "--executor", "ray")
    assert rc == 1 and out.splitlines()[-1] == f"scan: computed {per_model} job(s), 0 already stored → {store}"
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith(f"failed: {bad}: not a readable torch checkpoint")
    assert set(Store(store).table("spectra", "matrices")["checkpoint"]) == {"good"}
    rc, out, _ = cli(capsys, "scan", root, "--store", store, "--executor", "ray")
    assert rc == 1 and f"computed 0 job(s), {per_model} already stored" in out
