"""A thread-pool map that bounds how many bytes of input are being worked on at once, and the per-matrix
worker policy every analysis shares (how many workers, one torch thread each)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """A pool whose threads run torch on the caller's thread count (1 inside ``linalg.single_threaded``).

    OpenMP keeps its thread count per thread, and MKL follows it: a new thread starts at the process
    default (every core) even while ``torch.get_num_threads()`` says 1. Without this, MKL in the pool's
    "single-threaded" workers ran with every core, and a small product such as ``u[:, :k].T @ u0`` rounded
    differently from a process started single-threaded (``OMP_NUM_THREADS=1``, as Ray workers are).
    """
    return ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads,
                              initargs=(torch.get_num_threads(),))


def bounded_map(fn: Callable[[T], R], items: Iterable[T], size: Callable[[T], int], workers: int,
                budget: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads, results in order, starting an item only while the
    sizes of the items in flight stay within ``budget`` (an item larger than that runs alone).

    Two large matrices side by side (a model's embedding and unembedding are neighbours when grouped
    by shape) would double the peak memory; this keeps it near the largest item plus small ones.
    """
    with thread_pool(workers) as pool:
        pending: deque = deque()
        inflight = 0
        for item in items:
            need = size(item)
            while pending and (len(pending) >= workers or inflight + need > budget):
                future, held = pending.popleft()
                inflight -= held
                yield future.result()
            pending.append((pool.submit(fn, item), need))
            inflight += need
        while pending:
            future, _ = pending.popleft()
            yield future.result()


def map_matrices(work: Callable[[T], R], items: Iterable[T], size: Callable[[T], int], count: Callable[[T], int],
                 device: torch.device, workers: int | None, budget: int,
                 progress: Callable[[int], None]) -> Iterator[R]:
    """``work`` on each item, results in order, reporting ``count(item)`` to ``progress`` as each finishes.

    ``workers`` at once (default: torch's thread count on a CPU, each single-threaded; one on a GPU),
    started only while their ``size`` stays within ``budget``.
    """
    from subspace_atlas import linalg

    workers = workers or (torch.get_num_threads() if device.type == "cpu" else 1)

    def one(item: T) -> R:
        out = work(item)
        progress(count(item))
        return out

    with linalg.single_threaded(workers > 1):
        yield from bounded_map(one, items, size, workers, budget)
