"""Faults on the input side of ``scan`` and the runners (issue 17): folder trees that loop, nest too deep or
outgrow PATH_MAX are walked once, to a bound, with a note for what was left out; one bad checkpoint (truncated,
NaN) costs only its own jobs: the good ones are planned, computed and stored, the bad one is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import toy_checkpoints as toy  # noqa: E402
from subspace_atlas import scan  # noqa: E402
from subspace_atlas.cli import main  # noqa: E402
from subspace_atlas.store import Store  # noqa: E402

pytestmark = pytest.mark.integration
Q = "model.layers.0.self_attn.q_proj.weight"
MATRICES = 4  # 2-D tensors of toy.llama_state(): embed, q, v, down


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def nudged(state: dict, seed: int) -> dict:
    """A fine-tune of ``state``: every matrix moved by 5 % of its scale."""
    gen = torch.Generator().manual_seed(seed)
    return {n: (t.float() + 0.05 * t.float().std() * torch.randn(t.shape, generator=gen)).to(t.dtype)
            if t.dim() == 2 else t for n, t in state.items()}


def with_nan(state: dict) -> dict:
    """``state`` with one NaN entry in its q projection, as a diverged fine-tune saves it."""
    q = state[Q].clone()
    q[3, 5] = float("nan")
    return {**state, Q: q}


def spectra_of(store) -> dict[str, int]:
    """Stored spectra rows per checkpoint name."""
    return Store(store).table("spectra", "matrices").groupby("checkpoint").size().to_dict()


# ---------------------------------------------------------------- the walk


def test_links_back_to_a_parent_are_walked_once(tmp_path, llama_state):
    """Two links back to the root used to keep the walk going for ever (no output after 180 s); one made it
    analyse a checkpoint 41 times. Each real folder is walked once, and each link is one note."""
    root = tmp_path / "models"
    toy.write_hf_folder(root / "a" / "model-a", llama_state)
    toy.write_hf_folder(root / "b" / "model-b", nudged(llama_state, 1))
    (root / "a" / "up").symlink_to(root, target_is_directory=True)
    (root / "b" / "up").symlink_to(root, target_is_directory=True)
    store = tmp_path / "store"
    done = subprocess.run([sys.executable, "-m", "subspace_atlas.cli", "scan", str(root), "--store", str(store),
                           "--device", "cpu", "--analyses", "spectra"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["spectra of 2 checkpoint(s): 2 job(s), 0 stored, 2 to compute",
                                        f"scan: computed 2 job(s), 0 already stored → {store}"]
    notes = [line for line in done.stderr.splitlines() if line.startswith("skipped: ")]
    assert notes == [f"skipped: {root}/a/up: the same folder as {root}, already scanned",
                     f"skipped: {root}/b/up: the same folder as {root}, already scanned"]
    assert spectra_of(store) == {"model-a": MATRICES, "model-b": MATRICES}
    assert len(Store(store).jobs("spectra")) == 2


def test_a_link_to_itself_is_a_note(tmp_path, tiny_model, capsys):
    (tiny_model.parent / "loop").symlink_to(tiny_model.parent / "loop")
    rc, out, err = cli(capsys, "scan", tiny_model.parent, "--dry-run", "--store", tmp_path / "store")
    assert rc == 0 and out == "plan: spectra of 1 checkpoint(s): 1 job(s), 0 stored, 1 to compute\n"
    assert err == f"skipped: {tiny_model.parent}/loop: Too many levels of symbolic links\n"


@pytest.fixture
def nested(tmp_path, llama_state):
    """A model, and 1,300 nested folders with another at the bottom; removed here, one folder at a time
    (pytest's own clean-up, like mkdir(parents=True), would recurse too deep)."""
    root = tmp_path / "models"
    toy.write_hf_folder(root / "model", llama_state)
    chain = [root / "d"]
    for _ in range(1299):
        chain.append(chain[-1] / "d")
    for folder in chain:
        folder.mkdir()
    toy.write_hf_folder(chain[-1], llama_state)
    yield root
    for folder in reversed(chain):
        for file in folder.iterdir():
            if file.is_file():
                file.unlink()
        folder.rmdir()


def test_deep_nesting_is_cut_at_max_depth_with_a_note(nested, tmp_path, capsys):
    """1,300 nested folders used to end in a RecursionError traceback."""
    root = nested
    rc, out, err = cli(capsys, "scan", root, "--dry-run", "--store", tmp_path / "store")
    assert rc == 0 and out == "plan: spectra of 1 checkpoint(s): 1 job(s), 0 stored, 1 to compute\n"
    first_left_out = root.joinpath(*["d"] * (scan.MAX_DEPTH + 1))
    assert err == f"skipped: {first_left_out}: more than {scan.MAX_DEPTH} folders below {root}\n"


def test_a_path_over_path_max_is_a_note(tmp_path, llama_state, capsys):
    """A folder whose path passes 4,096 bytes (made through directory descriptors, as a tool working in
    relative paths would) used to end in an ENAMETOOLONG traceback."""
    root = tmp_path / "models"
    toy.write_hf_folder(root / "model", llama_state)
    name = "n" * 200
    path, fd = root, os.open(root, os.O_RDONLY)
    try:
        while len(os.fsencode(path)) < 4096:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, path = child, path / name
    finally:
        os.close(fd)
    rc, out, err = cli(capsys, "scan", root, "--dry-run", "--store", tmp_path / "store")
    assert rc == 0 and out == "plan: spectra of 1 checkpoint(s): 1 job(s), 0 stored, 1 to compute\n"
    assert err == f"skipped: {path}: File name too long\n"


# ---------------------------------------------------------------- bad checkpoints


@pytest.fixture
def with_truncated(tmp_path, llama_state):
    """A good model, a run whose last checkpoint is truncated, and a model whose only file is truncated."""
    root = tmp_path / "models"
    toy.write_hf_folder(root / "good", llama_state)
    for step in (10, 20, 30):
        toy.write_hf_folder(root / "run" / f"checkpoint-{step}", nudged(llama_state, step))
    toy.truncate(root / "run" / "checkpoint-30" / "model.safetensors")
    toy.truncate(toy.write_hf_folder(root / "broken", llama_state) / "model.safetensors")
    return root


def failed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("failed: ")]


