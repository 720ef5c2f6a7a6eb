"""Store scale: the result store, the CLI and the dashboard on stores the size researchers make (issue 16).

Builds synthetic stores once (``bench/_synth_store.py``: real schemas, realistic values, written job by
job through ``Store.write``) and reuses them from ``--out`` (default ``bench/out/store-scale``):

* ``spectra-7b-N``: spectra of N Llama-2-7B-shaped checkpoints (226 matrices, 4096 σ each; 925,696
  ``values`` rows per checkpoint), one job per checkpoint; N > 1 is one run (checkpoint-100 … -5000)
  and also holds an intruders job per checkpoint vs the base.
* ``overlap-7b-runN`` (N ≥ 3): the overlap job of one 7B run of N checkpoints with every pair
  compared (``--reference all``: 1.6 M ``pairs`` rows at N = 50, the issue's case; the code's default
  previous/first/last gives ~0.19 M) and its subspaces/convergence/welore/spectrum tables.
* ``sweep-1000``: a hyperparameter sweep of 1,000 spectra jobs: 10 fine-tuning runs (5 learning rates
  × 2 seeds) of all-MiniLM-L6-v2 × 100 checkpoints, 41 matrices each (the issue's 41 k-row table).

Then measures, each in a fresh process (peaks do not mix) with a timeout (a timeout is a result):

* ``table``: ``Store.table`` full and filtered reads (``where=``, ``columns=`` when the API has it),
  median of ``--reps``, and the reading process's peak RSS growth;
* ``cli``: ``subspace-atlas info`` and ``report`` wall time, beside ``python -c "import pandas"``;
* ``compact``: ``subspace-atlas compact`` on a hard-linked copy (when the CLI has it); the compacted
  copy is then measured by ``table`` and ``cli`` as ``<store>+compacted``;
* ``apptest``: every page with data, first render and one filter change, through Streamlit's AppTest;
* ``browser``: ``streamlit run`` + Debian's chromium via Playwright: time until the charts are drawn and
  the script stopped, one filter change, the server's peak RSS; then three tabs at once on the heaviest page.

``--code`` picks the code measured: ``worktree`` (default), a git ref (exported with ``git archive``
under ``--out``) or a folder. Results are kept per code version, so running once with ``--code
<old commit>`` and once without prints both sides in one markdown table (stdout and ``--out/store_scale.md``).
Stores are written by ``--writer-code`` (default: the last commit before the store rewrite, whose
``part-<fingerprint>.parquet`` layout is what existing stores have and what old and new code both read).

    .venv/bin/python bench/store_scale.py --only build                   # all stores (≈ 5 min, 1.5 GB)
    .venv/bin/python bench/store_scale.py --only table cli --code 598a638 # "before" side
    .venv/bin/python bench/store_scale.py --only table cli               # "after" side (working tree)
    .venv/bin/python bench/store_scale.py --only apptest browser --sizes 1 10
    .venv/bin/python bench/store_scale.py --only report                  # the markdown of what was measured
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, ROOT, cli_path, load_average, machine, wait_quiet  # noqa: E402

PARTS = ("build", "compact", "table", "cli", "apptest", "browser")
LEGACY_WRITER = "598a638"  # last commit before the store rewrite: part-<fingerprint>.parquet, no "files" in manifests
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VALUES_FULL_READ_MAX_ROWS = 16_000_000  # a full spectra/values read above this is skipped (≈ 7 GB at 46 M)


# ---------------------------------------------------------------------------------------------- code versions

@dataclass(frozen=True)
class Code:
    """A version of the package and app to run: its label in the results and the folder on PYTHONPATH."""

    label: str
    path: Path


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def resolve_code(spec: str, out: Path) -> Code:
    """``worktree``, a folder holding ``subspace_atlas/`` and ``app/``, or a git ref exported once under ``out``."""
    if spec == "worktree":
        dirty = bool(_git("status", "--porcelain", "--", "subspace_atlas", "app"))
        return Code(f"worktree ({_git('rev-parse', '--short', 'HEAD')}{' + changes' if dirty else ''})", ROOT)
    if Path(spec).is_dir():
        return Code(Path(spec).resolve().name, Path(spec).resolve())
    sha = _git("rev-parse", "--short", spec)
    target = out / "code" / sha
    if not (target / "subspace_atlas").is_dir():
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".code-"))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "subspace_atlas", "app"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return Code(f"{sha}", target)


def neutral_cwd(out: Path) -> Path:
    """Where children run: not the repository root, whose ``subspace_atlas/`` would shadow PYTHONPATH for
    ``python -m …`` and ``python -c …`` (they put the working directory first on sys.path)."""
    folder = out / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def child_env(code: Code, out: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SUBSPACE_ATLAS_STORE", "SUBSPACE_ATLAS_READONLY")}
    env |= {"PYTHONPATH": os.pathsep.join([str(code.path), str(Path(__file__).resolve().parent)]),
            "SUBSPACE_ATLAS_CACHE": str(out / "svd-cache"), "PYTHONUNBUFFERED": "1",
            "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    return env | extra


# ---------------------------------------------------------------------------------------------- child processes

@dataclass
class Outcome:
    rc: int | None
    seconds: float
    timed_out: bool
    lines: list[str]
    peak_rss_mib: float  # largest sampled RSS of the process tree
    hwm_mib: float  # the main process's VmHWM (kernel peak)
    killed_for_memory: bool = False

    def records(self) -> list[dict]:
        """The JSON lines (``@@ {...}``) the child printed."""
        return [json.loads(line[3:]) for line in self.lines if line.startswith("@@ ")]


def _rss_tree(pid: int) -> tuple[float, float]:
    """(RSS of the process and its descendants, VmHWM of the process), in MiB."""
    import psutil

    try:
        proc = psutil.Process(pid)
        rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    except psutil.Error:
        return 0.0, 0.0
    hwm = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss / 2**20, hwm


class RssPoller:
    """Samples a process tree's RSS every ``every`` seconds in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, every: float = 0.1, limit_mib: float = float("inf"),
                 on_limit: Callable[[], None] | None = None):
        self.pid, self.every, self.peak, self.hwm = pid, every, 0.0, 0.0
        self.limit_mib, self.on_limit, self.over_limit = limit_mib, on_limit, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, hwm = _rss_tree(self.pid)
            self.peak, self.hwm = max(self.peak, rss), max(self.hwm, hwm)
            if rss > self.limit_mib and not self.over_limit:
                self.over_limit = True  # protect the machine (and whoever else uses it)
                if self.on_limit:
                    self.on_limit()
            self._stop.wait(self.every)

    def reset(self) -> None:
        self.peak = 0.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_child(cmd: list[str], env: dict[str, str], timeout: float, echo: bool = False,
              cwd: Path | None = None, limit_mib: float = float("inf")) -> Outcome:
    """Run ``cmd`` with a timeout (the whole process group is killed), polling its RSS; keep its output.

    Past ``limit_mib`` of RSS the child is killed too (a page reading 40 GB would take the machine down).
    """
    t0 = time.perf_counter()
    cwd = cwd or neutral_cwd(Path(env["SUBSPACE_ATLAS_CACHE"]).parent)
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    poller = RssPoller(proc.pid, limit_mib=limit_mib, on_limit=lambda: _kill_group(proc, wait=False))
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if echo and not line.startswith("@@ "):
                print("    " + line.rstrip("\n"), flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    seconds = time.perf_counter() - t0
    reader.join(timeout=10)
    poller.stop()
    return Outcome(proc.returncode, seconds, timed_out, lines, poller.peak, poller.hwm, poller.over_limit)


def _kill_group(proc: subprocess.Popen, wait: bool = True) -> None:
    """Terminate a child started with ``start_new_session`` and everything it started (its own group only)."""
    import signal

    if not wait:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def emit(record: dict) -> None:
    """A child's result line, read back by ``Outcome.records``."""
    print("@@ " + json.dumps(record, default=str), flush=True)


def emit_package() -> None:
    """Say which ``subspace_atlas`` this child imported (the parent checks it is the version it meant)."""
    import subspace_atlas

    emit({"package": str(Path(subspace_atlas.__file__).resolve().parent)})


def check_package(outcome: Outcome, code: Code) -> None:
    found = [r["package"] for r in outcome.records() if "package" in r]
    want = str((code.path / "subspace_atlas").resolve())
    if found and found[0] != want:
        raise SystemExit(f"measured the wrong code: imported {found[0]}, wanted {want}")


def vm(key: str = "VmHWM") -> float:
    """This process's VmHWM or VmRSS, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------- stores

@dataclass
class StoreInfo:
    name: str
    root: Path
    spec: dict = field(default_factory=dict)
    built: dict = field(default_factory=dict)

    @property
    def rows(self) -> dict[str, int]:
        return self.built.get("rows", {})

    def has(self, analysis: str) -> bool:
        return any(key.startswith(analysis + "/") for key in self.rows)

    @property
    def compacted(self) -> bool:
        return self.name.endswith("+compacted")


def readers(info: StoreInfo, codes: list[Code], out: Path) -> list[Code]:
    """The code versions that can read a store (a compacted one needs a version that has ``compact``)."""
    return [c for c in codes if not info.compacted or has_command(c, out, "compact")]


def store_specs(args: argparse.Namespace):
    import _synth_store as synth

    specs = synth.specs_for(args.sizes)
    return [s for s in specs if not args.stores or any(fnmatch.fnmatch(s.name, p) for p in args.stores)]


def stores(args: argparse.Namespace, compacted: bool = True) -> list[StoreInfo]:
    """The built stores the selected specs name (and their compacted copies), as recorded by ``build``."""
    found = []
    for spec in store_specs(args):
        for name in [spec.name] + ([spec.name + "+compacted"] if compacted else []):
            marker = args.out / "stores" / f"{name}.json"
            if marker.exists() and (args.out / "stores" / name).is_dir():
                data = json.loads(marker.read_text())
                found.append(StoreInfo(name, args.out / "stores" / name, data.get("spec", {}), data))
    return found


def part_build(args: argparse.Namespace) -> dict:
    """Build each selected store unless an identical one (same spec) is already there."""
    writer = resolve_code(args.writer_code, args.out)
    results = {}
    for spec in store_specs(args):
        root = args.out / "stores" / spec.name
        marker = root.with_name(spec.name + ".json")
        if marker.exists() and root.is_dir() and not args.rebuild:
            data = json.loads(marker.read_text())
            if data.get("spec") == json.loads(json.dumps(spec.as_dict())):  # tuples read back as lists
                print(f"{spec.name}: reusing ({_size(data['bytes'])}, {data['files']} files, built in "
                      f"{data['seconds']:.0f} s by {data['writer']})", flush=True)
                results[spec.name] = data | {"reused": True}
                continue
        print(f"{spec.name}: building with {writer.label} …", flush=True)
        building = root.with_name(spec.name + ".building")
        cmd = [sys.executable, __file__, "_build", "--name", spec.name, "--root", str(building),
               "--spec", json.dumps(spec.as_dict()), "--reference", str(args.out / "reference" / writer.label)]
        outcome = run_child(cmd, child_env(writer, args.out), timeout=3600, echo=True)
        records = outcome.records()
        if outcome.rc != 0 or not records:
            raise SystemExit(f"{spec.name}: build failed (rc {outcome.rc}):\n" + "\n".join(outcome.lines[-30:]))
        shutil.rmtree(root, ignore_errors=True)
        building.rename(root)
        for stale in (root.with_name(spec.name + "+compacted"), root.with_name(spec.name + "+compacted.json")):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        data = records[-1] | {"spec": spec.as_dict(), "writer": writer.label, "peak_rss_mib": outcome.peak_rss_mib,
                              "wall_s": outcome.seconds}
        marker.write_text(json.dumps(data, indent=1))
        print(f"{spec.name}: {_size(data['bytes'])} in {data['files']} files, {data['jobs']} jobs, built in "
              f"{data['seconds']:.1f} s (process {outcome.seconds:.1f} s, peak RSS {outcome.peak_rss_mib:.0f} MiB)",
              flush=True)
        results[spec.name] = data
    return results


def child_build(args: argparse.Namespace) -> None:
    import _synth_store as synth

    spec = synth.Spec(**{k: (tuple(v) if isinstance(v, list) else v)
                         for k, v in json.loads(args.spec).items() if k != "format"})
    reference = synth.reference_store(Path(args.reference))
    result = synth.build(spec, Path(args.root), reference)
    emit(result)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# ---------------------------------------------------------------------------------------------- compact

@functools.lru_cache(maxsize=8)
def has_command(code: Code, out: Path, command: str) -> bool:
    """Whether this version's CLI has a subcommand (e.g. ``compact``)."""
    found = subprocess.run([sys.executable, "-m", "subspace_atlas.cli", "--help"], env=child_env(code, out),
                           capture_output=True, text=True, cwd=neutral_cwd(out))
    return re.search(rf"\b{command}\b", found.stdout) is not None


def part_compact(args: argparse.Namespace, codes: list[Code]) -> dict[str, dict]:
    """``subspace-atlas compact`` on a hard-linked copy of each store with many jobs (the original stays),
    by the last of ``codes`` that has the command."""
    code = next((c for c in reversed(codes) if has_command(c, args.out, "compact")), None)
    if code is None:
        print("compact: no `subspace-atlas compact` in " + ", ".join(c.label for c in codes) + "; skipped")
        return {}
    results = {}
    for info in stores(args, compacted=False):
        if info.built.get("files", 0) < 30 and info.built.get("bytes", 0) < 200e6:
            continue  # nothing to merge, nothing to re-chunk
        copy = info.root.with_name(info.name + "+compacted")
        shutil.rmtree(copy, ignore_errors=True)
        subprocess.run(["cp", "-al", str(info.root), str(copy)], check=True)
        outcome = run_child([cli_path(), "compact", "--store", str(copy)], child_env(code, args.out), args.timeout)
        import _synth_store as synth

        after = synth.disk_usage(copy)
        record = {"seconds": outcome.seconds, "rc": outcome.rc, "timed_out": outcome.timed_out,
                  "peak_rss_mib": outcome.peak_rss_mib, "files_before": info.built["files"],
                  "bytes_before": info.built["bytes"], **after, "output": outcome.lines[-3:]}
        print(f"{info.name}: compact {_secs(outcome)}; files {info.built['files']} → {after['files']}, "
              f"{_size(info.built['bytes'])} → {_size(after['bytes'])}", flush=True)
        if outcome.rc == 0:
            copy.with_name(copy.name + ".json").write_text(json.dumps(
                info.built | {"files": after["files"], "bytes": after["bytes"], "compacted_by": code.label}))
        results[info.name] = record
    return {code.label: results}


def _secs(outcome: Outcome) -> str:
    return f"> {outcome.seconds:.0f} s (timeout)" if outcome.timed_out else f"{outcome.seconds:.2f} s (rc {outcome.rc})"


# ---------------------------------------------------------------------------------------------- Store.table

@dataclass(frozen=True)
class Read:
    """One ``Store.table`` call to time."""

    label: str
    analysis: str
    table: str
    where: dict | None = None
    columns: list[str] | None = None


def _jobs_inputs(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/_jobs/*.json"))]


def reads_for(info: StoreInfo) -> list[Read]:
    """What to read from a store: full tables where sane, one checkpoint's / one job's / one matrix's slice."""
    manifests = _jobs_inputs(info.root)
    spectra = sorted((m for m in manifests if m["analysis"] == "spectra"), key=lambda m: m["created"])
    out: list[Read] = []
    if spectra:
        one = spectra[len(spectra) // 2]["inputs"]["checkpoint"]
        two = [spectra[0]["inputs"]["checkpoint"], spectra[-1]["inputs"]["checkpoint"]]
        out.append(Read("spectra/matrices, all", "spectra", "matrices"))
        if info.rows.get("spectra/values", 0) <= VALUES_FULL_READ_MAX_ROWS:
            out.append(Read("spectra/values, all", "spectra", "values"))
        out += [Read("spectra/values, where checkpoint = one", "spectra", "values", {"checkpoint": one}),
                Read("spectra/values, where checkpoint = one, 3 columns", "spectra", "values", {"checkpoint": one},
                     ["tensor", "index", "sigma"]),
                Read("spectra/values, where checkpoint in [two]", "spectra", "values", {"checkpoint": two}),
                Read("spectra/matrices, where checkpoint = one (one job)", "spectra", "matrices", {"checkpoint": one})]
    if info.has("intruders"):
        tuned = next(m for m in manifests if m["analysis"] == "intruders")["inputs"]["checkpoint"]
        out += [Read("intruders/summary, all", "intruders", "summary"),
                Read("intruders/similarity, where checkpoint, tensor", "intruders", "similarity",
                     {"checkpoint": tuned, "tensor": "model.layers.15.self_attn.q_proj.weight"})]
    if info.has("overlap"):
        run = next(m for m in manifests if m["analysis"] == "overlap")["inputs"]["run"]
        out += [Read("overlap/pairs, all", "overlap", "pairs"),
                Read("overlap/pairs, where tensor = one", "overlap", "pairs",
                     {"tensor": "model.layers.15.self_attn.q_proj.weight"}),
                Read("overlap/pairs, where of, side, tensor; no angles", "overlap", "pairs",
                     {"of": "weights", "side": "left", "tensor": "model.layers.15.self_attn.q_proj.weight"},
                     ["checkpoint_a", "checkpoint_b", "step_a", "step_b", "overlap", "previous", "from_first",
                      "to_last"]),
                Read("overlap/spectrum, where run", "overlap", "spectrum", {"run": run}),
                Read("overlap/convergence, all", "overlap", "convergence")]
    return out


def part_table(args: argparse.Namespace, codes: list[Code]) -> dict[str, dict]:
    """Each read in a fresh process per code version (versions interleaved, so load hits both alike)."""
    results: dict[str, dict] = {c.label: {} for c in codes}
    for info in stores(args):
        for read in reads_for(info):
            for code in readers(info, codes, args.out):
                load = settle(args)
                cmd = [sys.executable, __file__, "_table", "--root", str(info.root), "--read",
                       json.dumps(read.__dict__), "--reps", str(args.reps)]
                outcome = run_child(cmd, child_env(code, args.out), args.timeout, limit_mib=args.max_rss_gib * 1024)
                check_package(outcome, code)
                record = summarise_reps(outcome) | {"load": load}
                results[code.label][f"{info.name} | {read.label}"] = record
                print(f"{info.name:<22} {read.label:<52} {code.label:<24} {fmt_record(record)}", flush=True)
    return results


def settle(args: argparse.Namespace) -> str:
    """Wait (a little) for a quieter machine; return the 1-minute load average measured under."""
    if args.max_load:
        wait_quiet(args.max_load, args.max_wait)
    return load_average().split()[0]


def summarise_reps(outcome: Outcome) -> dict:
    """Median of the reps a child reported (and whatever it said if it failed or timed out)."""
    records = outcome.records()
    reps = [r for r in records if "seconds" in r]
    record: dict = {"reps": [r["seconds"] for r in reps]}
    if reps:
        record |= {"median_s": statistics.median(record["reps"]), "rows": reps[-1].get("rows"),
                   "rss_growth_mib": max(r.get("rss_growth_mib", 0) for r in reps)}
    notes = [r["note"] for r in records if "note" in r]
    if notes:
        record["note"] = notes[-1]
    if outcome.killed_for_memory:
        record["note"] = f"killed above {outcome.peak_rss_mib / 1024:.1f} GiB RSS"
    elif outcome.timed_out:
        record["timeout_s"] = round(outcome.seconds)
    elif outcome.rc != 0 and "note" not in record:
        record["note"] = f"rc {outcome.rc}: " + " / ".join(outcome.lines[-3:])[-300:]
    return record


def fmt_record(record: dict) -> str:
    if "timeout_s" in record and "median_s" not in record:
        return f"> {record['timeout_s']} s (timeout)"
    if "median_s" not in record:
        return record.get("note", "n/a")
    if "peak_rss_mib" in record:  # a command: its whole process
        out = f"{record['median_s']:.2f} s (peak RSS {record['peak_rss_mib']:.0f} MiB)"
    else:
        out = f"{record['median_s']:.3f} s ({record.get('rows', '?'):,} rows, +{record.get('rss_growth_mib', 0):.0f} MiB)"
    return out + (f" [{record['note']}]" if "note" in record else "")


def child_table(args: argparse.Namespace) -> None:
    import gc
    import inspect

    from subspace_atlas.store import Store

    emit_package()
    read = Read(**json.loads(args.read))
    accepts = inspect.signature(Store.table).parameters
    kwargs: dict = {"where": read.where} if read.where else {}
    if read.columns:
        if "columns" not in accepts:
            emit({"note": "no columns= in Store.table"})
            return
        kwargs["columns"] = read.columns
    base = vm("VmRSS")
    for _ in range(args.reps):
        t0 = time.perf_counter()
        try:
            frame = Store(args.root).table(read.analysis, read.table, **kwargs)
        except Exception as err:  # noqa: BLE001 - a result: e.g. a list in where= before the rewrite
            emit({"note": f"{type(err).__name__}: {str(err)[:160]}"})
            return
        seconds = time.perf_counter() - t0
        rows = len(frame)
        del frame
        gc.collect()
        emit({"seconds": seconds, "rows": rows, "rss_growth_mib": vm("VmHWM") - base})


# ---------------------------------------------------------------------------------------------- CLI

def part_cli(args: argparse.Namespace, codes: list[Code]) -> dict[str, dict]:
    """``info`` and ``report`` per store, each code version in turn; ``import pandas`` as the floor."""
    results: dict[str, dict] = {c.label: {} for c in codes}
    key = "(interpreter) | python -c 'import pandas'"
    tmp = args.out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    base = next(iter(sorted((args.out / "reference").glob("*/ckpts/base"))), None)  # a tiny real checkpoint
    for code in codes:
        env = child_env(code, args.out)
        floor = [run_child([sys.executable, "-c", "import pandas"], env, 60) for _ in range(args.reps)]
        results[code.label][key] = _cli_record(floor) | {"load": settle(args)}
        print(f"{'(interpreter)':<22} {'import pandas':<16} {code.label:<24} {fmt_record(results[code.label][key])}")
        quick = {"--help": [cli_path(), "--help"]}
        if base is not None:  # computed once here, then each timed run finds every job stored
            cached = tmp / f"cached-{re.sub(r'[^A-Za-z0-9]+', '-', code.label)}"
            quick["cached rerun"] = [cli_path(), "spectra", str(base), "--store", str(cached)]
            run_child(quick["cached rerun"], env, 600)
        for name, cmd in quick.items():
            record = _cli_record([run_child(cmd, env, 60) for _ in range(args.reps)]) | {"load": settle(args)}
            results[code.label][f"(command) | {name}"] = record
            print(f"{'(command)':<22} {name:<16} {code.label:<24} {fmt_record(record)}", flush=True)
    for info in stores(args):
        html = tmp / f"{info.name}.html"
        commands = {"info": [cli_path(), "info", "--store", str(info.root)],
                    "report": [cli_path(), "report", "--store", str(info.root), "-o", str(html)]}
        for name, cmd in commands.items():
            for code in readers(info, codes, args.out):
                load = settle(args)
                runs = []
                for _ in range(args.reps):
                    runs.append(run_child(cmd, child_env(code, args.out), args.timeout,
                                          limit_mib=args.max_rss_gib * 1024))
                    if runs[-1].timed_out or runs[-1].rc != 0 or runs[-1].seconds > 60:
                        break  # slow or failing: once is enough
                record = _cli_record(runs) | {"load": load}
                if name == "report" and html.exists():
                    record["output_bytes"] = html.stat().st_size
                    html.unlink()
                results[code.label][f"{info.name} | {name}"] = record
                print(f"{info.name:<22} {name:<16} {code.label:<24} {fmt_record(record)}", flush=True)
    return results


def _cli_record(runs: list[Outcome]) -> dict:
    ok = [r for r in runs if not r.timed_out]
    record: dict = {"reps": [r.seconds for r in ok], "peak_rss_mib": max(r.peak_rss_mib for r in runs)}
    if ok:
        record["median_s"] = statistics.median(record["reps"])
    if any(r.timed_out for r in runs):
        record["timeout_s"] = round(max(r.seconds for r in runs))
    bad = [r for r in runs if r.rc not in (0, None)]
    if any(r.killed_for_memory for r in runs):
        record["note"] = f"killed above {record['peak_rss_mib'] / 1024:.1f} GiB RSS"
    elif bad:
        record["note"] = f"rc {bad[0].rc}: " + " / ".join(bad[0].lines[-2:])[-300:]
    return record


# ---------------------------------------------------------------------------------------------- pages

@dataclass(frozen=True)
class Page:
    title: str
    script: str  # app/<script>
    url: str  # path of the page in the browser
    widget: str  # AppTest element type of the filter changed ("" = a plain rerun)
    key: str  # its key
    label: str  # its label (fallback when the key changed)
    value: str  # the value chosen (a number as text is matched by value)


OVERVIEW = Page("Overview", "views/overview.py", "", "", "", "", "")
SPECTRA = Page("Spectra", "views/spectra.py", "spectra", "selectbox", "spectra_metric", "Metric", "stable_rank")
INTRUDERS = Page("Intruders", "views/intruders.py", "intruders", "selectbox", "intruders_epsilon", "ε", "0.3")
DYNAMICS = Page("Training dynamics", "views/overlap.py", "overlap", "radio", "overlap_reference", "Compared with",
                "first")
PAGES = {p.title: p for p in (OVERVIEW, SPECTRA, INTRUDERS, DYNAMICS)}


def pages_for(info: StoreInfo) -> list[Page]:
    found = [OVERVIEW]
    found += [SPECTRA] if info.has("spectra") else []
    found += [INTRUDERS] if info.has("intruders") else []
    found += [DYNAMICS] if info.has("overlap") else []
    return found


def heaviest(info: StoreInfo) -> Page:
    return DYNAMICS if info.has("overlap") else SPECTRA


def part_apptest(args: argparse.Namespace, codes: list[Code]) -> dict[str, dict]:
    """Each page of each store in a fresh process per code version: first render, then one filter change."""
    results: dict[str, dict] = {c.label: {} for c in codes}
    for info in stores(args, compacted=False):
        for page in pages_for(info):
            for code in codes:
                load = settle(args)
                cmd = [sys.executable, __file__, "_apptest", "--root", str(info.root), "--page", page.title,
                       "--app", str(code.path / "app" / "main.py"), "--timeout", str(args.timeout)]
                outcome = run_child(cmd, child_env(code, args.out), args.timeout, limit_mib=args.max_rss_gib * 1024)
                check_package(outcome, code)
                record = {r["phase"]: r for r in outcome.records() if "phase" in r} | {"load": load}
                if outcome.killed_for_memory:
                    record["note"] = f"killed above {outcome.peak_rss_mib / 1024:.1f} GiB RSS"
                elif outcome.timed_out:
                    record["timeout_s"] = round(outcome.seconds)
                elif outcome.rc not in (0, None):
                    record["note"] = f"rc {outcome.rc}: " + " / ".join(outcome.lines[-3:])[-300:]
                results[code.label][f"{info.name} | {page.title}"] = record
                print(f"{info.name:<22} {page.title:<18} {code.label:<24} {fmt_page(record)}", flush=True)
    return results


def fmt_page(record: dict) -> str:
    parts = []
    for phase in ("first", "change"):
        r = record.get(phase)
        if r is None:
            parts.append(f"{phase}: " + (f"> {record['timeout_s']} s (timeout)" if "timeout_s" in record else "—"))
            break
        text = f"{phase} {r['seconds']:.2f} s, +{r.get('rss_growth_mib', 0):.0f} MiB, {r.get('charts', '?')} charts"
        if r.get("exception"):
            text += f" EXCEPTION {r['exception'][:120]}"
        if r.get("note"):
            text += f" [{r['note']}]"
        parts.append(text)
    return "; ".join(parts) + (f" [{record['note']}]" if "note" in record else "")


def _find_widget(at, page: Page):
    """The page's filter widget: by key, else by label (the key may have been renamed)."""
    elements = list(at.get(page.widget))
    for element in elements:
        if getattr(element, "key", None) == page.key:
            return element
    for element in elements:
        if getattr(element, "label", None) == page.label:
            return element
    return None


def _option(widget, text: str):
    """The widget option whose text (or numeric value) is ``text``; else its second option."""
    options = list(getattr(widget, "options", []))
    for option in options:
        if str(option) == text:
            return option
        try:
            if float(option) == float(text):
                return option
        except (TypeError, ValueError):
            pass
    return options[1] if len(options) > 1 else None


def child_apptest(args: argparse.Namespace) -> None:
    os.environ["SUBSPACE_ATLAS_STORE"] = args.root
    sys.argv = ["streamlit"]
    import pandas  # noqa: F401 - imported before the baseline, like the app's libraries
    import plotly.graph_objects  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from streamlit.testing.v1 import AppTest

    import subspace_atlas.charts  # noqa: F401
    import subspace_atlas.store  # noqa: F401

    emit_package()

    page = PAGES[args.page]
    at = AppTest.from_file(args.app, default_timeout=args.timeout)
    if page is not OVERVIEW:
        at.switch_page(page.script)
    base = vm("VmRSS")

    def result(phase: str, seconds: float, note: str = "") -> dict:
        exception = "; ".join(str(e.value)[:200] for e in at.exception) if at.exception else ""
        return {"phase": phase, "seconds": seconds, "rss_growth_mib": vm("VmHWM") - base,
                "charts": len(list(at.get("plotly_chart"))), "exception": exception, "note": note}

    t0 = time.perf_counter()
    at.run()
    emit(result("first", time.perf_counter() - t0))
    if page is OVERVIEW:
        t0 = time.perf_counter()
        at.run()
        emit(result("change", time.perf_counter() - t0, "a rerun"))
        return
    widget = _find_widget(at, page)
    if widget is None:
        emit({"phase": "change", "seconds": float("nan"), "note": f"no {page.widget} {page.key!r} / {page.label!r}"})
        return
    value = _option(widget, page.value)
    t0 = time.perf_counter()
    widget.set_value(value).run()
    emit(result("change", time.perf_counter() - t0, f"{page.label} → {value}"))


# ---------------------------------------------------------------------------------------------- browser

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run app/main.py -- --store S`` in its own process group, with an RSS poller."""

    def __init__(self, code: Code, store: Path, out: Path, limit_mib: float = float("inf")):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(out / "tmp" / f"streamlit-{self.port}.log", "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "streamlit", "run", str(code.path / "app" / "main.py"),
               "--server.headless", "true", "--server.port", str(self.port), "--browser.gatherUsageStats", "false",
               "--", "--store", str(store)]
        self.proc = subprocess.Popen(cmd, env=child_env(code, out), cwd=neutral_cwd(out), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            self.stop(keep_log=True)
            raise RuntimeError(f"streamlit did not start; see {self.log.name}")
        self.base_rss = _rss_tree(self.proc.pid)[0]
        self.poller = RssPoller(self.proc.pid, every=0.05, limit_mib=limit_mib,
                                on_limit=lambda: _kill_group(self.proc, wait=False))

    def stop(self, keep_log: bool = False) -> None:
        if hasattr(self, "poller"):
            self.poller.stop()
        _kill_group(self.proc)
        self.log.close()
        if not keep_log:
            Path(self.log.name).unlink(missing_ok=True)


DONE_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const state = app ? app.getAttribute('data-test-script-state') : null;
  const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
  const drawn = plots.filter(d => d.querySelector('.main-svg')).length;
  return {state, stale: document.querySelectorAll('[data-stale="true"]').length, charts: plots.length, drawn,
          exception: document.querySelectorAll('[data-testid="stException"]').length};
}"""


class ServerGone(RuntimeError):
    """The app server exited (e.g. killed above --max-rss-gib) while a page waited for it."""


def wait_done(page, timeout_s: float, must_run: bool = False, server: Server | None = None) -> dict:
    """Wait until the script stopped, no element is stale and every chart (at least one) drew its SVG, or an
    exception shows; return that state. (The script stops before its charts mount: "stopped" alone is early.)"""
    deadline = time.perf_counter() + timeout_s
    if must_run:  # a widget change sets the state to running at once; give it 5 s to show
        end = time.perf_counter() + 5
        while time.perf_counter() < end and page.evaluate(DONE_JS)["state"] != "running":
            time.sleep(0.02)
    settled_since = None
    while time.perf_counter() < deadline:
        if server is not None and server.proc.poll() is not None:
            raise ServerGone(f"server exited (rc {server.proc.returncode})")
        state = page.evaluate(DONE_JS)
        drawn = state["drawn"] == state["charts"] and (state["drawn"] > 0 or state["exception"] > 0)
        done = state["state"] == "notRunning" and state["stale"] == 0 and drawn
        if done:
            settled_since = settled_since or time.perf_counter()
            if time.perf_counter() - settled_since >= 0.5:  # stable: not between two reruns
                return state | {"done_at": settled_since}
        else:
            settled_since = None
        time.sleep(0.05)
    raise TimeoutError


def change_filter(page, p: Page) -> str:
    """Change the page's filter the way a user does; return what was chosen."""
    if p is OVERVIEW:
        page.reload()
        return "reload"
    if p.widget == "selectbox":
        page.locator("[data-testid='stSelectbox']").filter(has_text=p.label).first.click(timeout=20_000)
        page.get_by_role("option", name=p.value, exact=True).first.click(timeout=20_000)
    elif p.widget == "radio":
        page.locator("[data-testid='stRadio']").filter(has_text=p.label).first.get_by_text(
            p.value, exact=True).click(timeout=20_000)
    return f"{p.label} → {p.value}"


def part_browser(args: argparse.Namespace, codes: list[Code]) -> dict[str, dict]:
    """Each page (and three tabs of the heaviest) against a fresh ``streamlit run`` per code version."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        print(f"browser: {CHROMIUM} missing (apt-get install -y chromium); skipped")
        return {}
    results: dict[str, dict] = {c.label: {} for c in codes}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for info in stores(args, compacted=False):
                jobs = [(p, browse_page) for p in pages_for(info)] + [(heaviest(info), three_tabs)]
                for p, measure in jobs:
                    what = p.title if measure is browse_page else f"3 tabs: {p.title}"
                    for code in codes:
                        load = settle(args)
                        record = measure(browser, code, info, p, args) | {"load": load}
                        results[code.label][f"{info.name} | {what}"] = record
                        print(f"{info.name:<22} {what:<18} {code.label:<24} {fmt_browser(record)}", flush=True)
        finally:
            browser.close()
    return results


def browse_page(browser, code: Code, info: StoreInfo, p: Page, args: argparse.Namespace) -> dict:
    """A fresh server; open the page, time the first render, change one filter, time it; the server's peak."""
    server = Server(code, info.root, args.out, args.max_rss_gib * 1024)
    record: dict = {"server_base_mib": server.base_rss}
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        t0 = time.perf_counter()
        page.goto(f"{server.url}/{p.url}", timeout=args.timeout * 1000)
        state = wait_done(page, args.timeout - (time.perf_counter() - t0), server=server)
        record["first"] = {"seconds": state["done_at"] - t0, "charts": state["drawn"], "exception": state["exception"],
                           "server_peak_mib": server.poller.peak}
        t0 = time.perf_counter()
        chosen = change_filter(page, p)
        state = wait_done(page, args.timeout, must_run=p is not OVERVIEW, server=server)
        record["change"] = {"seconds": state["done_at"] - t0, "charts": state["drawn"], "note": chosen,
                            "exception": state["exception"], "server_peak_mib": server.poller.peak}
    except TimeoutError:
        record["timeout_s"] = args.timeout
    except Exception as err:  # noqa: BLE001 - a result, e.g. a widget that is not there
        record["note"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    finally:
        _server_record(record, server)
        page.close()
        server.stop()
    return record


def three_tabs(browser, code: Code, info: StoreInfo, p: Page, args: argparse.Namespace) -> dict:
    """A fresh server; three tabs open the page at once; time until all are drawn and the server's peak RSS."""
    server = Server(code, info.root, args.out, args.max_rss_gib * 1024)
    record: dict = {"server_base_mib": server.base_rss}
    pages = [browser.new_page(viewport={"width": 1400, "height": 1000}) for _ in range(3)]
    try:
        t0 = time.perf_counter()
        for page in pages:
            page.goto(f"{server.url}/{p.url}", wait_until="commit", timeout=args.timeout * 1000)
        states = [wait_done(page, args.timeout - (time.perf_counter() - t0), server=server) for page in pages]
        record["first"] = {"seconds": max(s["done_at"] for s in states) - t0,
                           "charts": min(s["drawn"] for s in states), "exception": sum(s["exception"] for s in states),
                           "server_peak_mib": server.poller.peak}
    except TimeoutError:
        record["timeout_s"] = args.timeout
    except Exception as err:  # noqa: BLE001
        record["note"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    finally:
        _server_record(record, server)
        for page in pages:
            page.close()
        server.stop()
    return record


def _server_record(record: dict, server: Server) -> None:
    record["server_peak_mib"] = server.poller.peak
    record["server_hwm_mib"] = server.poller.hwm
    if server.poller.over_limit:
        record["note"] = f"server killed above {server.poller.peak / 1024:.1f} GiB RSS"
        record.pop("timeout_s", None)


def fmt_browser(record: dict) -> str:
    parts = []
    for phase in ("first", "change"):
        if phase in record:
            r = record[phase]
            parts.append(f"{phase} {r['seconds']:.2f} s ({r['charts']} charts"
                         + (f", {r['exception']} exceptions" if r.get("exception") else "") + ")")
    if "timeout_s" in record:
        parts.append(f"> {record['timeout_s']} s (timeout)")
    if "note" in record:
        parts.append(record["note"])
    return "; ".join(parts) + f"; server peak {record['server_peak_mib']:.0f} MiB (idle {record['server_base_mib']:.0f})"


# ---------------------------------------------------------------------------------------------- markdown

def load_results(out: Path) -> dict[str, dict[str, dict]]:
    """{part: {code label: results}} from every results file under ``out/results``."""
    found: dict[str, dict[str, dict]] = {}
    for path in sorted((out / "results").glob("*.json")):
        data = json.loads(path.read_text())
        found.setdefault(data["part"], {})[data["code"]] = data
    return found


def save_results(out: Path, part: str, code: str, results: dict, seconds: float) -> None:
    folder = out / "results"
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", code).strip("-")
    path = folder / f"{part}--{slug}.json"
    old = json.loads(path.read_text()) if path.exists() else {"results": {}}
    merged = old["results"] | results  # a partial rerun (--stores, --sizes) keeps the other rows
    runs = old.get("runs") or ([{"when": old["when"], "seconds": old["seconds"]}] if "when" in old else [])
    runs.append({"when": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "rows": len(results)})
    path.write_text(json.dumps({"part": part, "code": code, "runs": runs, "results": merged}, indent=1))


def _cell(record: dict | None, kind: str) -> str:
    if record is None:
        return ""
    if kind == "rows":
        return fmt_record(record) if "median_s" in record or "timeout_s" in record else record.get("note", "")
    if kind in ("first", "change"):
        r = record.get(kind)
        if r is None:
            return f"> {record['timeout_s']} s (timeout)" if "timeout_s" in record else record.get("note", "—")[:80]
        text = f"{r['seconds']:.2f} s"
        text += f", +{r['rss_growth_mib']:.0f} MiB" if "rss_growth_mib" in r else ""
        text += f", server {r['server_peak_mib']:.0f} MiB" if "server_peak_mib" in r else ""
        return text + (" ⚠ exception" if r.get("exception") else "")
    return ""


def ordered_keys(by_code: dict[str, dict]) -> list[str]:
    """Result rows in measuring order, a store's compacted copy right after the store."""
    keys = list(dict.fromkeys(k for d in by_code.values() for k in d["results"]))
    store_order = list(dict.fromkeys(k.split(" | ")[0].removesuffix("+compacted") for k in keys))
    return sorted(keys, key=lambda k: (store_order.index(k.split(" | ")[0].removesuffix("+compacted")),
                                       k.split(" | ")[0].endswith("+compacted")))


def run_line(by_code: dict[str, dict]) -> str:
    """When a part ran, how long, and the 1-minute load average its measurements started under."""
    runs = sorted({(r["when"], round(r["seconds"])) for d in by_code.values()
                   for r in d.get("runs") or [{"when": d["when"], "seconds": d["seconds"]}]})
    loads = [float(r["load"]) for d in by_code.values() for r in d["results"].values()
             if isinstance(r, dict) and "load" in r]
    text = "Run: " + ", ".join(f"{when} ({seconds} s)" for when, seconds in runs)
    return text + (f"; load average at the measurements {min(loads):.1f}–{max(loads):.1f}" if loads else "")


def markdown(out: Path) -> str:
    results = load_results(out)
    lines = ["## Store scale (`bench/store_scale.py`)", ""]
    info = machine()
    lines.append(f"Machine: {info['nproc']} cores ({info['cpu']}), {info['ram']}; load average now {load_average()}. "
                 "Times are wall seconds, medians of the reps; RSS growth is the measuring process's peak above "
                 "its RSS before the call (app: after importing streamlit/pandas/plotly).")
    lines += ["", "### Stores", "", "| store | jobs | files | on disk | rows | built in | writer |", "|---|---|---|---|---|---|---|"]
    for marker in sorted((out / "stores").glob("*.json"), key=lambda m: m.stem):
        d = json.loads(marker.read_text())
        rows = ", ".join(f"{k} {v / 1e6:.2f} M" if v >= 1e5 else f"{k} {v:,}" for k, v in d.get("rows", {}).items())
        built = f"{d['seconds']:.0f} s" if "compacted_by" not in d else f"compact by {d['compacted_by']}"
        lines.append(f"| {marker.stem} | {d['jobs']:,} | {d['files']:,} | {_size(d['bytes'])} | {rows} | {built} | "
                     f"{d.get('writer', '')} |")
    sections = [("table", "Store.table", "rows"), ("cli", "CLI", "rows")]
    for part, title, kind in sections:
        by_code = results.get(part, {})
        if not by_code:
            continue
        codes = list(by_code)
        keys = ordered_keys(by_code)
        lines += ["", f"### {title}", "", "| store | what | " + " | ".join(codes) + " |",
                  "|---|---|" + "---|" * len(codes)]
        for key in keys:
            store, what = key.split(" | ", 1)
            cells = [_cell(by_code[c]["results"].get(key), kind) for c in codes]
            lines.append(f"| {store} | {what} | " + " | ".join(cells) + " |")
        lines += ["", run_line(by_code)]
    for part, title in (("apptest", "Pages through AppTest"), ("browser", "Pages in Chromium (fresh server each)")):
        by_code = results.get(part, {})
        if not by_code:
            continue
        codes = list(by_code)
        keys = ordered_keys(by_code)
        head = " | ".join(f"{c}: first render | {c}: filter change" for c in codes)
        lines += ["", f"### {title}", "", f"| store | page | {head} |", "|---|---|" + "---|---|" * len(codes)]
        for key in keys:
            store, what = key.split(" | ", 1)
            cells = []
            for c in codes:
                record = by_code[c]["results"].get(key)
                cells += [_cell(record, "first"), _cell(record, "change")]
            lines.append(f"| {store} | {what} | " + " | ".join(cells) + " |")
        lines += ["", run_line(by_code)]
    compact = results.get("compact", {})
    for code, data in compact.items():
        for name, r in data["results"].items():
            if isinstance(r, dict) and "seconds" in r:
                lines.append(f"- compact ({code}) {name}: {r['seconds']:.1f} s, files {r['files_before']:,} → "
                             f"{r['files']:,}, {_size(r['bytes_before'])} → {_size(r['bytes'])}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main

def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50],
                        help="checkpoints per 7B store: spectra-7b-N and overlap-7b-runN (N ≥ 3)")
    parser.add_argument("--only", nargs="+", choices=PARTS + ("report",), default=None,
                        help="parts to run (default: all); report: only print the markdown of saved results")
    parser.add_argument("--out", type=Path, default=OUT / "store-scale", help="stores, results, markdown")
    parser.add_argument("--stores", nargs="+", default=None, metavar="GLOB", help="only stores matching these names")
    parser.add_argument("--code", nargs="+", default=["worktree"], metavar="CODE",
                        help="code measured: worktree, a git ref, or a folder; several: interleaved per measurement")
    parser.add_argument("--writer-code", default=LEGACY_WRITER, help="code whose Store.write builds the stores")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per measurement")
    parser.add_argument("--rebuild", action="store_true", help="rebuild stores even when cached")
    parser.add_argument("--max-rss-gib", type=float, default=12.0,
                        help="kill a measured process (or app server) above this RSS and record that")
    parser.add_argument("--max-load", type=float, default=2.5,
                        help="before each measurement wait (up to --max-wait s) for the 1-min load to drop below this; "
                             "0: never wait")
    parser.add_argument("--max-wait", type=float, default=30.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        return child_main(sys.argv[1:])
    args = parse(argv)
    args.out = args.out.resolve()
    (args.out / "tmp").mkdir(parents=True, exist_ok=True)
    parts = args.only or list(PARTS)
    codes = [resolve_code(c, args.out) for c in args.code] if set(parts) - {"build", "report"} else []
    runners = {"build": lambda: part_build(args), "compact": lambda: part_compact(args, codes),
               "table": lambda: part_table(args, codes), "cli": lambda: part_cli(args, codes),
               "apptest": lambda: part_apptest(args, codes), "browser": lambda: part_browser(args, codes)}
    for part in PARTS:
        if part not in parts:
            continue
        label = "writer" if part == "build" else ", ".join(c.label for c in codes)
        print(f"\n== {part} ({label}; load {load_average()})", flush=True)
        t0 = time.perf_counter()
        results = runners[part]()
        seconds = time.perf_counter() - t0
        print(f"== {part}: {seconds:.0f} s", flush=True)
        if part != "build":
            for code_label, found in results.items():
                save_results(args.out, part, code_label, found, seconds)
    text = markdown(args.out)
    (args.out / "store_scale.md").write_text(text)
    print("\n" + text)
    return 0


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["_build", "_table", "_apptest"])
    parser.add_argument("--name")
    parser.add_argument("--root")
    parser.add_argument("--spec")
    parser.add_argument("--reference")
    parser.add_argument("--read")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--page")
    parser.add_argument("--app")
    parser.add_argument("--timeout", type=int, default=300)
    args = parser.parse_args(argv)
    {"_build": child_build, "_table": child_table, "_apptest": child_apptest}[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
