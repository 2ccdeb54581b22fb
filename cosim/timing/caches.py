"""Set-associative caches stored as flat numpy arrays, for numba kernels.

Every cache of the machine (per-core L1I, L1D, L2 and the LLC slices) lives
in the same three flat arrays (tag, MESI state, replacement stamp); row
``cid`` of ``geom`` says where its sets start and how it is shaped. Flat
arrays let one compiled kernel walk any cache without Python objects.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

# MESI states (the LLC uses I, S = clean, M = dirty)
I, S, E, M = 0, 1, 2, 3

POLICY_LRU, POLICY_FIFO, POLICY_RANDOM = 0, 1, 2
POLICIES = {"lru": POLICY_LRU, "fifo": POLICY_FIFO, "random": POLICY_RANDOM}

# columns of geom
G_OFFSET, G_SETS, G_WAYS, G_POLICY, G_LATENCY = range(5)
NGEOM = 5

# columns of stats
CS_ACCESSES, CS_MISSES, CS_WRITEBACKS, CS_INVALIDATIONS, CS_DOWNGRADES, CS_PREFETCHES = range(6)
NCSTATS = 6
CSTAT_NAMES = ("accesses", "misses", "writebacks", "invalidations", "downgrades", "prefetches")


class CacheArrays(NamedTuple):
    """All caches of the machine (see module docstring)."""

    tags: np.ndarray     # int64[lines]: line address
    state: np.ndarray    # int8[lines]: I/S/E/M
    stamp: np.ndarray    # int64[lines]: LRU last use / FIFO insertion
    ready: np.ndarray    # int64[lines]: time the fill completes (in-flight lines)
    src: np.ndarray      # int8[lines]: hierarchy level that served the fill
    geom: np.ndarray     # int64[ncaches, NGEOM]
    stats: np.ndarray    # int64[ncaches, NCSTATS]
    rng: np.ndarray      # uint64[ncaches]: xorshift state for random replacement
    clock: np.ndarray    # int64[1]: replacement clock


def allocate(shapes: list[tuple[int, int, int, int]], seed: int) -> CacheArrays:
    """Caches from (sets, ways, policy, latency ticks) rows, all lines invalid."""
    geom = np.zeros((len(shapes), NGEOM), dtype=np.int64)
    offset = 0
    for cid, (sets, ways, policy, latency) in enumerate(shapes):
        geom[cid] = (offset, sets, ways, policy, latency)
        offset += sets * ways
    rng = np.array([(seed * 0x9E3779B97F4A7C15 + cid + 1) % (1 << 64) or 1
                    for cid in range(len(shapes))], dtype=np.uint64)
    return CacheArrays(
        tags=np.full(offset, -1, dtype=np.int64),
        state=np.zeros(offset, dtype=np.int8),
        stamp=np.zeros(offset, dtype=np.int64),
        ready=np.zeros(offset, dtype=np.int64),
        src=np.zeros(offset, dtype=np.int8),
        geom=geom,
        stats=np.zeros((len(shapes), NCSTATS), dtype=np.int64),
        rng=rng,
        clock=np.zeros(1, dtype=np.int64),
    )


@njit(_nrt=False, cache=True, inline="always")
def set_base(C: CacheArrays, cid: int, key: int) -> int:
    """Index of way 0 of the set that ``key`` selects."""
    return C.geom[cid, G_OFFSET] + (key & (C.geom[cid, G_SETS] - 1)) * C.geom[cid, G_WAYS]


@njit(_nrt=False, cache=True, inline="always")
def find(C: CacheArrays, cid: int, key: int, line: int) -> int:
    """Slot holding ``line`` in cache ``cid``, or -1."""
    base = set_base(C, cid, key)
    for w in range(C.geom[cid, G_WAYS]):
        j = base + w
        if C.state[j] != I and C.tags[j] == line:
            return j
    return -1


@njit(_nrt=False, cache=True, inline="always")
def touch(C: CacheArrays, cid: int, j: int) -> None:
    """Record a use (only LRU cares)."""
    if C.geom[cid, G_POLICY] == POLICY_LRU:
        C.clock[0] += 1
        C.stamp[j] = C.clock[0]


@njit(_nrt=False, cache=True, inline="always")
def victim(C: CacheArrays, cid: int, key: int) -> int:
    """Slot to fill in the set of ``key``: an invalid way, else by policy."""
    base = set_base(C, cid, key)
    ways = C.geom[cid, G_WAYS]
    if C.geom[cid, G_POLICY] != POLICY_RANDOM:
        # the first invalid way, else the first with the oldest stamp; the
        # minimum is taken without a branch per way, then looked up
        oldest = C.stamp[base]
        for w in range(ways):
            j = base + w
            if C.state[j] == I:
                return j
            oldest = min(oldest, C.stamp[j])
        j = base
        while C.stamp[j] != oldest:
            j += 1
        return j
    for w in range(ways):
        if C.state[base + w] == I:
            return base + w
    x = C.rng[cid]
    x ^= x << np.uint64(13)
    x ^= x >> np.uint64(7)
    x ^= x << np.uint64(17)
    C.rng[cid] = x
    return base + int(x % np.uint64(ways))


@njit(_nrt=False, cache=True, inline="always")
def install(C: CacheArrays, j: int, line: int, state: int, ready: int, src: int) -> None:
    """Put ``line`` in slot ``j`` (the caller has dealt with the old line).

    ``ready`` is when the data arrives and ``src`` the level it comes from:
    an access that finds the line still in flight (a second miss to the
    same line, or a prefetch not yet complete) waits for it and is charged
    to that level, as an MSHR merge would be.
    """
    C.tags[j] = line
    C.state[j] = state
    C.ready[j] = ready
    C.src[j] = src
    C.clock[0] += 1
    C.stamp[j] = C.clock[0]