def assert_names_the_truncated_files(err: str, root) -> None:
    """The last lines: one per truncated file, naming it (before the reason the reader gives)."""
    lines = err.splitlines()[-2:]
    assert failed_lines(err) == lines
    assert lines[0].startswith(f"failed: {root}/broken/model.safetensors: ")
    assert lines[1].startswith(f"failed: {root}/run/checkpoint-30/model.safetensors: ")
    assert all("truncated" in line for line in lines)


def test_a_truncated_checkpoint_is_named_and_the_rest_is_planned(with_truncated, tmp_path, capsys):
    root, store = with_truncated, tmp_path / "store"
    rc, out, err = cli(capsys, "scan", root, "--dry-run", "--store", store)
    assert rc == 1
    assert out.splitlines() == ["plan: spectra of 3 checkpoint(s): 3 job(s), 0 stored, 3 to compute",
                                "plan: overlap over run run: 1 job(s), 0 stored, 1 to compute"]
    assert_names_the_truncated_files(err, root)
    assert not store.exists()


def test_a_truncated_checkpoint_fails_alone_and_the_rest_is_stored(with_truncated, tmp_path, capsys):
    root, store = with_truncated, tmp_path / "store"
    rc, out, err = cli(capsys, "scan", root, "--store", store, "--device", "cpu")
    assert rc == 1
    assert out.splitlines()[-1] == f"scan: computed 4 job(s), 0 already stored → {store}"
    assert_names_the_truncated_files(err, root)
    assert spectra_of(store) == {"good": MATRICES, "run/checkpoint-10": MATRICES, "run/checkpoint-20": MATRICES}
    overlap = Store(store).jobs("overlap")
    assert len(overlap) == 1 and overlap["inputs"][0]["group"] == ["run/checkpoint-10", "run/checkpoint-20"]
    # A rerun computes nothing new and names the same files again.
    rc, out, err = cli(capsys, "scan", root, "--store", store, "--device", "cpu")
    assert rc == 1 and out.splitlines()[-1] == f"scan: computed 0 job(s), 4 already stored → {store}"
    assert_names_the_truncated_files(err, root)


def test_a_checkpoint_that_fails_only_when_its_job_runs_fails_alone(tmp_path, llama_state, capsys):
    """A truncated pickle is not read while planning (that needs torch and a full load): the dry run plans
    it, the scan fails its job alone, writes nothing for it, and stores the good one."""
    root, store = tmp_path / "models", tmp_path / "store"
    toy.write_hf_folder(root / "good", llama_state)
    bad = toy.truncate(toy.write_hf_folder(root / "pickled", llama_state, fmt="bin") / "pytorch_model.bin")
    rc, out, _ = cli(capsys, "scan", root, "--dry-run", "--store", store)
    assert rc == 0 and out == "plan: spectra of 2 checkpoint(s): 2 job(s), 0 stored, 2 to compute\n"
    rc, out, err = cli(capsys, "scan", root, "--store", store, "--device", "cpu")
    assert rc == 1 and out.splitlines()[-1] == f"scan: computed 1 job(s), 0 already stored → {store}"
    [line] = failed_lines(err)
    assert line == err.splitlines()[-1] and line.startswith(f"failed: {bad}: not a readable torch checkpoint")
    assert spectra_of(store) == {"good": MATRICES}
    assert len(Store(store).jobs("spectra")) == 1


