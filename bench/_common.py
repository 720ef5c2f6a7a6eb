"""Shared helpers for the benchmarks: machine description, timing, peak-RSS measurement of a child.

Not part of the package; imported by the scripts in this folder (run as ``python bench/<script>.py``).
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"  # git-ignored
VENV_BIN = Path(sys.executable).parent


def cli_path() -> str:
    """The ``subspace-atlas`` console script of the interpreter running the benchmark."""
    exe = VENV_BIN / "subspace-atlas"
    return str(exe) if exe.exists() else shutil.which("subspace-atlas") or "subspace-atlas"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def wait_quiet(max_load: float, max_wait_s: float) -> str:
    """Wait (up to ``max_wait_s``) until the 1-minute load average is below ``max_load``; say what happened."""
    t0 = time.perf_counter()
    while True:
        load = float(load_average().split()[0])
        waited = time.perf_counter() - t0
        if load < max_load:
            return f"load {load:.2f} < {max_load} after waiting {waited:.0f} s"
        if waited >= max_wait_s:
            return f"gave up waiting after {waited:.0f} s: load still {load:.2f} ≥ {max_load} (timings are contended)"
        time.sleep(5)


def limit_threads(n: int | None) -> None:
    """Use ``n`` threads in torch and in NumPy/SciPy's BLAS (both sides), and in child processes."""
    if not n:
        return
    import torch

    torch.set_num_threads(n)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass


def code_version() -> str:
    """Git HEAD, whether the package has uncommitted changes, and a hash of the package's sources."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "subspace_atlas").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "subspace_atlas"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head, dirty = "unknown", ""
    return f"{head}{'+uncommitted' if dirty else ''} (package sources sha256 {digest.hexdigest()[:12]})"


def machine() -> dict[str, str]:
    """nproc, CPU model, RAM, library versions, GPU (if any), current load average."""
    import numpy
    import torch

    info = {
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "ram": f"{_ram_gib():.1f} GiB",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "numpy": numpy.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "loadavg": load_average(),
        "code": code_version(),
    }
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("scipy", "safetensors", "pandas", "weightwatcher", "transformers"):
        try:
            info[mod] = version(mod)
        except PackageNotFoundError:
            pass
    return info


def print_machine(title: str) -> dict[str, str]:
    info = machine()
    print(f"== {title}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    return info


class Timing:
    """Wall and CPU seconds of repeated runs."""

    def __init__(self, name: str, children: bool = False):
        self.name, self.wall, self.cpu, self.children = name, [], [], children

    def _cpu(self) -> float:
        if self.children:  # CPU seconds of finished child processes
            r = resource.getrusage(resource.RUSAGE_CHILDREN)
            return r.ru_utime + r.ru_stime
        return time.process_time()

    def run(self, fn: Callable[[], object]) -> object:
        c0, t0 = self._cpu(), time.perf_counter()
        out = fn()
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(self._cpu() - c0)
        return out

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_best(self) -> float:
        return min(self.cpu)

    def line(self) -> str:
        walls = ", ".join(f"{w:.3f}" for w in self.wall)
        return (f"{self.name:<44} best {self.best:8.3f} s  median {self.median:8.3f} s  "
                f"(cpu best {self.cpu_best:.3f} s; runs: {walls})")


def run_child(cmd: Sequence[str], poll_s: float = 0.02, env: dict | None = None,
              cwd: str | None = None) -> dict:
    """Run ``cmd``; return wall time, exit code, output, peak RSS and an RSS timeline.

    Peak RSS comes from the kernel (``VmHWM`` of the child, and ``getrusage(RUSAGE_CHILDREN)`` of a
    fresh measuring process so earlier children do not count); the timeline samples ``RssAnon``
    (heap, tensors) and ``RssFile`` (memory-mapped file pages) every ``poll_s`` seconds.
    """
    # Measure inside a fresh Python so RUSAGE_CHILDREN covers exactly this child.
    helper = (
        "import resource,subprocess,sys,json;"
        "p=subprocess.run(sys.argv[1:]);"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "sys.stderr.write('\\n@@RUSAGE '+json.dumps({'rc':p.returncode,'maxrss_kib':r.ru_maxrss})+'\\n')"
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", helper, *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    samples: list[tuple[float, int, int, int]] = []  # (t, rss, anon, file) in KiB
    hwm = [0]
    stop = threading.Event()

    def poll() -> None:
        child = None
        while not stop.is_set():
            if child is None:
                try:
                    kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                    child = int(kids[0]) if kids else None
                except OSError:
                    child = None
            if child is not None:
                try:
                    fields = {}
                    for line in Path(f"/proc/{child}/status").read_text().splitlines():
                        key, _, val = line.partition(":")
                        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                            fields[key] = int(val.split()[0])
                    hwm[0] = max(hwm[0], fields.get("VmHWM", 0))
                    samples.append((time.perf_counter() - t0, fields.get("VmRSS", 0),
                                    fields.get("RssAnon", 0), fields.get("RssFile", 0)))
                except (OSError, ValueError):
                    pass
            stop.wait(poll_s)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    thread.join()
    import json

    usage = {}
    lines = []
    for line in err.splitlines():
        if line.startswith("@@RUSAGE "):
            usage = json.loads(line[len("@@RUSAGE "):])
        else:
            lines.append(line)
    return {
        "cmd": list(cmd), "rc": usage.get("rc", proc.returncode), "wall_s": wall,
        "stdout": out, "stderr": "\n".join(lines),
        "maxrss_kib": usage.get("maxrss_kib", 0), "vmhwm_kib": hwm[0], "samples": samples,
    }


def peak_of(samples: list[tuple[float, int, int, int]]) -> dict[str, float]:
    """Largest sampled RSS, RssAnon and RssFile, in MiB."""
    if not samples:
        return {"rss": float("nan"), "anon": float("nan"), "file": float("nan")}
    return {"rss": max(s[1] for s in samples) / 1024, "anon": max(s[2] for s in samples) / 1024,
            "file": max(s[3] for s in samples) / 1024}


def self_maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PhaseTimer:
    """Exclusive time per phase, summed over threads, by wrapping functions at runtime.

    ``wrap("pkg.module:Class.attr", "phase")`` replaces a function (if it exists) with a wrapper that
    charges its time to ``phase``, minus the time of wrapped functions it calls (per thread), so the
    phases add up to the instrumented threads' busy time. ``restore()`` undoes every wrap. Works where
    cProfile does not: in worker threads.
    """

    def __init__(self):
        import collections

        self.seconds = collections.defaultdict(float)
        self.calls = collections.defaultdict(int)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._undo: list[tuple[object, str, object]] = []
        self.missing: list[str] = []

    def wrap(self, target: str, phase: str) -> bool:
        import functools
        import importlib

        module_name, _, attr_path = target.partition(":")
        try:
            owner = importlib.import_module(module_name)
            *parents, attr = attr_path.split(".")
            for p in parents:
                owner = getattr(owner, p)
            original = getattr(owner, attr)
        except (ImportError, AttributeError):
            self.missing.append(target)
            return False
        timer = self

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            stack = getattr(timer._local, "stack", None)
            if stack is None:
                stack = timer._local.stack = []
            start = time.perf_counter()
            stack.append(0.0)  # time spent in nested wrapped calls
            try:
                return original(*args, **kwargs)
            finally:
                nested = stack.pop()
                total = time.perf_counter() - start
                with timer._lock:
                    timer.seconds[phase] += total - nested
                    timer.calls[phase] += 1
                if stack:
                    stack[-1] += total

        setattr(owner, attr, wrapped)
        self._undo.append((owner, attr, original))
        return True

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
