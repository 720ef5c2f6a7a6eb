"""``randomization``: WeightWatcher's correlation traps and ``rand_distance`` (compute: ``analysis.randomization``).

Each matrix is compared with copies of itself whose entries are shuffled (WeightWatcher 0.7.7,
``analyze(randomize=True)``: ``WeightWatcher.apply_random_esd``, ``random_eigenvalues`` and
``apply_mp_fit(random=True)`` in ``weightwatcher/weightwatcher.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from subspace_atlas.checkpoints import select_matrices

NAME = "randomization"
TABLES = ("matrices", "values", "traps")
SCHEMA_VERSION = 1
DESCRIPTION = ("correlation traps and rand_distance: every 2-D weight matrix against copies of it with its entries "
               "shuffled (WeightWatcher's randomize=True)")


@dataclass(frozen=True)
class Params:
    seed: int = field(default=0, metadata={
        "help": "seed of the shuffles; matrix NAME is shuffled by numpy.random.RandomState(seed + crc32(NAME)), "
                "so numpy.random.seed of that number before WeightWatcher's analyze(randomize=True) on that "
                "layer draws the same permutations"})
    replicas: int = field(default=5, metadata={
        "help": "shuffled copies pooled for max_rand_eval and the trap fit of a matrix with fewer than "
                "--replicas-below eigenvalues (WeightWatcher's apply_random_esd: 5)"})
    replicas_below: int = field(default=100, metadata={
        "help": "a matrix with min(m, n) below this gets --replicas shuffled copies, others one "
                "(WeightWatcher's apply_random_esd: 100)"})
    bandwidth: float = field(default=0.1, metadata={
        "help": "bandwidth of the linear-kernel density the Marchenko–Pastur law is fitted to "
                "(WeightWatcher's mp_fit: bw = 0.1)"})
    density_floor: float = field(default=0.01, metadata={
        "help": "grid points where that density is at or below this are left out of the fit "
                "(WeightWatcher's RMT_Util.resid_mp: THRESH = 0.01)"})


select = select_matrices