def test_an_adapter_whose_base_does_not_open_costs_only_its_own_jobs(tmp_path, llama_state, capsys):
    root = tmp_path / "models"
    toy.write_hf_folder(root / "good", llama_state)
    (root / "empty-base").mkdir()
    toy.write_lora_adapter(root / "adapter", {"model.layers.0.self_attn.q_proj": (torch.ones(2, 32),
                                                                                  torch.ones(32, 2))},
                           rank=2, alpha=4, base_path=str(root / "empty-base"))
    rc, out, err = cli(capsys, "scan", root, "--dry-run", "--store", tmp_path / "store")
    assert rc == 1 and out == "plan: spectra of 1 checkpoint(s): 1 job(s), 0 stored, 1 to compute\n"
    [line] = failed_lines(err)
    assert line == err.splitlines()[-1] and line.startswith(f"failed: {root}/empty-base: no checkpoint found")


# ---------------------------------------------------------------- NaN fine-tunes


@pytest.fixture
def fine_tunes(tmp_path, llama_state):
    """A base, two good full fine-tunes and one with a NaN entry (HF folders)."""
    base = toy.write_hf_folder(tmp_path / "models" / "base", llama_state)
    good = [toy.write_hf_folder(tmp_path / "models" / f"good{k}", nudged(llama_state, k)) for k in (1, 2)]
    nan = toy.write_hf_folder(tmp_path / "models" / "nan", with_nan(nudged(llama_state, 3)))
    return base, good, nan


def test_intruders_stores_the_good_fine_tune_beside_a_nan_one(fine_tunes, tmp_path, capsys):
    """A NaN fine-tune used to make ``intruders`` store nothing for the good one beside it."""
    base, (good, _), nan = fine_tunes
    store = tmp_path / "store"
    rc, _, err = cli(capsys, "intruders", "--base", base, good, nan, "--store", store, "--device", "cpu")
    assert rc == 2
    assert err.splitlines()[-1] == (f"subspace-atlas: error: {nan} vs --base {base}: matrix holds NaN or Inf "
                                    "values; its singular vectors are undefined")
    assert [i["checkpoint"] for i in Store(store).jobs("intruders")["inputs"]] == ["good1"]
    summary = Store(store).table("intruders", "summary")
    assert set(summary["checkpoint"]) == {"good1"} and len(set(summary["tensor"])) == MATRICES
    # The good job is stored: a rerun computes only the NaN one again, and fails it the same way.
    rc, _, rerun = cli(capsys, "intruders", "--base", base, good, nan, "--store", store, "--device", "cpu")
    assert rc == 2 and rerun.splitlines()[-1] == err.splitlines()[-1]
    assert len(Store(store).jobs("intruders")) == 1


def test_scan_keeps_every_comparison_of_the_good_fine_tunes(fine_tunes, tmp_path, capsys):
    """Paired jobs of a base run in one pass; when it fails, each fine-tune runs alone to find the bad one,
    then the comparisons between the good ones (angles' cross job) run. Jobs needing the NaN one (its own,
    its cross jobs, the group job of all three) write nothing."""
    base, good, nan = fine_tunes
    root, store = base.parent, tmp_path / "store"
    (root / scan.MANIFEST).write_text(json.dumps({"pairs": [{
        "base": "base", "tuned": [p.name for p in (*good, nan)], "analyses": ["intruders", "angles"]}]}))
    rc, out, err = cli(capsys, "scan", root, "--store", store, "--device", "cpu")
    assert rc == 1
    assert out.splitlines()[-1] == f"scan: computed 9 job(s), 0 already stored → {store}"
    assert failed_lines(err) == err.splitlines()[-1:] == [
        f"failed: {nan} vs --base {base}: matrix holds NaN or Inf values; its singular vectors are undefined"]
    jobs = Store(store)
    assert sorted(i["checkpoint"] for i in jobs.jobs("intruders")["inputs"]) == ["good1", "good2"]
    angles = sorted((i["checkpoint"], i.get("other", "")) for i in jobs.jobs("angles")["inputs"])
    assert angles == [("good1", ""), ("good1", "good2"), ("good2", "")]  # no group job: it needs all three
    pairs = jobs.table("angles", "pairs")
    assert set(zip(pairs["task_a"], pairs["task_b"])) == {("good1", "good2")}
    assert set(spectra_of(store)) == {"base", "good1", "good2", "nan"}  # a NaN matrix has NaN spectra, no error


@pytest.mark.parametrize("content", ['{"pairs": [' * 100_000, '{"pairs": ["llama"]}', '{"skip": "scratch"}',
                                     '{"runs": [3]}'])
def test_a_bad_scan_manifest_is_one_line(tmp_path, capsys, content):
    (tmp_path / "atlas-scan.json").write_text(content)
    assert main(["scan", str(tmp_path), "--store", str(tmp_path / "S")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "atlas-scan.json" in err[0]
    assert not (tmp_path / "S").exists()
